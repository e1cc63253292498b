"""PML's reducers as values of the losses' ``reduction=``, and as free functions.

Every tsm loss with a ``reduction`` argument takes one of the names ``"mean"`` (PML's
``MeanReducer``), ``"mean_nonzero"`` (``AvgNonZeroReducer``) and ``"sum"``
(``SumReducer``), or one of these values (optax-like: small immutable NamedTuples,
made by their constructors):

  * :func:`threshold` (``ThresholdReducer``): the mean of the terms with
    ``low < loss < high``; 0 (with zero gradients) when no term passes.
  * :func:`class_weighted` (``ClassWeightedReducer``): the mean over the terms of
    ``weights[label] * loss``, ``label`` the label of the term's anchor.
  * :func:`per_anchor` (``PerAnchorReducer``): each anchor's mean over its terms (0 for
    an anchor without terms), then an inner reduction (a name, :func:`threshold` or
    :func:`class_weighted`; PML's default ``MeanReducer``) over the anchors.

A loss's terms are laid out with the anchor on the leading axis: ``[B]`` per-element
losses (PML's ``"element"``), ``[B, M]`` pair losses (``"pos_pair"`` / ``"neg_pair"``,
the anchor first) or ``[B, P, N]`` triplets (``"triplet"``), each with a mask of the
terms that exist and, for mined terms, their multiplicities. Every loss reduces through
:func:`term_sums` (per-anchor sums and counts of the terms the reduction keeps) and
:func:`combine` (those to the scalar), so a triplet loss that never builds its
``[B, P, N]`` terms (:mod:`tsm.losses._mined`) reduces exactly like one that does.

PML's rules, and where tsm differs:
  * ``ThresholdReducer`` (and ``AvgNonZeroReducer`` = ``threshold(low=0)``) keeps
    ``low < loss < high``, both strict, and returns a zero loss when none passes.
  * ``ClassWeightedReducer`` divides by the number of terms (weighted or not), and takes
    the label of the anchor (``indices[0]`` of pairs and triplets). A label outside
    ``[0, len(weights))`` (of an anchor with terms) is a runtime value: the loss is NaN
    then (JAX cannot raise inside ``jit``; PML raises an index error, or wraps a
    negative label); the config checks ``len(weights)`` against the number of classes
    before training.
  * ``PerAnchorReducer`` puts pairs into a ``[B, B]`` array, so a repeated (mined) pair
    counts once; tsm does the same (multiplicities are ignored). PML divides by all
    ``B`` anchors, tsm by the valid (non-padding) rows. Element losses go to the inner
    reduction as they are. PML raises ``NotImplementedError`` for triplets; tsm takes
    each anchor's mean over its triplets, as for pairs.
  * Losses whose terms tsm reduces together reduce them together with any reducer
    (e.g. the contrastive loss's positive and negative pairs, which PML reduces as two
    sub-losses); losses with two parts reduce each part (intra-pair variance, SNR).

References:
  pytorch-metric-learning 2.9 ``reducers/`` and ``losses/base_metric_loss_function.py``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Sequence, Union

import chex
import jax
import jax.numpy as jnp

NAMES = ("mean", "mean_nonzero", "sum")


class Threshold(NamedTuple):
  """PML's ``ThresholdReducer``: the mean of the terms with ``low < loss < high``.

  Attributes:
    low: exclusive lower bound (None: none).
    high: exclusive upper bound (None: none).
  """
  low: float | None = None
  high: float | None = None


class ClassWeighted(NamedTuple):
  """PML's ``ClassWeightedReducer``: the mean of ``weights[anchor label] * loss``.

  Attributes:
    weights: one weight per class, indexed by the label of each term's anchor.
  """
  weights: tuple[float, ...]


class PerAnchor(NamedTuple):
  """PML's ``PerAnchorReducer``: each anchor's mean over its terms, then ``inner``.

  Attributes:
    inner: the reduction over the anchors: a name of :data:`NAMES`, a
      :class:`Threshold` or a :class:`ClassWeighted` (PML's default ``MeanReducer``).
  """
  inner: Any = "mean"


Reduction = Union[str, Threshold, ClassWeighted, PerAnchor]


def threshold(low: float | None = None, high: float | None = None) -> Threshold:
  """PML's ``ThresholdReducer(low, high)`` as a loss's ``reduction``.

  Args:
    low: exclusive lower bound on a term's loss (None: none).
    high: exclusive upper bound (None: none); at least one of the two must be given.

  Returns:
    The :class:`Threshold` value.

  Raises:
    ValueError: one line, when neither bound is given or they are not numbers with
      ``low < high``.
  """
  def number(name, bound):
    if bound is None:
      return None
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
      raise ValueError(f"threshold {name}={bound!r} must be a number or None.")
    return float(bound)
  value = Threshold(number("low", low), number("high", high))
  check(value)
  return value


def class_weighted(weights: Sequence[float]) -> ClassWeighted:
  """PML's ``ClassWeightedReducer(weights)`` as a loss's ``reduction``.

  Args:
    weights: one finite weight per class (a sequence or a 1-D array); a label outside
      ``[0, len(weights))`` makes the loss NaN.

  Returns:
    The :class:`ClassWeighted` value (the weights as a tuple of floats, so the value is
    hashable and can be a static argument).

  Raises:
    ValueError: one line, when the weights are not a non-empty 1-D sequence of finite
      numbers.
  """
  try:
    flat = tuple(float(w) for w in jnp.ravel(jnp.asarray(weights)).tolist())
    rank = jnp.ndim(jnp.asarray(weights))
  except (TypeError, ValueError):
    raise ValueError(f"class weights must be a sequence of numbers; got {weights!r}."
                     ) from None
  if rank != 1:
    raise ValueError(f"class weights must be one weight per class (1-D); got rank {rank}.")
  value = ClassWeighted(flat)
  check(value)
  return value


def per_anchor(inner: Reduction = "mean") -> PerAnchor:
  """PML's ``PerAnchorReducer(reducer=inner)`` as a loss's ``reduction``.

  Args:
    inner: the reduction of the per-anchor losses: a name, :func:`threshold` or
      :func:`class_weighted` (PML's default ``MeanReducer``: ``"mean"``).

  Returns:
    The :class:`PerAnchor` value.

  Raises:
    ValueError: one line, on an unknown or nested inner reduction.
  """
  value = PerAnchor(inner)
  check(value)
  return value


def check(reduction: Any) -> None:
  """Raises a one-line ValueError unless ``reduction`` is a known name or a valid value.

  Args:
    reduction: a name of :data:`NAMES` or a :class:`Threshold`, :class:`ClassWeighted`
      or :class:`PerAnchor`.

  Raises:
    ValueError: one line saying what is wrong and what to use.
  """
  if isinstance(reduction, str):
    if reduction not in NAMES:
      raise ValueError(
          f"unknown reduction {reduction!r}; use one of {', '.join(NAMES)}, or a "
          "tsm.reducers value (threshold, class_weighted, per_anchor).")
  elif isinstance(reduction, Threshold):
    low, high = reduction
    if low is None and high is None:
      raise ValueError("a threshold reduction needs low or high (or both), e.g. "
                       "tsm.reducers.threshold(low=0.1).")
    for name, bound in (("low", low), ("high", high)):
      if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                or math.isnan(bound)):
        raise ValueError(f"threshold {name}={bound!r} must be a number or None.")
    if low is not None and high is not None and not low < high:
      raise ValueError(f"threshold low={low!r} must be below high={high!r} (no term "
                       "could pass).")
  elif isinstance(reduction, ClassWeighted):
    w = reduction.weights
    if (not isinstance(w, tuple) or not w
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                   and math.isfinite(v) for v in w)):
      raise ValueError(f"class weights must be a non-empty tuple of finite numbers, one "
                       f"per class; got {w!r} (use tsm.reducers.class_weighted).")
  elif isinstance(reduction, PerAnchor):
    if isinstance(reduction.inner, PerAnchor):
      raise ValueError("per_anchor's inner reduction cannot be per_anchor; use a name, "
                       "threshold or class_weighted.")
    check(reduction.inner)
  else:
    raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(NAMES)} or "
                     "a tsm.reducers value (threshold, class_weighted, per_anchor).")


def needs_labels(reduction: Reduction) -> bool:
  """Whether ``reduction`` reads the anchors' labels (a class-weighted one)."""
  if isinstance(reduction, PerAnchor):
    return needs_labels(reduction.inner)
  return isinstance(reduction, ClassWeighted)


def _kept(term_loss: chex.Array, weights: chex.Array,
          reduction: Reduction) -> chex.Array:
  """The multiplicity of each term that ``reduction`` keeps (0 for the others)."""
  s = jax.lax.stop_gradient(term_loss)
  if isinstance(reduction, PerAnchor):
    return (weights > 0).astype(weights.dtype)   # PML's [B, B] array: each pair once
  if reduction == "mean_nonzero":
    return jnp.where(s > 0, weights, 0)
  if isinstance(reduction, Threshold):
    keep = jnp.ones(s.shape, bool)
    if reduction.low is not None:
      keep &= s > reduction.low
    if reduction.high is not None:
      keep &= s < reduction.high
    return jnp.where(keep, weights, 0)
  return weights


def term_sums(term_loss: chex.Array, weights: chex.Array, reduction: Reduction,
              axis: int | tuple[int, ...] | None = None
              ) -> tuple[chex.Array, chex.Array]:
  """Sums and counts of the terms ``reduction`` keeps, along ``axis``.

  Args:
    term_loss: the loss of each term.
    weights: its multiplicity (0 where there is no term; a bool mask is 0/1), same
      shape.
    reduction: a name or reducer value (:func:`check`).
    axis: the axes summed: by default all but the leading (anchor) axis; ``()`` for
      element losses.

  Returns:
    ``(sums, counts)``: per anchor the weighted sum of the kept terms' losses and their
    weighted count (float, ``term_loss``'s dtype). A non-finite term poisons its
    anchor's sum even when the reduction drops it (NaN in, NaN out).
  """
  if axis is None:
    axis = tuple(range(1, term_loss.ndim))
  weights = weights.astype(term_loss.dtype)
  kept = _kept(term_loss, weights, reduction)
  sums = jnp.sum(jnp.where(kept > 0, kept * term_loss, 0.0), axis=axis)
  if reduction == "mean_nonzero" or isinstance(reduction, Threshold):
    # These drop terms by value, a NaN term too; adding 0 * the terms keeps it.
    sums = sums + 0.0 * jnp.sum(jnp.where(weights > 0, term_loss, 0.0), axis=axis)
  return sums, jnp.sum(kept, axis=axis)


def combine(sums: chex.Array, counts: chex.Array, reduction: Reduction, *,
            labels: chex.Array | None = None, rows: chex.Array | None = None
            ) -> chex.Array:
  """The reduced loss from the per-anchor sums and counts of :func:`term_sums`.

  Args:
    sums: ``[B]`` (or scalar, for names and thresholds) sums of the kept terms.
    counts: their counts, same shape.
    reduction: the reduction ``sums`` / ``counts`` were taken for.
    labels: ``[B]`` anchor labels (class-weighted reductions only).
    rows: ``[B]`` bool, the anchors a per-anchor reduction averages over (default all;
      padding rows excluded by the caller).

  Returns:
    The scalar loss: ``sum(sums)`` for ``"sum"``; ``sum(sums) / sum(counts)`` for
    ``"mean"``, ``"mean_nonzero"`` and thresholds (0 when nothing is kept);
    ``sum(weights[labels] sums) / sum(counts)`` class-weighted; per anchor ``sums /
    counts`` (0 without terms) reduced by the inner reduction over ``rows``.

  Raises:
    ValueError: (at trace time) a class-weighted reduction without ``labels``.
  """
  if isinstance(reduction, PerAnchor):
    x = jnp.where(counts > 0, sums / jnp.maximum(counts, 1), 0.0)
    if rows is None:
      rows = jnp.ones(x.shape, bool)
    inner_sums, inner_counts = term_sums(x, rows, reduction.inner, axis=())
    return combine(inner_sums, inner_counts, reduction.inner, labels=labels)
  total = jnp.sum(sums)
  if reduction == "sum":
    return total
  if isinstance(reduction, ClassWeighted):
    if labels is None:
      raise ValueError("a class-weighted reduction needs the labels of the anchors; this "
                       "loss was called without labels (pass labels=...).")
    w = jnp.asarray(reduction.weights, sums.dtype)
    labels = jnp.broadcast_to(labels, sums.shape)
    labels = jnp.where(labels >= 0, labels, w.shape[0])   # no wrap-around: NaN
    wl = jnp.take(w, labels, mode="fill", fill_value=jnp.nan)
    total = jnp.sum(jnp.where(counts > 0, wl * sums, 0.0))
  return total / jnp.maximum(jnp.sum(counts), 1)


def reduce(term_loss: chex.Array, terms: chex.Array, reduction: Reduction, *,
           weights: chex.Array | None = None, labels: chex.Array | None = None,
           rows: chex.Array | None = None) -> chex.Array:
  """Reduces fixed-shape per-term losses (anchor on the leading axis) to a scalar.

  Args:
    term_loss: ``[B]`` element, ``[B, M]`` pair or ``[B, P, N]`` triplet losses.
    terms: bool mask of the terms that exist, same shape.
    reduction: a name or reducer value (:func:`check`).
    weights: optional multiplicities of the terms (mined pairs / triplets).
    labels: ``[B]`` anchor labels (class-weighted reductions).
    rows: ``[B]`` bool, the anchors of a per-anchor reduction (default: for element
      losses the terms themselves, PML's ``element`` rule; otherwise every row).

  Returns:
    The scalar loss (see :func:`combine`).
  """
  terms = terms.astype(bool)
  w = terms if weights is None else jnp.where(terms, weights, 0)
  if rows is None and term_loss.ndim == 1:
    rows = terms
  sums, counts = term_sums(term_loss, w, reduction)
  return combine(sums, counts, reduction, labels=labels, rows=rows)


def threshold_reduce(losses: chex.Array, mask: chex.Array | None = None, *,
                     low: float | None = None, high: float | None = None) -> chex.Array:
  """PML's ``ThresholdReducer`` over any array of terms: the mean of the terms with
  ``low < loss < high`` (0 when none is)."""
  mask = jnp.ones(losses.shape, bool) if mask is None else mask
  return reduce(jnp.ravel(losses), jnp.ravel(mask), threshold(low, high))


def class_weighted_reduce(losses: chex.Array, labels: chex.Array,
                          class_weights: chex.Array,
                          mask: chex.Array | None = None) -> chex.Array:
  """PML's ``ClassWeightedReducer``: the mean of ``loss * class_weights[label]``,
  ``labels`` the anchor's label of each term (broadcast to ``losses``' shape)."""
  mask = jnp.ones(losses.shape, bool) if mask is None else mask
  labels = jnp.broadcast_to(labels, losses.shape)
  return reduce(jnp.ravel(losses), jnp.ravel(mask), class_weighted(class_weights),
                labels=jnp.ravel(labels))


def per_anchor_reduce(pair_losses: chex.Array, mask: chex.Array) -> chex.Array:
  """PML's ``PerAnchorReducer`` (with its default ``MeanReducer``) of ``[B, M]`` pair
  losses: each anchor's mean over its pairs (0 without pairs), then the mean over all
  ``B`` anchors."""
  return reduce(pair_losses, mask, per_anchor())


def divisor_reduce(losses: chex.Array, divisor: chex.Numeric,
                   mask: chex.Array | None = None) -> chex.Array:
  """PML's ``DivisorReducer``: ``sum(losses) / divisor`` (0 when ``divisor == 0``)."""
  mask = jnp.ones(losses.shape, bool) if mask is None else mask.astype(bool)
  total = jnp.sum(jnp.where(mask, losses, 0.0))
  divisor = jnp.asarray(divisor, total.dtype)
  return jnp.where(divisor != 0, total / jnp.where(divisor != 0, divisor, 1.0), 0.0)
