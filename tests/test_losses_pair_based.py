"""Tuplet margin, SNR contrastive and TCM losses against brute-force numpy loops.

Each reference is written from the loss's definition (PML's, see the docstrings): plain
Python loops over ordered pairs in float64, with ``math.acos`` for the tuplet margin and
the variances of explicit differences for the SNR distance, sharing no code with tsm.
Values, statistics and gradients (central finite differences of the reference) are
compared in float64 on the batches of ``test_loss_zoo``; one float32 case per loss checks
the production precision.
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
from test_loss_zoo import B, cos, make_batch, unit
from tsm import losses


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# ------------------------------------------------------------------- references


def ordered_pairs(y):
  n = len(y)
  pos = [(a, p) for a in range(n) for p in range(n) if a != p and y[a] == y[p]]
  neg = [(a, k) for a in range(n) for k in range(n) if y[a] != y[k]]
  return pos, neg


def ref_tuplet(x, y, margin=math.radians(5.73), scale=64.0):
  pos, neg = ordered_pairs(y)
  stats = dict(num_total=len(pos), num_active=0, num_neg_total=0, num_neg_active=0)
  z_pos = {}
  for a, p in pos:
    theta = math.acos(min(1.0, max(-1.0, cos(x[a], x[p]))))
    z_pos[a, p] = scale * math.cos(theta - margin)
  total = 0.0
  for a, p in pos:
    exps = [scale * cos(x[a], x[k]) - z_pos[a, p] for b, k in neg if b == a]
    top = max([0.0] + exps)
    total += top + math.log(math.exp(-top) + sum(math.exp(e - top) for e in exps))
    stats["num_active"] += bool(exps) and max(exps) > -1
  for a, k in neg:
    zs = [z for (b, _), z in z_pos.items() if b == a]
    if zs:
      stats["num_neg_total"] += 1
      stats["num_neg_active"] += scale * cos(x[a], x[k]) > min(zs) - 1
  if not pos or not neg:
    return 0.0, stats
  return total / len(pos), stats


def variance(v):
  m = sum(v) / len(v)
  return sum((t - m) ** 2 for t in v) / (len(v) - 1)


def snr(xi, xj):
  """PML's SNRDistance of normalised rows: var(x_i - x_j) / var(x_i); None if var 0."""
  a, b = unit(xi), unit(xj)
  signal = variance(a)
  return None if signal == 0 else variance([s - t for s, t in zip(a, b)]) / signal


