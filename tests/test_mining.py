"""tsm.mining against numpy loops; both counting algorithms (dense and sort)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses, mining
from tsm.distances import pairwise_distances

B = 40  # > DENSE_MAX_POSITIVES + 1, so "auto" compiles both branches.


def _batch(num_classes, seed, grid=True):
  rng = np.random.default_rng(seed)
  if grid:  # integer grid: duplicated points and many exactly equal distances
    x = rng.integers(0, 3, size=(B, 3)).astype(np.float32)
  else:
    x = rng.normal(size=(B, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=B).astype(np.int32)
  valid = rng.random(B) < 0.9
  return x, labels, valid


def _np_masks(labels, valid):
  both = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  return same & ~np.eye(len(labels), dtype=bool) & both, ~same & both


def test_label_masks():
  _, labels, valid = _batch(5, 0)
  pos, neg = mining.label_masks(jnp.asarray(labels), jnp.asarray(valid))
  want_pos, want_neg = _np_masks(labels, valid)
  np.testing.assert_array_equal(pos, want_pos)
  np.testing.assert_array_equal(neg, want_neg)
  pos, neg = mining.label_masks(jnp.asarray(labels))
  want_pos, want_neg = _np_masks(labels, np.ones(B, bool))
  np.testing.assert_array_equal(pos, want_pos)
  np.testing.assert_array_equal(neg, want_neg)


@pytest.mark.parametrize("case", ["ties", "one_class", "singletons", "no_valid",
                                  "negative_labels"])
def test_label_groups_match_the_masks(case):
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 5, size=B).astype(np.int32)
  valid = rng.random(B) < 0.8
  if case == "one_class":
    labels[:] = 3
  elif case == "singletons":
    labels = rng.permutation(B).astype(np.int32)
  elif case == "no_valid":
    valid[:] = False
  elif case == "negative_labels":
    labels = labels - 3  # labels need not be non-negative
  groups = jax.jit(mining.label_groups)(jnp.asarray(labels), jnp.asarray(valid))
  pos, neg = _np_masks(labels, valid)
  np.testing.assert_array_equal(groups.num_positives, pos.sum(1))
  np.testing.assert_array_equal(groups.num_negatives, neg.sum(1))
  # The slots hold each row's positives, in index order.
  width = 12
  num, slots = mining._positive_slots(jnp.asarray(pos), width, groups)
  np.testing.assert_array_equal(num, pos.sum(1))
  for a in range(B):
    want = np.flatnonzero(pos[a])[:width]
    np.testing.assert_array_equal(np.asarray(slots[a, :len(want)]), want)
  no_valid = mining.label_groups(jnp.asarray(labels))
  pos, neg = _np_masks(labels, np.ones(B, bool))
  np.testing.assert_array_equal(no_valid.num_positives, pos.sum(1))
  np.testing.assert_array_equal(no_valid.num_negatives, neg.sum(1))


def test_float_sort_key_orders_like_floats():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=200) * 10.0 ** rng.integers(-30, 30, size=200),
                      [0.0, -0.0, np.inf, -np.inf, 1e-37, -1e-37, 1.0, 1.0]])
  x = x.astype(np.float32)  # Normal numbers: XLA:CPU flushes subnormals to zero.
  keys = np.asarray(mining.float_sort_key(jnp.asarray(x))).astype(np.int64)
  np.testing.assert_array_equal(keys[:, None] < keys[None, :], x[:, None] < x[None, :])
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], x[:, None] == x[None, :])
  back = mining.float_from_sort_key(mining.float_sort_key(jnp.asarray(x)))
  np.testing.assert_array_equal(back, np.where(x == 0, 0.0, x))


def _np_pair_counts(dist, pos, neg, margin):
  mu = np.float32(margin)
  t = (dist + mu).astype(np.float32)  # t = d_ap + mu, rounded first
  active = np.zeros(dist.shape, np.int64)
  hard = np.zeros(dist.shape, np.int64)
  pushes = np.zeros(dist.shape, np.int64)
  hinge = 0.0
  for a in range(len(dist)):
    for p in np.flatnonzero(pos[a]):
      for n in np.flatnonzero(neg[a]):
        if dist[a, n] < t[a, p]:
          active[a, p] += 1
          pushes[a, n] += 1
          hinge += float(t[a, p] - dist[a, n])
        hard[a, p] += dist[a, n] <= dist[a, p]
  return active, hard, pushes, hinge


def _pair_counts_impl(x, labels, valid, margin, *, method, distance, groups=False):
  dist = pairwise_distances(x, distance=distance)
  pos, neg = mining.label_masks(labels, valid)
  groups = mining.label_groups(labels, valid) if groups else None
  counts = mining.triplet_pair_counts(dist, pos, neg, margin, with_pushes=True,
                                      method=method, groups=groups)
  types = mining.triplet_type_counts(dist, pos, neg, margin, method=method,
                                     groups=groups)
  return dist, counts, types


_pair_counts = jax.jit(_pair_counts_impl,
                       static_argnames=("method", "distance", "groups"))


@pytest.mark.parametrize("groups", [False, True], ids=["masks", "label_groups"])
@pytest.mark.parametrize("method", mining.COUNT_METHODS + ("compact",))
def test_triplet_pair_counts_against_loops(method, groups, monkeypatch):
  pair_counts = functools.partial(_pair_counts, groups=groups)
  if method == "compact":  # auto, with the sort branch on positives gathered in slots
    monkeypatch.setattr(mining, "_sort_widths", lambda n, max_k: [36])
    pair_counts = jax.jit(functools.partial(_pair_counts_impl, method="auto",
                                            groups=groups),
                          static_argnames=("distance",))
  # 2 classes: ~19 positives per anchor (dense fits); 2 classes with B=40 and
  # DENSE_MAX_POSITIVES=32 still dense; force the sort branch of "auto" with one class
  # holding most of the batch.
  cases = [(2, 0), (9, 1)]
  for (num_classes, seed), distance, margin in zip(
      cases * 3, ["squared_euclidean"] * 2 + ["euclidean"] * 2 + ["cosine"] * 2,
      [1.0, 0.0, 0.5, -0.5, 0.3, 2.0]):
    x, labels, valid = _batch(num_classes, seed, grid=distance != "cosine")
    if num_classes == 2 and seed == 0:
      labels[:36] = 0  # 35 positives per anchor > DENSE_MAX_POSITIVES: sort under auto
    kwargs = {} if method == "compact" else {"method": method}
    dist, counts, types = pair_counts(jnp.asarray(x), jnp.asarray(labels),
                                      jnp.asarray(valid), jnp.float32(margin),
                                      distance=distance, **kwargs)
    dist = np.asarray(dist)
    pos, neg = _np_masks(labels, valid)
    if method == "dense" and pos.sum(1).max() > mining.DENSE_MAX_POSITIVES:
      continue  # dense requires few positives
    active, hard, pushes, hinge = _np_pair_counts(dist, pos, neg, margin)
    np.testing.assert_array_equal(counts.active, active)
    np.testing.assert_array_equal(counts.hard, hard)
    np.testing.assert_array_equal(counts.pushes, pushes)
    np.testing.assert_array_equal(counts.hinge_grad, active - pushes)
    np.testing.assert_allclose(counts.hinge_sum, hinge, rtol=2e-5, atol=1e-4)
    total = int((pos.sum(1) * neg.sum(1)).sum())
    assert float(types.num_triplets) == total
    assert float(types.num_easy) == total - active.sum()
    assert float(types.num_hard) == hard.sum()
    assert float(types.num_semihard) == np.maximum(active - hard, 0).sum()
    if margin > 0:  # then t > d_ap for these distances: the types partition
      assert types.num_easy + types.num_semihard + types.num_hard == total


def _np_band_counts(dist, pos, neg, margin, band):
  """Loops over (a, p, n): per-pair band sizes, non-zero terms, pushes, hinge sum."""
  mu = np.float32(margin)
  t = (dist + mu).astype(np.float32)
  mined = np.zeros(dist.shape, np.int64)
  hot = np.zeros(dist.shape, np.int64)
  pushes = np.zeros(dist.shape, np.int64)
  hinge = 0.0
  for a in range(len(dist)):
    for p in np.flatnonzero(pos[a]):
      for n in np.flatnonzero(neg[a]):
        d_ap, d_an = dist[a, p], dist[a, n]
        in_band = (d_ap < d_an < t[a, p]) if band == "semihard" else d_an < d_ap
        if not in_band:
          continue
        mined[a, p] += 1
        if d_an < t[a, p]:
          hot[a, p] += 1
          pushes[a, n] += 1
          hinge += float(t[a, p] - d_an)
  return mined, hot, pushes, hinge


def _band_counts_impl(x, labels, valid, margin, *, band, method, distance,
                      groups=False):
  dist = pairwise_distances(x, distance=distance)
  pos, neg = mining.label_masks(labels, valid)
  groups = mining.label_groups(labels, valid) if groups else None
  return dist, mining.triplet_band_counts(dist, pos, neg, margin, band,
                                          with_pushes=True, method=method,
                                          groups=groups)


_band_counts = jax.jit(_band_counts_impl,
                       static_argnames=("band", "method", "distance", "groups"))


@pytest.mark.parametrize("groups", [False, True], ids=["masks", "label_groups"])
@pytest.mark.parametrize("band", mining.BANDS)
@pytest.mark.parametrize("method", mining.COUNT_METHODS + ("compact",))
def test_triplet_band_counts_against_loops(method, band, groups, monkeypatch):
  band_counts = functools.partial(_band_counts, groups=groups)
  if method == "compact":  # auto, with the sort branch on positives gathered in slots
    monkeypatch.setattr(mining, "_sort_widths", lambda n, max_k: [36])
    band_counts = jax.jit(functools.partial(_band_counts_impl, method="auto",
                                            groups=groups),
                          static_argnames=("band", "distance"))
  # Integer grids give exact ties d_an = d_ap and d_an = t; negative margins make the
  # semi-hard band empty and leave zero-hinge terms in the hard band.
  cases = [(2, 0), (9, 1)]
  seen = 0
  for (num_classes, seed), distance, margin in zip(
      cases * 3, ["squared_euclidean"] * 2 + ["euclidean"] * 2 + ["cosine"] * 2,
      [1.0, 0.0, 0.5, -0.5, 0.3, 2.0]):
    x, labels, valid = _batch(num_classes, seed, grid=distance != "cosine")
    if num_classes == 2 and seed == 0:
      labels[:36] = 0  # 35 positives per anchor > DENSE_MAX_POSITIVES: sort under auto
    kwargs = {} if method == "compact" else {"method": method}
    dist, counts = band_counts(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(valid),
                               jnp.float32(margin), band=band, distance=distance,
                               **kwargs)
    dist = np.asarray(dist)
    pos, neg = _np_masks(labels, valid)
    if method == "dense" and pos.sum(1).max() > mining.DENSE_MAX_POSITIVES:
      continue  # dense requires few positives
    mined, hot, pushes, hinge = _np_band_counts(dist, pos, neg, margin, band)
    active, hard, _, _ = _np_pair_counts(dist, pos, neg, margin)
    seen += int(mined.sum())
    np.testing.assert_array_equal(counts.mined, mined)
    np.testing.assert_array_equal(counts.band_active, hot)
    np.testing.assert_array_equal(counts.pushes, pushes)
    np.testing.assert_array_equal(counts.hinge_grad, hot - pushes)
    np.testing.assert_array_equal(counts.active, active)
    np.testing.assert_array_equal(counts.hard, hard)
    np.testing.assert_allclose(counts.hinge_sum, hinge, rtol=2e-5, atol=1e-4)
    assert float(counts.num_mined) == mined.sum()
    assert float(counts.num_mined_active) == hot.sum()
    assert float(counts.counts.num_hard) == hard.sum()
    assert float(counts.counts.num_easy) == (pos.sum(1) * neg.sum(1)).sum() - active.sum()
  assert seen > 0  # The bands were not all empty.


def _np_semihard(dist, pos, neg):
  want = np.zeros(dist.shape, np.int64)
  for a in range(len(dist)):
    negs = np.flatnonzero(neg[a])
    if not len(negs):
      continue
    for p in np.flatnonzero(pos[a]):
      farther = negs[dist[a, negs] > dist[a, p]]
      if len(farther):
        want[a, p] = farther[np.argmin(dist[a, farther])]
      else:
        want[a, p] = negs[np.argmax(dist[a, negs])]
  return want


@pytest.mark.parametrize("method", mining.COUNT_METHODS)
def test_semihard_and_batch_hard_against_loops(method):
  for num_classes, seed in [(9, 2), (2, 3)]:
    x, labels, valid = _batch(num_classes, seed)
    dist = pairwise_distances(jnp.asarray(x), distance="squared_euclidean")
    pos, neg = mining.label_masks(jnp.asarray(labels), jnp.asarray(valid))
    np_pos, np_neg = _np_masks(labels, valid)
    if method == "dense" and np_pos.sum(1).max() > mining.DENSE_MAX_POSITIVES:
      continue
    index, mask = jax.jit(functools.partial(mining.semihard_negatives, method=method))(
        dist, pos, neg)
    dist = np.asarray(dist)
    np.testing.assert_array_equal(mask, np_pos & np_neg.any(1)[:, None])
    np.testing.assert_array_equal(np.where(mask, index, 0), _np_semihard(dist, np_pos,
                                                                         np_neg))
  pos_index, neg_index, anchors = mining.batch_hard(jnp.asarray(dist), pos, neg)
  for a in range(B):
    assert anchors[a] == (np_pos[a].any() and np_neg[a].any())
    if anchors[a]:
      p = np.flatnonzero(np_pos[a])
      n = np.flatnonzero(np_neg[a])
      assert pos_index[a] == p[np.argmax(dist[a, p])]
      assert neg_index[a] == n[np.argmin(dist[a, n])]


def test_unknown_method_raises():
  d = jnp.zeros((3, 3))
  m = jnp.zeros((3, 3), bool)
  with pytest.raises(ValueError, match="unknown method"):
    mining.triplet_pair_counts(d, m, m, 0.1, method="fast")
  with pytest.raises(ValueError, match="unknown method"):
    mining.semihard_negatives(d, m, m, method="fast")
  with pytest.raises(ValueError, match="unknown band"):
    mining.triplet_band_counts(d, m, m, 0.1, "easy")


@pytest.mark.parametrize("mining_mode", ["all", "semihard", "hard", "batch_semihard"])
def test_loss_sort_path_gradient_matches_bruteforce(monkeypatch, mining_mode):
  """The triplet loss with the sort branch forced, against jax.grad of the B^3 sum."""
  monkeypatch.setattr(mining, "DENSE_MAX_POSITIVES", 0)
  x, labels, valid = _batch(3, 4)
  x, labels, valid = jnp.asarray(x), jnp.asarray(labels), jnp.asarray(valid)
  fast = jax.jit(jax.value_and_grad(
      lambda x, m: losses.triplet_margin_loss(x, labels, m, reduction="sum",
                                              mining=mining_mode, valid=valid)[0],
      (0, 1)))
  monkeypatch.setattr(mining, "DENSE_MAX_POSITIVES", 32)
  dense = jax.jit(jax.value_and_grad(
      lambda x, m: losses.triplet_margin_loss(x, labels, m, reduction="sum",
                                              mining=mining_mode, valid=valid)[0],
      (0, 1)))
  for margin in (0.0, 1.0):
    loss, (gx, gm) = fast(x, jnp.float32(margin))
    loss_d, (gx_d, gm_d) = dense(x, jnp.float32(margin))
    np.testing.assert_allclose(loss, loss_d, rtol=2e-5)
    np.testing.assert_allclose(gx, gx_d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gm, gm_d, rtol=1e-6)
    if mining_mode in ("all", "semihard", "hard"):
      def brute(x, m):
        d = pairwise_distances(x)
        pos, neg = mining.label_masks(labels, valid)
        d_ap, d_an = d[:, :, None], d[:, None, :]
        t = d_ap + m
        band = pos[:, :, None] & neg[:, None, :]
        if mining_mode == "semihard":
          band &= jax.lax.stop_gradient((d_ap < d_an) & (d_an < t))
        elif mining_mode == "hard":
          band &= jax.lax.stop_gradient(d_an < d_ap)
        return jnp.sum(jnp.where(band, jax.nn.relu(t - d_an), 0.0))
      loss_b, (gx_b, gm_b) = jax.value_and_grad(brute, (0, 1))(x, jnp.float32(margin))
      np.testing.assert_allclose(loss, loss_b, rtol=2e-5)
      np.testing.assert_allclose(gx, gx_b, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(gm, gm_b, rtol=1e-6)


def test_auto_branches_under_vmap():
  """vmap turns the dense/sort lax.cond into a select: still exact per batch."""
  x1, labels1, valid1 = _batch(9, 5)  # few positives per anchor: dense
  x2, labels2, valid2 = _batch(2, 6)
  labels2[:36] = 0  # 35 positives per anchor: sort
  xs = jnp.asarray(np.stack([x1, x2]))
  ys = jnp.asarray(np.stack([labels1, labels2]))
  vs = jnp.asarray(np.stack([valid1, valid2]))
  fn = jax.value_and_grad(
      lambda x, y, v: losses.triplet_margin_loss(x, y, 0.5, valid=v), has_aux=True)
  (loss, stats), grads = jax.jit(jax.vmap(fn))(xs, ys, vs)
  for i in range(2):
    (loss_i, stats_i), grads_i = fn(xs[i], ys[i], vs[i])
    np.testing.assert_allclose(loss[i], loss_i, rtol=1e-5)
    np.testing.assert_allclose(grads[i], grads_i, rtol=1e-4, atol=1e-6)
    for a, b in zip(stats, stats_i):
      np.testing.assert_allclose(a[i], b, rtol=1e-6)
