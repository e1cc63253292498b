"""Margin loss (Wu et al., PML's all-triplets form) against a brute-force loop over
triplets written from its definition (PML's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import fd_grad, unit
from tsm import losses

BETA = np.linspace(0.9, 1.5, lc.C)  # one boundary per class


def dist(u, v):
  u, v = unit(u), unit(v)
  return sum((a - b) ** 2 for a, b in zip(u, v)) ** 0.5


def ref_margin(x, y, margin=0.2, beta=1.2, nu=0.0, reduction="mean_nonzero"):
  n = len(y)
  d = [[dist(x[i], x[j]) for j in range(n)] for i in range(n)]
  per_class = np.ndim(beta) == 1
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  total, divisor, reg = 0.0, 0, 0.0
  for a in range(n):
    b = beta[y[a]] if per_class else beta
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    for p in ps:
      for k in ns:
        pos = max(0.0, d[a][p] - b + margin)
        neg = max(0.0, b - d[a][k] + margin)
        total += pos + neg
        divisor += int(pos > 0) + int(neg > 0)  # (numpy bools would add as "or")
        reg += nu * b
        stats["num_total"] += 1
        stats["num_active"] += pos > 0 or neg > 0
    if ps:
      stats["num_neg_total"] += len(ns)
      stats["num_neg_active"] += sum(d[a][k] < b + margin for k in ns)
  denominator = {"mean_nonzero": divisor, "mean": stats["num_total"], "sum": 1}[reduction]
  loss = total / denominator if denominator else 0.0
  if nu and stats["num_total"]:
    loss += reg / denominator if per_class else nu * beta
  return loss, stats


CASES = {
    "margin": lc.Case(lambda x, y, w, v: losses.margin_loss(x, y, valid=v),
                      lambda x, y, w: ref_margin(x, y)),
    "margin_class_beta_nu": lc.Case(
        lambda x, y, w, v: losses.margin_loss(x, y, beta=jnp.asarray(BETA, x.dtype),
                                              nu=0.1, valid=v),
        lambda x, y, w: ref_margin(x, y, beta=BETA, nu=0.1)),
    "margin_mean_nu": lc.Case(
        lambda x, y, w, v: losses.margin_loss(x, y, margin=0.05, beta=1.0, nu=0.3,
                                              reduction="mean", valid=v),
        lambda x, y, w: ref_margin(x, y, 0.05, 1.0, 0.3, "mean")),
}


globals().update(lc.standard_tests(
    CASES, checked=["margin"], learns_nothing=("margin",)))


@pytest.mark.parametrize("num_classes", [None, lc.C])
def test_learnt_beta_init_apply_and_gradient(num_classes):
  pl = losses.margin_beta(num_classes, nu=0.1)
  variables = pl.init(jax.random.PRNGKey(0), lc.D)
  beta = variables.params["beta"]
  assert beta.shape == (() if num_classes is None else (lc.C,)) and variables.state == {}
  np.testing.assert_array_equal(beta, np.float32(1.2))
  x, y = lc.make_batch("random", seed=8)
  beta = np.asarray(BETA if num_classes else 1.1)  # away from the init: a general point
  with jax.enable_x64(True):
    fn = jax.jit(jax.value_and_grad(
        lambda p, s: pl.apply(p, {}, jnp.asarray(x), jnp.asarray(y), s)[0]))
    loss, g = fn({"beta": jnp.asarray(beta)}, 0.25)
  np.testing.assert_allclose(float(loss), ref_margin(x, y, beta=beta, nu=0.1)[0],
                             rtol=1e-9)
  want = fd_grad(lambda b: ref_margin(x, y, beta=b if b.ndim else float(b), nu=0.1)[0],
                 beta.astype(np.float64))
  np.testing.assert_allclose(np.asarray(g["beta"]), want, rtol=1e-5, atol=1e-7)
  # The schedule's margin is used only with margin_from_schedule.
  scheduled = losses.margin_beta(num_classes, nu=0.1, margin_from_schedule=True)
  loss_m, _, _ = jax.jit(scheduled.apply)({"beta": jnp.asarray(beta, jnp.float32)}, {},
                                          jnp.asarray(x, jnp.float32), jnp.asarray(y), 0.25)
  np.testing.assert_allclose(float(loss_m),
                             ref_margin(x, y, 0.25, beta=beta, nu=0.1)[0], rtol=1e-5)


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.margin_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                  beta=jnp.ones((2, 2))), "beta"),
      (lambda: losses.margin_beta(0), "num_classes"),
      (lambda: losses.margin_loss(jnp.ones((4, 2)), jnp.zeros(4, int), reduction="x"),
       "reduction"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
