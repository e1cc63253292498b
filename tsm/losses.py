"""Triplet margin and contrastive losses with exact in-batch mining and statistics.

All losses take embeddings as given (normalising is the model's job), are pure,
fixed-shape and jit/grad/vmap-safe, and take the margin as a (possibly traced)
scalar, so a margin schedule never triggers a recompilation. Every loss returns
``(loss, stats)``; ``stats`` holds float32 scalars (with no gradient) that describe the
batch at the given margin, used by :mod:`tsm.margins` and the studies.

Triplet loss over all valid triplets (``mining="all"``) is exact but never builds the
``[B, B, B]`` tensor of triplets (see :func:`tsm.mining.triplet_pair_counts`):
  * when no anchor has more than ``tsm.mining.DENSE_MAX_POSITIVES`` positives (P x K
    batches), a loop over the k-th positive of every anchor, one vectorised pass over
    the ``[B, B]`` distances per step: ``O(B^2 K)`` time, no sorting;
  * otherwise, per anchor the negative distances are sorted once; for each
    anchor-positive pair with threshold ``t = d_ap + mu`` the number ``c`` of negatives
    with ``d_an < t`` is found by binary search and the sum of their distances from
    prefix sums, ``sum_n max(0, t - d_an) = c t - sum_{k<c} d_(k)``:
    ``O(B^2 log B)`` time.
Both use ``O(B^2)`` memory. The gradient is written in closed form (a
``jax.custom_vjp``): ``dL/dd_ap = c`` and ``dL/dd_an = -#{p: d_an < t_ap}``, counted in
the forward pass, so it equals the gradient of the brute-force sum (with
``relu'(0) = 0``, as ``jax.nn.relu``) exactly.

Floating-point convention: a triplet's loss is ``max(0, t - d_an)`` with
``t = d_ap + mu`` rounded first; it is active (non-zero) iff ``d_an < t``. Triplet types
use the same ``t`` (see :mod:`tsm.mining`). The prefix-sum form (sort path) rounds
differently from summing the hinge terms one by one; the two agree to float32
precision (relative error of order ``1e-7 * B`` of ``c t``, reduced by measuring
distances from the row's closest negative). Counts and gradients are exact.

Counts in the stats are float32: exact integers up to ``2^24`` per batch, float32
rounded above (a batch of 4096 can hold ~7e10 triplets).

References:
  Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition
  and Clustering", CVPR 2015 (triplet loss, semi-hard mining).
  Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
  Re-Identification", arXiv 1703.07737 (batch-hard mining).
  Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
  Mapping", CVPR 2006 (contrastive loss).
  Tomchak et al., arXiv 2603.26389 (triplet types, DAMS); Zeng, arXiv 2510.02161
  (contrastive vs triplet, active ratio).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.distances import check_distance, paired_distances, pairwise_distances

MINING = ("all", "hard", "semihard")
REDUCTIONS = ("mean", "mean_nonzero", "sum")

__all__ = [
    "MINING", "REDUCTIONS", "TripletStats", "PairStats", "check_mining",
    "check_reduction", "check_distance", "triplet_margin_loss",
    "triplet_margin_loss_from_triplets", "contrastive_loss",
    "contrastive_loss_from_pairs",
]


class TripletStats(NamedTuple):
  """Batch statistics of a triplet loss at its margin (float32 scalars).

  Attributes:
    num_triplets: all valid ``(a, p, n)`` of the batch, ``sum_c n_c (n_c-1) (B-n_c)``
      over valid rows (for explicit triplets: the number of valid triplets given).
    num_easy: valid triplets with ``d_an >= d_ap + margin``.
    num_semihard: valid triplets with ``d_ap < d_an < d_ap + margin``.
    num_hard: valid triplets with ``d_an <= d_ap``. (With ``t = d_ap + margin`` rounded
      first; the three types partition the triplets when ``t > d_ap``, e.g. any
      margin > 0 that survives rounding; at margin 0 a tie ``d_an = d_ap`` is both easy
      and hard. ``num_triplets - num_easy = num_active`` in ``"all"`` mode.)
    num_mined: triplets the loss is taken over in this mining mode (``"all"``:
      ``num_triplets``; ``"hard"``: anchors; ``"semihard"``: anchor-positive pairs).
    num_active: mined triplets with non-zero loss.
    active_ratio: ``num_active / max(num_mined, 1)``.
    mean_pos_dist: mean distance over valid positive pairs.
    mean_neg_dist: mean distance over valid negative pairs.
  """
  num_triplets: chex.Array
  num_easy: chex.Array
  num_semihard: chex.Array
  num_hard: chex.Array
  num_mined: chex.Array
  num_active: chex.Array
  active_ratio: chex.Array
  mean_pos_dist: chex.Array
  mean_neg_dist: chex.Array


class PairStats(NamedTuple):
  """Batch statistics of a contrastive loss at its margin (float32 scalars).

  Attributes:
    num_pairs: valid pairs the loss is taken over.
    num_positive: same-class pairs among them.
    num_negative: different-class pairs among them.
    num_active: pairs with non-zero loss.
    active_ratio: ``num_active / max(num_pairs, 1)``.
    mean_pos_dist: mean distance over positive pairs.
    mean_neg_dist: mean distance over negative pairs.
  """
  num_pairs: chex.Array
  num_positive: chex.Array
  num_negative: chex.Array
  num_active: chex.Array
  active_ratio: chex.Array
  mean_pos_dist: chex.Array
  mean_neg_dist: chex.Array


def check_mining(mining: str) -> None:
  """Raises a one-line ValueError unless ``mining`` is a known mining name."""
  if mining not in MINING:
    raise ValueError(f"unknown mining {mining!r}; use one of {', '.join(MINING)}.")


def check_reduction(reduction: str) -> None:
  """Raises a one-line ValueError unless ``reduction`` is a known reduction name."""
  if reduction not in REDUCTIONS:
    raise ValueError(
        f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}.")


def _float_dtype(x: chex.Array) -> jnp.dtype:
  """Working float dtype: at least float32 (bf16/f16 inputs are upcast)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _reduce(total: chex.Array, num_mined: chex.Array, num_active: chex.Array,
            reduction: str) -> chex.Array:
  if reduction == "sum":
    return total
  denominator = num_mined if reduction == "mean" else num_active
  return total / jnp.maximum(denominator, 1.0).astype(total.dtype)


