"""A drop-in ``lax.conv_general_dilated`` whose kernel gradient is fast on XLA:CPU.

XLA:CPU runs a forward convolution in channels-last layout through Eigen's spatial
convolution, but the kernel gradient that ``jax.grad`` derives from it is a convolution
contracting over the batch and spatial axes, which XLA:CPU runs through a generic loop:
on 2 cores, for a 3 x 3 convolution of 256 x 14 x 14 x 32 inputs to 64 channels, the
forward takes ~70 ms and the kernel gradient ~530 ms. Written as one matrix product per
kernel offset (``dw[i, j] = x_shifted(i, j)^T . dy`` over the ``B x H x W`` rows), the
same gradient takes ~70 ms (``bench/conv.py``).

:func:`conv_general_dilated` therefore keeps XLA's forward convolution and defines its
own VJP: the input gradient is XLA's (for stride 1 written as the forward convolution of
the cotangent with the flipped kernel, which is XLA's fast path), the kernel gradient is
the per-offset products above (one product of the concatenated shifts when the input has
few channels). Only the channels-last form without dilation or feature groups (what
``flax.linen.Conv`` uses) takes this path; any other call is passed to
``lax.conv_general_dilated`` unchanged. Results equal XLA's up to float summation order.

Depthwise convolutions (one feature group per input channel, one output channel per
group: MobileNet / EfficientNet's ``dw_conv``) are slow on XLA:CPU too: its grouped
convolution runs a generic loop (on 2 cores, a 3 x 3 depthwise convolution of
64 x 56 x 56 x 144 inputs takes ~1.2 s). :func:`conv_general_dilated` writes them as
the sum over kernel offsets of the strided, shifted input times that offset's
per-channel weights (~0.17 s; ``bench/trunk_features.py`` measures the whole trunk),
and lets autodiff derive the gradient of that form.

Use it through Flax: ``nn.Conv(..., conv_general_dilated=tsm.convolution.conv_general_dilated)``.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Inputs with at most this many channels x kernel offsets get one product of the
# concatenated shifted inputs: with one or three channels the per-offset products are
# too thin to run fast.
_CONCAT_MAX_COLUMNS = 64


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  """``N...C`` inputs and outputs, ``...IO`` kernels (Flax's layout)."""
  n = ndim - 2
  spatial = tuple(range(1, n + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + spatial,
                                  rhs_spec=(n + 1, n) + tuple(range(n)),
                                  out_spec=(0, n + 1) + spatial)


def _unit(values: Sequence[int] | None) -> bool:
  return values is None or all(v == 1 for v in values)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_channels_last(x.ndim),
                                  precision=precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _conv(x, w, strides, pads, precision), (x, w)


def _input_grad(x, w, dy, strides, pads, precision):
  n = x.ndim - 2
  kernel = w.shape[:n]
  back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, pads))
  if all(s == 1 for s in strides) and all(p >= 0 for pair in back for p in pair):
    flipped = jnp.swapaxes(jnp.flip(w, tuple(range(n))), n, n + 1)
    dx = lax.conv_general_dilated(dy, flipped, (1,) * n, back,
                                  dimension_numbers=_channels_last(x.ndim),
                                  precision=precision)
    return dx.astype(x.dtype)
  _, vjp = jax.vjp(lambda x_: lax.conv_general_dilated(
      x_, w, strides, pads, dimension_numbers=_channels_last(x.ndim),
      precision=precision), x)
  return vjp(dy)[0]


