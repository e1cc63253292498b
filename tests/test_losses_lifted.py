"""Lifted structure losses against brute-force numpy loops written from their
definitions (PML's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import lse, unit
from tsm import losses


def dist(u, v, normalize=True):
  if normalize:
    u, v = unit(u), unit(v)
  return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def ref_lifted(x, y, neg_margin=1.0, pos_margin=0.0, normalize=True):
  n = len(y)
  d = [[dist(x[i], x[j], normalize) for j in range(n)] for i in range(n)]
  negs = {i: [k for k in range(n) if y[k] != y[i]] for i in range(n)}
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  if not any(negs.values()):
    pairs = []
  else:
    pairs = [(a, p) for a in range(n) for p in range(n) if a != p and y[a] == y[p]]
  total = 0.0
  for a, p in pairs:
    values = ([neg_margin - d[a][k] for k in negs[a]] +
              [neg_margin - d[p][k] for k in negs[p]])
    j = lse(values) + d[a][p] - pos_margin
    total += max(0.0, j) ** 2 / 2
    stats["num_total"] += 1
    stats["num_active"] += j > 0
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    if ps:
      for k in negs[a]:
        stats["num_neg_total"] += 1
        stats["num_neg_active"] += (neg_margin - d[a][k] + max(d[a][p] for p in ps)
                                    - pos_margin > 0)
  return total / max(len(pairs), 1), stats


def ref_generalized(x, y, neg_margin=1.0, pos_margin=0.0, normalize=True):
  n = len(y)
  d = [[dist(x[i], x[j], normalize) for j in range(n)] for i in range(n)]
  stats = dict(num_total=n, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    lp = lse([d[a][p] - pos_margin for p in ps]) if ps else 0.0
    ln = lse([neg_margin - d[a][k] for k in ns]) if ns else 0.0
    total += max(0.0, lp + ln)
    stats["num_active"] += lp + ln > 0
    for k in ns:
      stats["num_neg_total"] += 1
      stats["num_neg_active"] += lp + neg_margin - d[a][k] > 0
  return total / n, stats


CASES = {
    "lifted": lc.Case(lambda x, y, w, v: losses.lifted_structure_loss(x, y, valid=v),
                      lambda x, y, w: ref_lifted(x, y)),
    # Margins at which some pairs are inactive, on raw (unnormalised) distances.
    "lifted_raw": lc.Case(
        lambda x, y, w, v: losses.lifted_structure_loss(
            x, y, neg_margin=0.5, pos_margin=2.0, normalize=False, valid=v),
        lambda x, y, w: ref_lifted(x, y, 0.5, 2.0, normalize=False)),
    "generalized": lc.Case(
        lambda x, y, w, v: losses.generalized_lifted_structure_loss(x, y, valid=v),
        lambda x, y, w: ref_generalized(x, y)),
    "generalized_margins": lc.Case(
        lambda x, y, w, v: losses.generalized_lifted_structure_loss(
            x, y, neg_margin=0.2, pos_margin=1.0, valid=v),
        lambda x, y, w: ref_generalized(x, y, 0.2, 1.0)),
}


globals().update(lc.standard_tests(
    CASES, checked=["lifted", "generalized"], learns_nothing=("lifted",)))


def test_generalized_identical_rows_have_zero_gradient():
  # One class, every distance 0: log(B - 1) from the positives, nothing to move.
  (loss, _), (gx, _) = lc.run(CASES["generalized"],
                              np.ones((lc.B, lc.D)), np.zeros(lc.B, np.int32))
  np.testing.assert_allclose(float(loss), math.log(lc.B - 1), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(gx), 0.0)


def test_traced_margins_reuse_one_compilation():
  x, y = lc.make_batch("random")
  fn = jax.jit(lambda a, m: losses.lifted_structure_loss(a, jnp.asarray(y),
                                                         neg_margin=m)[0])
  for m in (0.5, 1.0):
    np.testing.assert_allclose(float(fn(jnp.asarray(x, jnp.float32), m)),
                               ref_lifted(x, y, neg_margin=m)[0], rtol=1e-5)
  assert fn._cache_size() == 1


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.lifted_structure_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                            reduction="avg"), "reduction"),
      (lambda: losses.generalized_lifted_structure_loss(jnp.ones((4, 2)), jnp.zeros(3, int)),
       "labels"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
