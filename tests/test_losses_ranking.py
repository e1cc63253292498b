"""Smooth-AP, PNP and the ranked list loss against brute-force numpy loops.

Each reference is written from the loss's definition (PML's, see the docstrings): plain
Python loops over anchors, ranked items and pairs in float64, distances from explicit
differences, sharing no code with tsm. Values, statistics and gradients (central finite
differences of the reference) are compared in float64 on the batches of
``test_loss_zoo``; one float32 case per loss checks the production precision.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import labelled_loss_checks as checks
from labelled_loss_checks import Runner
import loss_checks as lc
from test_loss_zoo import cos, make_batch, unit
from tsm import losses


# ------------------------------------------------------------------- references


def sigmoid(z):
  return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def ref_smooth_ap(x, y, temperature=0.01):
  n = len(y)
  s = [[cos(x[i], x[j]) for j in range(n)] for i in range(n)]
  stats = dict(num_total=n, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for a in range(n):
    pos = [k for k in range(n) if y[k] == y[a]]  # the anchor itself included
    ap = 0.0
    for k in pos:
      sig = {j: sigmoid((s[a][j] - s[a][k]) / temperature) for j in range(n) if j != k}
      ap += (1 + sum(sig[j] for j in pos if j != k)) / (1 + sum(sig.values()))
    total += 1.0 - ap / len(pos)
    negs = [j for j in range(n) if y[j] != y[a]]
    hard = [j for j in negs if s[a][j] > min(s[a][p] for p in pos) - temperature]
    stats["num_active"] += bool(hard)
    stats["num_neg_total"] += len(negs)
    stats["num_neg_active"] += len(hard)
  return total / n, stats


def ref_pnp(x, y, variant="O", temperature=0.01, b=2.0, alpha=1.0):
  n = len(y)
  s = [[cos(x[i], x[j]) for j in range(n)] for i in range(n)]
  f = {"O": lambda r: r, "Ds": lambda r: math.log(1 + r),
       "Dq": lambda r: 1 / (1 + r) ** alpha, "Iu": lambda r: (1 + r) * math.log(1 + r),
       "Ib": lambda r: (b * r - math.log(1 + b * r)) / b ** 2}[variant]
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  per_anchor = []
  for a in range(n):
    pos = [k for k in range(n) if y[k] == y[a]]  # the anchor itself included
    if len(pos) < 2:
      continue
    negs = [j for j in range(n) if y[j] != y[a]]
    ranks = [sum(sigmoid((s[a][j] - s[a][k]) / temperature) for j in negs) for k in pos]
    per_anchor.append(sum(f(r) for r in ranks) / len(pos))
    hard = [j for j in negs if s[a][j] > min(s[a][p] for p in pos) - temperature]
    stats["num_total"] += 1
    stats["num_active"] += bool(hard)
    stats["num_neg_total"] += len(negs)
    stats["num_neg_active"] += len(hard)
  if not per_anchor:
    return 0.0, stats
  mean = sum(per_anchor) / len(per_anchor)
  return (1 - mean if variant == "Dq" else mean), stats


def unit_dist(u, v):
  return math.sqrt(sum((a - b) ** 2 for a, b in zip(unit(u), unit(v))))


def ref_ranked_list(x, y, margin=0.4, tn=10.0, imbalance=0.5, alpha=None, tp=0.0):
  n = len(y)
  alpha = 1 + margin / 2 if alpha is None else alpha
  d = [[unit_dist(x[i], x[j]) for j in range(n)] for i in range(n)]
  pos = [(i, j) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
  neg = [(i, j) for i in range(n) for j in range(n) if y[i] != y[j]]
  p_star = [(i, j) for i, j in pos if d[i][j] > alpha - margin and d[i][j] > 0]
  n_star = [(i, j) for i, j in neg if d[i][j] < alpha and d[i][j] > 0]
  total = 0.0
  for i in range(n):
    wp = [(math.exp(tp * (d[i][j] - (alpha - margin))), d[i][j]) for a, j in p_star
          if a == i]
    wn = [(math.exp(tn * (alpha - d[i][j])), d[i][j]) for a, j in n_star if a == i]
    lp = sum(w * (dij - (alpha - margin)) for w, dij in wp) / (sum(w for w, _ in wp) +
                                                               1e-5 * n)
    ln = sum(w * (alpha - dij) for w, dij in wn) / (sum(w for w, _ in wn) + 1e-5 * n)
    total += (1 - imbalance) * lp + imbalance * ln
  mean = lambda v: sum(v) / len(v) if v else 0.0
  stats = dict(num_pairs=len(pos) + len(neg), num_positive=len(pos),
               num_negative=len(neg), num_active=len(p_star) + len(n_star),
               num_negative_active=len(n_star),
               mean_pos_dist=mean([d[i][j] for i, j in pos]),
               mean_neg_dist=mean([d[i][j] for i, j in neg]))
  return total / n, stats


def negatives_at_zero(x, y):
  """Whether two rows of different classes have the same direction (RLL's d = 0)."""
  return any(unit_dist(x[i], x[j]) == 0 for i in range(len(y)) for j in range(len(y))
             if y[i] != y[j])


# ------------------------------------------------------- the cases under test

CASES = {
    "smooth_ap": (lambda x, y, v: losses.smooth_ap_loss(x, y, valid=v), ref_smooth_ap),
    "smooth_ap_warm": (lambda x, y, v: losses.smooth_ap_loss(x, y, temperature=0.37,
                                                             valid=v),
                       lambda x, y: ref_smooth_ap(x, y, temperature=0.37)),
    "pnp": (lambda x, y, v: losses.pnp_loss(x, y, valid=v), ref_pnp),
    **{f"pnp_{var}": (
        lambda x, y, v, var=var: losses.pnp_loss(x, y, variant=var, temperature=0.173,
                                                 b=3.0, alpha=1.5, valid=v),
        lambda x, y, var=var: ref_pnp(x, y, var, temperature=0.173, b=3.0, alpha=1.5))
       for var in ("Ds", "Dq", "Iu", "Ib")},
    "ranked_list": (lambda x, y, v: losses.ranked_list_loss(x, y, 0.4, tn=10.0, valid=v),
                    ref_ranked_list),
    "ranked_list_full": (
        lambda x, y, v: losses.ranked_list_loss(x, y, 0.6, tn=3.0, tp=2.0, imbalance=0.3,
                                                alpha=1.1, valid=v),
        lambda x, y: ref_ranked_list(x, y, 0.6, tn=3.0, tp=2.0, imbalance=0.3,
                                     alpha=1.1)),
}
BASE = ["smooth_ap", "pnp", "ranked_list"]  # the later tests: defaults only
run = Runner(CASES)


@pytest.mark.parametrize("kind", lc.kinds())
@pytest.mark.parametrize("name", [
    name if name in BASE else pytest.param(name, marks=pytest.mark.slow)
    for name in CASES])  # non-default parameters: one more compilation each, slow
def test_value_stats_and_gradient_match_brute_force(name, kind):
  x, y = make_batch(kind)
  gx = checks.value_and_stats_match(run, name, x, y)
  if name.startswith("ranked_list") and negatives_at_zero(x, y):
    # Two classes on one direction (ties, identical): any move puts the pair in the
    # negative list, a jump in PML's loss; no derivative to compare with.
    return
  checks.gradient_matches(run, name, x, y, gx)


@pytest.mark.parametrize("name", BASE)
def test_float32_matches_reference(name):
  checks.float32_matches(run, name)


@pytest.mark.parametrize("name", BASE)
def test_finite_on_every_batch_kind_and_a_zero_row(name):
  checks.finite_with_a_zero_row(run, name)


@pytest.mark.parametrize("kind", ["random", "singletons"])
@pytest.mark.parametrize("name", BASE)
def test_nan_in_gives_nan_out(name, kind):
  checks.nan_in_gives_nan_out(run, name, kind)


@pytest.mark.parametrize("name", BASE)
def test_padding_rows_are_ignored(name):
  checks.padding_rows_are_ignored(run, name)


@pytest.mark.parametrize("name", BASE)
def test_jit_and_vmap_agree_with_one_batch_at_a_time(name):
  checks.vmap_agrees_with_one_batch_at_a_time(run, name)


@pytest.mark.parametrize("name", ["smooth_ap", "ranked_list"])
def test_one_class_learns_nothing(name):
  # Smooth-AP: every item is a positive, AP = 1. RLL: no negative, and the positives of
  # a random batch are beyond alpha - margin only where the loss still pulls (checked by
  # the reference); identical rows: nothing at all.
  x, y = make_batch("identical")
  y = np.zeros_like(y)
  (loss, stats), gx = run(name, x, y)
  assert float(loss) == 0.0 and float(stats.num_active) == 0.0
  np.testing.assert_allclose(np.asarray(gx), 0.0, atol=1e-12)  # AP = R_P / R = 1
  if name == "smooth_ap":
    (loss, _), gx = run(name, make_batch("one_class")[0], y)
    assert float(loss) == 0.0
    np.testing.assert_allclose(np.asarray(gx), 0.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["singletons", "one_class"])
def test_pnp_learns_nothing_without_a_positive_or_a_negative(kind):
  (loss, stats), gx = run("pnp", *make_batch(kind))
  assert float(loss) == 0.0 and float(stats.num_active) == 0.0
  np.testing.assert_array_equal(np.asarray(gx), 0.0)


def test_smooth_ap_agrees_with_pmls_block_layout():
  # PML reads 3 classes x 3 samples in consecutive blocks right; the reference does not
  # use blocks at all, so a sorted batch of that layout must give the same loss.
  rng = np.random.default_rng(13)
  x = rng.normal(size=(9, 5))
  y = np.repeat(np.arange(3), 3).astype(np.int32)
  loss, _ = jax.jit(lambda a: losses.smooth_ap_loss(a, jnp.asarray(y)))(
      jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(float(loss), ref_smooth_ap(x, y)[0], rtol=1e-5)


def test_ranked_list_margin_is_traced():
  x, y = make_batch("random", seed=12)
  fn = jax.jit(lambda a, m: losses.ranked_list_loss(a, jnp.asarray(y), m, tn=10.0)[0])
  for m in (0.3, 0.5):
    np.testing.assert_allclose(float(fn(jnp.asarray(x, jnp.float32), m)),
                               ref_ranked_list(x, y, m)[0], rtol=1e-5)
  assert fn._cache_size() == 1


@pytest.mark.parametrize("call,match", [
    (lambda: losses.smooth_ap_loss(jnp.ones((4,)), jnp.zeros(4, int)), "embeddings"),
    (lambda: losses.smooth_ap_loss(jnp.ones((4, 2)), jnp.zeros(4, int), temperature=0),
     "temperature"),
    (lambda: losses.ranked_list_loss(jnp.ones((4, 2)), jnp.zeros(4, int), 0.4, tn=1.0,
                                     imbalance=2.0), "imbalance"),
    (lambda: losses.pnp_loss(jnp.ones((4, 2)), jnp.zeros(4, int), variant="X"), "variant"),
    (lambda: losses.pnp_loss(jnp.ones((4, 2)), jnp.zeros(4, int), b=0.0), "b must"),
    (lambda: losses.ranked_list_loss(jnp.ones((4, 2)), jnp.zeros(3, int), 0.4, tn=1.0),
     "labels"),
    (lambda: losses.ranked_list_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones(2),
                                     tn=1.0), "margin"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
