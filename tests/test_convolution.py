"""Tests of tsm.convolution against lax.conv_general_dilated (values and both gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tsm import convolution

CASES = [  # (spatial shape, kernel, c_in, c_out, stride, padding)
    ((9, 9), 3, 1, 4, 1, "SAME"),
    ((9, 9), 3, 5, 4, 2, ((1, 1), (1, 1))),
    ((8, 8), 1, 5, 3, 2, "VALID"),
    ((7, 7), 7, 3, 4, 2, ((3, 3), (3, 3))),
    ((6, 6), 3, 2, 2, 1, ((0, 2), (1, 0))),
    ((6, 5), 3, 9, 3, 1, "SAME"),       # 9 offsets x 9 channels: per-offset products
    ((11,), 5, 3, 4, 2, "SAME"),        # 1-D (Conv1DNet)
]


def _dn(ndim):
  return ("NHWC", "HWIO", "NHWC") if ndim == 4 else ("NWC", "WIO", "NWC")


@pytest.mark.parametrize("spatial,k,c_in,c_out,stride,padding", CASES)
def test_value_and_gradients_match_xla(spatial, k, c_in, c_out, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2,) + spatial + (c_in,)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k,) * len(spatial) + (c_in, c_out)), jnp.float32)
  _assert_matches_xla(x, w, (stride,) * len(spatial), padding,
                      dimension_numbers=_dn(x.ndim), precision=lax.Precision.HIGHEST)


def _assert_matches_xla(x, w, strides, padding, **kw):
  """tsm's convolution equals XLA's, and so do both gradients of a smooth objective."""

  def objective(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, **kw)))

  np.testing.assert_allclose(convolution.conv_general_dilated(x, w, strides, padding, **kw),
                             lax.conv_general_dilated(x, w, strides, padding, **kw),
                             rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(objective(convolution.conv_general_dilated), (0, 1)))(x, w)
  want = jax.jit(jax.grad(objective(lax.conv_general_dilated), (0, 1)))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_against_numpy_loops():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
  w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
  dy = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)   # stride 2, padding 1
  grad = jax.jit(lambda w_, dy_: jax.vjp(lambda v: convolution.conv_general_dilated(
      x, v, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST), w_)[1](dy_)[0])
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros(w.shape)
  for b in range(2):
    for oh in range(3):
      for ow in range(2):
        for i in range(3):
          for j in range(3):
            want[i, j] += np.outer(xp[b, 2 * oh + i, 2 * ow + j], dy[b, oh, ow])
  np.testing.assert_allclose(grad(jnp.asarray(w), jnp.asarray(dy)), want, rtol=1e-5, atol=1e-5)


def test_other_forms_fall_back_to_lax():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
            rhs_dilation=(2, 2))
  np.testing.assert_array_equal(
      convolution.conv_general_dilated(x, w, (1, 1), "SAME", **kw),
      lax.conv_general_dilated(x, w, (1, 1), "SAME", **kw))


def test_nan_in_nan_out_and_zero_input_finite_gradient():
  w = jnp.ones((3, 3, 2, 2), jnp.float32)
  x = jnp.zeros((1, 4, 4, 2), jnp.float32)
  conv = lambda x, w: convolution.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  gx, gw = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w)), (0, 1)))(x, w)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gw))
  assert np.all(np.isnan(conv(x.at[0, 1, 1, 0].set(jnp.nan), w)[0, :3, :3]))


def test_flax_conv_jit_and_vmap():
  conv = nn.Conv(3, (3, 3), conv_general_dilated=convolution.conv_general_dilated)
  ref = nn.Conv(3, (3, 3))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 2, 5, 5, 2)), jnp.float32)
  variables = ref.init(jax.random.key(0), x[0])
  loss = lambda m: jax.jit(jax.vmap(jax.grad(lambda v, xi: jnp.sum(m.apply(v, xi) ** 2)),
                                    (None, 0)))
  got, want = loss(conv)(variables, x), loss(ref)(variables, x)
  jax.tree_util.tree_map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4,
                                                                 atol=1e-4), got, want)


DEPTHWISE_CASES = [  # (spatial shape, kernel, channels, stride, padding)
    ((9, 9), 3, 4, 1, "SAME"),
    ((9, 8), 3, 3, 2, "SAME"),          # TensorFlow's asymmetric SAME at stride 2
    ((10, 10), 5, 2, 2, "SAME"),
    ((7, 7), 3, 5, 2, ((1, 1), (1, 1))),  # torch's symmetric padding
    ((6, 6), 3, 2, 1, "VALID"),
    ((11,), 5, 3, 2, "SAME"),           # 1-D
]


@pytest.mark.parametrize("spatial,k,c,stride,padding", DEPTHWISE_CASES)
def test_depthwise_value_and_gradients_match_xla(spatial, k, c, stride, padding):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2,) + spatial + (c,)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k,) * len(spatial) + (1, c)), jnp.float32)
  _assert_matches_xla(x, w, (stride,) * len(spatial), padding,
                      dimension_numbers=_dn(x.ndim), feature_group_count=c,
                      precision=lax.Precision.HIGHEST)


def test_depthwise_against_numpy_loops_and_nan():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((1, 5, 6, 2))
  w = rng.standard_normal((3, 3, 1, 2))
  got = convolution.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (2, 2), ((0, 1), (0, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  want = np.zeros((1, 2, 3, 2))   # (6 - 3) // 2 + 1 rows, (7 - 3) // 2 + 1 columns
  for oh in range(2):
    for ow in range(3):
      for ch in range(2):
        want[0, oh, ow, ch] = np.sum(xp[0, 2 * oh:2 * oh + 3, 2 * ow:2 * ow + 3, ch]
                                     * w[:, :, 0, ch])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  nan = convolution.conv_general_dilated(
      jnp.asarray(x, jnp.float32).at[0, 0, 0, 0].set(jnp.nan), jnp.asarray(w, jnp.float32),
      (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  assert np.isnan(nan[0, 0, 0, 0]) and not np.isnan(nan[0, 0, 0, 1])
