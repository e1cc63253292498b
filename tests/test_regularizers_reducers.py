"""Regularizers, reducers and the SNR / dot-product distances against numpy loops of
PML's rules."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import distances, losses, reducers, regularizers


def _x(n=7, d=5, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("p,power", [(2, 1), (1, 2), (3, 1.5)])
def test_lp_regularizer(p, power):
  x = _x()
  want = np.mean([np.sum(np.abs(r.astype(np.float64)) ** p) ** (power / p) for r in x])
  np.testing.assert_allclose(regularizers.lp_regularizer(x, p=p, power=power), want,
                             rtol=1e-5)
  g = jax.grad(lambda e: regularizers.lp_regularizer(e, p=p, power=power))(
      jnp.asarray(x).at[0].set(0.0))
  assert np.all(np.isfinite(g))


def test_zero_mean_regularizer():
  x = _x(seed=1)
  np.testing.assert_allclose(regularizers.zero_mean_regularizer(x),
                             np.mean([abs(r.sum()) for r in x.astype(np.float64)]),
                             rtol=1e-5)


def test_regular_face_regularizer():
  w = _x(seed=2)
  wn = w / np.linalg.norm(w, axis=1, keepdims=True)
  want = []
  for i in range(len(w)):
    sims = [wn[i] @ wn[j] if j != i else -np.inf for j in range(len(w))]
    want.append(max(sims))
  np.testing.assert_allclose(regularizers.regular_face_regularizer(w), np.mean(want),
                             rtol=1e-5)


def test_center_invariant_regularizer():
  w = _x(seed=3).astype(np.float64)
  sq = (w ** 2).sum(1)
  np.testing.assert_allclose(regularizers.center_invariant_regularizer(w.astype(
      np.float32)), np.mean((sq - sq.mean()) ** 2 / 4), rtol=1e-5)


def test_sparse_centers_regularizer():
  w = _x(n=6, seed=4)
  wn = w / np.linalg.norm(w, axis=1, keepdims=True)
  terms = [np.sqrt(2.0 - min(2 * wn[i] @ wn[j], 2.0)) for c in range(3)
           for i in range(2 * c, 2 * c + 2) for j in range(i + 1, 2 * c + 2)]
  np.testing.assert_allclose(
      regularizers.sparse_centers_regularizer(w, num_classes=3, centers_per_class=2),
      np.sum(terms) / (2 * len(terms)), rtol=1e-5)
  with pytest.raises(ValueError, match="centers_per_class"):
    regularizers.sparse_centers_regularizer(w, num_classes=6, centers_per_class=1)


def test_regularized_adds_weighted_terms_to_any_loss():
  x = _x(n=8, d=4, seed=5)
  y = jnp.arange(8) % 2
  reg = regularizers.regularized(
      losses.triplet_margin_loss, embedding_regularizer=regularizers.lp_regularizer,
      embedding_reg_weight=0.3)
  v = reg.init(jax.random.key(0), 4)
  value, stats, _ = reg.apply(v.params, v.state, x, y, 0.2)
  want = losses.triplet_margin_loss(x, y, 0.2)[0] + 0.3 * regularizers.lp_regularizer(x)
  np.testing.assert_allclose(value, want, rtol=1e-6)
  assert "embedding_reg" in stats and "num_total" in stats
  arc = regularizers.regularized(
      losses.arcface(3), weight_regularizer=regularizers.regular_face_regularizer,
      weight_reg_weight=2.0)
  v = arc.init(jax.random.key(0), 4)
  value, stats, _ = arc.apply(v.params, v.state, x, y, 0.2)
  (w,) = jax.tree_util.tree_leaves(v.params)
  base = losses.arcface(3).apply(v.params, v.state, x, y, 0.2)[0]
  np.testing.assert_allclose(value, base + 2.0 * regularizers.regular_face_regularizer(w),
                             rtol=1e-6)


def test_reducers_match_pml():
  rng = np.random.default_rng(6)
  l = rng.uniform(0, 2, size=(5, 6)).astype(np.float32)
  m = rng.random((5, 6)) < 0.6
  m[2] = False
  kept = l[m]
  np.testing.assert_allclose(reducers.threshold_reduce(l, m, low=0.5, high=1.5),
                             kept[(kept > 0.5) & (kept < 1.5)].mean(), rtol=1e-6)
  assert float(reducers.threshold_reduce(l, m, low=5.0)) == 0.0
  labels = np.arange(5)[:, None] % 3
  cw = np.array([0.5, 2.0, 1.0], np.float32)
  want = np.mean([l[i, j] * cw[labels[i, 0]] for i in range(5) for j in range(6)
                  if m[i, j]])
  np.testing.assert_allclose(reducers.class_weighted_reduce(l, labels, cw, m), want,
                             rtol=1e-6)
  rows = [l[i][m[i]].mean() if m[i].any() else 0.0 for i in range(5)]
  np.testing.assert_allclose(reducers.per_anchor_reduce(l, m), np.mean(rows), rtol=1e-6)
  np.testing.assert_allclose(reducers.divisor_reduce(l, 7.0, m), kept.sum() / 7, rtol=1e-6)
  assert float(reducers.divisor_reduce(l, 0.0)) == 0.0


def test_snr_and_dot_product_distances_match_pml():
  x, y = _x(seed=7), _x(n=4, seed=8)
  want = np.array([[np.var(a - b, ddof=1) / np.var(a, ddof=1) for b in y] for a in x])
  np.testing.assert_allclose(distances.pairwise_snr(x, y), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(distances.pairwise_dot_product(x, y), -(x @ y.T), rtol=1e-6)
  g = jax.grad(lambda e: jnp.sum(distances.pairwise_snr(e)))(jnp.asarray(x))
  assert np.all(np.isfinite(g))
