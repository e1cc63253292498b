"""Shared checks for the loss-family tests (``test_losses_*.py``) against brute-force
references.

A family's test module writes its references (plain Python loops over anchors, pairs,
triplets or classes, in float64, from the loss's definition) and a dict of
:class:`Case`, and takes the shared tests with
``globals().update(loss_checks.standard_tests(CASES, ...))``: value, statistics and
gradient against the reference under ``jax_enable_x64`` on every batch kind, float32
precision, finiteness, NaN in / NaN out, padding, ``jit`` + ``vmap`` and the ``O(B^2)``
memory bound. The batches are :func:`test_loss_zoo.make_batch`'s (random, ties, one
class, singletons, identical rows, absent classes).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.extend  # noqa: F401  (jax.extend.core.jaxprs_in_params)
import jax.numpy as jnp
import numpy as np
import pytest

from test_loss_zoo import B, C, D, KINDS, class_vectors, fd_grad, make_batch

__all__ = ["B", "C", "D", "DEFAULT_KINDS", "KINDS", "Case", "class_vectors", "kinds",
           "make_batch", "run"]

# The batch kinds of the brute-force checks in the default run: a plain batch, one with
# ties and a degenerate one (every row the same: zero distances). The other kinds run in
# the slow suite; they reuse the same compiled function, so the time they cost is the
# references' finite differences.
DEFAULT_KINDS = ("random", "ties", "identical")


def kinds(names=KINDS, *before):
  """``(*before, kind)`` pytest parameters for the kinds in ``names``, those outside
  :data:`DEFAULT_KINDS` marked slow."""
  return [pytest.param(*before, k, marks=[] if k in DEFAULT_KINDS else [pytest.mark.slow])
          for k in names]


class Case(NamedTuple):
  """A loss under test.

  Attributes:
    fn: ``(x, y, w, valid) -> (loss, stats)``; ``w`` is a ``[C, D]`` array (class
      weights) that losses without class vectors ignore.
    ref: ``(x, y, w) -> (loss, stats dict)``, the brute-force reference.
    with_w: the loss takes ``w`` (its gradient is checked).
    grad_ref: optional ``(x, y, w, at) -> loss``: the reference with the parts the loss
      holds constant for the gradient (``stop_gradient``) evaluated at the batch ``at``;
      the gradient is checked against its finite differences in ``x`` at ``at = x``.
    edge_kinds: batch kinds on which distances sit exactly on the bin edges of a loss
      that is piecewise in them (histograms): "ties", and for the dynamic soft margin
      "identical" (every margin 0, an edge). There finite differences straddle the
      edge where autodiff takes one side, and whether a value reaches a bin is decided
      by the last bit (the reference's ``sum (u - v)^2`` and tsm's Gram form round
      differently): the gradient is only checked finite and only the term counts of the
      statistics are compared; the value still to 1e-9.
  """
  fn: Callable
  ref: Callable
  with_w: bool = False
  grad_ref: Callable | None = None
  edge_kinds: tuple[str, ...] = ()


_JITTED = {}


def run(case, x, y, w=None, valid=None, dtype=jnp.float32):
  """``((loss, stats), (d/dx, d/dw))`` of a case, from one jitted function per case."""
  if case not in _JITTED:
    _JITTED[case] = jax.jit(jax.value_and_grad(case.fn, argnums=(0, 2), has_aux=True))
  w = class_vectors() if w is None else w
  valid = np.ones(len(y), bool) if valid is None else valid
  return _JITTED[case](jnp.asarray(x, dtype), jnp.asarray(y), jnp.asarray(w, dtype),
                       jnp.asarray(valid))


def _x_grad_ref(case, y, w, at):
  if case.grad_ref is not None:
    return lambda a: case.grad_ref(a, y, w, at)
  return lambda a: case.ref(a, y, w)[0]


def check_against_reference(case, kind):
  """float64 value, every statistic the reference gives, and gradients."""
  x, y = make_batch(kind)
  w = class_vectors()
  want, want_stats = case.ref(x, y, w)
  with jax.enable_x64(True):
    (loss, stats), (gx, gw) = run(case, x, y, w, dtype=jnp.float64)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), want, rtol=1e-9, atol=1e-12)
  on_edges = kind in case.edge_kinds
  for field, value in want_stats.items():
    if on_edges and field not in ("num_total", "num_neg_total"):
      continue
    assert float(getattr(stats, field)) == value, field
  if on_edges:
    assert np.all(np.isfinite(np.asarray(gx)))
    return
  assert float(stats.num_easy) == want_stats["num_total"] - want_stats["num_active"]
  np.testing.assert_allclose(
      float(stats.active_ratio), want_stats["num_active"] / max(want_stats["num_total"], 1))
  assert np.all(np.isfinite(np.asarray(gx)))
  want_gx = fd_grad(_x_grad_ref(case, y, w, x), x)
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-5, atol=1e-7)
  if case.with_w:
    want_gw = fd_grad(lambda a: case.ref(x, y, a)[0], w)
    np.testing.assert_allclose(np.asarray(gw), want_gw, rtol=1e-5, atol=1e-7)
  else:
    np.testing.assert_array_equal(np.asarray(gw), 0.0)


def check_float32(case):
  x, y = make_batch("random", seed=3)
  w = class_vectors()
  want, _ = case.ref(x, y, w)
  (loss, _), (gx, _) = run(case, x, y, w)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  want_gx = fd_grad(_x_grad_ref(case, y, w, x), x)
  scale = np.max(np.abs(want_gx))
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-3, atol=1e-5 * scale)


def check_finite_with_zero_row(case):
  for kind in KINDS:
    x, y = make_batch(kind)
    x[4] = 0.0  # no direction: finite loss and gradients all the same
    (loss, stats), (gx, gw) = run(case, x, y)
    for value in (loss, gx, gw, *stats):
      assert np.all(np.isfinite(np.asarray(value))), kind


def check_learns_nothing(case, kind):
  """Zero loss, zero gradient and no active term."""
  (loss, stats), (gx, _) = run(case, *make_batch(kind))
  assert float(loss) == 0.0
  np.testing.assert_array_equal(np.asarray(gx), 0.0)
  assert float(stats.num_active) == 0.0


def check_nan_out(case, kind):
  x, y = make_batch(kind)
  x[2, 1] = np.nan
  (loss, _), _ = run(case, x, y)
  assert np.isnan(float(loss))


def check_padding(case):
  """Rows with ``valid`` false change nothing and get no gradient."""
  x, y = make_batch("random", seed=7)
  keep = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
  want, want_stats = case.ref(x[keep], y[keep], class_vectors())
  xp = x.copy()
  xp[~keep] = 1e3  # junk in the padding rows
  (loss, stats), (gx, _) = run(case, xp, y, valid=keep)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(gx)[~keep], 0.0)
  assert float(stats.num_total) == want_stats["num_total"]


def check_vmap(case):
  batches = [make_batch(k, seed=s) for s, k in enumerate(("random", "ties", "absent"))]
  xs = jnp.asarray(np.stack([b[0] for b in batches]), jnp.float32)
  ys = jnp.asarray(np.stack([b[1] for b in batches]))
  w = jnp.asarray(class_vectors(), jnp.float32)
  batched = jax.jit(jax.vmap(lambda a, b: case.fn(a, b, w, None)[0]))(xs, ys)
  one = [float(run(case, xs[i], ys[i])[0][0]) for i in range(len(batches))]
  np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)


def largest_intermediate(fn: Callable, *args) -> int:
  """Elements of the largest array in the jaxpr of ``value_and_grad(fn)`` (traced only)."""
  jaxpr = jax.make_jaxpr(jax.value_and_grad(fn))(*args)
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        sizes.append(int(np.prod(getattr(var.aval, "shape", ()))))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return max(sizes)


def _large_batch(case, b, d, c):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, c, size=b), jnp.int32)
  w = jnp.asarray(rng.normal(size=(c, d)), jnp.float32)
  return (lambda a: case.fn(a, y, w, None)[0]), x


def check_large_batch(case, b=1024, d=128, c=100, bound=None):
  """B = 1024, D = 128: no array of loss + gradient above ``O(B^2)`` / ``O(B C)`` (or
  ``bound`` elements); traced only."""
  fn, x = _large_batch(case, b, d, c)
  assert largest_intermediate(fn, x) <= (bound or max(b * b, b * d, b * c))


def check_large_batch_runs(case, b=1024, d=128, c=100, bound=None):
  """B = 1024, D = 128: finite loss and gradient (compiled and run)."""
  del bound
  fn, x = _large_batch(case, b, d, c)
  loss, g = jax.jit(jax.value_and_grad(fn))(x)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))


def standard_tests(cases: dict[str, Case], checked: list[str] | None = None,
                   learns_nothing: tuple[str, ...] = (),
                   large_batch: dict | None = None) -> dict[str, Callable]:
  """The shared tests of a family, to add to its module: ``globals().update(...)``.

  Args:
    cases: name -> :class:`Case`; each is checked against its reference on the random
      batch, the ``checked`` ones on every batch kind.
    checked: the main cases: every batch kind, and the float32, finiteness, NaN,
      padding, vmap and large-batch checks (default: the first case).
    learns_nothing: cases with zero loss, zero gradient and no active term on the
      one-class and singleton batches (no negative / no positive).
    large_batch: keyword arguments of :func:`check_large_batch`.

  Returns:
    The test functions by name.
  """
  checked = list(checked or [next(iter(cases))])
  each = pytest.mark.parametrize("name", checked)

  @pytest.mark.parametrize("name,kind", [
      p for name in cases for p in kinds(KINDS if name in checked else ("random",), name)])
  def test_value_stats_and_gradient_match_brute_force(name, kind):
    check_against_reference(cases[name], kind)

  @each
  def test_float32_matches_reference(name):
    check_float32(cases[name])

  @each
  def test_float32_finite_on_every_batch_kind_and_a_zero_row(name):
    check_finite_with_zero_row(cases[name])

  @pytest.mark.parametrize("kind", ["random", "singletons"])
  @each
  def test_nan_in_gives_nan_out(name, kind):
    check_nan_out(cases[name], kind)

  @each
  def test_padding_rows_are_ignored(name):
    check_padding(cases[name])

  @each
  def test_jit_and_vmap_agree_with_one_batch_at_a_time(name):
    check_vmap(cases[name])

  @each
  def test_large_batch_stays_quadratic(name):
    check_large_batch(cases[name], **(large_batch or {}))

  @pytest.mark.slow
  @each
  def test_large_batch_runs_finite(name):
    check_large_batch_runs(cases[name], **(large_batch or {}))

  tests = [test_value_stats_and_gradient_match_brute_force,
           test_float32_matches_reference,
           test_float32_finite_on_every_batch_kind_and_a_zero_row,
           test_nan_in_gives_nan_out, test_padding_rows_are_ignored,
           test_jit_and_vmap_agree_with_one_batch_at_a_time,
           test_large_batch_stays_quadratic, test_large_batch_runs_finite]
  if learns_nothing:
    @pytest.mark.parametrize("kind", ["one_class", "singletons"])
    @pytest.mark.parametrize("name", list(learns_nothing))
    def test_no_positive_or_no_negative_learns_nothing(name, kind):
      check_learns_nothing(cases[name], kind)

    tests.append(test_no_positive_or_no_negative_learns_nothing)
  return {t.__name__: t for t in tests}
