"""Semantics of the triplet and contrastive losses beyond their values.

* NaN in, NaN out: a NaN / inf / overflowing input gives a NaN loss, NaN gradients and
  NaN stats in every mining mode and reduction, and a NaN in a padding row changes
  nothing.
* Input validation: one-line ValueErrors naming the argument, before any computation.
* Paper A's mining: the authors' filters (written out here from their ``run.py``) and
  their curriculum (``Loss.TripletFiltering``) against tsm's modes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses
from tsm.distances import pairwise_distances

B = 16


def _batch(seed=0, b=B, d=4, classes=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  labels = np.repeat(np.arange(classes), b // classes).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(labels)


def _leaves_nan(tree):
  return all(np.all(np.isnan(np.asarray(v))) for v in jax.tree_util.tree_leaves(tree))


def _leaves_finite(tree):
  return all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------ NaN in, NaN out


def _corrupt(x, case):
  """(embeddings, margin) with one kind of bad input."""
  if case == "nan_entry":
    return x.at[3, 1].set(jnp.nan), 0.2
  if case == "inf_entry":
    return x.at[5, 0].set(-jnp.inf), 0.2
  if case == "nan_margin":
    return x, jnp.nan
  if case == "inf_margin":
    return x, jnp.inf
  if case == "overflow":  # |x|^2 ~ 1e40 overflows float32: distances are meaningless.
    return x * 1e20, 0.2
  raise ValueError(case)


BAD = ("nan_entry", "inf_entry", "nan_margin", "inf_margin", "overflow")


@functools.partial(jax.jit, static_argnames=("mining", "distance"))
def _triplet_all_reductions(x, labels, margin, valid, *, mining, distance):
  out = {}
  for reduction in losses.REDUCTIONS:
    fn = lambda x, m: losses.triplet_margin_loss(
        x, labels, m, mining=mining, distance=distance, reduction=reduction, valid=valid)
    out[reduction] = jax.value_and_grad(fn, (0, 1), has_aux=True)(x, margin)
  return out


@pytest.mark.parametrize("mining", losses.MINING)
def test_triplet_nan_in_nan_out(mining):
  x, labels = _batch()
  valid = jnp.ones(B, bool)
  for distance in ("euclidean", "cosine"):
    for case in BAD:
      xb, margin = _corrupt(x, case)
      outs = _triplet_all_reductions(xb, labels, jnp.float32(margin), valid,
                                     mining=mining, distance=distance)
      for reduction, ((loss, stats), (gx, gm)) in outs.items():
        where = f"{mining} {distance} {case} {reduction}"
        assert np.isnan(float(loss)), where
        assert _leaves_nan(stats), where       # counts too, not plausible numbers
        assert np.all(np.isnan(np.asarray(gx))), where
        assert np.isnan(float(gm)), where
    # A NaN in a padding row changes nothing (loss, stats, gradients).
    pad = jnp.arange(B) != 3
    clean = _triplet_all_reductions(x, labels, jnp.float32(0.2), pad, mining=mining,
                                    distance=distance)
    dirty = _triplet_all_reductions(x.at[3].set(jnp.nan), labels, jnp.float32(0.2), pad,
                                    mining=mining, distance=distance)
    assert _leaves_finite(dirty)
    for a, b in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(dirty)):
      np.testing.assert_array_equal(a, b)


def test_from_triplets_nan_in_nan_out():
  x, _ = _batch()
  a, p, n = x[:8], x[4:12], x[8:]
  valid = jnp.arange(8) != 7

  @jax.jit
  def run(a, p, n, m):
    fn = lambda a, p, n, m: losses.triplet_margin_loss_from_triplets(a, p, n, m,
                                                                     valid=valid)
    return jax.value_and_grad(fn, (0, 1, 2, 3), has_aux=True)(a, p, n, m)

  for bad in (lambda a, p, n, m: (a.at[0, 0].set(jnp.nan), p, n, m),
              lambda a, p, n, m: (a, p.at[2, 1].set(jnp.inf), n, m),
              lambda a, p, n, m: (a, p, n * 1e20, m),
              lambda a, p, n, m: (a, p, n, jnp.nan)):
    (loss, stats), grads = run(*bad(a, p, n, jnp.float32(0.3)))
    assert np.isnan(float(loss)) and _leaves_nan(stats)
    assert all(np.any(np.isnan(np.asarray(g))) for g in grads)
  (loss, stats), grads = run(a, p, n.at[7].set(jnp.nan), jnp.float32(0.3))  # padding
  assert _leaves_finite((loss, stats, grads))


def test_contrastive_nan_in_nan_out():
  x, labels = _batch()
  valid = jnp.ones(B, bool)

  @jax.jit
  def run(x, m, pm, valid):
    fn = lambda x, m, pm: losses.contrastive_loss(x, labels, m, positive_margin=pm,
                                                  valid=valid)
    return jax.value_and_grad(fn, (0, 1, 2), has_aux=True)(x, m, pm)

  for case in BAD:
    xb, margin = _corrupt(x, case)
    (loss, stats), (gx, gm, gp) = run(xb, jnp.float32(margin), jnp.float32(0.1), valid)
    assert np.isnan(float(loss)) and _leaves_nan(stats), case
    assert np.all(np.isnan(np.asarray(gx))) and np.isnan(float(gm)), case
  (loss, stats), _ = run(x, jnp.float32(1.0), jnp.float32(jnp.nan), valid)
  assert np.isnan(float(loss)) and _leaves_nan(stats)
  pad = jnp.arange(B) != 3
  clean = run(x, jnp.float32(1.0), jnp.float32(0.1), pad)
  dirty = run(x.at[3].set(jnp.nan), jnp.float32(1.0), jnp.float32(0.1), pad)
  for a, b in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(dirty)):
    np.testing.assert_array_equal(a, b)

  x1, x2, same = x[:8], x[8:], labels[:8] == labels[8:]
  pair_valid = jnp.arange(8) != 0
  fn = jax.jit(lambda x1, x2, m: losses.contrastive_loss_from_pairs(
      x1, x2, same, m, valid=pair_valid))
  for args in ((x1.at[1, 2].set(jnp.nan), x2, 1.0), (x1, x2 * 1e20, 1.0),
               (x1, x2, jnp.nan)):
    loss, stats = fn(*args)
    assert np.isnan(float(loss)) and _leaves_nan(stats)
  loss, stats = fn(x1.at[0].set(jnp.nan), x2, 1.0)  # padding pair
  assert _leaves_finite((loss, stats))


def test_large_finite_inputs_stay_finite():
  # 1e18 is far from overflow (|x|^2 ~ 1e37 < 3.4e38): a finite, scale-consistent loss.
  x, labels = _batch(1)
  small = losses.triplet_margin_loss(x, labels, 0.0, mining="all", reduction="sum")[0]
  big = losses.triplet_margin_loss(x * 1e18, labels, 0.0, mining="all",
                                   reduction="sum")[0]
  assert np.isfinite(float(big))
  np.testing.assert_allclose(float(big) / 1e18, float(small), rtol=1e-3)


# --------------------------------------------------------------------- validation


def _one_line_error(fn, *words):
  with pytest.raises(ValueError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for word in words:
    assert word in message, (word, message)


X = jnp.ones((4, 3))
Y = jnp.zeros(4, jnp.int32)
TRIPLET_ENTRY = (losses.triplet_margin_loss, losses.contrastive_loss)


@pytest.mark.parametrize("loss_fn", TRIPLET_ENTRY)
def test_labelled_losses_validate_inputs(loss_fn):
  for args, kwargs, words in [
      ((X, Y.astype(jnp.float32), 0.2), {}, ("labels", "integer")),
      ((X, Y[:, None], 0.2), {}, ("labels", "rank-1")),
      ((X, Y[:3], 0.2), {}, ("labels", "3 entries", "4 rows")),
      ((X[0], Y, 0.2), {}, ("embeddings", "[batch, dim]")),
      ((X.astype(jnp.int32), Y, 0.2), {}, ("embeddings", "floating")),
      ((X, Y, jnp.ones(2)), {}, ("margin", "scalar")),
      ((X, Y, 0.2), {"valid": jnp.ones(3, bool)}, ("valid", "3 entries")),
      ((X, Y, 0.2), {"valid": jnp.ones(4)}, ("valid", "bool")),
      ((X, Y, 0.2), {"valid": jnp.ones((4, 1), bool)}, ("valid", "rank-1")),
      ((X, Y, 0.2), {"distance": "l1"}, ("unknown distance", "euclidean", "cosine")),
      ((X, Y, 0.2), {"reduction": "none"}, ("unknown reduction", "mean_nonzero")),
  ]:
    _one_line_error(lambda: loss_fn(*args, **kwargs), *words)
    # Raised the same way under jit, before any computation is staged.
    _one_line_error(lambda: jax.jit(lambda *a: loss_fn(*a, **kwargs))(*args), *words)
  if loss_fn is losses.contrastive_loss:
    _one_line_error(lambda: loss_fn(X, Y, 1.0, positive_margin=jnp.ones(2)),
                    "positive_margin", "scalar")
  else:
    _one_line_error(lambda: loss_fn(X, Y, 0.2, mining="hardest"),
                    "unknown mining", *losses.MINING)


def test_from_triplets_validates_inputs():
  fn = losses.triplet_margin_loss_from_triplets
  for args, kwargs, words in [
      ((X, X[:3], X, 0.2), {}, ("positive", "(3, 3)", "anchor")),
      ((X, X, X[:, :2], 0.2), {}, ("negative", "shape")),
      ((X[0], X, X, 0.2), {}, ("anchor", "[batch, dim]")),
      ((X, X.astype(jnp.int32), X, 0.2), {}, ("positive", "floating")),
      ((X, X, X, jnp.ones(3)), {}, ("margin", "scalar")),
      ((X, X, X, 0.2), {"valid": jnp.ones(5, bool)}, ("valid", "5 entries", "anchor")),
      ((X, X, X, 0.2), {"reduction": "max"}, ("unknown reduction",)),
      ((X, X, X, 0.2), {"distance": "dot"}, ("unknown distance",)),
  ]:
    _one_line_error(lambda: fn(*args, **kwargs), *words)


def test_from_pairs_validates_inputs():
  fn = losses.contrastive_loss_from_pairs
  same = jnp.ones(4, bool)
  for args, kwargs, words in [
      ((X, X[:3], same, 1.0), {}, ("x2", "shape", "x1")),
      ((X, X, same.astype(jnp.float32), 1.0), {}, ("same", "bool")),
      ((X, X, same[:2], 1.0), {}, ("same", "2 entries", "x1")),
      ((X, X, same[:, None], 1.0), {}, ("same", "rank-1")),
      ((X.astype(jnp.int8), X, same, 1.0), {}, ("x1", "floating")),
      ((X, X, same, jnp.ones(2)), {}, ("margin", "scalar")),
      ((X, X, same, 1.0), {"positive_margin": jnp.ones(2)}, ("positive_margin",)),
      ((X, X, same, 1.0), {"valid": jnp.ones(3, bool)}, ("valid", "3 entries")),
  ]:
    _one_line_error(lambda: fn(*args, **kwargs), *words)
  # 0/1 integer flags are accepted.
  assert np.isfinite(float(fn(X, X, same.astype(jnp.int32), 1.0)[0]))


# ------------------------------------------------------------- paper A's mining


def _authors_filter(dist, labels, alpha, name):
  """getFilteredTriplets of maintaining-difficulty/run.py (its masks, over all (a,p,n)).

  Returns the ``[T, 3]`` kept triplets.
  """
  same = labels[:, None] == labels[None, :]
  pos = same & ~np.eye(len(labels), dtype=bool)
  d_p, d_n = dist[:, :, None], dist[:, None, :]   # [a, p, 1], [a, 1, n]
  keep = {"none": np.ones_like(d_p - d_n, bool),
          "semihard": (d_n > d_p) & (d_n < d_p + alpha),
          "hard": d_n < d_p + alpha,
          "superhard": (d_n < d_p) & (d_n < d_p + alpha)}[name]
  keep = keep & pos[:, :, None] & ~same[:, None, :]
  return np.argwhere(keep)


def _authors_loss(dist, triplets, alpha):
  """TripletMarginLoss(reduction="mean") over the filtered triplets (0 if none)."""
  if not len(triplets):
    return 0.0
  a, p, n = triplets.T
  return float(np.mean(np.maximum(0.0, dist[a, p] - dist[a, n] + alpha)))


AUTHORS_TO_TSM = {"semihard": "semihard", "hard": "all", "superhard": "hard"}


def test_authors_filters_on_a_32x2_batch():
  """Paper A's 32 x 2 batch: each of the authors' filters, as a tsm mining mode with
  reduction="mean_nonzero", gives their loss and triplet count."""
  rng = np.random.default_rng(12)
  x = rng.normal(size=(64, 8)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.repeat(np.arange(32), 2).astype(np.int32)
  alpha = 0.2
  dist = np.asarray(pairwise_distances(jnp.asarray(x)), np.float64)
  run = jax.jit(lambda x, m, mining: losses.triplet_margin_loss(
      x, jnp.asarray(labels), m, mining=mining, reduction="mean_nonzero"),
      static_argnums=2)
  for name, mining in AUTHORS_TO_TSM.items():
    triplets = _authors_filter(dist, labels, alpha, name)
    assert len(triplets)  # non-vacuous
    loss, stats = run(jnp.asarray(x), jnp.float32(alpha), mining)
    np.testing.assert_allclose(float(loss), _authors_loss(dist, triplets, alpha),
                               rtol=1e-5)
    assert float(stats.num_mined_active) == len(triplets), name
    if mining != "all":
      assert float(stats.num_mined) == len(triplets), name
  # The batch-level rule mines one negative per anchor-positive pair: 64 of them.
  _, stats = run(jnp.asarray(x), jnp.float32(alpha), "batch_semihard")
  assert float(stats.num_mined) == 64
  assert float(stats.num_triplets) == len(_authors_filter(dist, labels, alpha, "none"))


def _authors_curriculum(a, b, epochs):
  """Loss.TripletFiltering("scheduler a b", epochs).filters."""
  return ["semihard"] * (a - 1) + ["hard"] * (b - a) + ["superhard"] * (epochs - b + 1)


def test_curriculum_mining_matches_authors_schedule():
  for a, b, epochs in [(10, 30, 50), (2, 2, 5), (1, 4, 6), (5, 10, 9)]:
    filters = _authors_curriculum(a, b, epochs)[:epochs]
    got = [losses.curriculum_mining(e, a - 1, b - 1) for e in range(epochs)]
    assert got == [AUTHORS_TO_TSM[f] for f in filters], (a, b)
  assert losses.curriculum_mining(0, 0, 0) == "hard"
  assert losses.curriculum_mining(3, 2, 5, stages=("semihard", "hard", "batch_hard")) \
      == "hard"
  _one_line_error(lambda: losses.curriculum_mining(0, 5, 2), "hard_until")
  _one_line_error(lambda: losses.curriculum_mining(0, 1, 2, stages=("a", "all", "hard")),
                  "unknown mining")
