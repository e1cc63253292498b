"""In-batch label masks, exact triplet counting and triplet selection.

Helpers shared by the losses in :mod:`tsm.losses`. Everything here works on a
precomputed ``[B, B]`` distance matrix and boolean label masks, is pure, fixed-shape
and jit/grad/vmap-safe, and never materialises a ``[B, B, B]`` tensor: counting
over all ``O(B^3)`` triplets is done per anchor on sorted rows with binary search,
in ``O(B^2 log B)`` time and ``O(B^2)`` memory.

Conventions:
  * ``positive[a, p]`` is true for ``a != p`` with the same label (both rows valid).
  * ``negative[a, n]`` is true for different labels (both rows valid).
  * A valid triplet is ``(a, p, n)`` with ``positive[a, p] & negative[a, n]``; a batch
    with class sizes ``n_c`` has ``sum_c n_c (n_c - 1) (B - n_c)`` of them.
  * Triplet types at margin ``mu`` are decided with ``t = d_ap + mu`` computed in
    floating point first, then compared with ``d_an``: easy ``d_an >= t``, semi-hard
    ``d_ap < d_an < t``, hard ``d_an <= d_ap``. A triplet's hinge loss is
    ``max(0, t - d_an)``, positive exactly when ``d_an < t``, so "active" (non-zero
    loss) is the same as semi-hard or hard. For ``mu >= 0`` the three types partition
    the valid triplets; for ``mu < 0`` semi-hard is empty and easy and hard may overlap.
  * Ties in selections (hardest positive/negative, semi-hard negative) go to the
    lowest index.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

# jnp.searchsorted implementation used on the sorted rows. "scan" (binary search) was
# the fastest on CPU for B in [256, 4096] (see notes/losses.md and bench/losses.py).
SEARCHSORTED_METHOD = "scan"


class TripletCounts(NamedTuple):
  """Exact counts of the valid triplets of a batch by type (float32 scalars)."""
  num_triplets: chex.Array
  num_easy: chex.Array
  num_semihard: chex.Array
  num_hard: chex.Array


def label_masks(labels: chex.Array,
                valid: chex.Array | None = None) -> tuple[chex.Array, chex.Array]:
  """Positive and negative pair masks of a batch.

  Args:
    labels: ``[B]`` integer class labels.
    valid: optional ``[B]`` bool mask; rows with ``False`` (padding) take part in no
      pair.

  Returns:
    ``(positive, negative)``, two ``[B, B]`` bool arrays: ``positive[i, j]`` for
    ``i != j`` with equal labels, ``negative[i, j]`` for different labels, both only
    where rows ``i`` and ``j`` are valid.
  """
  chex.assert_rank(labels, 1)
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  positive = same & not_self
  negative = ~same
  if valid is not None:
    chex.assert_shape(valid, labels.shape)
    both = valid[:, None] & valid[None, :]
    positive = positive & both
    negative = negative & both
  return positive, negative


def masked_mean(values: chex.Array, mask: chex.Array) -> chex.Array:
  """Mean of ``values`` where ``mask``; 0 when the mask is empty."""
  count = jnp.sum(mask, dtype=jnp.float32)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  return total / jnp.maximum(count, 1.0)


def count_sum(counts: chex.Array) -> chex.Array:
  """Sums an integer ``[B, B]`` (or ``[B]``) count array into a float32 scalar.

  Rows are summed in int32 (exact up to 2^31 per row) and the row totals in float32,
  so totals are exact integers up to 2^24 and within float32 rounding above.
  """
  if counts.ndim > 1:
    counts = jnp.sum(counts, axis=tuple(range(1, counts.ndim)), dtype=jnp.int32)
  return jnp.sum(counts.astype(jnp.float32))


def row_searchsorted(sorted_rows: chex.Array, queries: chex.Array,
                     side: str = "left") -> chex.Array:
  """Row-wise ``searchsorted``: ``out[i, j] = searchsorted(sorted_rows[i], queries[i, j])``.

  Args:
    sorted_rows: ``[B, N]`` array, each row sorted ascending.
    queries: ``[B, M]`` array.
    side: ``"left"`` counts entries ``< q``; ``"right"`` counts entries ``<= q``.

  Returns:
    ``[B, M]`` int32 counts.
  """
  fn = lambda a, v: jnp.searchsorted(a, v, side=side, method=SEARCHSORTED_METHOD)
  return jax.vmap(fn)(sorted_rows, queries).astype(jnp.int32)


def sort_masked_rows(dist: chex.Array, mask: chex.Array,
                     fill: float = jnp.inf) -> tuple[chex.Array, chex.Array]:
  """Sorts each row of ``where(mask, dist, fill)`` ascending, with the permutation.

  Args:
    dist: ``[B, N]`` distances.
    mask: ``[B, N]`` bool; entries outside it are replaced by ``fill`` (``+inf`` puts
      them at the end, ``-inf`` at the start).
    fill: replacement value.

  Returns:
    ``(sorted_values, indices)``: ``[B, N]`` sorted rows and the ``int32`` column
    index each came from (stable: ties keep index order).
  """
  values = jnp.where(mask, dist, fill)
  iota = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  sorted_values, indices = jax.lax.sort((values, iota), dimension=-1, num_keys=1,
                                        is_stable=True)
  return sorted_values, indices


def triplet_type_counts_per_pair(
    dist: chex.Array, positive: chex.Array, sorted_negatives: chex.Array,
    margin: chex.Array) -> tuple[chex.Array, chex.Array, chex.Array]:
  """Per anchor-positive pair counts of active and hard negatives.

  Args:
    dist: ``[B, B]`` distances.
    positive: ``[B, B]`` positive mask.
    sorted_negatives: ``[B, B]`` rows of negative distances sorted ascending with
      ``+inf`` for non-negatives (``sort_masked_rows(dist, negative)[0]``).
    margin: scalar margin.

  Returns:
    ``(thresholds, active, hard)``: ``thresholds = d_ap + margin`` ``[B, B]``,
    ``active[a, p] = #{n: d_an < d_ap + margin}`` and
    ``hard[a, p] = #{n: d_an <= d_ap}``, both int32 and zero where not ``positive``.
  """
  thresholds = dist + margin
  active = row_searchsorted(sorted_negatives, thresholds, side="left")
  hard = row_searchsorted(sorted_negatives, dist, side="right")
  active = jnp.where(positive, active, 0)
  hard = jnp.where(positive, hard, 0)
  return thresholds, active, hard


def counts_from_pairs(num_negatives: chex.Array, positive: chex.Array,
                      active: chex.Array, hard: chex.Array) -> TripletCounts:
  """Assembles :class:`TripletCounts` from per-pair active and hard counts.

  Args:
    num_negatives: ``[B]`` int32 number of negatives of each anchor.
    positive: ``[B, B]`` positive mask.
    active: ``[B, B]`` int32 ``#{n: d_an < d_ap + mu}`` per pair.
    hard: ``[B, B]`` int32 ``#{n: d_an <= d_ap}`` per pair.

  Returns:
    The batch's :class:`TripletCounts`.
  """
  num_positives = jnp.sum(positive, axis=1, dtype=jnp.int32)
  total = count_sum(num_positives * num_negatives)
  num_active = count_sum(active)
  # #{d_ap < d_an < t}: the sets nest when t > d_ap and it is empty otherwise.
  semihard = jnp.maximum(active - hard, 0)
  return TripletCounts(
      num_triplets=total,
      num_easy=total - num_active,
      num_semihard=count_sum(semihard),
      num_hard=count_sum(hard))


def triplet_type_counts(dist: chex.Array, positive: chex.Array, negative: chex.Array,
                        margin: chex.Array) -> TripletCounts:
  """Exact easy / semi-hard / hard counts over all valid triplets of a batch.

  ``O(B^2 log B)`` time, ``O(B^2)`` memory (sorted negative rows and binary search).

  Args:
    dist: ``[B, B]`` distance matrix.
    positive: ``[B, B]`` positive mask (see :func:`label_masks`).
    negative: ``[B, B]`` negative mask.
    margin: scalar margin ``mu``.

  Returns:
    :class:`TripletCounts` (float32 scalars; no gradient).
  """
  chex.assert_rank([dist, positive, negative], 2)
  dist = jax.lax.stop_gradient(dist)
  margin = jax.lax.stop_gradient(jnp.asarray(margin, dist.dtype))
  sorted_negatives, _ = sort_masked_rows(dist, negative)
  _, active, hard = triplet_type_counts_per_pair(dist, positive, sorted_negatives, margin)
  num_negatives = jnp.sum(negative, axis=1, dtype=jnp.int32)
  return counts_from_pairs(num_negatives, positive, active, hard)


def batch_hard(dist: chex.Array, positive: chex.Array,
               negative: chex.Array) -> tuple[chex.Array, chex.Array, chex.Array]:
  """Batch-hard selection: the farthest positive and closest negative per anchor.

  Args:
    dist: ``[B, B]`` distances.
    positive: ``[B, B]`` positive mask.
    negative: ``[B, B]`` negative mask.

  Returns:
    ``(pos_index, neg_index, anchor_mask)``: ``[B]`` int32 column indices of the
    hardest positive and negative of each anchor (lowest index among ties), and a
    ``[B]`` bool mask of anchors that have at least one positive and one negative.
  """
  pos_index = jnp.argmax(jnp.where(positive, dist, -jnp.inf), axis=1).astype(jnp.int32)
  neg_index = jnp.argmin(jnp.where(negative, dist, jnp.inf), axis=1).astype(jnp.int32)
  anchor_mask = jnp.any(positive, axis=1) & jnp.any(negative, axis=1)
  return pos_index, neg_index, anchor_mask


def semihard_negatives(dist: chex.Array, positive: chex.Array,
                       negative: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Semi-hard negative of every anchor-positive pair (FaceNet / TF-addons rule).

  For each pair ``(a, p)`` the negative is the closest one strictly farther from the
  anchor than the positive, ``argmin {d_an : d_an > d_ap}``; if no negative is farther
  than ``d_ap``, the TF-addons fallback takes the farthest negative of the anchor,
  ``argmax d_an`` (a hard triplet). Unlike FaceNet's text the chosen negative may lie
  beyond the margin (an easy triplet with zero loss), as in ``tfa.losses.
  triplet_semihard_loss``. Ties go to the lowest index.

  Args:
    dist: ``[B, B]`` distances.
    positive: ``[B, B]`` positive mask.
    negative: ``[B, B]`` negative mask.

  Returns:
    ``(neg_index, pair_mask)``: ``[B, B]`` int32 column index of the chosen negative
    for each ``(a, p)``, and the ``[B, B]`` bool mask of pairs that are positive and
    whose anchor has at least one negative.
  """
  sdist = jax.lax.stop_gradient(dist)
  sorted_negatives, order = sort_masked_rows(sdist, negative)
  num_negatives = jnp.sum(negative, axis=1, dtype=jnp.int32)
  # First sorted position with d_an > d_ap; the stable sort makes it the lowest index
  # among equal distances.
  first_outside = row_searchsorted(sorted_negatives, sdist, side="right")
  has_outside = first_outside < num_negatives[:, None]
  outside_index = jnp.take_along_axis(
      order, jnp.minimum(first_outside, dist.shape[1] - 1), axis=1)
  farthest = jnp.argmax(jnp.where(negative, sdist, -jnp.inf), axis=1).astype(jnp.int32)
  neg_index = jnp.where(has_outside, outside_index, farthest[:, None])
  pair_mask = positive & (num_negatives > 0)[:, None]
  return neg_index, pair_mask
