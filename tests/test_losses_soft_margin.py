"""Dynamic soft margin loss and its histogram against brute-force loops over triplets
written from their definitions (PML's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import unit
from tsm import losses

HIST = np.array([0.0, 0.0, 0.05, 0.1, 0.2, 0.25, 0.2, 0.1, 0.05, 0.05])  # weight from bin 2
UNIFORM = np.full(10, 0.1)


def margins(x, y):
  """``[(a, p, n, d_ap - d_an)]`` over the valid triplets."""
  n = len(y)
  u = [unit(r) for r in x]
  d = [[math.dist(u[i], u[j]) for j in range(n)] for i in range(n)]
  return [(a, p, k, d[a][p] - d[a][k]) for a in range(n) for p in range(n)
          for k in range(n) if p != a and y[p] == y[a] and y[k] != y[a]]


def bin_of(t, min_val, delta, num_bins):
  return min(max(math.floor((t - min_val) / delta), 0), num_bins - 1)


def ref_update(hist, x, y, min_val=-2.0, num_bins=10, momentum=0.01):
  ts = [t for *_, t in margins(x, y)]
  if not ts:
    return np.asarray(hist, float)
  delta = 2 * abs(min_val) / num_bins
  masses = [0.0] * num_bins
  for t in ts:
    t = min(max(t, min_val), min_val + (num_bins - 1) * delta)
    k = bin_of(t, min_val, delta, num_bins)
    frac = (t - min_val) / delta - k if k < num_bins - 1 else 0.0
    masses[k] += 1 - frac
    if frac:
      masses[k + 1] += frac
  m = momentum if sum(hist) != 0 else 1.0
  new = [(1 - m) * h + m * c for h, c in zip(hist, masses)]
  return np.array(new) / sum(new)


def ref_dsm(x, y, hist, min_val=-2.0, num_bins=10, reduction="mean"):
  delta = 2 * abs(min_val) / num_bins
  cdf = np.cumsum(hist)
  triplets = margins(x, y)
  stats = dict(num_total=len(triplets), num_active=0, num_neg_total=0, num_neg_active=0)
  total, pair_on = 0.0, {}
  for a, _, k, t in triplets:
    weight = cdf[bin_of(t, min_val, delta, num_bins)]
    total += weight * t
    stats["num_active"] += weight > 0
    pair_on[(a, k)] = pair_on.get((a, k), False) or weight > 0
  stats["num_neg_total"] = len(pair_on)
  stats["num_neg_active"] = sum(pair_on.values())
  denominator = {"mean": len(triplets), "sum": 1, "mean_nonzero": stats["num_active"]}
  return total / max(denominator[reduction], 1), stats


CASES = {
    "dsm": lc.Case(lambda x, y, w, v: losses.dynamic_soft_margin_loss(
        x, y, jnp.asarray(HIST, x.dtype), valid=v),
                   lambda x, y, w: ref_dsm(x, y, HIST), edge_kinds=("ties", "identical")),
    "dsm_uniform_sum": lc.Case(lambda x, y, w, v: losses.dynamic_soft_margin_loss(
        x, y, jnp.asarray(UNIFORM, x.dtype), reduction="sum", valid=v),
                               lambda x, y, w: ref_dsm(x, y, UNIFORM, reduction="sum"),
                               edge_kinds=("ties", "identical")),
    "dsm_narrow_nonzero": lc.Case(lambda x, y, w, v: losses.dynamic_soft_margin_loss(
        x, y, jnp.asarray(HIST[:6] / HIST[:6].sum(), x.dtype), min_val=-0.5, num_bins=6,
        reduction="mean_nonzero", valid=v),
                                  lambda x, y, w: ref_dsm(x, y, HIST[:6] / HIST[:6].sum(),
                                                          -0.5, 6, "mean_nonzero"),
                                  edge_kinds=("ties", "identical")),
}


globals().update(lc.standard_tests(CASES, checked=["dsm"], learns_nothing=("dsm",)))


_UPDATE = jax.jit(losses.update_soft_margin_histogram,
                  static_argnames=("min_val", "num_bins"))


# Not "ties": under jit the Euclidean distance of two equal rows is ~1e-8, not 0 (the
# square root of the Gram form's rounding residue), which moves their margins by that.
@pytest.mark.parametrize("kind", [k for k in lc.KINDS if k != "ties"])
@pytest.mark.parametrize("start", ["empty", "running"])
def test_histogram_update_matches_brute_force(kind, start):
  x, y = lc.make_batch(kind, seed=2)
  hist = np.zeros(10) if start == "empty" else HIST
  with jax.enable_x64(True):
    got = _UPDATE(jnp.asarray(hist), jnp.asarray(x), jnp.asarray(y), momentum=0.3)
  np.testing.assert_allclose(np.asarray(got), ref_update(hist, x, y, momentum=0.3),
                             rtol=1e-9, atol=1e-12)


def test_histogram_update_with_other_bins_and_padding():
  x, y = lc.make_batch("random", seed=4)
  keep = np.arange(lc.B) != 5
  with jax.enable_x64(True):
    got = _UPDATE(jnp.asarray(UNIFORM[:4]), jnp.asarray(x), jnp.asarray(y), min_val=-1.0,
                  num_bins=4, momentum=0.5, valid=jnp.asarray(keep))
  np.testing.assert_allclose(
      np.asarray(got), ref_update(UNIFORM[:4], x[keep], y[keep], -1.0, 4, 0.5),
      rtol=1e-9, atol=1e-12)


def test_parametric_updates_the_histogram_then_scores_and_never_trains_it():
  pl = losses.dynamic_soft_margin(momentum=0.2)
  variables = pl.init(jax.random.PRNGKey(0), lc.D)
  assert variables.params == {}
  np.testing.assert_array_equal(variables.state["histogram"], np.zeros(10))
  state = variables.state
  apply = jax.jit(pl.apply)
  want_hist = np.zeros(10)
  for seed in (0, 1):
    x, y = lc.make_batch("random", seed=seed)
    loss, stats, state = apply({}, state, jnp.asarray(x, jnp.float32), jnp.asarray(y), 0.3)
    want_hist = ref_update(want_hist, x, y, momentum=0.2)
    np.testing.assert_allclose(state["histogram"], want_hist, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(loss), ref_dsm(x, y, want_hist)[0], rtol=1e-4,
                               atol=1e-6)
  x, y = lc.make_batch("random")
  g = jax.jit(jax.grad(lambda s: pl.apply({}, s, jnp.asarray(x, jnp.float32),
                                          jnp.asarray(y), 0.0)[0]))(state)
  np.testing.assert_array_equal(g["histogram"], 0.0)


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.dynamic_soft_margin(num_bins=0), "num_bins"),
      (lambda: losses.dynamic_soft_margin(min_val=1.0), "min_val"),
      (lambda: losses.dynamic_soft_margin(momentum=2.0), "momentum"),
      (lambda: losses.dynamic_soft_margin_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                               jnp.ones(3)), "histogram"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
