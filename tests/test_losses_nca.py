"""NCA loss against a brute-force numpy loop written from its definition (PML's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import lse, unit
from tsm import losses


def ref_nca(x, y, softmax_scale=1.0, normalize=True, reduction="mean"):
  n = len(y)
  u = [unit(r) if normalize else list(r) for r in x]
  z = [[-softmax_scale * sum((a - b) ** 2 for a, b in zip(u[i], u[j])) for j in range(n)]
       for i in range(n)]
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  per_sample = []
  for i in range(n):
    ps = [p for p in range(n) if p != i and y[p] == y[i]]
    ns = [k for k in range(n) if y[k] != y[i]]
    if not ps:
      continue
    per_sample.append(lse([z[i][j] for j in range(n) if j != i]) -
                      lse([z[i][p] for p in ps]))
    best = max(z[i][p] for p in ps)
    stats["num_total"] += 1
    stats["num_active"] += bool(ns) and max(z[i][k] for k in ns) > best - 1
    stats["num_neg_total"] += len(ns)
    stats["num_neg_active"] += sum(z[i][k] > best - 1 for k in ns)
  if reduction == "sum":
    return sum(per_sample), stats
  if reduction == "mean_nonzero":
    per_sample = [t for t in per_sample if t > 0]
  return sum(per_sample) / max(len(per_sample), 1), stats


CASES = {
    "nca": lc.Case(lambda x, y, w, v: losses.nca_loss(x, y, valid=v),
                   lambda x, y, w: ref_nca(x, y)),
    "nca_raw_scaled": lc.Case(
        lambda x, y, w, v: losses.nca_loss(x, y, softmax_scale=0.3, normalize=False,
                                           reduction="mean_nonzero", valid=v),
        lambda x, y, w: ref_nca(x, y, 0.3, False, "mean_nonzero")),
}


globals().update(lc.standard_tests(CASES, checked=["nca"], learns_nothing=("nca",)))


def test_far_positive_keeps_a_finite_loss_where_pml_drops_the_sample():
  # The positive is 60 units further than the negative on raw distances: its softmax
  # weight exp(-3600) underflows, PML would drop the sample; the loss here is d^2 gaps.
  x = jnp.array([[0.0], [60.0], [0.0], [1.0]])
  y = jnp.array([0, 0, 1, 1])
  fn = jax.jit(jax.value_and_grad(
      lambda a: losses.nca_loss(a, y, normalize=False, reduction="sum")[0]))
  loss, g = fn(x)
  want = ref_nca(np.asarray(x, np.float64), np.asarray(y), normalize=False,
                 reduction="sum")[0]
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert want > 3000 and np.all(np.isfinite(g))


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.nca_loss(jnp.ones((4, 2)), jnp.zeros(4, int), softmax_scale=0),
       "softmax_scale"),
      (lambda: losses.nca_loss(jnp.ones((4, 2)), jnp.zeros(4), reduction="mean"), "labels"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