def _kernel_grad(x, w, dy, strides, pads, precision):
  n = x.ndim - 2
  kernel, c_in, c_out = w.shape[:n], w.shape[n], w.shape[n + 1]
  out = dy.shape[1:n + 1]
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads)
               + ((0, 0, 0),))
  rows = dy.reshape(-1, c_out)

  def shifted(offset):  # the inputs that kernel offset `offset` multiplies: [rows, c_in]
    start = (0,) + tuple(offset) + (0,)
    limit = ((x.shape[0],) + tuple(o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, out))
             + (c_in,))
    return lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,)).reshape(-1, c_in)

  def product(a):  # a^T . rows, accumulated in float32
    return lax.dot_general(a, rows, (((0,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)

  offsets = list(itertools.product(*(range(k) for k in kernel)))
  if len(offsets) * c_in <= _CONCAT_MAX_COLUMNS:
    dw = product(jnp.concatenate([shifted(o) for o in offsets], axis=1))
  else:
    dw = jnp.stack([product(shifted(o)) for o in offsets])
  return dw.reshape(w.shape).astype(w.dtype)


def _conv_bwd(strides, pads, precision, res, dy):
  x, w = res
  return (_input_grad(x, w, dy, strides, pads, precision),
          _kernel_grad(x, w, dy, strides, pads, precision))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _depthwise(x: jax.Array, w: jax.Array, strides: tuple[int, ...],
               pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Depthwise convolution, channels-last: ``sum_offsets shift(x)[::s] * w[offset]``.

  ``x`` is ``[N, *spatial, C]``, ``w`` is ``[*window, 1, C]``; the result is
  ``lax.conv_general_dilated(x, w, strides, pads, feature_group_count=C)`` up to float
  summation order.
  """
  n = x.ndim - 2
  window = w.shape[:n]
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),))
  out_shape = tuple((xp.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(n))
  out = None
  for offset in itertools.product(*(range(k) for k in window)):
    start = (0,) + offset + (0,)
    limit = ((x.shape[0],) + tuple(o + (m - 1) * s + 1 for o, m, s in
                                   zip(offset, out_shape, strides)) + (x.shape[-1],))
    term = lax.slice(xp, start, limit, (1,) + strides + (1,)) * w[offset + (0,)]
    out = term if out is None else out + term
  return out


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """``lax.conv_general_dilated`` with a kernel gradient that runs fast on XLA:CPU.

  Same arguments and result as ``jax.lax.conv_general_dilated``; see the module
  docstring for which calls take the custom gradient (channels-last, no dilation, one
  feature group) or the depthwise form (channels-last, no dilation, one group per
  channel) and why.

  Args:
    lhs: inputs, ``[N, *spatial, C_in]`` for the fast path.
    rhs: kernel, ``[*window, C_in, C_out]`` for the fast path.
    window_strides: strides, one per spatial axis.
    padding: ``"SAME"``, ``"VALID"``, ``"SAME_LOWER"`` or ``(low, high)`` per spatial axis.
    lhs_dilation: input dilation (fast path: None or ones).
    rhs_dilation: kernel dilation (fast path: None or ones).
    dimension_numbers: as in ``lax.conv_general_dilated``.
    feature_group_count: feature groups (fast path: 1).
    batch_group_count: batch groups (fast path: 1).
    precision: matmul precision.
    preferred_element_type: output type (fast path: None).

  Returns:
    The convolution, ``[N, *spatial_out, C_out]`` on the fast path.

  References:
    Chellapilla, Puri, Simard, "High Performance Convolutional Neural Networks for
    Document Processing", IWFHR 2006 (convolutions as matrix products).
  """
  n = lhs.ndim - 2
  channels_last = (n >= 1 and rhs.ndim == lhs.ndim and lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) == _channels_last(lhs.ndim))
  depthwise = (channels_last and _unit(lhs_dilation) and _unit(rhs_dilation)
               and batch_group_count == 1 and preferred_element_type is None
               and feature_group_count == lhs.shape[-1] > 1 and rhs.shape[-2] == 1
               and rhs.shape[-1] == lhs.shape[-1])
  if depthwise:
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:n + 1], rhs.shape[:n], window_strides,
                                    padding)
    return _depthwise(lhs, rhs, tuple(int(s) for s in window_strides),
                      tuple((int(lo), int(hi)) for lo, hi in padding))
  fast = (n >= 1 and rhs.ndim == lhs.ndim and _unit(lhs_dilation) and _unit(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == _channels_last(lhs.ndim))
  if not fast:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:n + 1], rhs.shape[:n], window_strides,
                                  padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


__all__ = ["conv_general_dilated"]
