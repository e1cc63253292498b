"""Instance loss against a brute-force loop written from its definition (PML's and the
authors' code: targets from ``unique(labels, return_inverse=True)``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos, lse
from tsm import losses


def ref_instance(x, y, gamma=64.0, reduction="mean"):
  n = len(y)
  _, target = np.unique(y, return_inverse=True)
  stats = dict(num_total=n, num_active=0, num_neg_total=0, num_neg_active=0)
  per_sample = []
  for i in range(n):
    z = [gamma * cos(x[i], x[j]) for j in range(n)]
    t = int(target[i])
    per_sample.append(lse(z) - z[t])
    others = [z[j] for j in range(n) if j != t]
    stats["num_active"] += max(others) > z[t] - 1
    stats["num_neg_total"] += len(others)
    stats["num_neg_active"] += sum(o > z[t] - 1 for o in others)
  if reduction == "sum":
    return sum(per_sample), stats
  return sum(per_sample) / n, stats


CASES = {
    "instance": lc.Case(lambda x, y, w, v: losses.instance_loss(x, y, valid=v),
                        lambda x, y, w: ref_instance(x, y)),
    "instance_small_sum": lc.Case(
        lambda x, y, w, v: losses.instance_loss(x, y, gamma=2.0, reduction="sum", valid=v),
        lambda x, y, w: ref_instance(x, y, 2.0, "sum")),
}


globals().update(lc.standard_tests(CASES, checked=["instance"]))


def test_each_sample_its_own_class_targets_itself():
  # labels = arange(B), the paper's instances: the target logit is the self-similarity.
  x, _ = lc.make_batch("random", seed=5)
  loss, _ = jax.jit(lambda a: losses.instance_loss(a, jnp.arange(lc.B), gamma=8.0))(
      jnp.asarray(x, jnp.float32))
  z = [[8.0 * cos(x[i], x[j]) for j in range(lc.B)] for i in range(lc.B)]
  want = np.mean([lse(z[i]) - z[i][i] for i in range(lc.B)])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.instance_loss(jnp.ones((4, 2)), jnp.zeros(4, int), gamma=0), "gamma"),
      (lambda: losses.instance_loss(jnp.ones((4, 2)), jnp.zeros(4, int), reduction="x"),
       "reduction"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