def ref_snr(x, y, margin=1.0, positive_margin=0.0, reduction="mean_nonzero"):
  pos, neg = ordered_pairs(y)
  pos = [(a, p, snr(x[a], x[p])) for a, p in pos if snr(x[a], x[p]) is not None]
  neg = [(a, k, snr(x[a], x[k])) for a, k in neg if snr(x[a], x[k]) is not None]
  pulls = [max(0.0, d - positive_margin) for _, _, d in pos]
  pushes = [max(0.0, margin - d) for _, _, d in neg]

  def reduce(values):
    if reduction == "sum":
      return sum(values)
    if reduction == "mean":
      return sum(values) / max(len(values), 1)
    nonzero = [t for t in values if t > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0

  mean = lambda v: sum(v) / len(v) if v else 0.0
  stats = dict(num_pairs=len(pos) + len(neg), num_positive=len(pos),
               num_negative=len(neg),
               num_active=sum(t > 0 for t in pulls + pushes),
               num_negative_active=sum(t > 0 for t in pushes),
               mean_pos_dist=mean([d for _, _, d in pos]),
               mean_neg_dist=mean([d for _, _, d in neg]))
  return reduce(pulls) + reduce(pushes), stats


def ref_tcm(x, y, lp=1.0, lm=1.0, mp=0.9, mm=0.5):
  pos, neg = ordered_pairs(y)
  ps = [cos(x[a], x[p]) for a, p in pos]
  ns = [cos(x[a], x[k]) for a, k in neg]
  sel_p = [mp - t for t in ps if t <= mp]
  sel_n = [t - mm for t in ns if t >= mm]
  mean = lambda v: sum(v) / len(v) if v else 0.0
  stats = dict(num_pairs=len(pos) + len(neg), num_positive=len(pos),
               num_negative=len(neg), num_active=len(sel_p) + len(sel_n),
               num_negative_active=len(sel_n), mean_pos_dist=mean(ps),
               mean_neg_dist=mean(ns))
  return lp * mean(sel_p) + lm * mean(sel_n), stats


def tcm_on_threshold(x, y, mp=0.9, mm=0.5):
  """Whether a pair's cosine is (up to rounding) at its TCM threshold."""
  pos, neg = ordered_pairs(y)
  return (any(abs(cos(x[a], x[p]) - mp) < 1e-12 for a, p in pos) or
          any(abs(cos(x[a], x[k]) - mm) < 1e-12 for a, k in neg))


def snr_on_margin(x, y, margin):
  """Whether a negative pair's SNR distance is exactly ``margin``."""
  _, neg = ordered_pairs(y)
  return any(snr(x[a], x[k]) == margin for a, k in neg)


# ------------------------------------------------------- the cases under test

CASES = {
    "tuplet": (lambda x, y, v: losses.tuplet_margin_loss(x, y, valid=v), ref_tuplet),
    "tuplet_wide": (lambda x, y, v: losses.tuplet_margin_loss(x, y, margin=0.5, scale=8.0,
                                                              valid=v),
                    lambda x, y: ref_tuplet(x, y, margin=0.5, scale=8.0)),
    "snr": (lambda x, y, v: losses.snr_contrastive_loss(x, y, valid=v), ref_snr),
    "snr_margins_mean": (
        lambda x, y, v: losses.snr_contrastive_loss(x, y, 1.3, positive_margin=0.4,
                                                    reduction="mean", valid=v),
        lambda x, y: ref_snr(x, y, 1.3, 0.4, "mean")),
    "snr_sum": (lambda x, y, v: losses.snr_contrastive_loss(x, y, reduction="sum", valid=v),
                lambda x, y: ref_snr(x, y, reduction="sum")),
    "tcm": (lambda x, y, v: losses.tcm_loss(x, y, valid=v), ref_tcm),
    "tcm_weights": (lambda x, y, v: losses.tcm_loss(x, y, lambda_plus=0.3, lambda_minus=2.0,
                                                    margin_plus=0.71, margin_minus=0.13,
                                                    valid=v),
                    lambda x, y: ref_tcm(x, y, 0.3, 2.0, 0.71, 0.13)),
}
BASE = ["tuplet", "snr", "tcm"]  # the tests after the brute-force one: defaults only
run = Runner(CASES)


@pytest.mark.parametrize("kind", lc.kinds())
@pytest.mark.parametrize("name", [
    name if name in BASE else pytest.param(name, marks=pytest.mark.slow)
    for name in CASES])  # non-default parameters: one more compilation each, slow
def test_value_stats_and_gradient_match_brute_force(name, kind):
  x, y = make_batch(kind)
  if name == "tcm" and tcm_on_threshold(x, y):
    # The ties batch has pairs at cosine 0.9 / 0.5 exactly: which side rounding puts
    # them on decides the selection (and the loss jumps there). "tcm_weights" checks it.
    pytest.skip("pairs at the TCM thresholds exactly")
  gx = checks.value_and_stats_match(run, name, x, y)
  if name in ("snr", "snr_sum") and snr_on_margin(x, y, 1.0):
    # A negative pair exactly at the margin (the ties batch has two): the hinge's kink,
    # where the mean over non-zero terms also jumps; no derivative to compare with. The
    # ties batch's gradient is checked by "snr_margins_mean" (margin 1.3).
    return
  # A duplicated positive pair sits on the tuplet angle's |h| kink (theta = 0): tsm takes
  # the symmetric subgradient, which the central difference reaches only as O(h s^2).
  # All rows identical: every cosine stays 1 under a common move, the gradient is 0.
  # One duplicated pair among others (ties): a smaller step suffices.
  if name.startswith("tuplet") and kind == "identical":
    np.testing.assert_allclose(gx, 0.0, atol=1e-12)
    return
  h = 1e-8 if name.startswith("tuplet") and kind == "ties" else 1e-6
  checks.gradient_matches(run, name, x, y, gx, h=h)


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


@pytest.mark.parametrize("kind", ["singletons", "one_class"])
@pytest.mark.parametrize("name", ["tuplet", "tuplet_wide"])
def test_tuplet_learns_nothing_without_positive_or_negative_pairs(name, kind):
  (loss, stats), gx = run(name, *make_batch(kind))
  assert float(loss) == 0.0 and float(stats.num_active) == 0.0
  np.testing.assert_array_equal(np.asarray(gx), 0.0)


def test_snr_identical_embeddings_cost_only_the_negative_margin():
  # Every SNR distance is 0: positives cost nothing, every negative pair costs the margin.
  x, y = make_batch("identical")
  (loss, stats), gx = run("snr", x, y)
  assert float(loss) == 1.0
  assert float(stats.num_active) == float(stats.num_negative)
  np.testing.assert_allclose(np.asarray(gx), 0.0, atol=1e-6)


def test_snr_distance_is_pmls_variance_ratio_and_not_symmetric(x64):
  x, _ = make_batch("random", seed=11)
  dist, has_signal = jax.jit(losses.snr_distances)(jnp.asarray(x))
  want = np.array([[snr(x[i], x[j]) for j in range(B)] for i in range(B)])
  np.testing.assert_allclose(np.asarray(dist), want, rtol=1e-10, atol=1e-14)
  assert np.all(np.asarray(has_signal))
  assert not np.allclose(want, want.T)


def test_snr_margin_is_traced():
  x, y = make_batch("random", seed=12)
  fn = jax.jit(lambda a, m: losses.snr_contrastive_loss(a, jnp.asarray(y), m)[0])
  for m in (0.5, 1.5):
    np.testing.assert_allclose(float(fn(jnp.asarray(x, jnp.float32), m)),
                               ref_snr(x, y, m)[0], rtol=1e-5)
  assert fn._cache_size() == 1


@pytest.mark.parametrize("call,match", [
    (lambda: losses.tuplet_margin_loss(jnp.ones((4,)), jnp.zeros(4, int)), "embeddings"),
    (lambda: losses.tuplet_margin_loss(jnp.ones((4, 2)), jnp.zeros(4, int), margin=5.73),
     "radians"),
    (lambda: losses.tuplet_margin_loss(jnp.ones((4, 2)), jnp.zeros(4, int), scale=0),
     "scale"),
    (lambda: losses.snr_contrastive_loss(jnp.ones((4, 2)), jnp.zeros(3, int)), "labels"),
    (lambda: losses.snr_contrastive_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                         reduction="avg"), "reduction"),
    (lambda: losses.snr_contrastive_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                         jnp.ones(2)), "margin"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
