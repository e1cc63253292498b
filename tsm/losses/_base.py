"""Shared pieces of the loss families: reductions, dtype rules, the statistics contract
and the interface of losses with their own parameters and state."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import reducers

REDUCTIONS = reducers.NAMES


def check_reduction(reduction: Any, *, names_only: str | None = None) -> None:
  """Raises a one-line ValueError unless ``reduction`` is a known reduction.

  Args:
    reduction: a name of :data:`REDUCTIONS` or a :mod:`tsm.reducers` value.
    names_only: the loss's name, for a loss that takes names only (its terms are not
      exposed one by one); a reducer value is then refused.
  """
  reducers.check(reduction)
  if names_only and not isinstance(reduction, str):
    raise ValueError(f"{names_only} takes a reduction name ({', '.join(REDUCTIONS)}); "
                     f"got {reduction!r}: reducer values apply to losses that expose "
                     "their terms (docs/pml.md, Reducers).")


def check_anchor_labels(labels: Any, reduction: Any, num_rows: int,
                        rows_name: str) -> None:
  """The optional anchor labels of explicit tuples (one-line ValueError): required by a
  class-weighted reduction, else optional; one integer per row of ``rows_name``."""
  if labels is None:
    if reducers.needs_labels(reduction):
      raise ValueError("a class-weighted reduction needs the anchors' labels; pass "
                       f"labels=<[N] int array> (one per {rows_name} row).")
    return
  lshape, ldtype = getattr(labels, "shape", None), getattr(labels, "dtype", None)
  if lshape is None or len(lshape) != 1 or lshape[0] != num_rows:
    raise ValueError(f"labels must be a [{num_rows}] array, one per {rows_name} row; got "
                     f"shape {lshape}.")
  if not jnp.issubdtype(ldtype, jnp.integer):
    raise ValueError(f"labels must be integer class ids; got {ldtype}.")


def is_named(reduction: Any) -> bool:
  """Whether ``reduction`` is one of the three names (the losses' exact fast paths)."""
  return isinstance(reduction, str)


def _float_dtype(x: chex.Array) -> jnp.dtype:
  """Working float dtype: at least float32 (bf16/f16 inputs are upcast)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _reduce(total: chex.Array, num_mined: chex.Array, num_active: chex.Array,
            reduction: str) -> chex.Array:
  """A named reduction from the total and the two counts (paths that never build their
  terms; :func:`tsm.reducers.combine` is the same rule)."""
  if reduction == "sum":
    return total
  denominator = num_mined if reduction == "mean" else num_active
  return total / jnp.maximum(denominator, 1.0).astype(total.dtype)


def reduce_terms(term_loss: chex.Array, terms: chex.Array, reduction: Any, *,
                 labels: chex.Array | None = None, weights: chex.Array | None = None,
                 rows: chex.Array | None = None) -> tuple[chex.Array, chex.Array]:
  """Reduces per-term losses over their terms (:func:`tsm.reducers.reduce`).

  Args:
    term_loss: the loss of each term (zero outside ``terms``), the anchor on the leading
      axis: ``[B]`` elements, ``[B, M]`` pairs.
    terms: bool mask of the same shape: the terms the loss is taken over.
    reduction: ``"mean"`` over ``terms``, ``"mean_nonzero"`` over the terms with a
      non-zero loss, ``"sum"``, or a :mod:`tsm.reducers` value.
    labels: ``[B]`` labels of the anchors (read by class-weighted reductions).
    weights: optional multiplicities of the terms (mined pairs).
    rows: ``[B]`` bool, the anchors a per-anchor reduction averages over (default: for
      ``[B]`` elements the terms, otherwise every row).

  Returns:
    ``(loss, nonzero)``: the reduced loss and the bool mask of the terms with a
    non-zero loss.
  """
  terms = terms.astype(bool)
  nonzero = terms & (jax.lax.stop_gradient(term_loss) > 0)
  loss = reducers.reduce(term_loss, terms, reduction, weights=weights, labels=labels,
                         rows=rows)
  return loss, nonzero


def _no_grad(tree):
  return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


def _nonfinite_rows(x: chex.Array) -> chex.Array:
  """``[N]`` bool: rows holding NaN or inf, or whose squared norm overflows.

  One pass over ``x``: ``sum(x^2)`` is NaN or inf exactly when a row has a NaN or an
  inf, or is so large that every distance built from it overflows (``|x| > ~1.8e19``
  in float32).
  """
  return ~jnp.isfinite(jnp.sum(jnp.square(x), axis=-1))


def _nan_out(loss: chex.Array, stats: Any, bad: chex.Array,
             dependents: chex.Array) -> tuple[chex.Array, Any]:
  """NaN in, NaN out: NaN loss, NaN stats and NaN gradients where ``bad``.

  ``bad`` is a (traced) bool scalar, so there is no host sync. ``dependents`` is a
  finite-when-not-bad scalar that depends on every differentiable input (e.g. the sum
  of the used distances plus the margin); adding ``0 * dependents`` leaves the loss and
  its gradient unchanged when nothing is bad, and ``NaN * dependents`` makes both NaN
  otherwise (the counts of NaN comparisons are otherwise plausible numbers).
  """
  poison = jax.lax.stop_gradient(jnp.where(bad, jnp.nan, 0.0).astype(loss.dtype))
  loss = loss + poison * dependents
  stats = jax.tree_util.tree_map(lambda v: v + poison.astype(v.dtype), stats)
  return loss, stats



class LossVariables(NamedTuple):
  """A loss's own variables, kept in the train state beside the model's.

  Attributes:
    params: trainable parameters (a pytree; ``{}`` for none), updated by the optimiser
      together with the model's parameters (ArcFace class weights, ProxyAnchor proxies).
    state: non-gradient state (a pytree; ``{}`` for none), updated by the loss's own rule
      inside the train step (a bank of class centres).
  """
  params: Any
  state: Any


class ParametricLoss(NamedTuple):
  """A loss with trainable parameters and/or a running state, as a pair of pure functions.

  Plain in-batch losses are functions ``(embeddings, labels, margin) -> (loss, stats)``;
  :func:`as_parametric` lifts them into this form, so the train step handles both alike.

  Attributes:
    init: ``(rng, embedding_dim) -> LossVariables``.
    apply: ``(params, state, embeddings, labels, margin) -> (loss, stats, new_state)``;
      ``loss`` is differentiated with respect to ``embeddings`` and ``params``;
      ``new_state`` replaces ``state`` after the step (its gradient is ignored).
  """
  init: Callable[[chex.PRNGKey, int], LossVariables]
  apply: Callable[..., tuple[chex.Array, Any, Any]]


def as_parametric(loss_fn: Callable[..., tuple[chex.Array, Any]] | ParametricLoss
                  ) -> ParametricLoss:
  """``loss_fn`` as a :class:`ParametricLoss` with no parameters and no state.

  Args:
    loss_fn: ``(embeddings, labels, margin) -> (loss, stats)``, or a
      :class:`ParametricLoss` (returned as it is).

  Returns:
    A :class:`ParametricLoss` whose ``init`` gives ``LossVariables({}, {})``.
  """
  if isinstance(loss_fn, ParametricLoss):
    return loss_fn

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    del rng, embedding_dim
    return LossVariables(params={}, state={})

  def apply(params, state, embeddings, labels, margin):
    del params
    loss, stats = loss_fn(embeddings, labels, margin)
    return loss, stats, state

  return ParametricLoss(init=init, apply=apply)


def common_stats(stats: Any) -> dict[str, chex.Array]:
  """The contract counts of any loss's stats: ``num_total``, ``num_active``, ``num_easy``.

  Args:
    stats: a loss's statistics (a NamedTuple with these attributes, or a mapping).

  Returns:
    A dict with the three float32 scalars.
  """
  get = (lambda k: stats[k]) if isinstance(stats, dict) else (lambda k: getattr(stats, k))
  return {k: jnp.asarray(get(k), jnp.float32) for k in ("num_total", "num_active",
                                                           "num_easy")}


def check_inputs(embeddings: Any, labels: Any = None, margin: Any = None, *,
                 embeddings_name: str = "embeddings", labels_name: str = "labels",
                 margin_name: str = "margin") -> None:
  """Validates a loss's inputs before tracing, with one-line errors naming the argument.

  Checks only static properties (rank, dtype, shape), so it is free under ``jit``.

  Args:
    embeddings: must be a rank-2 floating array ``[B, D]``.
    labels: if given, a rank-1 integer array ``[B]``.
    margin: if given, a scalar (Python number or rank-0 array).
    embeddings_name: the argument's name in the messages.
    labels_name: the argument's name in the messages.
    margin_name: the argument's name in the messages.

  Raises:
    ValueError: one line naming the argument, what is wrong and how to fix it.
  """
  shape = getattr(embeddings, "shape", None)
  dtype = getattr(embeddings, "dtype", None)
  if shape is None or len(shape) != 2:
    raise ValueError(f"{embeddings_name} must be a [batch, dim] array; got shape "
                     f"{shape}. Reshape it to 2-D (one row per example).")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{embeddings_name} must be floating point; got {dtype}. Cast it, "
                     "e.g. embeddings.astype(jnp.float32).")
  if labels is not None:
    lshape = getattr(labels, "shape", None)
    ldtype = getattr(labels, "dtype", None)
    if lshape is None or len(lshape) != 1:
      raise ValueError(f"{labels_name} must be a rank-1 [batch] array of class ids; got "
                       f"shape {lshape}.")
    if not jnp.issubdtype(ldtype, jnp.integer):
      raise ValueError(f"{labels_name} must be integer class ids; got {ldtype}. Cast it, "
                       "e.g. labels.astype(jnp.int32).")
    if lshape[0] != shape[0]:
      raise ValueError(f"{labels_name} has {lshape[0]} entries but {embeddings_name} has "
                       f"{shape[0]} rows; give one label per row.")
  if margin is not None and jnp.ndim(margin) != 0:
    raise ValueError(f"{margin_name} must be a scalar; got shape {jnp.shape(margin)}.")


def check_valid(valid: Any, num_rows: int, *, name: str = "valid",
                rows_name: str = "embeddings") -> None:
  """Validates an optional ``[N]`` row mask before tracing (one-line ValueError).

  Args:
    valid: ``None``, or a rank-1 bool (or integer 0/1) array with ``num_rows`` entries.
    num_rows: the number of rows it masks.
    name: the argument's name in the messages.
    rows_name: the name of the rows' argument in the messages.

  Raises:
    ValueError: one line naming the argument, what is wrong and how to fix it.
  """
  if valid is None:
    return
  _check_flags(valid, num_rows, name, rows_name,
               rank="a rank-1 [batch] bool mask", kind="a bool mask",
               fix=f"{name}.astype(bool)", per="row")


def _check_flags(flags: Any, num_rows: int, name: str, rows_name: str, *, rank: str,
                 kind: str, fix: str, per: str) -> None:
  """One bool (or 0/1 integer) flag per row of ``rows_name``; one-line ValueErrors
  worded by the caller (``rank``, ``kind``: what the flags must be; ``fix``: an
  expression that makes them so; ``per``: what one flag stands for)."""
  shape = getattr(flags, "shape", None)
  dtype = getattr(flags, "dtype", None)
  if shape is None or len(shape) != 1:
    raise ValueError(f"{name} must be {rank}; got shape {shape}.")
  if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
    raise ValueError(f"{name} must be {kind}; got {dtype}. Pass e.g. {fix}.")
  if shape[0] != num_rows:
    raise ValueError(f"{name} has {shape[0]} entries but {rows_name} has {num_rows} "
                     f"rows; give one flag per {per}.")


def check_tuple_inputs(arrays: dict[str, Any], margin: Any = None, *,
                       margin_name: str = "margin") -> None:
  """Validates the explicit tuple forms (anchor/positive/negative, x1/x2) before tracing.

  Args:
    arrays: name -> array; each must be a rank-2 floating ``[N, D]`` array, all of the
      same shape as the first.
    margin: if given, a scalar.
    margin_name: the margin's name in the messages.

  Raises:
    ValueError: one line naming the argument, what is wrong and how to fix it.
  """
  (first, ref), *rest = arrays.items()
  check_inputs(ref, None, margin, embeddings_name=first, margin_name=margin_name)
  for name, x in rest:
    check_inputs(x, embeddings_name=name)
    if x.shape != ref.shape:
      raise ValueError(f"{name} has shape {tuple(x.shape)} but {first} has "
                       f"{tuple(ref.shape)}; give one row per {first} row.")


def check_pair_labels(same: Any, num_rows: int, *, name: str = "same",
                      rows_name: str = "x1") -> None:
  """Validates the ``[N]`` same-class flags of explicit pairs (one-line ValueError)."""
  _check_flags(same, num_rows, name, rows_name, rank="a rank-1 [pairs] bool array",
               kind="bool (or 0/1 integers)", fix=f"{name} == 1", per="pair")
