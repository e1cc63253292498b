"""tsm.losses against brute-force references that loop over every triplet / pair.

The references are independent of the fast algorithms: numpy loops enumerate the
valid (or mined) triplets and classify them, and gradients come from ``jax.grad`` of a
plain jnp sum of hinges over that explicit list of index triples. Both sides use the
same float32 distance matrix from tsm.distances (tested in test_distances.py) and the
same rounding convention ``t = d_ap + margin`` first, then ``t - d_an``.
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses
from tsm.distances import paired_distances, pairwise_distances

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
REDUCTIONS = losses.REDUCTIONS
B_TEST = 16  # one batch size for all brute-force cases: one compilation each


# ----------------------------------------------------------------------------- data


def make_batch(kind: str, b: int = 16, d: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=b).astype(np.int32)
  if kind == "random":
    x = rng.normal(size=(b, d))
  elif kind == "ties":
    # Small integer grid: duplicated embeddings and many exactly repeated distances;
    # with integer margins and squared Euclidean, t = d_an ties happen exactly.
    x = rng.integers(0, 3, size=(b, d)).astype(np.float64)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = x[3]
    labels[2] = (labels[3] + 1) % 4
  elif kind == "unit":
    x = rng.normal(size=(b, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  else:
    raise ValueError(kind)
  return x.astype(np.float32), labels


# ------------------------------------------------------------------- references


def ref_distances(x, distance):
  return np.asarray(pairwise_distances(jnp.asarray(x), distance=distance))


def ref_valid_mask(labels, valid):
  return np.ones(len(labels), bool) if valid is None else np.asarray(valid, bool)


def ref_triplets(dist, labels, margin, mining, valid=None):
  """Loops over (a, p, n): returns the mined triplets, their losses and all counts."""
  b = len(labels)
  v = ref_valid_mask(labels, valid)
  mu = np.float32(margin)
  counts = dict(num_triplets=0, num_easy=0, num_semihard=0, num_hard=0)
  all_triplets = []
  for a in range(b):
    for p in range(b):
      for n in range(b):
        if not (v[a] and v[p] and v[n] and a != p and labels[a] == labels[p]
                and labels[n] != labels[a]):
          continue
        t = np.float32(dist[a, p] + mu)
        counts["num_triplets"] += 1
        counts["num_easy"] += dist[a, n] >= t
        counts["num_semihard"] += dist[a, p] < dist[a, n] < t
        counts["num_hard"] += dist[a, n] <= dist[a, p]
        all_triplets.append((a, p, n))
  d = lambda i, j: dist[i, j]
  t = lambda a, p: np.float32(dist[a, p] + mu)
  if mining == "all":
    mined = all_triplets
  elif mining == "semihard":  # The authors' filter: d_ap < d_an < d_ap + mu.
    mined = [(a, p, n) for a, p, n in all_triplets if d(a, p) < d(a, n) < t(a, p)]
  elif mining == "hard":  # The authors' "superhard": d_an < d_ap.
    mined = [(a, p, n) for a, p, n in all_triplets if d(a, n) < d(a, p)]
  elif mining == "easy":
    mined = [(a, p, n) for a, p, n in all_triplets if d(a, n) >= t(a, p)]
  elif mining == "batch_hard":
    mined = []
    for a in range(b):
      pos = [p for p in range(b) if v[a] and v[p] and p != a and labels[p] == labels[a]]
      neg = [n for n in range(b) if v[a] and v[n] and labels[n] != labels[a]]
      if pos and neg:
        p = pos[int(np.argmax(dist[a, pos]))]  # First (lowest) index among ties.
        n = neg[int(np.argmin(dist[a, neg]))]
        mined.append((a, p, n))
  elif mining == "batch_semihard":
    mined = []
    for a in range(b):
      neg = [n for n in range(b) if v[a] and v[n] and labels[n] != labels[a]]
      for p in range(b):
        if not (v[a] and v[p] and p != a and labels[p] == labels[a]) or not neg:
          continue
        farther = [n for n in neg if dist[a, n] > dist[a, p]]
        if farther:
          n = farther[int(np.argmin(dist[a, farther]))]
        else:
          n = neg[int(np.argmax(dist[a, neg]))]
        mined.append((a, p, n))
  else:
    raise ValueError(mining)
  per = np.array([max(np.float32(0), np.float32(dist[a, p] + mu) - dist[a, n])
                  for a, p, n in mined], np.float64)
  pos_mask = ((labels[:, None] == labels[None, :]) & ~np.eye(b, dtype=bool)
              & v[:, None] & v[None, :])
  neg_mask = (labels[:, None] != labels[None, :]) & v[:, None] & v[None, :]
  stats = dict(
      counts,
      num_mined=len(mined),
      num_mined_active=int((per > 0).sum()),
      num_active=counts["num_triplets"] - counts["num_easy"],
      mean_pos_dist=dist[pos_mask].mean() if pos_mask.any() else 0.0,
      mean_neg_dist=dist[neg_mask].mean() if neg_mask.any() else 0.0)
  stats["active_ratio"] = stats["num_active"] / max(stats["num_triplets"], 1)
  return np.array(mined, np.int32).reshape(-1, 3), per, stats


def ref_reduce(per, num_mined, reduction):
  if reduction == "sum":
    return per.sum(), 1.0
  denom = num_mined if reduction == "mean" else int((per > 0).sum())
  denom = max(denom, 1)
  return per.sum() / denom, denom


MAX_TRIPLETS = B_TEST ** 3


@functools.partial(jax.jit, static_argnames=("distance",))
def ref_triplet_grad(x, margin, mined, weights, *, distance):
  """jax.grad of a plain jnp sum of hinges over an explicit (padded) triplet list."""

  def fn(x, m):
    dist = pairwise_distances(x, distance=distance)
    a, p, n = mined[:, 0], mined[:, 1], mined[:, 2]
    return jnp.sum(weights * jax.nn.relu((dist[a, p] + m) - dist[a, n]))

  return jax.grad(fn, argnums=(0, 1))(x, margin)


def padded_triplets(mined, denom):
  idx = np.zeros((MAX_TRIPLETS, 3), np.int32)
  weights = np.zeros(MAX_TRIPLETS, np.float32)
  idx[:len(mined)] = mined
  weights[:len(mined)] = 1.0 / denom
  return jnp.asarray(idx), jnp.asarray(weights)


@functools.partial(jax.jit, static_argnames=("distance", "mining"))
def fast_triplet_all_reductions(x, labels, margin, valid, *, distance, mining):
  """(loss, stats, grad x, grad margin) for each reduction, in one compilation."""
  out = {}
  for reduction in REDUCTIONS:
    fn = lambda x, m: losses.triplet_margin_loss(
        x, labels, m, distance=distance, mining=mining, reduction=reduction,
        valid=valid)
    (loss, stats), (gx, gm) = jax.value_and_grad(fn, (0, 1), has_aux=True)(x, margin)
    out[reduction] = (loss, stats, gx, gm)
  return out


def assert_stats(stats, want, rtol=1e-5):
  for field in losses.TripletStats._fields:
    got = float(getattr(stats, field))
    assert np.isfinite(got), field
    np.testing.assert_allclose(got, want[field], rtol=rtol, atol=1e-5, err_msg=field)


# -------------------------------------------------------------------- triplet tests


def _check_triplet_case(x, labels, margin, distance, mining, valid=None):
  assert x.shape[0] == B_TEST
  dist = ref_distances(x, distance)
  mined, per, want_stats = ref_triplets(dist, labels, margin, mining, valid)
  valid_arr = jnp.ones(B_TEST, bool) if valid is None else jnp.asarray(valid)
  outs = fast_triplet_all_reductions(jnp.asarray(x), jnp.asarray(labels),
                                     jnp.float32(margin), valid_arr,
                                     distance=distance, mining=mining)
  for reduction in REDUCTIONS:
    want_loss, denom = ref_reduce(per, want_stats["num_mined"], reduction)
    loss, stats, gx, gm = outs[reduction]
    np.testing.assert_allclose(float(loss), want_loss, rtol=2e-5, atol=1e-6,
                               err_msg=f"{mining} {reduction}")
    assert_stats(stats, want_stats)
    rx, rm = ref_triplet_grad(jnp.asarray(x), jnp.float32(margin),
                              *padded_triplets(mined, denom), distance=distance)
    assert np.all(np.isfinite(np.asarray(gx)))
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-5,
                               err_msg=f"{mining} {reduction} grad x")
    np.testing.assert_allclose(gm, rm, rtol=1e-5, atol=1e-6,
                               err_msg=f"{mining} {reduction} grad margin")


@pytest.mark.parametrize("mining", losses.MINING)
@pytest.mark.parametrize("distance", DISTANCES)
def test_triplet_random_against_bruteforce(distance, mining):
  x, labels = make_batch("random", b=B_TEST, d=3, seed=1)
  _check_triplet_case(x, labels, 0.7, distance, mining)


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("mining", losses.MINING)
def test_triplet_ties_against_bruteforce(mining, margin):
  # Integer grid + squared Euclidean + integer margins: exact ties t == d_an and
  # d_an == d_ap, duplicated embeddings (zero distances) across and within classes.
  x, labels = make_batch("ties", b=B_TEST, d=3, seed=2)
  _check_triplet_case(x, labels, margin, "squared_euclidean", mining)
  _check_triplet_case(x, labels, margin, "euclidean", mining)


@pytest.mark.parametrize("mining", losses.MINING)
def test_triplet_valid_mask_against_bruteforce(mining):
  x, labels = make_batch("unit", b=B_TEST, d=3, seed=3)
  valid = np.random.default_rng(4).random(B_TEST) < 0.7
  _check_triplet_case(x, labels, 0.3, "euclidean", mining, valid)
  # Masked rows do not matter: move the valid rows first and refill the rest.
  order = np.argsort(~valid, kind="stable")
  x2, labels2 = x[order].copy(), labels[order].copy()
  k = int(valid.sum())
  x2[k:] = np.random.default_rng(9).normal(size=(B_TEST - k, 3))
  labels2[k:] = 0
  valid2 = np.arange(B_TEST) < k
  full = fast_triplet_all_reductions(x, labels, jnp.float32(0.3), jnp.asarray(valid),
                                     distance="euclidean", mining=mining)
  moved = fast_triplet_all_reductions(x2, labels2, jnp.float32(0.3), jnp.asarray(valid2),
                                      distance="euclidean", mining=mining)
  for reduction in REDUCTIONS:
    (l1, s1, g1, _), (l2, s2, g2, _) = full[reduction], moved[reduction]
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(s1, s2):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g1)[order][:k], np.asarray(g2)[:k],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g2)[k:], 0.0)


def _degenerate(case):
  """Batches of B_TEST rows where little or nothing can be learnt."""
  rng = np.random.default_rng(0)
  four = np.repeat(np.arange(4), 4).astype(np.int32)
  valid = np.ones(B_TEST, bool)
  if case == "one_class":
    x, labels = rng.normal(size=(B_TEST, 3)), np.zeros(B_TEST, np.int32)
  elif case == "one_per_class":
    x, labels = rng.normal(size=(B_TEST, 3)), np.arange(B_TEST, dtype=np.int32)
  elif case == "identical":
    x, labels = np.ones((B_TEST, 3)), four
  elif case == "zeros":
    x, labels = np.zeros((B_TEST, 3)), four
  elif case == "all_padding":
    x, labels, valid = rng.normal(size=(B_TEST, 3)), four, np.zeros(B_TEST, bool)
  elif case == "one_valid_row":
    x, labels = rng.normal(size=(B_TEST, 3)), four
    valid = np.arange(B_TEST) == 3
  else:
    raise ValueError(case)
  return jnp.asarray(x, jnp.float32), jnp.asarray(labels), jnp.asarray(valid)


DEGENERATE = ("one_class", "one_per_class", "identical", "zeros", "all_padding",
              "one_valid_row")
NOTHING_TO_LEARN = ("one_class", "one_per_class", "all_padding", "one_valid_row")


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(leaf)))
             for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("mining", losses.MINING)
def test_triplet_degenerate_batches(distance, mining):
  for case in DEGENERATE:
    x, labels, valid = _degenerate(case)
    outs = fast_triplet_all_reductions(x, labels, jnp.float32(0.5), valid,
                                       distance=distance, mining=mining)
    assert _all_finite(outs), case
    for reduction, (loss, stats, gx, gm) in outs.items():
      if case in NOTHING_TO_LEARN:
        assert float(loss) == 0.0 and float(stats.num_triplets) == 0.0, case
        assert float(stats.num_mined) == 0.0
        np.testing.assert_array_equal(gx, 0.0)
        np.testing.assert_array_equal(gm, 0.0)
      else:
        # Every valid triplet sits at d_ap = d_an: hard, loss = margin each.
        assert float(stats.num_hard) == float(stats.num_triplets) == 4 * 4 * 3 * 12
        assert float(stats.num_easy) == float(stats.num_semihard) == 0.0
        if mining in ("semihard", "hard", "easy"):
          # Exact ties d_an = d_ap < t lie in none of the strict bands.
          assert float(stats.num_mined) == 0.0 and float(loss) == 0.0, case
          np.testing.assert_array_equal(gm, 0.0)
        elif reduction != "sum":
          np.testing.assert_allclose(loss, 0.5, rtol=1e-6, err_msg=case)
        if distance != "cosine":  # Zero distance: zero (sub)gradient, not NaN.
          np.testing.assert_allclose(gx, 0.0, atol=1e-6)


def test_triplet_single_row_batch():
  loss, stats = losses.triplet_margin_loss(jnp.ones((1, 3)), jnp.zeros(1, jnp.int32), 0.2)
  assert float(loss) == 0.0 and float(stats.num_triplets) == 0.0


@pytest.mark.parametrize("mining", losses.MINING)
def test_triplet_jit_vmap_traced_margin(mining):
  xs, ys = zip(*(make_batch("unit", b=B_TEST, d=3, seed=s) for s in range(3)))
  xs, ys = jnp.asarray(np.stack(xs)), jnp.asarray(np.stack(ys))
  margins = jnp.array([0.1, 0.5, 1.0])
  valid = jnp.ones((3, B_TEST), bool)
  fn = functools.partial(fast_triplet_all_reductions, distance="euclidean",
                         mining=mining)
  batched = jax.vmap(fn)(xs, ys, margins, valid)
  fn(xs[0], ys[0], margins[0], valid[0])   # the unbatched signature, compiled once
  before = fast_triplet_all_reductions._cache_size()
  for i in range(3):
    single = fn(xs[i], ys[i], margins[i], valid[i])
    for got, want in zip(jax.tree_util.tree_leaves(batched),
                         jax.tree_util.tree_leaves(single)):
      np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-7)
  # New margin values reuse the compiled function (the margin is traced).
  assert fast_triplet_all_reductions._cache_size() == before


@pytest.mark.parametrize("mining", ["all", "semihard", "hard", "easy"])
def test_triplet_all_never_builds_cubic_tensors(mining):
  b = 48
  x, labels = make_batch("unit", b=b, seed=5)
  fn = jax.value_and_grad(
      lambda x: losses.triplet_margin_loss(x, jnp.asarray(labels), 0.2,
                                           mining=mining)[0])
  jaxpr = jax.make_jaxpr(fn)(jnp.asarray(x))
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        sizes.append(int(np.prod(getattr(var.aval, "shape", ()))))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  assert max(sizes) <= 2 * b * b, max(sizes)


def test_bad_names_and_shapes_raise_before_compilation():
  x, y = jnp.ones((4, 2)), jnp.zeros(4, jnp.int32)
  for kwargs, match in [({"mining": "hardest"}, "unknown mining"),
                        ({"reduction": "avg"}, "unknown reduction"),
                        ({"distance": "l1"}, "unknown distance")]:
    with pytest.raises(ValueError, match=match) as info:
      jax.jit(lambda x: losses.triplet_margin_loss(x, y, 0.2, **kwargs))(x)
    assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="unknown reduction"):
    losses.contrastive_loss(x, y, 1.0, reduction="none")
  with pytest.raises(ValueError, match="unknown distance"):
    losses.contrastive_loss_from_pairs(x, x, y == 0, 1.0, distance="dot")
  with pytest.raises(ValueError, match="unknown reduction"):
    losses.triplet_margin_loss_from_triplets(x, x, x, 0.2, reduction="max")
  # Malformed arrays: see test_loss_semantics.py for every argument.
  with pytest.raises(ValueError, match="labels has 3 entries"):
    losses.triplet_margin_loss(x, jnp.zeros(3, jnp.int32), 0.2)
  with pytest.raises(ValueError, match="embeddings must be a"):
    losses.triplet_margin_loss(x[0], y, 0.2)
  with pytest.raises(ValueError, match="margin must be a scalar"):
    losses.triplet_margin_loss(x, y, jnp.ones(2))
  assert losses.MINING == ("all", "semihard", "hard", "easy", "batch_hard",
                           "batch_semihard")
  for name in losses.MINING:
    losses.check_mining(name)
  for name in REDUCTIONS:
    losses.check_reduction(name)


# ----------------------------------------------------------------- explicit triplets


@pytest.mark.parametrize("distance", DISTANCES)
def test_from_triplets_against_loop(distance):
  rng = np.random.default_rng(6)
  a, p, n = (rng.integers(0, 3, size=(10, 3)).astype(np.float32) for _ in range(3))
  p[0] = a[0]
  n[1] = a[1]
  valid = np.ones(10, bool)
  valid[-2:] = False
  d_ap = np.asarray(paired_distances(jnp.asarray(a), jnp.asarray(p), distance=distance))
  d_an = np.asarray(paired_distances(jnp.asarray(a), jnp.asarray(n), distance=distance))
  margin = 1.0
  t = (d_ap + np.float32(margin)).astype(np.float32)
  per = np.maximum(t - d_an, 0)[valid].astype(np.float64)
  for reduction in REDUCTIONS:
    want, denom = ref_reduce(per, int(valid.sum()), reduction)
    fn = lambda a, m: losses.triplet_margin_loss_from_triplets(
        a, jnp.asarray(p), jnp.asarray(n), m, distance=distance, reduction=reduction,
        valid=jnp.asarray(valid))
    (loss, stats), ga = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(a), margin)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(np.asarray(ga)))
    v = valid
    assert float(stats.num_triplets) == v.sum() == float(stats.num_mined)
    assert float(stats.num_easy) == (v & (d_an >= t)).sum()
    assert float(stats.num_semihard) == (v & (d_ap < d_an) & (d_an < t)).sum()
    assert float(stats.num_hard) == (v & (d_an <= d_ap)).sum()
    assert float(stats.num_active) == (per > 0).sum()
    np.testing.assert_allclose(stats.mean_pos_dist, d_ap[v].mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_neg_dist, d_an[v].mean(), rtol=1e-5)


# ---------------------------------------------------------------------- contrastive


def ref_contrastive(dist, labels, margin, positive_margin, valid=None):
  b = len(labels)
  v = ref_valid_mask(labels, valid)
  pairs, per, same = [], [], []
  for i in range(b):
    for j in range(i + 1, b):
      if not (v[i] and v[j]):
        continue
      d = dist[i, j]
      y = labels[i] == labels[j]
      per.append(max(0.0, d - positive_margin) ** 2 if y else max(0.0, margin - d) ** 2)
      pairs.append((i, j))
      same.append(y)
  return np.array(pairs, np.int32).reshape(-1, 2), np.array(per), np.array(same, bool)


@functools.partial(jax.jit, static_argnames=("distance",))
def fast_contrastive_all_reductions(x, labels, margin, positive_margin, valid, *,
                                    distance):
  out = {}
  for reduction in REDUCTIONS:
    fn = lambda x, m: losses.contrastive_loss(
        x, labels, m, distance=distance, reduction=reduction,
        positive_margin=positive_margin, valid=valid)
    (loss, stats), (gx, gm) = jax.value_and_grad(fn, (0, 1), has_aux=True)(x, margin)
    out[reduction] = (loss, stats, gx, gm)
  return out


@functools.partial(jax.jit, static_argnames=("distance",))
def ref_contrastive_grad(x, margin, positive_margin, pairs, same, weights, *, distance):
  def fn(x, m):
    d = pairwise_distances(x, distance=distance)[pairs[:, 0], pairs[:, 1]]
    pull = jnp.square(jax.nn.relu(d - positive_margin))
    push = jnp.square(jax.nn.relu(m - d))
    return jnp.sum(weights * jnp.where(same, pull, push))

  return jax.grad(fn, (0, 1))(x, margin)


@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_against_loop(distance):
  max_pairs = B_TEST * (B_TEST - 1) // 2
  for kind in ("random", "ties"):
    for positive_margin in (0.0, 0.5):
      x, labels = make_batch(kind, b=B_TEST, d=3, seed=7)
      if kind == "random":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
      valid = np.ones(B_TEST, bool)
      valid[4] = False
      margin = 1.0
      dist = ref_distances(x, distance)
      pairs, per, same = ref_contrastive(dist, labels, margin, positive_margin, valid)
      outs = fast_contrastive_all_reductions(
          jnp.asarray(x), jnp.asarray(labels), jnp.float32(margin),
          jnp.float32(positive_margin), jnp.asarray(valid), distance=distance)
      pad_pairs = np.zeros((max_pairs, 2), np.int32)
      pad_pairs[:len(pairs)] = pairs
      pad_same = np.zeros(max_pairs, bool)
      pad_same[:len(pairs)] = same
      for reduction in REDUCTIONS:
        loss, stats, gx, gm = outs[reduction]
        want, denom = ref_reduce(per, len(per), reduction)
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
        weights = np.zeros(max_pairs, np.float32)
        weights[:len(pairs)] = 1.0 / denom
        rx, rm = ref_contrastive_grad(
            jnp.asarray(x), jnp.float32(margin), jnp.float32(positive_margin),
            jnp.asarray(pad_pairs), jnp.asarray(pad_same), jnp.asarray(weights),
            distance=distance)
        np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gm, rm, rtol=1e-5, atol=1e-6)
        d = dist[pairs[:, 0], pairs[:, 1]]
        assert float(stats.num_pairs) == len(per)
        assert float(stats.num_positive) == same.sum()
        assert float(stats.num_negative) == (~same).sum()
        assert float(stats.num_active) == (per > 0).sum()
        np.testing.assert_allclose(stats.active_ratio, (per > 0).mean(), rtol=1e-6)
        np.testing.assert_allclose(stats.mean_pos_dist, d[same].mean(), rtol=1e-5)
        np.testing.assert_allclose(stats.mean_neg_dist, d[~same].mean(), rtol=1e-5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_degenerate_batches(distance):
  for case in DEGENERATE:
    x, labels, valid = _degenerate(case)
    outs = fast_contrastive_all_reductions(x, labels, jnp.float32(1.0), jnp.float32(0.0),
                                           valid, distance=distance)
    assert _all_finite(outs), case
    if case in ("all_padding", "one_valid_row"):
      for loss, stats, gx, _ in outs.values():
        assert float(loss) == 0.0 and float(stats.num_pairs) == 0.0
        np.testing.assert_array_equal(gx, 0.0)


def test_contrastive_from_pairs_matches_all_pairs():
  x, labels = make_batch("random", b=9, seed=8)
  i, j = np.triu_indices(9, k=1)
  for reduction in REDUCTIONS:
    want = losses.contrastive_loss(x, labels, 1.0, reduction=reduction,
                                   positive_margin=0.2)
    got = jax.jit(lambda a, b, s: losses.contrastive_loss_from_pairs(
        a, b, s, 1.0, reduction=reduction, positive_margin=0.2))(
            x[i], x[j], labels[i] == labels[j])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1], want[1]):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  # Duplicated points: finite gradients.
  g = jax.grad(lambda a: losses.contrastive_loss_from_pairs(
      a, a, jnp.ones(9, bool), 1.0)[0])(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(g)))


def test_contrastive_from_pairs_valid_mask_against_loop():
  rng = np.random.default_rng(11)
  x1 = rng.integers(0, 3, size=(12, 3)).astype(np.float32)
  x2 = rng.integers(0, 3, size=(12, 3)).astype(np.float32)
  x2[0] = x1[0]                                  # a duplicate pair at zero distance
  same = rng.random(12) < 0.5
  valid = np.ones(12, bool)
  valid[[3, 7, 11]] = False
  margin, positive_margin = 1.5, 0.5
  d = np.sqrt(((x1.astype(np.float64) - x2) ** 2).sum(-1))
  per = np.where(same, np.maximum(d - positive_margin, 0) ** 2,
                 np.maximum(margin - d, 0) ** 2)[valid]
  for reduction in REDUCTIONS:
    want, _ = ref_reduce(per, int(valid.sum()), reduction)
    loss, stats = losses.contrastive_loss_from_pairs(
        jnp.asarray(x1), jnp.asarray(x2), jnp.asarray(same), margin,
        reduction=reduction, positive_margin=positive_margin, valid=jnp.asarray(valid))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
    assert float(stats.num_pairs) == valid.sum()
    assert float(stats.num_positive) == (same & valid).sum()
    assert float(stats.num_negative) == (~same & valid).sum()
    assert float(stats.num_active) == (per > 0).sum()
    np.testing.assert_allclose(stats.mean_pos_dist, d[same & valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_neg_dist, d[~same & valid].mean(), rtol=1e-5)
  g = jax.grad(lambda a: losses.contrastive_loss_from_pairs(
      a, jnp.asarray(x2), jnp.asarray(same), margin, valid=jnp.asarray(valid))[0])(
          jnp.asarray(x1))
  assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(g)[~valid] == 0)    # masked pairs get no gradient
