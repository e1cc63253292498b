"""Dynamic soft margin loss: triplets weighted by the running CDF of their margins."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses._activity import ActivityStats, activity_stats, nan_guard, pair_masks
from tsm.losses._base import (LossVariables, ParametricLoss, _reduce, check_inputs,
                              check_reduction)
from tsm.losses._lp import lp_distances
from tsm.losses._softmax import _prologue


def _check(min_val, num_bins, momentum=0.0) -> None:
  if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int; got {num_bins!r}.")
  if not min_val < 0:
    raise ValueError(f"min_val must be < 0 (the histogram spans [min_val, -min_val]); "
                     f"got {min_val}.")
  if isinstance(momentum, (int, float)) and not 0.0 <= momentum <= 1.0:
    raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")


def _check_histogram(histogram, num_bins) -> None:
  if getattr(histogram, "shape", None) != (num_bins,):
    raise ValueError(f"histogram must be a [num_bins] = [{num_bins}] array; got shape "
                     f"{getattr(histogram, 'shape', None)}.")


def _edges(min_val, num_bins):
  delta = 2.0 * abs(min_val) / num_bins
  return [min_val + k * delta for k in range(num_bins)], delta


def _sorted(d, mask):
  """Each row's masked entries sorted ascending, ``inf`` after them."""
  return jnp.sort(jnp.where(mask, d, jnp.inf), axis=1)


def _sorted_with_prefix(d, mask):
  """:func:`_sorted` and the prefix sums ``[B, B + 1]`` of the finite entries."""
  srt = _sorted(d, mask)
  finite = jnp.isfinite(srt)
  prefix = jnp.concatenate([jnp.zeros_like(srt[:, :1]),
                            jnp.cumsum(jnp.where(finite, srt, 0.0), axis=1)], axis=1)
  return srt, prefix


def _batch(embeddings, labels, valid):
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  d = lp_distances(x)
  num_p = jnp.sum(pos, axis=1)
  num_n = jnp.sum(neg, axis=1)
  num_triplets = jnp.sum(num_p * num_n)
  return x, v, pos, neg, d, num_p, num_n, num_triplets


def update_soft_margin_histogram(
    histogram: chex.Array,
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    min_val: float = -2.0,
    num_bins: int = 10,
    momentum: chex.Numeric = 0.01,
    valid: chex.Array | None = None,
) -> chex.Array:
  """The running histogram of triplet margins after one batch (PML's
  ``DynamicSoftMarginLoss.update_histogram``), without gradient.

  Every valid triplet's ``t = d_ap - d_an`` (Euclidean distances of L2-normalised
  embeddings) is spread on the ``num_bins`` nodes ``min_val + k Delta``,
  ``Delta = 2 |min_val| / num_bins``, by linear interpolation: node ``k`` (the bin,
  ``floor((t - min_val) / Delta)``) takes ``1 - frac`` and node ``k + 1`` ``frac``. The
  new histogram is ``normalise((1 - momentum) h + momentum * masses)``, with momentum 1
  while ``h`` is all zero (the first batch). As PML, the masses are counts, not a
  density. A batch without a triplet leaves ``h`` unchanged. ``t`` is clipped to
  ``[min_val, min_val + (num_bins - 1) Delta]``: PML indexes past its histogram above
  (an error); below happens only by rounding.

  The triplets are never built: per anchor the negatives' distances are sorted once and
  each bin edge is a binary search (``O(num_bins B^2 log B)`` time, ``O(B^2)`` memory).

  Args:
    histogram: ``[num_bins]`` running histogram (zeros before the first batch).
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    min_val: lowest margin of the histogram (PML default -2).
    num_bins: number of bins (PML default 10).
    momentum: weight of the batch (PML default 0.01).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    The new ``[num_bins]`` histogram (sums to 1 once a triplet was seen).
  """
  _check(min_val, num_bins, momentum)
  check_inputs(embeddings, labels)
  _check_histogram(histogram, num_bins)
  x, v, pos, neg, d, num_p, num_n, num_triplets = _batch(embeddings, labels, valid)
  d = jax.lax.stop_gradient(d)
  edges, delta = _edges(min_val, num_bins)
  srt, prefix = _sorted_with_prefix(d, neg)
  ge_counts, ge_sums = [], []  # triplets with t >= edge k, and the sum of their t
  for edge in edges:
    g = jnp.where(pos, mining_lib.row_searchsorted(srt, d - edge, side="right"), 0)
    ge_counts.append(jnp.sum(g).astype(d.dtype))
    ge_sums.append(jnp.sum(jnp.where(pos, d * g - jnp.take_along_axis(prefix, g, axis=1),
                                     0.0)))
  t_total = num_triplets.astype(d.dtype)
  below = t_total - ge_counts[0]
  ge_counts.append(jnp.zeros((), d.dtype))
  ge_sums.append(jnp.zeros((), d.dtype))
  counts = jnp.stack([ge_counts[k] - ge_counts[k + 1] for k in range(num_bins)])
  sums = jnp.stack([ge_sums[k] - ge_sums[k + 1] for k in range(num_bins)])
  counts = counts.at[0].add(below)
  sums = sums.at[0].add(min_val * below)  # clipped up to min_val
  fractions = (sums - counts * jnp.asarray(edges, d.dtype)) / delta
  fractions = fractions.at[-1].set(0.0)  # clipped down to the last node
  masses = (counts - fractions).at[1:].add(fractions[:-1])
  h = jnp.asarray(histogram, d.dtype)
  m = jnp.where(jnp.sum(h) != 0, jnp.asarray(momentum, d.dtype), 1.0)
  new = (1.0 - m) * h + m * masses
  new = new / jnp.where(jnp.sum(new) != 0, jnp.sum(new), 1.0)
  new = jnp.where(num_triplets > 0, new, h)
  return nan_guard(new, x, v).astype(jnp.asarray(histogram).dtype)


