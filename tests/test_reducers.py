"""PML's reducers (tsm.reducers values) as options of the losses, against numpy loops.

Each loss's per-term losses are computed in numpy from its definition, as PML's loss
dicts hold them (``(loss, anchor)`` per element, pair or triplet), and then reduced by
a loop written from PML's ``reducers/`` (``ThresholdReducer``, ``ClassWeightedReducer``,
``PerAnchorReducer`` with an inner reducer).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_loss_zoo import cos, lse, unit
from tsm import config as config_lib
from tsm import losses
from fit_helpers import tiny_config
from test_loss_table import train_steps
from tsm import reducers as R

# ------------------------------------------------------------ PML's reducers, as loops


def pml_reduce(terms, reduction, labels, anchors=(), element=False):
  """PML's reducer of ``terms``, a list of ``(loss, anchor)``; ``anchors``: the rows a
  per-anchor reducer averages over (PML: the whole batch)."""
  if isinstance(reduction, R.PerAnchor):
    if element:   # PerAnchorReducer.element_reduction: the inner reducer as it is
      return pml_reduce(terms, reduction.inner, labels, element=True)
    per = []
    for a in anchors:
      mine = [l for l, b in terms if b == a]
      per.append((sum(mine) / len(mine) if mine else 0.0, a))
    return pml_reduce(per, reduction.inner, labels, element=True)
  values = [l for l, _ in terms]
  if reduction == "sum":
    return sum(values)
  if reduction == "mean":
    return sum(values) / len(values) if values else 0.0
  if reduction == "mean_nonzero":   # AvgNonZeroReducer = ThresholdReducer(low=0)
    reduction = R.Threshold(low=0.0)
  if isinstance(reduction, R.Threshold):
    kept = [l for l in values if (reduction.low is None or l > reduction.low)
            and (reduction.high is None or l < reduction.high)]
    return sum(kept) / len(kept) if kept else 0.0
  assert isinstance(reduction, R.ClassWeighted)
  if not terms:
    return 0.0
  return sum(l * reduction.weights[labels[a]] for l, a in terms) / len(terms)


# ------------------------------------------------------- per-term losses, from definitions


def _d(x):
  x = np.asarray(x, np.float64)
  return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


def triplet_terms(x, y, margin, band="all"):
  d, n = _d(x), len(y)
  out = []
  for a in range(n):
    for p in range(n):
      for k in range(n):
        if p == a or y[p] != y[a] or y[k] == y[a]:
          continue
        t = d[a, p] + margin
        keep = {"all": True, "semihard": d[a, p] < d[a, k] < t, "hard": d[a, k] < d[a, p],
                "easy": d[a, k] >= t}[band]
        if keep:
          out.append((max(0.0, t - d[a, k]), a))
  return out


def batch_hard_terms(x, y, margin):
  d, n = _d(x), len(y)
  out = []
  for a in range(n):
    ps = [d[a, p] for p in range(n) if p != a and y[p] == y[a]]
    ns = [d[a, k] for k in range(n) if y[k] != y[a]]
    if ps and ns:
      out.append((max(0.0, max(ps) - min(ns) + margin), a))
  return out


def contrastive_terms(x, y, margin, positive_margin=0.0):
  d, n = _d(x), len(y)
  return [((max(0.0, d[a, b] - positive_margin) if y[a] == y[b]
            else max(0.0, margin - d[a, b])) ** 2, a)
          for a in range(n) for b in range(n) if a != b]


def nca_terms(x, y):
  n, u = len(y), [unit(r) for r in x]
  z = [[-sum((s - t) ** 2 for s, t in zip(u[i], u[j])) for j in range(n)] for i in range(n)]
  out = []
  for i in range(n):
    ps = [p for p in range(n) if p != i and y[p] == y[i]]
    if ps:
      out.append((lse([z[i][j] for j in range(n) if j != i]) - lse([z[i][p] for p in ps]),
                  i))
  return out


def angular_terms(x, y, alpha=math.radians(40.0)):
  n, u = len(y), [unit(r) for r in x]
  t = math.tan(alpha) ** 2
  dot = lambda a, b: sum(s * v for s, v in zip(a, b))
  f = lambda a, p, k: (4 * t * dot([i + j for i, j in zip(u[a], u[p])], u[k])
                       - 2 * (1 + t) * dot(u[a], u[p]))
  if len(set(y)) < 2:
    return []
  return [(math.log1p(math.exp(lse([f(a, p, k) for k in range(n) if y[k] != y[a]]))), a)
          for a in range(n) for p in range(n) if a != p and y[a] == y[p]]


def generalized_lifted_terms(x, y):
  d, n = _d([unit(r) for r in x]), len(y)
  out = []
  for a in range(n):
    ps = [d[a, p] for p in range(n) if p != a and y[p] == y[a]]
    ns = [1.0 - d[a, k] for k in range(n) if y[k] != y[a]]
    out.append((max(0.0, (lse(ps) if ps else 0.0) + (lse(ns) if ns else 0.0)), a))
  return out


def ipv_parts(x, y, pos_eps=0.01, neg_eps=0.01):
  n = len(y)
  parts = []
  for same, sign, scale in ((True, -1.0, 1 - pos_eps), (False, 1.0, 1 + neg_eps)):
    pairs = [(a, b) for a in range(n) for b in range(n)
             if a != b and (y[a] == y[b]) == same]
    sims = [cos(x[a], x[b]) for a, b in pairs]
    mu = sum(sims) / max(len(sims), 1)
    parts.append([(max(0.0, sign * (s - scale * mu)) ** 2, a)
                  for s, (a, _) in zip(sims, pairs)])
  return parts


# --------------------------------------------------------------------------- batches


def _batch(kind, b=9, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  y = rng.integers(0, 3, size=b)
  if kind == "ties":      # duplicated rows: zero distances and d_an = d_ap ties
    x[3] = x[0]
    x[5] = x[1]
    y = np.array([0, 1, 0, 1, 2, 1, 2, 0, 2])[:b]
  elif kind == "one_class":
    y = np.zeros(b, int)
  return x, y


def _cuts(values):
  """Two thresholds ``low < high`` strictly between distinct term values (near the 30th
  and 80th percentiles), so that float32 rounding cannot move a term across them."""
  v = np.unique(np.round(np.asarray(values, np.float64), 6))
  mids = (v[:-1] + v[1:]) / 2 if len(v) > 1 else np.array([(v[0] if len(v) else 0) + 1.0])
  lo, hi = mids[int(0.3 * (len(mids) - 1))], mids[int(0.8 * (len(mids) - 1))]
  return float(lo), float(hi if hi > lo else lo + 1.0)


WEIGHTS = (1.0, 0.0, 2.5)   # a class weight of 0


def _reductions(values):
  lo, hi = _cuts(values)
  return {
      "threshold_low": R.threshold(low=lo),
      "threshold_high": R.threshold(high=hi),
      "threshold_band": R.threshold(lo, hi),
      "threshold_none_pass": R.threshold(low=(max(values) if values else 0.0) + 1.0),
      "class_weighted": R.class_weighted(WEIGHTS),
      "per_anchor": R.per_anchor(),
      "per_anchor_threshold": R.per_anchor(R.threshold(low=lo / 2)),
      "per_anchor_class_weighted": R.per_anchor(R.class_weighted(WEIGHTS)),
      "per_anchor_sum": R.per_anchor("sum"),
  }


MARGIN = 0.8
# name -> (tsm loss of (x, y, reduction), numpy terms of (x, y) as [(loss, anchor)] or a
# list of parts, each reduced alone, and whether the terms are PML "element" terms)
LOSSES = {
    "triplet_all": (lambda x, y, r: losses.triplet_margin_loss(x, y, MARGIN, reduction=r),
                    lambda x, y: triplet_terms(x, y, MARGIN), False),
    "triplet_semihard": (
        lambda x, y, r: losses.triplet_margin_loss(x, y, MARGIN, mining="semihard",
                                                   reduction=r),
        lambda x, y: triplet_terms(x, y, MARGIN, "semihard"), False),
    "triplet_hard": (
        lambda x, y, r: losses.triplet_margin_loss(x, y, MARGIN, mining="hard",
                                                   reduction=r),
        lambda x, y: triplet_terms(x, y, MARGIN, "hard"), False),
    "triplet_batch_hard": (
        lambda x, y, r: losses.triplet_margin_loss(x, y, MARGIN, mining="batch_hard",
                                                   reduction=r),
        lambda x, y: batch_hard_terms(x, y, MARGIN), False),
    "contrastive": (
        lambda x, y, r: losses.contrastive_loss(x, y, MARGIN, positive_margin=0.3,
                                                reduction=r),
        lambda x, y: contrastive_terms(x, y, MARGIN, 0.3), False),
    "nca": (lambda x, y, r: losses.nca_loss(x, y, reduction=r), nca_terms, True),
    "angular": (lambda x, y, r: losses.angular_loss(x, y, reduction=r), angular_terms,
                False),
    "generalized_lifted": (
        lambda x, y, r: losses.generalized_lifted_structure_loss(x, y, reduction=r),
        generalized_lifted_terms, True),
    "intra_pair_variance": (
        lambda x, y, r: losses.intra_pair_variance_loss(x, y, reduction=r), ipv_parts,
        False),
}


def _want(terms_fn, element, x, y, reduction):
  terms = terms_fn(x, y)
  parts = terms if terms and isinstance(terms[0], list) else [terms]
  return sum(pml_reduce(p, reduction, y, anchors=range(len(y)), element=element)
             for p in parts)


def _values(terms_fn, x, y):
  terms = terms_fn(x, y)
  if terms and isinstance(terms[0], list):
    terms = [t for p in terms for t in p]
  return [l for l, _ in terms]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "triplet_hard" else n for n in LOSSES])
def test_each_reducer_matches_pmls_rule_on_numpy_terms(name):
  fn, terms_fn, element = LOSSES[name]
  x0, y0 = _batch("random", seed=len(name))
  reductions = _reductions(_values(terms_fn, x0, y0))

  @jax.jit   # one compilation per loss: every reducer, its value and its gradient
  def run(e, labels):
    values = jnp.stack([fn(e, labels, r)[0] for r in reductions.values()])
    return jnp.sum(values), values

  for batch in ("random", "ties", "one_class"):
    x, y = _batch(batch, seed=len(name))
    (_, got), g = jax.value_and_grad(run, has_aux=True)(jnp.asarray(x),
                                                        jnp.asarray(y, jnp.int32))
    # The gradient of the sum is finite exactly when every reducer's is.
    assert np.all(np.isfinite(np.asarray(g))), (name, batch)
    for (label, reduction), value in zip(reductions.items(), np.asarray(got)):
      want = _want(terms_fn, element, x, y, reduction)
      np.testing.assert_allclose(value, want, rtol=2e-4, atol=1e-5,
                                 err_msg=f"{name} {batch} {label}")


def test_nothing_passing_the_threshold_gives_zero_with_zero_gradients():
  x, y = _batch("random")
  fn = lambda e: losses.triplet_margin_loss(e, jnp.asarray(y), MARGIN,
                                            reduction=R.threshold(low=1e6))[0]
  value, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(x))
  assert float(value) == 0.0
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_names_on_the_dense_path_equal_the_exact_band_path():
  # The reducer values route the band modes to the dense path; with the names both
  # paths must agree (same triplets, same counts), which pins the band masks there.
  from tsm.losses import _mined  # pylint: disable=import-outside-toplevel
  x, y = _batch("ties")
  # Equal "mean_nonzero" losses and equal counts (its and "mean"'s denominators) make
  # every named reduction equal.
  for mining in ("all", "semihard", "hard", "easy"):
    exact, s1 = jax.jit(lambda e, l, m=mining: losses.triplet_margin_loss(
        e, l, MARGIN, mining=m, reduction="mean_nonzero"))(jnp.asarray(x), jnp.asarray(y))
    dense, s2 = jax.jit(lambda e, l, m=mining: _mined.triplet_general(
        e, l, MARGIN, distance="euclidean", reduction="mean_nonzero", valid=None,
        ref_embeddings=None, ref_labels=None, pair_weights=None, triplet_weights=None,
        band=m))(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(dense), float(exact), rtol=1e-5, atol=1e-6)
    for field in ("num_mined", "num_mined_active", "num_triplets", "num_easy"):
      assert float(getattr(s1, field)) == float(getattr(s2, field)), (mining, field)


def test_padding_rows_are_not_anchors():
  x, y = _batch("random", b=9)
  valid = np.ones(9, bool)
  valid[[2, 7]] = False
  keep = np.flatnonzero(valid)
  padded = np.array(x)
  padded[~valid] = np.nan
  for reduction, fn in (
      (R.per_anchor(R.class_weighted(WEIGHTS)),
       lambda e, l, r, v: losses.triplet_margin_loss(e, l, MARGIN, reduction=r, valid=v)),
      (R.per_anchor(), lambda e, l, r, v: losses.contrastive_loss(e, l, MARGIN,
                                                                  reduction=r, valid=v)),
      (R.per_anchor(), lambda e, l, r, v: losses.angular_loss(e, l, reduction=r,
                                                              valid=v))):
    got, _ = jax.jit(lambda e, l, v, f=fn, r=reduction: f(e, l, r, v))(
        jnp.asarray(padded), jnp.asarray(y), jnp.asarray(valid))
    want, _ = jax.jit(lambda e, l, f=fn, r=reduction: f(e, l, r, None))(
        jnp.asarray(x[keep]), jnp.asarray(y[keep]))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_explicit_tuples_are_element_terms_with_their_anchor_labels():
  rng = np.random.default_rng(3)
  a, p, n = (rng.normal(size=(7, 3)).astype(np.float32) for _ in range(3))
  labels = rng.integers(0, 3, size=7)
  d_ap = np.linalg.norm(a.astype(np.float64) - p, axis=1)
  d_an = np.linalg.norm(a.astype(np.float64) - n, axis=1)
  trip = [(max(0.0, d_ap[i] - d_an[i] + MARGIN), i) for i in range(7)]
  same = rng.random(7) < 0.5
  pair = [((d_ap[i] ** 2) if same[i] else max(0.0, MARGIN - d_ap[i]) ** 2, i)
          for i in range(7)]
  for terms, fn in (
      (trip, lambda r: losses.triplet_margin_loss_from_triplets(
          a, p, n, MARGIN, reduction=r, labels=jnp.asarray(labels))),
      (pair, lambda r: losses.contrastive_loss_from_pairs(
          a, p, jnp.asarray(same), MARGIN, reduction=r, labels=jnp.asarray(labels)))):
    for reduction in _reductions([l for l, _ in terms]).values():
      np.testing.assert_allclose(float(fn(reduction)[0]),
                                 pml_reduce(terms, reduction, labels, element=True),
                                 rtol=2e-4, atol=1e-6)
  with pytest.raises(ValueError, match="needs the anchors' labels"):
    losses.triplet_margin_loss_from_triplets(a, p, n, MARGIN,
                                             reduction=R.class_weighted(WEIGHTS))


def test_labels_outside_the_class_weights_give_nan():
  x, y = _batch("random")
  y = np.where(y == 2, 3, y)   # class 3 has no weight
  value, _ = losses.contrastive_loss(x, jnp.asarray(y), MARGIN,
                                     reduction=R.class_weighted(WEIGHTS))
  assert np.isnan(float(value))


def test_nan_in_gives_nan_out_for_reducer_values():
  x, y = _batch("random")
  x[4, 1] = np.nan
  # A threshold that drops every term still gives NaN.
  for fn in (lambda e: losses.triplet_margin_loss(e, jnp.asarray(y), MARGIN,
                                                  reduction=R.threshold(low=1e6)),
             lambda e: losses.nca_loss(e, jnp.asarray(y), reduction=R.threshold(low=1e6)),
             lambda e: losses.contrastive_loss(e, jnp.asarray(y), MARGIN,
                                               reduction=R.per_anchor())):
    value, g = jax.jit(jax.value_and_grad(lambda e, f=fn: f(e)[0]))(jnp.asarray(x))
    assert np.isnan(float(value)) and np.isnan(np.asarray(g)).any()


@pytest.mark.parametrize("bad,message", [
    (lambda: R.threshold(), "needs low or high"),
    (lambda: R.threshold(1.0, 0.5), "must be below high"),
    (lambda: R.class_weighted([]), "non-empty"),
    (lambda: R.class_weighted([[1.0, 2.0]]), "1-D"),
    (lambda: R.per_anchor(R.per_anchor()), "cannot be per_anchor"),
    (lambda: losses.triplet_margin_loss(np.ones((4, 2), np.float32), jnp.arange(4), 0.1,
                                        reduction="median"), "unknown reduction 'median'"),
    (lambda: losses.margin_loss(np.ones((4, 2), np.float32), jnp.arange(4),
                                reduction=R.per_anchor()), "margin_loss takes a reduction name"),
])
def test_bad_reductions_are_one_line_value_errors(bad, message):
  with pytest.raises(ValueError, match=message) as e:
    bad()
  assert "\n" not in str(e.value)


def test_free_functions_are_the_reducers():
  rng = np.random.default_rng(6)
  l = rng.uniform(0, 2, size=(5, 6)).astype(np.float32)
  m = rng.random((5, 6)) < 0.6
  labels = np.arange(5) % 3
  terms = [(float(l[i, j]), i) for i in range(5) for j in range(6) if m[i, j]]
  np.testing.assert_allclose(R.per_anchor_reduce(l, m),
                             pml_reduce(terms, R.per_anchor(), labels, anchors=range(5)),
                             rtol=1e-6)
  np.testing.assert_allclose(
      R.class_weighted_reduce(l, labels[:, None], np.array(WEIGHTS), m),
      pml_reduce(terms, R.class_weighted(WEIGHTS), labels), rtol=1e-6)


@pytest.mark.parametrize("changes", [
    {"reduction": "threshold", "reduction_low": 0.05, "reduction_high": 0.5,
     "mining": "semihard"},
    {"reduction": "class_weighted", "reduction_class_weights": (1.0, 0.5, 2.0)},
    {"reduction": "per_anchor", "name": "contrastive"},
])
def test_config_reduction_builds_and_trains_one_step(changes):
  train_steps(changes, steps=1)


@pytest.mark.parametrize("changes,message", [
    ({"reduction": "threshold"}, "needs loss.reduction_low and/or loss.reduction_high"),
    ({"reduction": "threshold", "reduction_low": 1.0, "reduction_high": 0.5},
     "loss.reduction_low=1.0 must be below loss.reduction_high=0.5"),
    ({"reduction_low": 0.1}, "loss.reduction_low=0.1 applies to loss.reduction=threshold"),
    ({"reduction": "per_anchor", "reduction_class_weights": (1.0,)},
     "loss.reduction_class_weights=.* applies to loss.reduction=class_weighted"),
    ({"reduction": "class_weighted"}, "needs loss.reduction_class_weights"),
    ({"reduction": "per_anchor", "name": "circle"}, "does not apply to loss.name=circle"),
    ({"reduction": "median"}, "loss.reduction='median' is unknown"),
])
def test_bad_config_reductions_are_one_line_config_errors(changes, message):
  cfg = config_lib.default_config()
  cfg.loss.update(changes)
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.check_config(cfg)
  assert "\n" not in str(e.value)


def test_class_weights_that_miss_a_train_class_are_refused_before_training(tmp_path):
  cfg = tiny_config()
  cfg.loss.update(reduction="class_weighted", reduction_class_weights=(1.0, 2.0))
  with pytest.raises(config_lib.ConfigError,
                     match=r"^loss.reduction_class_weights has 2 weights but the train "
                           r"split's labels go up to (\d+); give one weight per class"):
    config_lib.prepare(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
