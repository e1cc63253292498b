"""In-batch label masks, exact triplet counting and triplet selection.

Why one module of this length: the dense and the sort paths of exact counting, and
their band variants, share the slot, key and row-sum helpers; each path is tested
against the others and against numpy loops.

Helpers shared by the losses in :mod:`tsm.losses`. Everything here works on a
precomputed ``[B, B]`` distance matrix and boolean label masks, is pure, fixed-shape
and jit/grad/vmap-safe, and never materialises a ``[B, B, B]`` tensor. Counting
over all ``O(B^3)`` triplets (:func:`triplet_pair_counts`) uses one of two exact
algorithms, chosen at run time by ``jax.lax.switch``:

  * ``"dense"`` when every anchor has at most ``DENSE_MAX_POSITIVES`` positives (the
    usual P x K batches): a loop over the k-th positive of every anchor, each step
    one vectorised pass over the ``[B, B]`` matrix: ``O(B^2 K)`` time, ``O(B^2)``
    memory, no sorting.
  * ``"sort"`` otherwise: per anchor the negative distances are sorted and every
    threshold is located by binary search: ``O(B^2 log B)`` time, ``O(B^2)`` memory.
    Sorting works on uint32 keys that order like the floats (XLA's CPU sort is
    several times faster on integers than on floats). When every anchor's positives
    fit in ``B/16`` or ``B/4`` slots, they are gathered there first, so the searches
    run over fewer queries.

The same two algorithms give exact hinge sums, counts and gradient counts over a band
of the triplets (:func:`triplet_band_counts`: pytorch-metric-learning's and paper A's
"semihard" ``d_ap < d_an < t`` and "hard" ``d_an < d_ap``): in the sorted row a band's
non-zero terms are the positions ``[c_lo, c_hi)`` found by two binary searches, so its
hinge sum is ``(c_hi - c_lo) t - (prefix[c_hi] - prefix[c_lo])``, the difference of two
"negatives below a threshold" sums.

Conventions:
  * ``positive[a, p]`` is true for ``a != p`` with the same label (both rows valid).
  * ``negative[a, n]`` is true for different labels (both rows valid).
  * A valid triplet is ``(a, p, n)`` with ``positive[a, p] & negative[a, n]``; a batch
    with class sizes ``n_c`` has ``sum_c n_c (n_c - 1) (B - n_c)`` of them.
  * Triplet types at margin ``mu`` are decided with ``t = d_ap + mu`` computed in
    floating point first, then compared with ``d_an``: easy ``d_an >= t``, semi-hard
    ``d_ap < d_an < t``, hard ``d_an <= d_ap``. A triplet's hinge loss is
    ``max(0, t - d_an)``, positive exactly when ``d_an < t``, so "active" (non-zero
    loss) is the same as semi-hard or hard. Whenever ``t > d_ap`` (``mu > 0`` not lost
    to rounding) the three types partition the valid triplets. Otherwise semi-hard is
    empty and a triplet may be both easy and hard (at ``mu = 0``: exactly the ties
    ``d_an = d_ap``); the counts follow the definitions literally, and
    ``num_easy = num_triplets - num_active`` always holds.
  * Ties in selections (hardest positive/negative, semi-hard negative) go to the
    lowest index.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm.reductions import row_sums

# jnp.searchsorted implementation used on the sorted rows. "scan" (binary search) was
# the fastest on CPU for B in [256, 4096]: "sort" sorts with a payload (several times
# slower on XLA:CPU), "compare_all" needs O(B^3) memory.
SEARCHSORTED_METHOD = "scan"

# Largest number of positives per anchor for which the dense O(B^2 K) counting loop
# is used instead of sorting (see bench/losses.py for the crossover).
DENSE_MAX_POSITIVES = 32

COUNT_METHODS = ("auto", "dense", "sort")


def _check_method(method: str) -> None:
  if method not in COUNT_METHODS:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(COUNT_METHODS)}.")


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
  """Mean of ``values`` where ``mask``; 0 when the mask is empty.

  One fused pass per row (:func:`tsm.reductions.row_sums`), then the rows are summed.
  """
  if values.ndim == 0:
    values, mask = values[None], mask[None]
  count, total = row_sums(jnp.broadcast_to(mask, values.shape).astype(jnp.int32),
                          jnp.where(mask, values, 0.0))
  count = jnp.sum(count.astype(jnp.float32))
  return jnp.sum(total) / jnp.maximum(count, 1.0)


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


def _key_types(dtype) -> tuple[jnp.dtype, int]:
  if jnp.dtype(dtype) == jnp.float64:
    return jnp.uint64, 1 << 63
  return jnp.uint32, 1 << 31


def float_sort_key(x: chex.Array) -> chex.Array:
  """Unsigned integer keys that order exactly like the float values.

  ``-0.0`` and ``0.0`` get the same key. float32 (and narrower, upcast) gives uint32
  keys, float64 uint64 keys.

  Args:
    x: float array without NaNs.

  Returns:
    Unsigned array with ``key(x) < key(y)`` iff ``x < y``.
  """
  if jnp.dtype(x.dtype).itemsize < 4:
    x = x.astype(jnp.float32)
  utype, sign = _key_types(x.dtype)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = jax.lax.bitcast_convert_type(x, utype)
  sign = jnp.asarray(sign, utype)
  return jnp.where(bits >= sign, ~bits, bits | sign)


def float_from_sort_key(key: chex.Array) -> chex.Array:
  """Inverse of :func:`float_sort_key` (float32 for uint32 keys, float64 for uint64)."""
  ftype = jnp.float64 if key.dtype == jnp.uint64 else jnp.float32
  utype, sign = _key_types(ftype)
  sign = jnp.asarray(sign, utype)
  bits = jnp.where(key >= sign, key ^ sign, ~key)
  return jax.lax.bitcast_convert_type(bits, ftype)


class LabelGroups(NamedTuple):
  """Each row's class within a batch, from one sort of the labels (see :func:`label_groups`).

  Attributes:
    num_positives: ``[B]`` int32, the row's positives (0 for padding rows).
    num_negatives: ``[B]`` int32, the row's negatives (0 for padding rows).
    order: ``[B]`` int32, the rows sorted by (padding last, label, index).
    start: ``[B]`` int32, where the row's class starts in ``order``.
    position: ``[B]`` int32, the row's own place in ``order``.
  """
  num_positives: chex.Array
  num_negatives: chex.Array
  order: chex.Array
  start: chex.Array
  position: chex.Array


def label_groups(labels: chex.Array, valid: chex.Array | None = None) -> LabelGroups:
  """Row counts and class members of a batch in ``O(B log B)``, with no ``[B, B]`` pass.

  The same facts as :func:`label_masks` gives row by row (``num_positives`` is the row
  sum of ``positive``, ``num_negatives`` of ``negative``), for the counting functions
  here: on CPU a reduction or top-k over a ``[B, B]`` mask costs as much as a pass of
  the loss itself (XLA materialises the converted mask), a sort of ``B`` labels almost
  nothing.

  Args:
    labels: ``[B]`` integer class labels.
    valid: optional ``[B]`` bool mask of real (not padding) rows.

  Returns:
    :class:`LabelGroups`.
  """
  chex.assert_rank(labels, 1)
  b = labels.shape[0]
  rows = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
  index = jnp.arange(b, dtype=jnp.int32)
  padding = (~rows).astype(jnp.int32)
  pad_s, label_s, order = jax.lax.sort((padding, labels, index), num_keys=3)
  first = jnp.concatenate([jnp.ones((1,), bool),
                           (pad_s[1:] != pad_s[:-1]) | (label_s[1:] != label_s[:-1])])
  last = jnp.concatenate([first[1:], jnp.ones((1,), bool)])
  start_s = jax.lax.cummax(jnp.where(first, index, 0))
  end_s = jax.lax.cummin(jnp.where(last, index, b - 1), reverse=True)
  position = jnp.zeros((b,), jnp.int32).at[order].set(index)
  start = start_s[position]
  size = end_s[position] - start + 1
  num_valid = jnp.sum(rows, dtype=jnp.int32)
  return LabelGroups(
      num_positives=jnp.where(rows, size - 1, 0),
      num_negatives=jnp.where(rows, num_valid - size, 0),
      order=order, start=start, position=position)


def _row_positives(positive: chex.Array, groups: LabelGroups | None) -> chex.Array:
  """``[B]`` int32 positives per row, from ``groups`` when given (no ``[B, B]`` pass)."""
  if groups is not None:
    return groups.num_positives
  return jnp.sum(positive, axis=1, dtype=jnp.int32)


def _row_negatives(negative: chex.Array, groups: LabelGroups | None) -> chex.Array:
  """``[B]`` int32 negatives per row, from ``groups`` when given (no ``[B, B]`` pass)."""
  if groups is not None:
    return groups.num_negatives
  return jnp.sum(negative, axis=1, dtype=jnp.int32)


def _band_totals(negative, groups, num_positives, active, hard, mined, band_active):
  """``(TripletCounts, num_mined, num_mined_active)`` from per-positive counts."""
  counts = counts_from_pairs(_row_negatives(negative, groups), num_positives, active,
                             hard)
  mined_rows, band_active_rows = row_sums(mined, band_active)
  return counts, count_sum(mined_rows), count_sum(band_active_rows)


def _positive_slots(positive: chex.Array, max_k: int,
                    groups: LabelGroups | None = None) -> tuple[chex.Array, chex.Array]:
  """Columns of the first ``max_k`` positives of each row, in index order.

  Returns ``(num_positives [B] int32, slots [B, max_k] int32)``; slots past a row's
  number of positives hold arbitrary columns. With ``groups`` the columns are read
  from the sorted labels (``O(B max_k)``); without, ``top_k`` over the mask (on CPU
  ``top_k`` is fast on floats, not on integers).
  """
  if groups is not None:
    k = jnp.arange(max_k, dtype=jnp.int32)[None, :]
    own = (groups.position - groups.start)[:, None]
    place = groups.start[:, None] + k + (k >= own)  # Skips the row itself.
    slots = groups.order[jnp.clip(place, 0, positive.shape[1] - 1)]
    return groups.num_positives, slots
  n = positive.shape[1]
  num_positives = jnp.sum(positive, axis=1, dtype=jnp.int32)
  column = jax.lax.broadcasted_iota(jnp.int32, positive.shape, 1).astype(jnp.float32)
  _, slots = jax.lax.top_k(jnp.where(positive, -column, -float(n + 1)), max_k)
  return num_positives, slots


def _dense_slot_loop(step, num_positives, max_k, b, with_pushes):
  """The dense loops' driver: ``step(k)`` for the k-th positive of every anchor.

  ``step(k)`` returns ``(pushed [B, B] bool, columns: list of [B] int32, hinge [B])``.
  Returns ``(per_slot, minus_pushes, hinge_sum)``: each column stacked as ``[B, max_k]``,
  ``-sum_k pushed`` (``[B, B]`` int32 when ``with_pushes``, else a scalar 0) and the
  summed hinge. The first positive is taken outside the loop so that the pushes start
  from its mask, not from a ``[B, B]`` array of zeros (on CPU a whole extra pass).
  """
  def put(acc, k, column):
    return jax.lax.dynamic_update_slice_in_dim(acc, column[:, None], k, axis=1)

  def body(k, carry):
    per_slot, minus_pushes, hinge = carry
    pushed, columns, row_hinge = step(k)
    if with_pushes:
      minus_pushes = minus_pushes - pushed.astype(jnp.int32)
    return (tuple(put(acc, k, c) for acc, c in zip(per_slot, columns)), minus_pushes,
            hinge + row_hinge)

  pushed, columns, hinge = step(0)
  zeros_k = jnp.zeros((b, max_k), jnp.int32)
  init = (tuple(put(zeros_k, 0, c) for c in columns),
          -pushed.astype(jnp.int32) if with_pushes else jnp.zeros((), jnp.int32), hinge)
  per_slot, minus_pushes, hinge = jax.lax.fori_loop(
      1, jnp.max(num_positives, initial=0), body, init)
  return per_slot, minus_pushes, jnp.sum(hinge)


def _slot_gradient(minus_pushes, per_slot, slots, num_positives, shape, with_pushes):
  """``(hinge_grad, pushes)`` of the dense loops: the per-slot counts written into the
  loop's ``-pushes`` array in place (positive and negative pairs never overlap), so the
  backward pass reads one ``[B, B]`` array and no array of zeros is filled for it."""
  if not with_pushes:
    zeros = jnp.zeros(shape, jnp.int32)
    return zeros, zeros
  max_k = slots.shape[1]
  used = jnp.arange(max_k)[None, :] < num_positives[:, None]
  target = jnp.where(used, slots, shape[1])  # Unused slots fall off the end.
  rows = jnp.arange(shape[0])[:, None]
  hinge_grad = minus_pushes.at[rows, target].set(per_slot, mode="drop")
  return hinge_grad, jnp.maximum(-hinge_grad, 0)


def _from_slots(values: chex.Array, slots: chex.Array, num_positives: chex.Array,
                shape: tuple[int, int]) -> chex.Array:
  """Scatters per-slot ``values [B, K]`` back to ``[B, N]`` (zeros elsewhere)."""
  max_k = slots.shape[1]
  used = jnp.arange(max_k)[None, :] < num_positives[:, None]
  target = jnp.where(used, slots, shape[1])  # Unused slots fall off the end.
  rows = jnp.arange(shape[0])[:, None]
  return jnp.zeros(shape, values.dtype).at[rows, target].set(values, mode="drop")


class PairCounts(NamedTuple):
  """Per anchor-positive pair counts over the negatives of the anchor.

  Attributes:
    active: ``[B, B]`` int32, ``#{n: d_an < d_ap + mu}`` at positive ``(a, p)``, else 0.
    hard: ``[B, B]`` int32, ``#{n: d_an <= d_ap}`` at positive ``(a, p)``, else 0.
    pushes: ``[B, B]`` int32, ``#{p: d_an < d_ap + mu}`` at negative ``(a, n)``, else 0
      (the gradient of the hinge sum with respect to ``d_an``, negated); zeros unless
      requested.
    hinge_sum: scalar, ``sum over valid (a, p, n) of max(0, (d_ap + mu) - d_an)``.
    counts: the batch's :class:`TripletCounts`, summed from the per-positive counts
      before they are spread to ``[B, B]`` (so a caller that needs only these never
      pays for ``hard``'s ``[B, B]`` array).
    hinge_grad: ``[B, B]`` int32, the gradient of ``hinge_sum`` with respect to the
      distances: ``active`` at positive pairs, ``-pushes`` at negative pairs, 0
      elsewhere (one array for the backward pass); zeros unless ``with_pushes``.
  """
  active: chex.Array
  hard: chex.Array
  pushes: chex.Array
  hinge_sum: chex.Array
  counts: TripletCounts
  hinge_grad: chex.Array


def _dense_slots(dist, positive, negative, margin, max_k, groups):
  """The dense paths' positives: ``(num_positives, slots, kth)``.

  Each anchor's positives sit in ``max_k`` slots (:func:`_positive_slots`); ``kth(k)``
  gives ``(used, t, d_ap, below)``: the k-th positive as ``[B, 1]`` columns (``t =
  d_ap + margin``) and the ``[B, B]`` masks of the anchor's negatives (``used``: the
  anchor has a k-th positive) and of those with ``d_an < t``.
  """
  num_positives, slots = _positive_slots(positive, max_k, groups)
  slot_dist = jnp.take_along_axis(dist, slots, axis=1)
  slot_thresholds = slot_dist + margin

  def kth(k):
    used = (k < num_positives)[:, None] & negative
    t = jax.lax.dynamic_slice_in_dim(slot_thresholds, k, 1, axis=1)
    d_ap = jax.lax.dynamic_slice_in_dim(slot_dist, k, 1, axis=1)
    return used, t, d_ap, used & (dist < t)

  return num_positives, slots, kth


def _dense_pair_counts(dist, positive, negative, margin, with_pushes, max_k, groups):
  """Loop over the k-th positive of every anchor; each step is one fused O(B^2) pass."""
  num_positives, slots, kth = _dense_slots(dist, positive, negative, margin, max_k,
                                           groups)

  def step(k):
    used, t, d_ap, below = kth(k)
    *columns, hinge = row_sums(below.astype(jnp.int32),
                               (used & (dist <= d_ap)).astype(jnp.int32),
                               jnp.where(below, t - dist, 0.0))
    return below, columns, hinge

  (active_k, hard_k), minus_pushes, hinge = _dense_slot_loop(
      step, num_positives, max_k, dist.shape[0], with_pushes)
  counts = counts_from_pairs(_row_negatives(negative, groups), num_positives,
                             active_k, hard_k)
  active = _from_slots(active_k, slots, num_positives, dist.shape)
  hard = _from_slots(hard_k, slots, num_positives, dist.shape)
  hinge_grad, pushes = _slot_gradient(minus_pushes, active_k, slots, num_positives,
                                      dist.shape, with_pushes)
  return PairCounts(active, hard, pushes, hinge, counts, hinge_grad)


def _sort_queries(dist, positive, negative, margin, groups, width):
  """The sort paths' queries and keys.

  Returns ``(query_dist, query_used, thresholds, neg_keys, num_positives, slots)``:
  without ``width`` the queries are the whole ``[B, B]`` rows (``query_used`` = the
  positive pairs; ``num_positives``, ``slots`` None); with it, each row's positives
  gathered into ``width`` slots (:func:`_positive_slots`). ``thresholds = query_dist +
  margin``; ``neg_keys``: each row's negative distances as sorted sort keys (the other
  entries +inf, last).
  """
  if width is None:
    query_dist, query_used, num_positives, slots = dist, positive, None, None
  else:
    num_positives, slots = _positive_slots(positive, width, groups)
    query_dist = jnp.take_along_axis(dist, slots, axis=1)
    query_used = jnp.arange(width)[None, :] < num_positives[:, None]
  thresholds = query_dist + margin
  inf = jnp.asarray(jnp.inf, dist.dtype)
  neg_keys = jnp.sort(float_sort_key(jnp.where(negative, dist, inf)), axis=1)
  return query_dist, query_used, thresholds, neg_keys, num_positives, slots


def _prefix_from_closest(neg_keys):
  """``(closest, prefix)`` of each row's sorted negatives: the closest distance, and the
  prefix sums of the distances measured from it (``[B, n + 1]``, from 0), which limits
  cancellation in the hinge sums."""
  sorted_neg = float_from_sort_key(neg_keys)
  finite = jnp.isfinite(sorted_neg)
  closest = jnp.where(finite[:, :1], sorted_neg[:, :1], 0.0)
  offsets = jnp.where(finite, sorted_neg - closest, 0.0)
  prefix = jnp.concatenate(
      [jnp.zeros_like(offsets[:, :1]), jnp.cumsum(offsets, axis=1)], axis=1)
  return closest, prefix


def _sort_pair_counts(dist, positive, negative, margin, with_pushes, groups,
                      width=None):
  """Sorted negatives per anchor and binary search; O(B^2 log B).

  With ``width`` the positives of each row are first gathered into ``width`` slots
  (requires at most ``width`` positives per anchor), so that the two forward searches
  run over ``[B, width]`` queries instead of ``[B, B]``.
  """
  shape = dist.shape
  inf = jnp.asarray(jnp.inf, dist.dtype)
  query_dist, query_used, thresholds, neg_keys, num_positives, slots = _sort_queries(
      dist, positive, negative, margin, groups, width)
  active = row_searchsorted(neg_keys, float_sort_key(thresholds), side="left")
  hard = row_searchsorted(neg_keys, float_sort_key(query_dist), side="right")
  active = jnp.where(query_used, active, 0)
  hard = jnp.where(query_used, hard, 0)
  # sum_{n: d_an < t} (t - d_an) = c t - (prefix sum of the c closest negatives),
  # with distances measured from the row's closest negative to limit cancellation.
  closest, prefix = _prefix_from_closest(neg_keys)
  below = jnp.take_along_axis(prefix, active, axis=1)
  per_pair = active.astype(dist.dtype) * (thresholds - closest) - below
  hinge = jnp.sum(jnp.where(active > 0, jnp.maximum(per_pair, 0.0), 0.0))
  if with_pushes:
    # #{p: d_an < t_ap} = (#slots) - #{slots: t <= d_an}; unused slots sort first at -inf.
    t_keys = jnp.sort(float_sort_key(jnp.where(query_used, thresholds, -inf)), axis=1)
    not_above = row_searchsorted(t_keys, float_sort_key(dist), side="right")
    pushes = jnp.where(negative, t_keys.shape[1] - not_above, 0)
  else:
    pushes = jnp.zeros(shape, jnp.int32)
  counts = counts_from_pairs(_row_negatives(negative, groups),
                             _row_positives(positive, groups), active, hard)
  if width is not None:
    active = _from_slots(active, slots, num_positives, shape)
    hard = _from_slots(hard, slots, num_positives, shape)
  hinge_grad = active - pushes  # Positive and negative pairs never overlap.
  return PairCounts(active, hard, pushes, hinge.astype(dist.dtype), counts, hinge_grad)


def _sort_widths(n: int, max_k: int) -> list[int]:
  """Static slot widths of the compacted sort branches for rows of length ``n``."""
  return [w for w in (n // 16, n // 4) if max_k < w < n - 1]


def triplet_pair_counts(dist: chex.Array, positive: chex.Array, negative: chex.Array,
                        margin: chex.Array, *, with_pushes: bool = False,
                        method: str = "auto",
                        groups: LabelGroups | None = None) -> PairCounts:
  """Exact per-pair counts and hinge sum over all valid triplets of a batch.

  Args:
    dist: ``[B, B]`` float32 distances (no gradient is taken through this function).
    positive: ``[B, B]`` positive mask (see :func:`label_masks`).
    negative: ``[B, B]`` negative mask.
    margin: scalar margin ``mu``.
    with_pushes: also compute :attr:`PairCounts.pushes` (for the gradient).
    method: ``"dense"`` (``O(B^2 K)``, K the largest number of positives of an
      anchor; requires ``K <= DENSE_MAX_POSITIVES``, more are ignored), ``"sort"``
      (``O(B^2 log B)``) or ``"auto"``: dense when ``K <= DENSE_MAX_POSITIVES``, else
      sort, with the positives first gathered into ``B/16`` or ``B/4`` slots when they
      fit (fewer binary searches); decided at run time by ``jax.lax.switch`` (under
      ``vmap`` all branches run).
    groups: optional :func:`label_groups` of the labels the masks came from; row
      counts and positive columns are then read from it instead of from passes over
      the ``[B, B]`` masks (the losses' fast path; it must match the masks).

  Returns:
    :class:`PairCounts`.
  """
  _check_method(method)
  chex.assert_rank([dist, positive, negative], 2)
  dist = jax.lax.stop_gradient(dist)
  margin = jax.lax.stop_gradient(jnp.asarray(margin, dist.dtype))
  return _by_method(
      method, positive, groups,
      lambda max_k: _dense_pair_counts(dist, positive, negative, margin, with_pushes,
                                       max_k, groups),
      lambda width=None: _sort_pair_counts(dist, positive, negative, margin, with_pushes,
                                           groups, width))


def _by_method(method, positive, groups, dense_at, sort):
  """Runs ``dense_at(max_k)`` or ``sort(width)`` as ``method`` says; for ``"auto"`` by
  the most positives of an anchor (at run time, see :func:`triplet_pair_counts`)."""
  n = positive.shape[1]
  max_k = min(DENSE_MAX_POSITIVES, n)
  dense = lambda: dense_at(max_k)
  if method == "dense":
    return dense()
  if method == "sort" or max_k < 1:
    return sort()
  if n - 1 <= max_k:  # No anchor can have more positives than that.
    return dense()
  num_positives = _row_positives(positive, groups)
  widths = _sort_widths(n, max_k)
  branches = [dense] + [lambda w=w: sort(w) for w in widths] + [sort]
  capacities = jnp.array([max_k] + widths, jnp.int32)
  most = jnp.max(num_positives, initial=0)
  return jax.lax.switch(jnp.sum(most > capacities), branches)


# --- bands of triplets (pytorch-metric-learning's TripletMarginMiner types). ---

BANDS = ("semihard", "hard")


class BandCounts(NamedTuple):
  """Per anchor-positive pair counts of a band of triplets (see :func:`triplet_band_counts`).

  Attributes:
    active: ``[B, B]`` int32, ``#{n: d_an < t}`` at positive ``(a, p)`` (all negatives,
      for the batch statistics), else 0.
    hard: ``[B, B]`` int32, ``#{n: d_an <= d_ap}`` at positive ``(a, p)``, else 0.
    mined: ``[B, B]`` int32, number of negatives in the band at positive ``(a, p)``.
    band_active: ``[B, B]`` int32, those of them with non-zero hinge ``t - d_an > 0``.
    pushes: ``[B, B]`` int32, at negative ``(a, n)``: ``#{p: (a, p, n) in the band and
      d_an < t_ap}`` (the gradient of the band's hinge sum with respect to ``d_an``,
      negated); zeros unless requested.
    hinge_sum: scalar, ``sum over the band of max(0, t - d_an)``.
    counts: the batch's :class:`TripletCounts` over all valid triplets.
    num_mined: float32 scalar, the triplets of the band (``mined`` summed).
    num_mined_active: float32 scalar, those with a non-zero hinge (``band_active``
      summed).
    hinge_grad: ``[B, B]`` int32, the gradient of ``hinge_sum`` with respect to the
      distances: ``band_active`` at positive pairs, ``-pushes`` at negative pairs;
      zeros unless ``with_pushes``.
  """
  active: chex.Array
  hard: chex.Array
  mined: chex.Array
  band_active: chex.Array
  pushes: chex.Array
  hinge_sum: chex.Array
  counts: TripletCounts
  num_mined: chex.Array
  num_mined_active: chex.Array
  hinge_grad: chex.Array


def _dense_band_counts(dist, positive, negative, margin, band, with_pushes, max_k,
                       groups):
  """Band counts, looping over the k-th positive of every anchor; each step one fused
  O(B^2) pass (see :func:`_dense_pair_counts`)."""
  num_positives, slots, kth = _dense_slots(dist, positive, negative, margin, max_k,
                                           groups)

  def step(k):
    used, t, d_ap, below = kth(k)
    if band == "semihard":
      in_band = below & (dist > d_ap)
      hot = in_band  # d_an < t: every term of the band is non-zero.
    else:  # "hard"
      in_band = used & (dist < d_ap)
      hot = in_band & (dist < t)
    count = lambda mask: mask.astype(jnp.int32)
    *columns, hinge = row_sums(count(below), count(used & (dist <= d_ap)),
                               count(in_band), count(hot), jnp.where(hot, t - dist, 0.0))
    return hot, columns, hinge

  per_slot, minus_pushes, hinge = _dense_slot_loop(step, num_positives, max_k,
                                                   dist.shape[0], with_pushes)
  totals = _band_totals(negative, groups, num_positives, *per_slot)
  hinge_grad, pushes = _slot_gradient(minus_pushes, per_slot[3], slots, num_positives,
                                      dist.shape, with_pushes)
  active, hard, mined, band_active = (
      _from_slots(v, slots, num_positives, dist.shape) for v in per_slot)
  return BandCounts(active, hard, mined, band_active, pushes, hinge, *totals,
                    hinge_grad)


def _sort_band_counts(dist, positive, negative, margin, band, with_pushes, groups,
                      width=None):
  """Band counts from sorted negatives and binary search; O(B^2 log B).

  Each band's non-zero terms are a half-open interval ``[lo, hi)`` of sort keys: the
  keys order like the floats, so ``d_an > d_ap`` is ``key(d_an) >= key(d_ap) + 1``.
  The hinge sum over positions ``[c_lo, c_hi)`` of the sorted negatives is
  ``(c_hi - c_lo) t - (prefix[c_hi] - prefix[c_lo])``.
  """
  shape = dist.shape
  query_dist, query_used, thresholds, neg_keys, num_positives, slots = _sort_queries(
      dist, positive, negative, margin, groups, width)
  t_keys = float_sort_key(thresholds)
  ap_keys = float_sort_key(query_dist)
  active = row_searchsorted(neg_keys, t_keys, side="left")      # d_an < t
  hard = row_searchsorted(neg_keys, ap_keys, side="right")      # d_an <= d_ap
  zero_key = jnp.zeros_like(t_keys)
  if band == "semihard":  # d_ap < d_an < t
    lo_keys = ap_keys + 1
    hi_keys = jnp.maximum(t_keys, lo_keys)
    c_lo, c_hi = hard, jnp.maximum(active, hard)
    mined = c_hi - c_lo
  else:  # "hard": d_an < d_ap, non-zero where also d_an < t
    lo_keys = zero_key
    hi_keys = jnp.minimum(t_keys, ap_keys)
    strict = row_searchsorted(neg_keys, ap_keys, side="left")   # d_an < d_ap
    c_lo, c_hi = jnp.zeros_like(active), jnp.minimum(active, strict)
    mined = strict
  zero = jnp.zeros_like(active)
  active, hard, mined, c_lo, c_hi = (jnp.where(query_used, v, zero)
                                     for v in (active, hard, mined, c_lo, c_hi))
  band_active = c_hi - c_lo
  closest, prefix = _prefix_from_closest(neg_keys)
  inside = (jnp.take_along_axis(prefix, c_hi, axis=1)
            - jnp.take_along_axis(prefix, c_lo, axis=1))
  per_pair = band_active.astype(dist.dtype) * (thresholds - closest) - inside
  hinge = jnp.sum(jnp.where(band_active > 0, jnp.maximum(per_pair, 0.0), 0.0))
  if with_pushes:
    # #{p: lo_p <= k < hi_p} = #{p: lo_p <= k} - #{p: hi_p <= k} as hi_p >= lo_p;
    # unused slots get lo = hi = 0 and cancel.
    keys = float_sort_key(dist)
    hi_sorted = jnp.sort(jnp.where(query_used, jnp.maximum(hi_keys, lo_keys), zero_key),
                         axis=1)
    n_hi = row_searchsorted(hi_sorted, keys, side="right")
    if band == "hard":
      n_lo = jnp.full_like(n_hi, hi_sorted.shape[1])
    else:
      lo_sorted = jnp.sort(jnp.where(query_used, lo_keys, zero_key), axis=1)
      n_lo = row_searchsorted(lo_sorted, keys, side="right")
    pushes = jnp.where(negative, n_lo - n_hi, 0)
  else:
    pushes = jnp.zeros(shape, jnp.int32)
  totals = _band_totals(negative, groups, _row_positives(positive, groups), active,
                        hard, mined, band_active)
  if width is not None:
    active, hard, mined, band_active = (
        _from_slots(v, slots, num_positives, shape)
        for v in (active, hard, mined, band_active))
  hinge_grad = band_active - pushes  # Positive and negative pairs never overlap.
  return BandCounts(active, hard, mined, band_active, pushes, hinge.astype(dist.dtype),
                    *totals, hinge_grad)


def triplet_band_counts(dist: chex.Array, positive: chex.Array, negative: chex.Array,
                        margin: chex.Array, band: str, *, with_pushes: bool = False,
                        method: str = "auto",
                        groups: LabelGroups | None = None) -> BandCounts:
  """Exact per-pair counts and hinge sum over a band of the valid triplets of a batch.

  With ``t = d_ap + mu`` rounded first (the convention of this module), the bands are
  those of the authors of paper A (``maintaining-difficulty``, ``run.py``):
    * ``"semihard"``: ``d_ap < d_an < t`` (every term non-zero);
    * ``"hard"``: ``d_an < d_ap`` (non-zero where also ``d_an < t``, i.e. all of them
      when ``mu >= 0``).
  Same cost as :func:`triplet_pair_counts`: ``O(B^2 min(K, log B))`` time and
  ``O(B^2)`` memory; the per-pair counts of all triplets (``active``, ``hard``) come
  with it for the batch statistics.

  Args:
    dist: ``[B, B]`` float32 distances (no gradient is taken through this function).
    positive: ``[B, B]`` positive mask (see :func:`label_masks`).
    negative: ``[B, B]`` negative mask.
    margin: scalar margin ``mu``.
    band: ``"semihard"`` or ``"hard"``.
    with_pushes: also compute :attr:`BandCounts.pushes` (for the gradient).
    method: ``"auto"``, ``"dense"`` or ``"sort"`` (see :func:`triplet_pair_counts`).
    groups: optional :func:`label_groups` of the labels the masks came from (see
      :func:`triplet_pair_counts`).

  Returns:
    :class:`BandCounts`.
  """
  _check_method(method)
  if band not in BANDS:
    raise ValueError(f"unknown band {band!r}; use one of {', '.join(BANDS)}.")
  chex.assert_rank([dist, positive, negative], 2)
  dist = jax.lax.stop_gradient(dist)
  margin = jax.lax.stop_gradient(jnp.asarray(margin, dist.dtype))
  return _by_method(
      method, positive, groups,
      lambda max_k: _dense_band_counts(dist, positive, negative, margin, band,
                                       with_pushes, max_k, groups),
      lambda width=None: _sort_band_counts(dist, positive, negative, margin, band,
                                           with_pushes, groups, width))


def counts_from_pairs(num_negatives: chex.Array, num_positives: chex.Array,
                      active: chex.Array, hard: chex.Array) -> TripletCounts:
  """Assembles :class:`TripletCounts` from per-pair active and hard counts.

  Args:
    num_negatives: ``[B]`` int32 number of negatives of each anchor.
    num_positives: ``[B]`` int32 number of positives of each anchor.
    active: int32 ``#{n: d_an < d_ap + mu}`` per anchor-positive pair (``[B, B]``, or
      ``[B, K]`` per positive slot; zeros elsewhere).
    hard: int32 ``#{n: d_an <= d_ap}`` per pair, the same shape.

  Returns:
    The batch's :class:`TripletCounts`.
  """
  total = count_sum(num_positives * num_negatives)
  # #{d_ap < d_an < t}: the sets nest when t > d_ap and it is empty otherwise.
  num_active, num_hard, num_semihard = (
      count_sum(rows) for rows in row_sums(active, hard, jnp.maximum(active - hard, 0)))
  return TripletCounts(
      num_triplets=total,
      num_easy=total - num_active,
      num_semihard=num_semihard,
      num_hard=num_hard)


def triplet_type_counts(dist: chex.Array, positive: chex.Array, negative: chex.Array,
                        margin: chex.Array, *, method: str = "auto",
                        groups: LabelGroups | None = None) -> TripletCounts:
  """Exact easy / semi-hard / hard counts over all valid triplets of a batch.

  ``O(B^2 min(K, log B))`` time, ``O(B^2)`` memory (see :func:`triplet_pair_counts`).

  Args:
    dist: ``[B, B]`` distance matrix.
    positive: ``[B, B]`` positive mask (see :func:`label_masks`).
    negative: ``[B, B]`` negative mask.
    margin: scalar margin ``mu``.
    method: ``"auto"``, ``"dense"`` or ``"sort"`` (see :func:`triplet_pair_counts`).
    groups: optional :func:`label_groups` of the labels the masks came from (see
      :func:`triplet_pair_counts`).

  Returns:
    :class:`TripletCounts` (float32 scalars; no gradient).
  """
  return triplet_pair_counts(dist, positive, negative, margin, method=method,
                             groups=groups).counts


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


def _semihard_sort(dist, negative, farthest):
  """Sorted negatives (integer keys, with their columns) and binary search."""
  inf = jnp.asarray(jnp.inf, dist.dtype)
  keys = float_sort_key(jnp.where(negative, dist, inf))
  iota = jax.lax.broadcasted_iota(jnp.int32, keys.shape, 1)
  sorted_keys, order = jax.lax.sort((keys, iota), dimension=1, num_keys=1,
                                    is_stable=True)
  num_negatives = jnp.sum(negative, axis=1, dtype=jnp.int32)
  # First sorted position with d_an > d_ap; the stable sort makes it the lowest index
  # among equal distances.
  first_outside = row_searchsorted(sorted_keys, float_sort_key(dist), side="right")
  has_outside = first_outside < num_negatives[:, None]
  outside_index = jnp.take_along_axis(
      order, jnp.minimum(first_outside, dist.shape[1] - 1), axis=1)
  return jnp.where(has_outside, outside_index, farthest[:, None])


def _semihard_dense(dist, positive, negative, farthest, max_k):
  """Loop over the k-th positive of every anchor; each step is O(B^2)."""
  b = dist.shape[0]
  num_positives, slots = _positive_slots(positive, max_k)
  slot_dist = jnp.take_along_axis(dist, slots, axis=1)

  def body(k, chosen):
    d_ap = jax.lax.dynamic_slice_in_dim(slot_dist, k, 1, axis=1)
    outside = negative & (dist > d_ap)
    closest = jnp.argmin(jnp.where(outside, dist, jnp.inf), axis=1).astype(jnp.int32)
    pick = jnp.where(jnp.any(outside, axis=1), closest, farthest)
    return jax.lax.dynamic_update_slice_in_dim(chosen, pick[:, None], k, axis=1)

  chosen = jax.lax.fori_loop(0, jnp.max(num_positives, initial=0), body,
                             jnp.zeros((b, max_k), jnp.int32))
  return _from_slots(chosen, slots, num_positives, dist.shape)


def semihard_negatives(dist: chex.Array, positive: chex.Array, negative: chex.Array,
                       *, method: str = "auto") -> tuple[chex.Array, chex.Array]:
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
    method: ``"dense"`` (loop over the k-th positive, ``O(B^2 K)``), ``"sort"``
      (stable sort of the negatives with their columns and binary search,
      ``O(B^2 log B)``) or ``"auto"``: dense when ``K <= DENSE_MAX_POSITIVES``, else
      sort (``jax.lax.cond``; under ``vmap`` both run).

  Returns:
    ``(neg_index, pair_mask)``: ``[B, B]`` int32 column index of the chosen negative
    for each ``(a, p)`` (0 where ``pair_mask`` is false), and the ``[B, B]`` bool mask
    of pairs that are positive and whose anchor has at least one negative.
  """
  _check_method(method)
  chex.assert_rank([dist, positive, negative], 2)
  sdist = jax.lax.stop_gradient(dist)
  farthest = jnp.argmax(jnp.where(negative, sdist, -jnp.inf), axis=1).astype(jnp.int32)
  num_negatives = jnp.sum(negative, axis=1, dtype=jnp.int32)
  pair_mask = positive & (num_negatives > 0)[:, None]
  max_k = min(DENSE_MAX_POSITIVES, dist.shape[1])
  dense = lambda: _semihard_dense(sdist, positive, negative, farthest, max_k)
  sort = lambda: _semihard_sort(sdist, negative, farthest)
  if method == "sort" or max_k < 1:
    neg_index = sort()
  elif method == "dense" or dist.shape[1] - 1 <= max_k:
    neg_index = dense()
  else:
    most = jnp.max(jnp.sum(positive, axis=1, dtype=jnp.int32), initial=0)
    neg_index = jax.lax.cond(most <= max_k, dense, sort)
  return jnp.where(pair_mask, neg_index, 0), pair_mask
