"""Checks shared by the tests of in-batch losses ``fn(embeddings, labels, valid)``.

A test module defines ``CASES = {name: (fn(x, y, valid) -> (loss, stats), reference(x, y)
-> (loss, stats dict))}`` with a plain-Python reference, makes a :class:`Runner` of it and
calls these checks from its parametrised tests. The batches are ``test_loss_zoo``'s.
Import it into a test module: ``from labelled_loss_checks import Runner, ...``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from test_loss_zoo import B, KINDS, fd_grad, make_batch

ALL = np.ones(B, bool)


class Runner:
  """``((loss, stats), d loss / d x)`` of a case, from one jitted function per case."""

  def __init__(self, cases):
    self.cases = cases
    self._jitted = {}

  def __call__(self, name, x, y, valid=ALL, dtype=jnp.float32):
    if name not in self._jitted:
      self._jitted[name] = jax.jit(jax.value_and_grad(self.cases[name][0], has_aux=True))
    return self._jitted[name](jnp.asarray(x, dtype), jnp.asarray(y), jnp.asarray(valid))

  def ref(self, name):
    return self.cases[name][1]


def value_and_stats_match(run: Runner, name, x, y):
  """Float64 value and statistics against the reference; returns the gradient."""
  want, want_stats = run.ref(name)(x, y)
  with jax.enable_x64(True):
    (loss, stats), gx = run(name, x, y, dtype=jnp.float64)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), want, rtol=1e-9, atol=1e-12)
  for field, value in want_stats.items():
    # Counts exact; mean distances are float32 statistics.
    np.testing.assert_allclose(float(getattr(stats, field)), value, rtol=1e-6,
                               err_msg=field)
  total = want_stats.get("num_total", want_stats.get("num_pairs"))
  assert float(stats.num_total) == total
  assert float(stats.num_easy) == total - want_stats["num_active"]
  assert np.all(np.isfinite(np.asarray(gx)))
  return np.asarray(gx)


def gradient_matches(run: Runner, name, x, y, gx, h=1e-6):
  """The float64 gradient against central differences of the reference."""
  np.testing.assert_allclose(gx, fd_grad(lambda a: run.ref(name)(a, y)[0], x, h=h),
                             rtol=1e-5, atol=1e-7)


def float32_matches(run: Runner, name):
  x, y = make_batch("random", seed=3)
  want, _ = run.ref(name)(x, y)
  (loss, _), gx = run(name, x, y)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  want_gx = fd_grad(lambda a: run.ref(name)(a, y)[0], x)
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-3,
                             atol=1e-5 * np.max(np.abs(want_gx)))


def finite_with_a_zero_row(run: Runner, name):
  for kind in KINDS:
    x, y = make_batch(kind)
    x[4] = 0.0
    (loss, stats), gx = run(name, x, y)
    for value in (loss, gx, *stats):
      assert np.all(np.isfinite(np.asarray(value))), kind


def nan_in_gives_nan_out(run: Runner, name, kind):
  x, y = make_batch(kind)
  x[2, 1] = np.nan
  (loss, _), _ = run(name, x, y)
  assert np.isnan(float(loss))


def padding_rows_are_ignored(run: Runner, name):
  x, y = make_batch("random", seed=7)
  keep = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
  want, _ = run.ref(name)(x[keep], y[keep])
  xp = x.copy()
  xp[~keep] = np.nan  # junk in the padding rows
  (loss, _), gx = run(name, xp, y, valid=keep)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(gx)[~keep], 0.0)


def vmap_agrees_with_one_batch_at_a_time(run: Runner, name):
  fn = run.cases[name][0]
  batches = [make_batch(k, seed=s) for s, k in enumerate(("random", "ties", "absent"))]
  xs = jnp.asarray(np.stack([b[0] for b in batches]), jnp.float32)
  ys = jnp.asarray(np.stack([b[1] for b in batches]))
  batched = jax.jit(jax.vmap(lambda a, b: fn(a, b, None)[0]))(xs, ys)
  one = [float(run(name, xs[i], ys[i])[0][0]) for i in range(len(batches))]
  np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)