def dynamic_soft_margin_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    histogram: chex.Array,
    *,
    min_val: float = -2.0,
    num_bins: int = 10,
    reduction: str = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Dynamic soft margin loss over all triplets, weighted by a margin histogram's CDF
  (PML ``DynamicSoftMarginLoss`` with labels).

  Each valid triplet ``(a, p, n)``, ``t = d_ap - d_an`` (Euclidean distances of
  L2-normalised embeddings), costs ``CDF[k(t)] t`` with ``CDF`` the cumulative
  ``histogram`` (already updated with this batch: :func:`update_soft_margin_histogram`,
  PML's order) and ``k(t) = floor((t - min_val) / Delta)`` clipped to the bins; the
  default reduction is the mean over triplets (PML's ``loss.mean()``). ``CDF`` is a
  constant for the gradient: the weight of a triplet is how hard it is among the
  margins seen so far (the paper). A batch without a triplet gives 0.

  The triplets are never built: the loss is ``sum_{a,p} w_ap d_ap - sum_{a,n} w_an d_an``
  with ``w_ap = sum_n CDF[k(t_apn)]`` and ``w_an = sum_p CDF[k(t_apn)]``, counted per bin
  edge by binary search in each anchor's sorted distances (``O(num_bins B^2 log B)``
  time, ``O(B^2)`` memory).

  Differences from PML: PML's histogram keeps the gradient of its interpolation weights
  (``torch.frac`` of the margins), so its loss has a second gradient path through the
  CDF; here the CDF is a constant (the paper's weighting; PML's path also reaches into
  the previous step's graph). Margins are clipped to the bins (PML indexes past its
  histogram for ``t >= min_val + (num_bins - 1) Delta``, an error). Only the labelled
  form: PML's label-free form (anchors and positives as two aligned batches) is not
  provided.

  Terms (``num_total``): valid triplets. Active: non-zero weight, ``CDF[k(t)] > 0``.
  Negative terms: anchor-negative pairs of anchors with a positive, active when some
  triplet through the pair is.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    histogram: ``[num_bins]`` margin histogram (the state).
    min_val: lowest margin of the histogram (PML default -2).
    num_bins: number of bins (PML default 10).
    reduction: ``"mean"`` (PML) over triplets, ``"mean_nonzero"`` or ``"sum"``.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over triplets.

  References:
    Zhang and Rusinkiewicz, "Learning Local Descriptors with a CDF-Based Dynamic Soft
    Margin", ICCV 2019; PML ``DynamicSoftMarginLoss``.
  """
  _check(min_val, num_bins)
  check_reduction(reduction, names_only="dynamic_soft_margin_loss")
  check_inputs(embeddings, labels)
  _check_histogram(histogram, num_bins)
  x, v, pos, neg, d, num_p, num_n, num_triplets = _batch(embeddings, labels, valid)
  ds = jax.lax.stop_gradient(d)
  h = jax.lax.stop_gradient(jnp.asarray(histogram, d.dtype))
  cdf = jnp.cumsum(h)
  edges, _ = _edges(min_val, num_bins)
  srt_n, srt_p = _sorted(ds, neg), _sorted(ds, pos)
  w_ap = cdf[0] * num_n[:, None].astype(d.dtype)
  w_an = cdf[0] * num_p[:, None].astype(d.dtype)
  first = jnp.argmax(cdf > 0)  # the first bin of non-zero weight
  num_active = jnp.where(cdf[0] > 0, num_triplets, 0)
  for k in range(1, num_bins):
    g = jnp.where(pos, mining_lib.row_searchsorted(srt_n, ds - edges[k], side="right"), 0)
    hk = jnp.where(neg, num_p[:, None] - mining_lib.row_searchsorted(
        srt_p, ds + edges[k], side="left"), 0)
    w_ap = w_ap + h[k] * g
    w_an = w_an + h[k] * hk
    num_active = jnp.where((first == k) & (cdf[0] <= 0), jnp.sum(g), num_active)
  total = (jnp.sum(jnp.where(pos, w_ap * d, 0.0)) - jnp.sum(jnp.where(neg, w_an * d, 0.0)))
  num_active = num_active.astype(jnp.float32)
  loss = _reduce(total, num_triplets.astype(jnp.float32), num_active, reduction)
  neg_terms = neg & (num_p > 0)[:, None]
  stats = activity_stats(terms=pos, active=pos, neg_terms=neg_terms,
                         neg_active=w_an > 0, embeddings=x, labels=labels, valid=v)
  t = num_triplets.astype(jnp.float32)
  stats = stats._replace(num_total=t, num_active=num_active,
                         active_ratio=num_active / jnp.maximum(t, 1.0))
  return nan_guard(loss, x, v), jax.lax.stop_gradient(stats)


def dynamic_soft_margin(*, min_val: float = -2.0, num_bins: int = 10,
                        momentum: float = 0.01) -> ParametricLoss:
  """:func:`dynamic_soft_margin_loss` with its running histogram, as a
  :class:`ParametricLoss`.

  ``init`` gives ``state = {"histogram": zeros([num_bins])}`` and no parameters;
  ``apply`` updates the histogram with the batch (:func:`update_soft_margin_histogram`)
  and scores the batch with the new one (PML's order); the histogram gets no gradient.
  The loss has no margin: the schedule's is ignored.

  Args:
    min_val: lowest margin of the histogram (PML default -2).
    num_bins: number of bins (PML default 10).
    momentum: weight of each batch in the histogram (PML default 0.01).

  Returns:
    The :class:`ParametricLoss`.
  """
  _check(min_val, num_bins, momentum)

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    del rng, embedding_dim
    return LossVariables(params={}, state={"histogram": jnp.zeros(num_bins, jnp.float32)})

  def apply(params, state, embeddings, labels, sched_margin):
    del params, sched_margin
    hist = update_soft_margin_histogram(state["histogram"], embeddings, labels,
                                        min_val=min_val, num_bins=num_bins,
                                        momentum=momentum)
    loss, stats = dynamic_soft_margin_loss(embeddings, labels, hist, min_val=min_val,
                                           num_bins=num_bins)
    return loss, stats, {"histogram": hist}

  return ParametricLoss(init=init, apply=apply)