def _check_margin(margin) -> None:
  chex.assert_rank(margin, 0)


# --- all triplets: exact hinge sum in O(B^2 min(K, log B)), closed-form gradient. ---


def _all_triplets_counts(dist, margin, positive, negative, with_pushes):
  pair = mining_lib.triplet_pair_counts(dist, positive, negative, margin,
                                        with_pushes=with_pushes)
  num_negatives = jnp.sum(negative, axis=1, dtype=jnp.int32)
  counts = mining_lib.counts_from_pairs(num_negatives, positive, pair.active, pair.hard)
  return (pair.hinge_sum, counts), pair


@jax.custom_vjp
def _all_triplets_hinge(dist, margin, positive, negative):
  """``(sum over valid (a,p,n) of relu(d_ap + margin - d_an), TripletCounts)``."""
  return _all_triplets_counts(dist, margin, positive, negative, False)[0]


def _all_triplets_fwd(dist, margin, positive, negative):
  out, pair = _all_triplets_counts(dist, margin, positive, negative, True)
  return out, (pair.active, pair.pushes, margin)


def _all_triplets_bwd(residuals, cotangents):
  active, pushes, margin = residuals
  g = cotangents[0]  # The counts carry no gradient.
  # d/d d_ap = #{n: d_an < t_ap}; d/d d_an = -#{p: d_an < t_ap} (relu'(0) = 0).
  grad_dist = g * (active - pushes).astype(g.dtype)
  grad_margin = (g * mining_lib.count_sum(active)).astype(margin.dtype)
  return grad_dist, grad_margin, None, None


_all_triplets_hinge.defvjp(_all_triplets_fwd, _all_triplets_bwd)


def _no_grad(tree):
  return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


