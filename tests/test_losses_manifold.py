"""Manifold proxy loss against a numpy reference written from its definition (PML's):
the affinity graph, its normalisation and ``numpy.linalg.inv``, then loops over samples
and proxies."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import cos
from tsm import losses


def _softplus_kept(values, own):
  kept = [v for j, v in enumerate(values) if j != own and v >= 0]
  return math.log(1 + sum(math.exp(v) for v in kept)), kept


def ref_manifold(x, meta, proxies, lambda_c=1.0, alpha=0.8, margin=5e-4):
  n, k = len(meta), len(proxies)
  pts = list(x) + list(proxies)
  s = np.array([[0.0 if i == j else math.exp(max(cos(pts[i], pts[j]), 0.0) / 0.5)
                 for j in range(n + k)] for i in range(n + k)])
  d = np.diag(s.sum(axis=1) ** -0.5)
  f = (1 - alpha) * np.linalg.inv(np.eye(n + k) - alpha * d @ s @ d)
  stats = dict(num_total=n, num_active=0, num_neg_total=n * (k - 1), num_neg_active=0)
  intrinsic, context = 0.0, 0.0
  for i in range(n):
    m = int(meta[i])
    vi = [f[i, n + c] - f[i, n + m] + margin for c in range(k)]
    fc = [cos(f[i], f[n + c]) for c in range(k)]
    vc = [fc[c] - fc[m] + margin for c in range(k)]
    li, _ = _softplus_kept(vi, m)
    lc_, _ = _softplus_kept(vc, m)
    intrinsic += li
    context += lc_
    use_i, use_c = lambda_c != math.inf, lambda_c != 0
    on = [c for c in range(k) if c != m and ((use_i and vi[c] >= 0) or (use_c and vc[c] >= 0))]
    stats["num_active"] += bool(on)
    stats["num_neg_active"] += len(on)
  if lambda_c == math.inf:
    return context / n, stats
  return intrinsic / n + lambda_c * context / n, stats


CASES = {
    "manifold": lc.Case(lambda x, y, w, v: losses.manifold_loss(x, y, w, valid=v),
                        lambda x, y, w: ref_manifold(x, y, w), with_w=True),
    "manifold_context_only": lc.Case(
        lambda x, y, w, v: losses.manifold_loss(x, y, w, lambda_c=math.inf, alpha=0.5,
                                                margin=0.05, valid=v),
        lambda x, y, w: ref_manifold(x, y, w, math.inf, 0.5, 0.05), with_w=True),
    "manifold_intrinsic_only": lc.Case(
        lambda x, y, w, v: losses.manifold_loss(x, y, w, lambda_c=0.0, margin=0.01,
                                                valid=v),
        lambda x, y, w: ref_manifold(x, y, w, 0.0, margin=0.01), with_w=True),
}


globals().update(lc.standard_tests(
    CASES, checked=["manifold"], large_batch=dict(c=50, bound=(1024 + 50) ** 2)))


def test_meta_classes_use_every_proxy_once_the_batch_allows():
  for b, k in ((10, 4), (12, 12), (3, 5)):
    meta = np.asarray(jax.jit(losses.draw_meta_classes, static_argnums=(1, 2))(
        jax.random.PRNGKey(b), b, k))
    assert meta.shape == (b,) and meta.min() >= 0 and meta.max() < k
    assert len(set(meta.tolist())) == min(b, k)


def test_parametric_draws_meta_classes_from_its_key_and_trains_the_proxies():
  pl = losses.manifold(lc.C)
  variables = pl.init(jax.random.PRNGKey(0), lc.D)
  proxies = variables.params["proxies"]
  assert proxies.shape == (lc.C, lc.D)
  x, y = lc.make_batch("random", seed=3)
  xj = jnp.asarray(x, jnp.float32)

  def loss_fn(params):
    loss, _, state = pl.apply(params, variables.state, xj, jnp.asarray(y), 0.0)
    return loss, state

  (loss, state), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables.params)
  _, draw = jax.random.split(variables.state["key"])
  meta = np.asarray(jax.jit(losses.draw_meta_classes, static_argnums=(1, 2))(
      draw, lc.B, lc.C))
  np.testing.assert_allclose(float(loss), ref_manifold(x, meta, np.asarray(proxies,
                                                                          np.float64))[0],
                             rtol=1e-4)
  assert not np.array_equal(state["key"], variables.state["key"])
  assert np.all(np.isfinite(g["proxies"])) and np.any(g["proxies"] != 0)


def test_bad_inputs_raise_one_line_value_errors():
  for call, match in [
      (lambda: losses.manifold(0), "num_proxies"),
      (lambda: losses.manifold(alpha=1.0), "alpha"),
      (lambda: losses.manifold_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 2)),
                                    lambda_c=-1.0), "lambda_c"),
      (lambda: losses.manifold_loss(jnp.ones((4, 2)), jnp.zeros(4), jnp.ones((3, 2))),
       "meta_classes"),
  ]:
    with pytest.raises(ValueError, match=match) as info:
      call()
    assert "\n" not in str(info.value)
