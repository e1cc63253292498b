"""Intra-pair variance loss against a brute-force loop over pairs written from its
definition (PML's)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos
from tsm import losses


def ref_ipv(x, y, pos_eps=0.01, neg_eps=0.01, reduction="mean"):
  n = len(y)
  pos = [(a, p) for a in range(n) for p in range(n) if a != p and y[a] == y[p]]
  neg = [(a, k) for a in range(n) for k in range(n) if y[a] != y[k]]
  stats = dict(num_total=len(pos) + len(neg), num_active=0, num_neg_total=len(neg),
               num_neg_active=0)
  loss = 0.0
  for pairs, part in ((pos, "pos"), (neg, "neg")):
    if not pairs:
      continue
    sims = [cos(x[i], x[j]) for i, j in pairs]
    mu = sum(sims) / len(sims)
    if part == "pos":
      terms = [max(0.0, (1 - pos_eps) * mu - s) ** 2 for s in sims]
    else:
      terms = [max(0.0, s - (1 + neg_eps) * mu) ** 2 for s in sims]
    nonzero = [t for t in terms if t > 0]
    stats["num_active"] += len(nonzero)
    if part == "neg":
      stats["num_neg_active"] += len(nonzero)
    if reduction == "sum":
      loss += sum(terms)
    elif reduction == "mean":
      loss += sum(terms) / len(terms)
    elif nonzero:
      loss += sum(nonzero) / len(nonzero)
  return loss, stats


CASES = {
    "ipv": lc.Case(lambda x, y, w, v: losses.intra_pair_variance_loss(x, y, valid=v),
                   lambda x, y, w: ref_ipv(x, y)),
    "ipv_nonzero": lc.Case(
        lambda x, y, w, v: losses.intra_pair_variance_loss(
            x, y, pos_eps=0.2, neg_eps=-0.3, reduction="mean_nonzero", valid=v),
        lambda x, y, w: ref_ipv(x, y, 0.2, -0.3, "mean_nonzero")),
}


globals().update(lc.standard_tests(CASES, checked=["ipv"]))


def test_identical_embeddings_learn_nothing():
  # Every similarity is 1: no spread, no loss (1 - eps < 1 and 1 < 1 + eps).
  (loss, stats), (gx, _) = lc.run(CASES["ipv"], *lc.make_batch("identical"))
  assert float(loss) == 0.0 and float(stats.num_active) == 0.0
  np.testing.assert_array_equal(np.asarray(gx), 0.0)


def test_bad_inputs_raise_one_line_value_errors():
  with pytest.raises(ValueError, match="reduction") as info:
    losses.intra_pair_variance_loss(jnp.ones((4, 2)), jnp.zeros(4, int), reduction="x")
  assert "\n" not in str(info.value)