def triplet_margin_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    mining: str = "all",
    reduction: str = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, TripletStats]:
  """Triplet margin loss ``max(0, d(a,p) - d(a,n) + margin)`` over a labelled batch.

  Mining modes:
    * ``"all"``: every valid triplet ``(a, p, n)`` (``a != p`` same label, ``n`` another
      label), computed exactly in ``O(B^2 min(K, log B))`` time (K: most positives of
      an anchor) and ``O(B^2)`` memory.
    * ``"hard"``: batch-hard (Hermans et al.): per anchor, its farthest positive and
      closest negative; anchors without a positive or a negative are left out.
    * ``"semihard"``: per anchor-positive pair, the closest negative farther than the
      positive, or, if there is none, the anchor's farthest negative (the rule of
      ``tfa.losses.triplet_semihard_loss``; see :func:`tsm.mining.semihard_negatives`).
      Pairs whose anchor has no negative are left out.

  Reductions: ``"mean"`` over the mined triplets (for ``"all"``: all valid triplets),
  ``"mean_nonzero"`` over the mined triplets with non-zero loss, ``"sum"``. A batch with
  nothing to mine gives loss 0 with zero (finite) gradients.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    margin: scalar margin (may be traced; differentiable).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    mining: ``"all"``, ``"hard"`` or ``"semihard"``.
    reduction: ``"mean"``, ``"mean_nonzero"`` or ``"sum"``.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)``: scalar loss and :class:`TripletStats` (counts over all valid
    triplets at this margin, whatever the mining mode).

  References:
    Schroff et al., CVPR 2015; Hermans et al., arXiv 1703.07737.
  """
  check_distance(distance)
  check_mining(mining)
  check_reduction(reduction)
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_type(labels, int)
  chex.assert_equal_shape_prefix([embeddings, labels], 1)
  _check_margin(margin)
  if valid is not None:
    chex.assert_shape(valid, labels.shape)
    valid = valid.astype(bool)

  dtype = _float_dtype(embeddings)
  dist = pairwise_distances(embeddings.astype(dtype), distance=distance)
  margin = jnp.asarray(margin, dtype)
  positive, negative = mining_lib.label_masks(labels, valid)

  if mining == "all":
    total, counts = _all_triplets_hinge(dist, margin, positive, negative)
    counts = _no_grad(counts)
    num_mined = counts.num_triplets
    num_active = counts.num_triplets - counts.num_easy
  else:
    counts = mining_lib.triplet_type_counts(dist, positive, negative, margin)
    if mining == "hard":
      pos_index, neg_index, mask = mining_lib.batch_hard(
          jax.lax.stop_gradient(dist), positive, negative)
      d_ap = jnp.take_along_axis(dist, pos_index[:, None], axis=1)[:, 0]
      d_an = jnp.take_along_axis(dist, neg_index[:, None], axis=1)[:, 0]
    else:
      neg_index, mask = mining_lib.semihard_negatives(dist, positive, negative)
      d_ap = dist
      d_an = jnp.take_along_axis(dist, neg_index, axis=1)
    losses = jnp.where(mask, jax.nn.relu((d_ap + margin) - d_an), 0.0)
    total = jnp.sum(losses)
    num_mined = mining_lib.count_sum(mask)
    num_active = mining_lib.count_sum(mask & (losses > 0))

  loss = _reduce(total, num_mined, num_active, reduction)
  sdist = jax.lax.stop_gradient(dist)
  stats = TripletStats(
      num_triplets=counts.num_triplets,
      num_easy=counts.num_easy,
      num_semihard=counts.num_semihard,
      num_hard=counts.num_hard,
      num_mined=num_mined,
      num_active=num_active,
      active_ratio=num_active / jnp.maximum(num_mined, 1.0),
      mean_pos_dist=mining_lib.masked_mean(sdist, positive).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(sdist, negative).astype(jnp.float32),
  )
  return loss, _no_grad(stats)


def triplet_margin_loss_from_triplets(
    anchor: chex.Array,
    positive: chex.Array,
    negative: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, TripletStats]:
  """Triplet margin loss over explicit triplets ``(anchor[i], positive[i], negative[i])``.

  For users who sample their own triplets (paper B samples one random positive and
  negative per anchor). The stats count the given triplets (``num_triplets`` =
  ``num_mined`` = number of valid rows) by type with the conventions of
  :mod:`tsm.mining`.

  Args:
    anchor: ``[N, D]`` anchors.
    positive: ``[N, D]`` positives (same class as the anchor).
    negative: ``[N, D]`` negatives (another class).
    margin: scalar margin (may be traced).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    reduction: ``"mean"``, ``"mean_nonzero"`` or ``"sum"``.
    valid: optional ``[N]`` bool mask of rows to use.

  Returns:
    ``(loss, stats)`` with :class:`TripletStats`.
  """
  check_distance(distance)
  check_reduction(reduction)
  chex.assert_rank([anchor, positive, negative], 2)
  chex.assert_equal_shape([anchor, positive, negative])
  _check_margin(margin)
  dtype = _float_dtype(anchor)
  if valid is None:
    valid = jnp.ones(anchor.shape[:1], bool)
  chex.assert_shape(valid, anchor.shape[:1])
  valid = valid.astype(bool)
  anchor, positive, negative = (x.astype(dtype) for x in (anchor, positive, negative))
  margin = jnp.asarray(margin, dtype)
  d_ap = paired_distances(anchor, positive, distance=distance)
  d_an = paired_distances(anchor, negative, distance=distance)
  thresholds = d_ap + margin
  losses = jnp.where(valid, jax.nn.relu(thresholds - d_an), 0.0)
  total = jnp.sum(losses)
  s_ap, s_an, s_t = (jax.lax.stop_gradient(x) for x in (d_ap, d_an, thresholds))
  num = mining_lib.count_sum(valid)
  num_active = mining_lib.count_sum(valid & (s_an < s_t))
  stats = TripletStats(
      num_triplets=num,
      num_easy=mining_lib.count_sum(valid & (s_an >= s_t)),
      num_semihard=mining_lib.count_sum(valid & (s_ap < s_an) & (s_an < s_t)),
      num_hard=mining_lib.count_sum(valid & (s_an <= s_ap)),
      num_mined=num,
      num_active=num_active,
      active_ratio=num_active / jnp.maximum(num, 1.0),
      mean_pos_dist=mining_lib.masked_mean(s_ap, valid).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(s_an, valid).astype(jnp.float32),
  )
  return _reduce(total, num, num_active, reduction), _no_grad(stats)


