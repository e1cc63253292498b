"""The histogram losses, FastAP and the histogram loss, against brute-force numpy loops
written from their definitions (PML's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos, unit
from tsm import losses


def ref_fast_ap(x, y, num_bins=10, reduction="mean"):
  n = len(y)
  u = [unit(r) for r in x]
  d = [[sum((a - b) ** 2 for a, b in zip(u[i], u[j])) for j in range(n)] for i in range(n)]
  delta = 4.0 / num_bins
  centres = [l * delta for l in range(num_bins + 1)]
  pulse = lambda t, c: max(0.0, 1 - abs(t - c) / delta)
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  per_anchor = []
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    if not ps:
      continue
    hp = [sum(pulse(d[a][p], c) for p in ps) for c in centres]
    hn = [sum(pulse(d[a][k], c) for k in ns) for c in centres]
    fast_ap = 0.0
    for l in range(num_bins + 1):
      big_hp, big_h = sum(hp[:l + 1]), sum(hp[:l + 1]) + sum(hn[:l + 1])
      if hp[l] * big_hp > 0 and big_h > 0:
        fast_ap += hp[l] * big_hp / big_h
    per_anchor.append(1 - fast_ap / len(ps))
    stats["num_total"] += 1
    overlap = any(hp[l] > 0 and sum(hn[:l + 1]) > 0 for l in range(num_bins + 1))
    stats["num_active"] += overlap
    last = max(l for l in range(num_bins + 1) if hp[l] > 0)
    for k in ns:
      stats["num_neg_total"] += 1
      stats["num_neg_active"] += min(l for l, c in enumerate(centres)
                                     if pulse(d[a][k], c) > 0) <= last
  if reduction == "sum":
    return sum(per_anchor), stats
  return sum(per_anchor) / max(len(per_anchor), 1), stats


def ref_histogram(x, y, num_bins=100):
  n = len(y)
  delta = 2.0 / num_bins
  has_pos = [any(y[j] == y[i] for j in range(n) if j != i) for i in range(n)]
  has_neg = [any(y[j] != y[i] for j in range(n)) for i in range(n)]
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  if not any(p and q for p, q in zip(has_pos, has_neg)):
    return 0.0, stats
  pos = [(i, j) for i in range(n) for j in range(i + 1, n) if y[i] == y[j] and has_neg[i]]
  neg = [(i, j) for i in range(n) for j in range(i + 1, n)
         if y[i] != y[j] and (has_pos[i] or has_pos[j])]

  def spread(pairs):
    """Per pair: {node: weight}, linear interpolation between the two nearest nodes."""
    out = []
    for i, j in pairs:
      t = (cos(x[i], x[j]) + 1) / delta
      r = min(max(math.floor(t), 0), num_bins - 1)
      out.append({r: r + 1 - t, r + 1: t - r})
    return out

  wp, wn = spread(pos), spread(neg)
  p_pos = [sum(w.get(r, 0.0) for w in wp) / len(wp) for r in range(num_bins + 1)]
  p_neg = [sum(w.get(r, 0.0) for w in wn) / len(wn) for r in range(num_bins + 1)]
  phi = [sum(p_pos[:r + 1]) for r in range(num_bins + 1)]
  tail = [sum(p_neg[r:]) for r in range(num_bins + 1)]
  stats["num_total"] = len(pos) + len(neg)
  stats["num_neg_total"] = len(neg)
  for w in wn:
    on = sum(v * phi[r] for r, v in w.items()) > 0
    stats["num_active"] += on
    stats["num_neg_active"] += on
  for w in wp:
    stats["num_active"] += sum(v * tail[r] for r, v in w.items()) > 0
  return sum(a * b for a, b in zip(p_neg, phi)), stats


CASES = {
    "fast_ap": lc.Case(lambda x, y, w, v: losses.fast_ap_loss(x, y, valid=v),
                       lambda x, y, w: ref_fast_ap(x, y), edge_kinds=("ties",)),
    "fast_ap_coarse_sum": lc.Case(
        lambda x, y, w, v: losses.fast_ap_loss(x, y, num_bins=3, reduction="sum", valid=v),
        lambda x, y, w: ref_fast_ap(x, y, 3, "sum"), edge_kinds=("ties",)),
    "histogram": lc.Case(lambda x, y, w, v: losses.histogram_loss(x, y, valid=v),
                         lambda x, y, w: ref_histogram(x, y), edge_kinds=("ties",)),
    "histogram_coarse": lc.Case(
        lambda x, y, w, v: losses.histogram_loss(x, y, num_bins=7, valid=v),
        lambda x, y, w: ref_histogram(x, y, 7), edge_kinds=("ties",)),
}
NAMES = ["fast_ap", "histogram"]


globals().update(lc.standard_tests(CASES, checked=NAMES, learns_nothing=tuple(NAMES)))


def test_separated_classes_cost_nothing():
  # Two tight, opposite classes: every negative pair is less similar than every positive
  # pair, and FastAP ranks every positive first.
  x = jnp.array([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
  (ap, ap_stats), (hist, hist_stats) = jax.jit(
      lambda a, b: (losses.fast_ap_loss(a, b), losses.histogram_loss(a, b)))(
          x, jnp.array([0, 0, 1, 1]))
  assert float(ap) == 0.0 and float(hist) == 0.0
  assert float(ap_stats.num_active) == 0.0 and float(hist_stats.num_active) == 0.0


def test_identical_directions_go_on_the_last_node():
  # cos = 1 exactly: every pair on the last node; negatives tie positives there.
  x = jnp.ones((4, 3))
  loss, stats = jax.jit(losses.histogram_loss)(x, jnp.array([0, 0, 1, 1]))
  np.testing.assert_allclose(float(loss), 1.0, rtol=1e-5)  # float32 node arithmetic
  assert float(stats.num_active) == float(stats.num_total) == 6


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.fast_ap_loss(jnp.ones((4, 2)), jnp.zeros(4, int), num_bins=0),
       "num_bins"),
      (lambda: losses.histogram_loss(jnp.ones((4, 2)), jnp.zeros(4, int), num_bins=2.5),
       "num_bins"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
