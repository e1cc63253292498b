"""CosFace and L-Softmax against brute-force numpy loops written from their definitions
(PML's); L-Softmax's ``psi`` from ``math.cos(m * acos(c))``, not the multiple-angle
polynomial tsm evaluates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos, lse
from tsm import losses


def _softmax_terms(logits_per_sample, y):
  stats = dict(num_total=len(y), num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for i, logits in enumerate(logits_per_sample):
    target = logits[y[i]]
    total += lse(logits) - target
    others = [z for k, z in enumerate(logits) if k != y[i]]
    stats["num_active"] += max(others) > target - 1
    stats["num_neg_total"] += len(others)
    stats["num_neg_active"] += sum(z > target - 1 for z in others)
  return total / len(y), stats


def ref_cosface(x, y, w, margin=0.35, scale=64.0):
  return _softmax_terms(
      [[scale * (cos(x[i], w[k]) - (margin if k == y[i] else 0.0)) for k in range(len(w))]
       for i in range(len(y))], y)


def norm(v):
  return math.sqrt(sum(t * t for t in v))


def ref_lsoftmax(x, y, w, margin=4, scale=1.0):
  rows = []
  for i in range(len(y)):
    logits = []
    for k in range(len(w)):
      c = cos(x[i], w[k])
      if k == y[i]:
        theta = math.acos(min(1.0, max(-1.0, c)))
        j = math.floor(theta / (math.pi / margin))
        c = (-1) ** j * math.cos(margin * theta) - 2 * j
      logits.append(scale * norm(x[i]) * norm(w[k]) * c)
    rows.append(logits)
  return _softmax_terms(rows, y)


CASES = {
    "cosface": lc.Case(lambda x, y, w, v: losses.cosface_loss(x, y, w, valid=v),
                       ref_cosface, with_w=True),
    "cosface_small": lc.Case(
        lambda x, y, w, v: losses.cosface_loss(x, y, w, margin=0.1, scale=4.0, valid=v),
        lambda x, y, w: ref_cosface(x, y, w, 0.1, 4.0), with_w=True),
    "lsoftmax": lc.Case(lambda x, y, w, v: losses.large_margin_softmax_loss(x, y, w, valid=v),
                        ref_lsoftmax, with_w=True),
    "lsoftmax_m3": lc.Case(
        lambda x, y, w, v: losses.large_margin_softmax_loss(x, y, w, margin=3, scale=0.5,
                                                            valid=v),
        lambda x, y, w: ref_lsoftmax(x, y, w, 3, 0.5), with_w=True),
}
NAMES = ["cosface", "lsoftmax"]


globals().update(lc.standard_tests(CASES, checked=NAMES))


def test_lsoftmax_psi_by_hand_across_the_angle_bands():
  # One class weight at angle 0, the sample at theta: psi(theta) for m = 2 is cos(2t) on
  # [0, pi/2) and -cos(2t) - 2 on [pi/2, pi]; a second class at pi/2 gives cos = sin t.
  w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  fn = jax.jit(jax.value_and_grad(
      lambda a: losses.large_margin_softmax_loss(a, jnp.array([0]), w, margin=2)[0]))
  for theta in (0.3, 1.2, 2.0, 3.0, math.pi):
    loss, g = fn(jnp.array([[2.0 * math.cos(theta), 2.0 * math.sin(theta)]]))
    psi = math.cos(2 * theta) if theta < math.pi / 2 else -math.cos(2 * theta) - 2
    target, other = 2.0 * psi, 2.0 * math.sin(theta)
    np.testing.assert_allclose(float(loss), math.log1p(math.exp(other - target)),
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(g))


def test_lsoftmax_margin_one_is_the_plain_softmax():
  x, y = lc.make_batch("random", seed=4)
  w = lc.class_vectors()
  loss, _ = jax.jit(lambda a, b, c: losses.large_margin_softmax_loss(a, b, c, margin=1))(
      jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(w, jnp.float32))
  z = x @ w.T
  want = np.mean([lse(list(z[i])) - z[i, y[i]] for i in range(len(y))])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("make,ref", [(losses.cosface, ref_cosface),
                                      (losses.large_margin_softmax, ref_lsoftmax)])
def test_parametric_init_and_apply(make, ref):
  pl = make(lc.C)
  variables = pl.init(jax.random.PRNGKey(0), lc.D)
  w = variables.params["class_weights"]
  assert w.shape == (lc.C, lc.D) and w.dtype == jnp.float32 and variables.state == {}
  np.testing.assert_allclose(float(jnp.std(make(400).init(jax.random.PRNGKey(1), 64)
                                           .params["class_weights"])), 1.0, rtol=0.02)
  x, y = lc.make_batch("random", seed=8)
  xj = jnp.asarray(x, jnp.float32)
  loss, _, state = jax.jit(pl.apply)(variables.params, {}, xj, jnp.asarray(y), 0.25)
  assert state == {}
  np.testing.assert_allclose(float(loss), ref(x, y, np.asarray(w, np.float64))[0],
                             rtol=1e-5)
  grads = jax.jit(jax.grad(lambda p: pl.apply(p, {}, xj, jnp.asarray(y), 0.0)[0]))(
      variables.params)
  assert np.all(np.isfinite(grads["class_weights"])) and np.any(grads["class_weights"])


def test_cosface_takes_the_schedule_margin_only_when_asked():
  pl = losses.cosface(lc.C, margin_from_schedule=True)
  w = pl.init(jax.random.PRNGKey(0), lc.D).params
  x, y = lc.make_batch("random", seed=9)
  loss, _, _ = jax.jit(pl.apply)(w, {}, jnp.asarray(x, jnp.float32), jnp.asarray(y), 0.25)
  np.testing.assert_allclose(
      float(loss), ref_cosface(x, y, np.asarray(w["class_weights"], np.float64), 0.25)[0],
      rtol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: losses.cosface_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 5))),
     "class_weights"),
    (lambda: losses.cosface_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 2)),
                                 scale=0.0), "scale"),
    (lambda: losses.large_margin_softmax_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                              jnp.ones((3, 2)), margin=1.5), "integer"),
    (lambda: losses.large_margin_softmax(5, margin=0), "integer"),
    (lambda: losses.cosface(0), "num_classes"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
