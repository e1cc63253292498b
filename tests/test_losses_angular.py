"""Angular loss against a brute-force loop over (anchor, positive, negative) written from
its definition (the paper's, as PML with normalised negatives)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import lse, unit
from tsm import losses


def dot(u, v):
  return sum(a * b for a, b in zip(u, v))


def ref_angular(x, y, alpha=math.radians(40.0), reduction="mean"):
  n = len(y)
  u = [unit(r) for r in x]
  t = math.tan(alpha) ** 2
  f = lambda a, p, k: (4 * t * dot([i + j for i, j in zip(u[a], u[p])], u[k])
                       - 2 * (1 + t) * dot(u[a], u[p]))
  negs = {a: [k for k in range(n) if y[k] != y[a]] for a in range(n)}
  pairs = [(a, p) for a in range(n) for p in range(n) if a != p and y[a] == y[p]]
  if not any(negs.values()):
    pairs = []
  stats = dict(num_total=len(pairs), num_active=0, num_neg_total=0, num_neg_active=0)
  per_pair = []
  for a, p in pairs:
    ls = lse([f(a, p, k) for k in negs[a]])
    per_pair.append(math.log1p(math.exp(ls)))
    stats["num_active"] += ls >= -1
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    if ps:
      for k in negs[a]:
        stats["num_neg_total"] += 1
        stats["num_neg_active"] += lse([f(a, p, k) for p in ps]) >= -1
  if reduction == "sum":
    return sum(per_pair), stats
  return sum(per_pair) / max(len(per_pair), 1), stats


CASES = {
    "angular": lc.Case(lambda x, y, w, v: losses.angular_loss(x, y, valid=v),
                       lambda x, y, w: ref_angular(x, y)),
    "angular_wide_sum": lc.Case(
        lambda x, y, w, v: losses.angular_loss(x, y, alpha=1.2, reduction="sum", valid=v),
        lambda x, y, w: ref_angular(x, y, 1.2, "sum")),
}


globals().update(lc.standard_tests(
    CASES, checked=["angular"], learns_nothing=("angular",)))


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.angular_loss(jnp.ones((4, 2)), jnp.zeros(4, int), alpha=40.0),
       "radians"),
      (lambda: losses.angular_loss(jnp.ones((4, 2)), jnp.zeros(4, int), reduction="x"),
       "reduction"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
