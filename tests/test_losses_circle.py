"""Circle loss against a brute-force numpy loop written from its definition (PML's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos, lse
from tsm import losses


def softplus(t):
  return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


def ref_circle(x, y, m=0.4, gamma=80.0, at=None, reduction="mean_nonzero"):
  """Circle loss; the weights alpha_p, alpha_n are taken from the batch ``at``."""
  at = x if at is None else at
  n = len(y)
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  per_anchor = []
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    if not ps or not ns:
      continue
    zp = [-gamma * max(0.0, 1 + m - cos(at[a], at[p])) * (cos(x[a], x[p]) - (1 - m))
          for p in ps]
    zn = [gamma * max(0.0, cos(at[a], at[k]) + m) * (cos(x[a], x[k]) - m) for k in ns]
    per_anchor.append(softplus(lse(zp) + lse(zn)))
    stats["num_total"] += 1
    stats["num_active"] += max(zp) + max(zn) >= -1
    for z in zn:
      stats["num_neg_total"] += 1
      stats["num_neg_active"] += z + max(zp) >= -1
  nonzero = [t for t in per_anchor if t > 0]
  if reduction == "sum":
    return sum(per_anchor), stats
  if reduction == "mean":
    return sum(per_anchor) / max(len(per_anchor), 1), stats
  return sum(nonzero) / max(len(nonzero), 1), stats


CASES = {
    "circle": lc.Case(
        lambda x, y, w, v: losses.circle_loss(x, y, valid=v),
        lambda x, y, w: ref_circle(x, y),
        grad_ref=lambda x, y, w, at: ref_circle(x, y, at=at)[0]),
    "circle_reid_mean": lc.Case(
        lambda x, y, w, v: losses.circle_loss(x, y, m=0.25, gamma=128.0, reduction="mean",
                                              valid=v),
        lambda x, y, w: ref_circle(x, y, 0.25, 128.0, reduction="mean"),
        grad_ref=lambda x, y, w, at: ref_circle(x, y, 0.25, 128.0, at=at,
                                                reduction="mean")[0]),
    "circle_sum": lc.Case(
        lambda x, y, w, v: losses.circle_loss(x, y, gamma=2.0, reduction="sum", valid=v),
        lambda x, y, w: ref_circle(x, y, gamma=2.0, reduction="sum"),
        grad_ref=lambda x, y, w, at: ref_circle(x, y, gamma=2.0, at=at,
                                                reduction="sum")[0]),
}


globals().update(lc.standard_tests(
    CASES, checked=["circle"], learns_nothing=("circle",)))


def test_by_hand():
  # Two classes on the unit circle: s_ap = cos(0.2), s_an = cos(1.2) for both anchors.
  x = jnp.array([[1.0, 0.0], [math.cos(0.2), math.sin(0.2)], [0.0, 0.0], [0.0, 0.0]])
  x = x.at[2].set(jnp.array([math.cos(1.2), math.sin(1.2)]))
  x = x.at[3].set(jnp.array([math.cos(1.4), math.sin(1.4)]))
  y = jnp.array([0, 0, 1, 1])
  m, g = 0.25, 4.0
  loss, stats = jax.jit(lambda a: losses.circle_loss(a, y, m=m, gamma=g))(x)
  want = 0.0
  for sp, sns in ((math.cos(0.2), (math.cos(1.2), math.cos(1.4))),
                  (math.cos(0.2), (math.cos(1.0), math.cos(1.2))),
                  (math.cos(0.2), (math.cos(1.2), math.cos(1.0))),
                  (math.cos(0.2), (math.cos(1.4), math.cos(1.2)))):
    zp = -g * (1 + m - sp) * (sp - 1 + m)
    zn = [g * (sn + m) * (sn - m) for sn in sns]
    want += math.log1p(sum(math.exp(zp + z) for z in zn)) / 4
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert float(stats.num_total) == 4


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.circle_loss(jnp.ones((4, 2)), jnp.zeros(4, int), gamma=0.0), "gamma"),
      (lambda: losses.circle_loss(jnp.ones((4, 2)), jnp.zeros(4, int), reduction="avg"),
       "reduction"),
      (lambda: losses.circle_loss(jnp.ones((4,)), jnp.zeros(4, int)), "embeddings"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