def _contrastive(dist, same, mask, margin, positive_margin, reduction):
  """Contrastive loss and :class:`PairStats` over the pairs ``mask`` of ``dist``."""
  pull = jnp.square(jax.nn.relu(dist - jnp.asarray(positive_margin, dist.dtype)))
  push = jnp.square(jax.nn.relu(jnp.asarray(margin, dist.dtype) - dist))
  losses = jnp.where(same, pull, push)
  sdist = jax.lax.stop_gradient(dist)
  num_pairs = mining_lib.count_sum(mask)
  num_active = mining_lib.count_sum(mask & (jax.lax.stop_gradient(losses) > 0))
  stats = PairStats(
      num_pairs=num_pairs,
      num_positive=mining_lib.count_sum(mask & same),
      num_negative=mining_lib.count_sum(mask & ~same),
      num_active=num_active,
      active_ratio=num_active / jnp.maximum(num_pairs, 1.0),
      mean_pos_dist=mining_lib.masked_mean(sdist, mask & same).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(sdist, mask & ~same).astype(jnp.float32),
  )
  total = jnp.sum(jnp.where(mask, losses, 0.0))
  return _reduce(total, num_pairs, num_active, reduction), _no_grad(stats)


def contrastive_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
    positive_margin: chex.Numeric = 0.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Contrastive loss over all pairs ``i < j`` of a labelled batch.

  ``y max(0, d - m_pos)^2 + (1 - y) max(0, m - d)^2`` with ``y = 1`` for same-class
  pairs; with ``positive_margin = 0`` (default) this is paper B's / Hadsell et al.'s
  ``y d^2 + (1 - y) max(0, m - d)^2``. ``d`` is the chosen distance (for
  ``"squared_euclidean"`` the squared distance is squared again).

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    margin: scalar negative margin ``m`` (may be traced).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    reduction: ``"mean"`` over pairs, ``"mean_nonzero"`` over pairs with non-zero
      loss, or ``"sum"``.
    positive_margin: scalar ``m_pos``: positive pairs closer than this cost nothing.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`PairStats`.

  References:
    Hadsell, Chopra, LeCun, CVPR 2006; Zeng, arXiv 2510.02161.
  """
  check_distance(distance)
  check_reduction(reduction)
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_type(labels, int)
  chex.assert_equal_shape_prefix([embeddings, labels], 1)
  _check_margin(margin)
  _check_margin(positive_margin)
  dtype = _float_dtype(embeddings)
  dist = pairwise_distances(embeddings.astype(dtype), distance=distance)
  same = labels[:, None] == labels[None, :]
  b = labels.shape[0]
  mask = jnp.triu(jnp.ones((b, b), bool), k=1)
  if valid is not None:
    chex.assert_shape(valid, labels.shape)
    valid = valid.astype(bool)
    mask = mask & valid[:, None] & valid[None, :]
  return _contrastive(dist, same, mask, margin, positive_margin, reduction)


def contrastive_loss_from_pairs(
    x1: chex.Array,
    x2: chex.Array,
    same: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
    positive_margin: chex.Numeric = 0.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Contrastive loss over explicit pairs ``(x1[i], x2[i])`` with ``same[i]`` labels.

  Same loss as :func:`contrastive_loss`, for users who sample their own pairs (paper
  B flips a coin between a random positive and a random negative per anchor).

  Args:
    x1: ``[N, D]`` first elements.
    x2: ``[N, D]`` second elements.
    same: ``[N]`` bool (or 0/1), true for same-class pairs.
    margin: scalar negative margin (may be traced).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    reduction: ``"mean"``, ``"mean_nonzero"`` or ``"sum"``.
    positive_margin: scalar positive margin (default 0).
    valid: optional ``[N]`` bool mask of rows to use.

  Returns:
    ``(loss, stats)`` with :class:`PairStats`.
  """
  check_distance(distance)
  check_reduction(reduction)
  chex.assert_rank([x1, x2, same], [2, 2, 1])
  chex.assert_equal_shape([x1, x2])
  chex.assert_equal_shape_prefix([x1, same], 1)
  _check_margin(margin)
  _check_margin(positive_margin)
  dtype = _float_dtype(x1)
  if valid is None:
    valid = jnp.ones(same.shape, bool)
  chex.assert_shape(valid, same.shape)
  same = same.astype(bool)
  dist = paired_distances(x1.astype(dtype), x2.astype(dtype), distance=distance)
  return _contrastive(dist, same, valid.astype(bool), margin, positive_margin,
                      reduction)
