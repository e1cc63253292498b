"""VICReg against a brute-force numpy loop over dimensions and rows (float64)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_loss_zoo import fd_grad
from tsm import losses

B, D = 6, 4


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def ref_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
  n, d = len(z1), len(z1[0])
  inv = sum((z1[i][k] - z2[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

  def parts(z):
    means = [sum(z[i][k] for i in range(n)) / n for k in range(d)]
    cov = [[sum((z[i][k] - means[k]) * (z[i][l] - means[l]) for i in range(n)) / (n - 1)
            for l in range(d)] for k in range(d)]
    hinges = [max(0.0, 1.0 - math.sqrt(cov[k][k] + eps)) / 2 for k in range(d)]
    off = sum(cov[k][l] ** 2 for k in range(d) for l in range(d) if k != l) / d
    return hinges, off

  h1, c1 = parts(z1)
  h2, c2 = parts(z2)
  var = sum(h1) / d + sum(h2) / d
  active = sum(h > 0 for h in h1 + h2)
  stats = dict(num_total=2 * d, num_active=active, active_ratio=active / (2 * d),
               invariance=inv, variance=var, covariance=c1 + c2)
  return lam * inv + mu * var + nu * (c1 + c2), stats


def batches(kind, seed=0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(B, D))
  z2 = z1 + 0.3 * rng.normal(size=(B, D))
  if kind == "spread":  # std above 1 in some dimensions: inactive hinges
    z1[:, :2] *= 3.0
  elif kind == "identical_views":
    z2 = z1.copy()
  elif kind == "collapsed":  # every row equal: zero variance, no covariance
    z1 = np.tile(z1[:1], (B, 1))
    z2 = np.tile(z2[:1], (B, 1))
  elif kind == "ties":
    z1 = rng.choice([-1.0, 1.0, 2.0], size=(B, D))
    z2 = z1.copy()
    z2[0] = z1[1]
  return z1, z2


KINDS = ("random", "spread", "identical_views", "collapsed", "ties")

_fn = jax.jit(jax.value_and_grad(lambda a, b: losses.vicreg_loss(a, b), argnums=(0, 1),
                                 has_aux=True))


@pytest.mark.parametrize("kind", KINDS)
def test_value_stats_and_gradient_match_brute_force(kind, x64):
  z1, z2 = batches(kind)
  want, want_stats = ref_vicreg(z1, z2)
  (loss, stats), (g1, g2) = _fn(jnp.asarray(z1), jnp.asarray(z2))
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), want, rtol=1e-10, atol=1e-12)
  for field, value in want_stats.items():
    np.testing.assert_allclose(float(getattr(stats, field)), value, rtol=1e-6,
                               atol=1e-12, err_msg=field)
  assert float(stats.num_easy) == want_stats["num_total"] - want_stats["num_active"]
  np.testing.assert_allclose(np.asarray(g1), fd_grad(lambda a: ref_vicreg(a, z2)[0], z1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2), fd_grad(lambda a: ref_vicreg(z1, a)[0], z2),
                             rtol=1e-5, atol=1e-6)


def test_weights_and_float32():
  z1, z2 = batches("random", seed=1)
  want, _ = ref_vicreg(z1, z2, lam=2.0, mu=0.5, nu=3.0, eps=1e-3)
  loss, _ = jax.jit(lambda a, b: losses.vicreg_loss(
      a, b, invariance_lambda=2.0, variance_mu=0.5, covariance_v=3.0, eps=1e-3))(
          jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_collapsed_views_are_finite_and_pushed_apart():
  (loss, stats), (g1, _) = _fn(*map(jnp.asarray, batches("collapsed")))
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g1)))
  assert float(stats.num_active) == 2 * D  # every dimension below unit std


def test_nan_in_gives_nan_out():
  z1, z2 = batches("random")
  z2[3, 1] = np.nan
  (loss, stats), _ = _fn(jnp.asarray(z1), jnp.asarray(z2))
  assert np.isnan(float(loss)) and np.isnan(float(stats.invariance))


def test_vmap_agrees_with_one_batch_at_a_time():
  pairs = [batches(k, seed=s) for s, k in enumerate(("random", "spread", "ties"))]
  z1 = jnp.asarray(np.stack([p[0] for p in pairs]), jnp.float32)
  z2 = jnp.asarray(np.stack([p[1] for p in pairs]), jnp.float32)
  batched = jax.jit(jax.vmap(lambda a, b: losses.vicreg_loss(a, b)[0]))(z1, z2)
  one = [float(_fn(z1[i], z2[i])[0][0]) for i in range(len(pairs))]
  np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: losses.vicreg_loss(jnp.ones((1, 3)), jnp.ones((1, 3))), "at least 2"),
    (lambda: losses.vicreg_loss(jnp.ones((4, 3)), jnp.ones((4, 2))), "ref_embeddings"),
    (lambda: losses.vicreg_loss(jnp.ones((4, 3)), jnp.ones((4, 3), int)), "ref_embeddings"),
    (lambda: losses.vicreg_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), variance_mu=-1),
     "variance_mu"),
    (lambda: losses.vicreg_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), eps=0), "eps"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
