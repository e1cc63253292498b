"""Triplet margin losses: in-batch with exact mining, and over explicit triplets."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.distances import check_distance, paired_distances, pairwise_distances
from tsm.losses._base import (_check_margin, _float_dtype, _no_grad, _reduce,
                              check_reduction)

MINING = ("all", "hard", "semihard")


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
      and hard. ``num_triplets - num_easy = num_active``.)
    num_mined: triplets the loss is taken over in this mining mode (``"all"``:
      ``num_triplets``; ``"hard"``: anchors; ``"semihard"``: anchor-positive pairs).
    num_active: valid triplets with non-zero loss at this margin
      (``num_triplets - num_easy``), whatever the mining mode.
    num_mined_active: mined triplets with non-zero loss (equal to ``num_active`` in
      ``"all"`` mode); the denominator of ``reduction="mean_nonzero"``.
    active_ratio: ``num_active / max(num_triplets, 1)``.
    mean_pos_dist: mean distance over valid positive pairs.
    mean_neg_dist: mean distance over valid negative pairs.

  The common statistics shape of every tsm loss is exposed too: ``num_total`` (=
  ``num_triplets``), ``num_active`` and ``num_easy``.
  """
  num_triplets: chex.Array
  num_easy: chex.Array
  num_semihard: chex.Array
  num_hard: chex.Array
  num_mined: chex.Array
  num_active: chex.Array
  num_mined_active: chex.Array
  active_ratio: chex.Array
  mean_pos_dist: chex.Array
  mean_neg_dist: chex.Array

  @property
  def num_total(self) -> chex.Array:
    """The terms of the common statistics shape: every valid triplet of the batch."""
    return self.num_triplets


def check_mining(mining: str) -> None:
  """Raises a one-line ValueError unless ``mining`` is a known mining name."""
  if mining not in MINING:
    raise ValueError(f"unknown mining {mining!r}; use one of {', '.join(MINING)}.")


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
    num_mined_active = counts.num_triplets - counts.num_easy
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
    num_mined_active = mining_lib.count_sum(mask & (losses > 0))

  loss = _reduce(total, num_mined, num_mined_active, reduction)
  num_active = counts.num_triplets - counts.num_easy
  sdist = jax.lax.stop_gradient(dist)
  stats = TripletStats(
      num_triplets=counts.num_triplets,
      num_easy=counts.num_easy,
      num_semihard=counts.num_semihard,
      num_hard=counts.num_hard,
      num_mined=num_mined,
      num_active=num_active,
      num_mined_active=num_mined_active,
      active_ratio=num_active / jnp.maximum(counts.num_triplets, 1.0),
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
      num_mined_active=num_active,
      active_ratio=num_active / jnp.maximum(num, 1.0),
      mean_pos_dist=mining_lib.masked_mean(s_ap, valid).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(s_an, valid).astype(jnp.float32),
  )
  return _reduce(total, num, num_active, reduction), _no_grad(stats)
