"""Tests for tsm.distances against numpy, with finite gradients at degenerate points."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import distances

DISTANCES = distances.DISTANCES


def _np_pairwise(x, y, distance):
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if distance == "cosine":
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    xn = np.where(nx > 0, x / np.where(nx > 0, nx, 1), 0)
    yn = np.where(ny > 0, y / np.where(ny > 0, ny, 1), 0)
    return 1.0 - np.clip(xn @ yn.T, -1, 1)
  sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  return sq if distance == "squared_euclidean" else np.sqrt(sq)


def _batch(seed=0, n=7, d=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  x[3] = x[1]  # identical points
  x[5] = 0.0  # zero vector
  return x


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_matches_numpy(distance):
  x = _batch(0)
  y = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
  got = distances.pairwise_distances(x, y, distance=distance)
  np.testing.assert_allclose(got, _np_pairwise(x, y, distance), rtol=1e-5, atol=1e-5)
  got_self = distances.pairwise_distances(x, distance=distance)
  want_self = _np_pairwise(x, x, distance)
  if distance == "cosine":  # A zero vector is at distance 1 from everything, itself too.
    np.fill_diagonal(want_self, 0.0)
    want_self[5, 5] = 1.0
  np.testing.assert_allclose(got_self, want_self, rtol=1e-5, atol=1e-5)
  if distance != "cosine":
    np.testing.assert_array_equal(np.diag(np.asarray(got_self)), 0.0)
    assert float(got_self[1, 3]) == 0.0  # identical points: exactly zero, not rounding noise


@pytest.mark.parametrize("distance", DISTANCES)
def test_paired_matches_numpy(distance):
  x = _batch(0)
  y = _batch(1)
  y[1] = x[1]
  got = distances.paired_distances(x, y, distance=distance)
  want = np.diag(_np_pairwise(x, y, distance))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradients_finite_at_identical_points_and_zero_vectors(distance):
  x = jnp.asarray(_batch(2))

  def total(x):
    return jnp.sum(distances.pairwise_distances(x, distance=distance))

  def total_cross(x):
    return jnp.sum(distances.pairwise_distances(x, x, distance=distance))

  def total_paired(x):
    return jnp.sum(distances.paired_distances(x, x[::-1], distance=distance)
                   + distances.paired_distances(x, x, distance=distance))

  for fn in (total, total_cross, total_paired):
    g = jax.jit(jax.grad(fn))(x)
    assert np.all(np.isfinite(np.asarray(g))), (fn.__name__, g)
  # All points identical and all zero.
  for x0 in (jnp.ones((4, 3)), jnp.zeros((4, 3))):
    for fn in (total, total_cross, total_paired):
      g = jax.grad(fn)(x0)
      assert np.all(np.isfinite(np.asarray(g)))
  # vmap over a stack of batches.
  stack = jnp.stack([x, jnp.zeros_like(x), jnp.ones_like(x)])
  g = jax.vmap(jax.grad(total))(stack)
  assert g.shape == stack.shape and np.all(np.isfinite(np.asarray(g)))


def test_self_euclidean_closed_form_gradient_matches_autodiff_of_the_safe_form():
  """The closed-form backward pass against autodiff of the safe square root."""
  x = _batch(4, n=9)
  x[7] = x[1]  # a duplicate of a duplicate
  x = jnp.asarray(x)
  weights = jnp.asarray(np.random.default_rng(5).normal(size=(9, 9)), jnp.float32)

  def safe(x):
    sq = distances.pairwise_squared_euclidean(x)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq * 0.0)

  np.testing.assert_array_equal(distances.pairwise_euclidean(x), safe(x))
  for fn in (lambda d: jnp.sum(d * weights), lambda d: jnp.sum(jnp.sin(d) ** 2)):
    got = jax.grad(lambda x: fn(distances.pairwise_euclidean(x)))(x)
    want = jax.grad(lambda x: fn(safe(x)))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Second order (reverse over reverse) and vmap work through the custom rule.
  hvp = jax.grad(lambda x: jnp.sum(jax.grad(
      lambda x: jnp.sum(distances.pairwise_euclidean(x) * weights))(x) ** 2))(x)
  want = jax.grad(lambda x: jnp.sum(jax.grad(
      lambda x: jnp.sum(safe(x) * weights))(x) ** 2))(x)
  np.testing.assert_allclose(hvp, want, rtol=1e-4, atol=1e-5)
  stack = jnp.stack([x, 2 * x])
  np.testing.assert_allclose(jax.vmap(distances.pairwise_euclidean)(stack),
                             jax.vmap(safe)(stack), rtol=1e-6)
  # NaN in, NaN out (value and gradient).
  bad = x.at[2, 0].set(jnp.nan)
  assert np.isnan(np.asarray(distances.pairwise_euclidean(bad))[2, 0])
  g = jax.grad(lambda x: jnp.sum(distances.pairwise_euclidean(x)))(bad)
  assert np.isnan(np.asarray(g)).any()


def test_euclidean_gradient_matches_numpy_away_from_zero():
  x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
  g = jax.grad(lambda x: jnp.sum(distances.pairwise_distances(x)))(jnp.asarray(x))
  diff = x[:, None, :] - x[None, :, :]
  norm = np.linalg.norm(diff, axis=-1)
  np.fill_diagonal(norm, 1.0)
  want = 2 * (diff / norm[..., None]).sum(1)
  np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


def test_safe_norm_and_l2_normalize_at_zero():
  x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
  np.testing.assert_allclose(distances.safe_norm(x), [0.0, 5.0])
  np.testing.assert_allclose(distances.l2_normalize(x), [[0, 0], [0.6, 0.8]], rtol=1e-6)
  for fn in (distances.safe_norm, distances.l2_normalize):
    g = jax.grad(lambda x: jnp.sum(fn(x)))(x)
    assert np.all(np.isfinite(np.asarray(g)))
  g = jax.grad(lambda x: jnp.sum(distances.safe_norm(x)))(x)
  np.testing.assert_array_equal(g[0], 0.0)


def test_unknown_distance_raises_one_line():
  with pytest.raises(ValueError, match="unknown distance") as info:
    distances.pairwise_distances(jnp.ones((2, 2)), distance="l1")
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError):
    distances.paired_distances(jnp.ones((2, 2)), jnp.ones((2, 2)), distance="manhattan")


def test_mismatched_embedding_sizes_raise():
  with pytest.raises(ValueError, match="same embedding size"):
    distances.pairwise_distances(jnp.ones((2, 3)), jnp.ones((2, 4)))
