"""Triplet margin losses: in-batch with exact mining, and over explicit triplets.

Mining names follow pytorch-metric-learning's ``TripletMarginMiner`` and the authors of
paper A: ``"semihard"`` and ``"hard"`` are every valid triplet of the batch in a band,
``d_ap < d_an < d_ap + mu`` and ``d_an < d_ap``, and ``"easy"`` (``d_an >= d_ap + mu``)
completes pytorch-metric-learning's set. The batch-level selections are
``"batch_semihard"`` (one semi-hard negative per anchor-positive pair, TF-addons' rule)
and ``"batch_hard"`` (Hermans et al.'s hardest positive and negative per anchor).

Band inequalities, with ``t = d_ap + mu`` rounded first (:mod:`tsm.mining`):
``"semihard"`` ``d_ap < d_an < t``, ``"hard"`` ``d_an < d_ap``, ``"easy"``
``d_an >= t``: strict as in the authors' ``getFilteredTriplets``, so an exact tie
``d_an = d_ap`` (hinge ``mu``) is in neither band, only in ``"all"``.
pytorch-metric-learning computes ``m = d_an - d_ap`` and mines ``0 < m <= mu``
(semihard), ``m <= min(mu, 0)`` (hard) and ``m > mu`` (easy): it puts the ties
``d_an = d_ap`` in "hard" and the boundary ``m = mu`` (zero hinge) in "semihard" rather
than "easy", and its "all" mines only the violating ``m <= mu``. So tsm and
pytorch-metric-learning differ only on exact ties and by the rounding of ``t`` versus
``m``. The statistic ``num_hard`` keeps paper A's text, ``d_an <= d_ap``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses import _mined
from tsm.distances import (LOSS_DISTANCES, check_distance, paired_query_distances,
                           query_distances)
from tsm.losses._base import (_float_dtype, _nan_out, _no_grad, _nonfinite_rows, _reduce,
                              check_anchor_labels, check_inputs, check_reduction,
                              check_tuple_inputs, check_valid, is_named, reduce_terms)
from tsm.reducers import Reduction

# Band modes over every valid triplet (pytorch-metric-learning's TripletMarginMiner
# names), then the batch-level selections.
MINING = ("all", "semihard", "hard", "easy", "batch_hard", "batch_semihard")


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
      ``num_triplets``; ``"semihard"`` / ``"hard"`` / ``"easy"``: the triplets in the
      band; ``"batch_hard"``: anchors; ``"batch_semihard"``: anchor-positive pairs);
      the denominator of ``reduction="mean"``.
    num_active: valid triplets with non-zero loss at this margin
      (``num_triplets - num_easy``), whatever the mining mode.
    num_mined_active: mined triplets with non-zero loss (``"all"``: ``num_active``;
      ``"easy"``: 0); the denominator of ``reduction="mean_nonzero"``.
    active_ratio: ``num_active / max(num_triplets, 1)``.
    mean_pos_dist: mean distance over valid positive pairs.
    mean_neg_dist: mean distance over valid negative pairs.

  The common statistics shape of every tsm loss is exposed too: ``num_total`` (=
  ``num_triplets``), ``num_active`` and ``num_easy``; they describe the whole batch, not
  the mined band, so a margin schedule sees the same counts whatever the mining.

  When an input is not finite (see :func:`triplet_margin_loss`) every field is NaN.
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


# --- all triplets / a band: exact hinge sum in O(B^2 min(K, log B)), closed-form
# gradient. ---


def _band_counts(dist, margin, positive, negative, groups, band, with_pushes):
  """``((hinge_sum, TripletCounts, num_mined, num_mined_active), hinge_grad)``."""
  if band == "all":
    pair = mining_lib.triplet_pair_counts(dist, positive, negative, margin,
                                          with_pushes=with_pushes, groups=groups)
    num_mined = pair.counts.num_triplets
    num_mined_active = pair.counts.num_triplets - pair.counts.num_easy
  else:
    pair = mining_lib.triplet_band_counts(dist, positive, negative, margin, band,
                                          with_pushes=with_pushes, groups=groups)
    num_mined, num_mined_active = pair.num_mined, pair.num_mined_active
  out = (pair.hinge_sum, pair.counts, num_mined, num_mined_active)
  return out, pair.hinge_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _band_hinge(dist, margin, positive, negative, groups, band):
  """``(sum over the band's (a,p,n) of relu(d_ap + margin - d_an), TripletCounts,
  num_mined, num_mined_active)``; ``band`` is ``"all"`` (every valid triplet),
  ``"semihard"`` or ``"hard"`` (see :func:`tsm.mining.triplet_band_counts`)."""
  return _band_counts(dist, margin, positive, negative, groups, band, False)[0]


def _band_hinge_fwd(dist, margin, positive, negative, groups, band):
  out, hinge_grad = _band_counts(dist, margin, positive, negative, groups, band, True)
  return out, (hinge_grad, out[3], margin)


def _band_hinge_bwd(band, residuals, cotangents):
  del band
  hinge_grad, num_mined_active, margin = residuals
  g = cotangents[0]  # The counts carry no gradient.
  # d/d d_ap = #{n in band: d_an < t_ap}; d/d d_an = -#{p: same} (relu'(0) = 0);
  # d/d margin = the number of non-zero terms.
  grad_dist = g * hinge_grad.astype(g.dtype)
  grad_margin = (g * num_mined_active).astype(margin.dtype)
  return grad_dist, grad_margin, None, None, None


_band_hinge.defvjp(_band_hinge_fwd, _band_hinge_bwd)


def curriculum_mining(epoch: int, semihard_until: int, hard_until: int, *,
                      stages: tuple[str, str, str] = ("semihard", "all", "hard")) -> str:
  """The mining mode of paper A's curriculum at a (0-based) epoch.

  The authors' code (``maintaining-difficulty``, ``Loss.TripletFiltering`` with
  ``"scheduler a b"``) trains on their "semihard" band, then on all violating triplets
  (their "hard"), then on ``d_an < d_ap`` (their "superhard"), each time taking the mean
  over the mined triplets. In tsm names that is ``"semihard"``, ``"all"`` and
  ``"hard"``; with ``reduction="mean_nonzero"`` each stage's loss is exactly the
  authors' mean (every mined term of the first and last stage is non-zero at
  ``mu >= 0``, and the non-zero terms of ``"all"`` are the violating triplets). Their
  0-based epoch ``i`` is in the first stage while ``i < a - 1`` and in the second while
  ``i < b - 1``: pass ``semihard_until = a - 1``, ``hard_until = b - 1``.

  Args:
    epoch: the current epoch, 0-based (as :func:`tsm.fit.fit` counts them).
    semihard_until: first epoch of the second stage.
    hard_until: first epoch of the third stage (``>= semihard_until``).
    stages: the three mining names (default ``("semihard", "all", "hard")``).

  Returns:
    ``stages[0]`` while ``epoch < semihard_until``, ``stages[1]`` while
    ``epoch < hard_until``, ``stages[2]`` after.

  References:
    Tomchak et al., arXiv 2603.26389; github.com/robertotomchak/maintaining-difficulty.
  """
  for stage in stages:
    check_mining(stage)
  if hard_until < semihard_until:
    raise ValueError(f"hard_until={hard_until} is before semihard_until="
                     f"{semihard_until}; pass hard_until >= semihard_until.")
  if epoch < semihard_until:
    return stages[0]
  if epoch < hard_until:
    return stages[1]
  return stages[2]


def _no_grad_counts(out):
  total, counts, num_mined, num_mined_active = out
  return total, _no_grad(counts), *_no_grad((num_mined, num_mined_active))


def triplet_margin_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    mining: str = "all",
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
    ref_embeddings: chex.Array | None = None,
    ref_labels: chex.Array | None = None,
    pair_weights: chex.Array | None = None,
    triplet_weights: chex.Array | None = None,
) -> tuple[chex.Array, TripletStats]:
  """Triplet margin loss ``max(0, d(a,p) - d(a,n) + margin)`` over a labelled batch.

  Mining modes over every valid triplet ``(a, p, n)`` (``a != p`` same label, ``n``
  another label) of the batch, with ``t = d_ap + margin``, computed exactly in
  ``O(B^2 min(K, log B))`` time (K: most positives of an anchor) and ``O(B^2)`` memory,
  never building the ``[B, B, B]`` tensor:
    * ``"all"``: every valid triplet (with ``reduction="mean_nonzero"``: the mean over
      the violating ones, the authors' "hard" filter);
    * ``"semihard"``: ``d_ap < d_an < t``;
    * ``"hard"``: ``d_an < d_ap`` (the authors' "superhard");
    * ``"easy"``: ``d_an >= t`` (all hinges are 0; for pytorch-metric-learning parity).
  Batch-level selections:
    * ``"batch_hard"`` (Hermans et al.): per anchor, its farthest positive and closest
      negative; anchors without a positive or a negative are left out.
    * ``"batch_semihard"``: per anchor-positive pair, the closest negative farther than
      the positive, or, if there is none, the anchor's farthest negative (the rule of
      ``tfa.losses.triplet_semihard_loss``; see :func:`tsm.mining.semihard_negatives`).
      Pairs whose anchor has no negative are left out.

  Reductions: ``"mean"`` over the mined triplets, ``"mean_nonzero"`` over the mined
  triplets with non-zero loss, ``"sum"``, or a :mod:`tsm.reducers` value (a threshold
  on each triplet's loss, class weights by the anchor's label, per-anchor means over
  the anchor's triplets). A batch with nothing to mine gives loss 0 with zero (finite)
  gradients. The three names keep the exact band path above; a reducer value needs
  each triplet's loss, so ``"all"`` / ``"semihard"`` / ``"hard"`` / ``"easy"`` then
  take the dense path of :mod:`tsm.losses._mined`: ``O(B^3)`` time, ``O(B^2)`` memory
  per chunk of anchors (about 4M ``[B, B]`` entries at once), never ``[B, B, B]``;
  ``"batch_hard"`` / ``"batch_semihard"`` have their ``[B]`` / ``[B, B]`` terms and
  stay ``O(B^2)``.

  Distances (:data:`tsm.distances.LOSS_DISTANCES`), on the embeddings as given:
  ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` (``1 - cos``), PML's
  ``DotProductSimilarity`` as ``"dot_product"`` (``d = -x.y``: the hinge
  ``d_ap - d_an + margin`` is PML's ``s_an - s_ap + margin``, the same margin) and
  ``SNRDistance`` as ``"snr"`` (``d_ax = var(x - a) / var(a)``, the anchor's row; an
  anchor of zero variance, where PML's distance is infinite, anchors no triplet but
  still serves as a positive or negative). The margin is in the distance's units.

  NaN in, NaN out: if a valid row of ``embeddings`` holds a NaN or inf, or is so large
  that its squared norm overflows (``|x| > ~1.8e19`` in float32), or a distance between
  valid rows is not finite (overflow), or ``margin`` is not finite, then the loss, its
  gradients and every field of the stats are NaN. Padding rows (``valid`` false) are
  zeroed first, so a NaN there changes nothing.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    margin: scalar margin (may be traced; differentiable).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (see "Distances" above).
    mining: one of :data:`MINING`.
    reduction: ``"mean"``, ``"mean_nonzero"``, ``"sum"`` or a :mod:`tsm.reducers`
      value (see above).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.
    ref_embeddings: optional ``[M, D]`` reference set (a second view, differentiated
      like the batch; a cross-batch memory's rows hold no gradient):
      anchors are the batch rows, positives and negatives the reference rows.
    ref_labels: ``[M]`` labels of ``ref_embeddings``.
    pair_weights: optional ``[B, M]`` mined pairs (a miner of :mod:`tsm.miners`); the
      triplets are those with both pairs mined (PML's ``convert_to_triplets``).
    triplet_weights: optional ``[B, M, M]`` mined triplets (a triplet miner).

  With any of the last four the loss is the general path of
  :mod:`tsm.losses._mined` (dense over the mined triplets, ``mining="all"`` only: the
  miner does the mining); without them, the exact in-batch paths above.

  Returns:
    ``(loss, stats)``: scalar loss and :class:`TripletStats` (type counts over all valid
    triplets at this margin, whatever the mining mode; on the general path, over the
    mined triplets).

  Raises:
    ValueError: (before tracing) on an unknown name or malformed input.

  References:
    Schroff et al., CVPR 2015; Hermans et al., arXiv 1703.07737; Tomchak et al., arXiv
    2603.26389 and github.com/robertotomchak/maintaining-difficulty (``run.py``,
    ``getFilteredTriplets``); pytorch-metric-learning ``TripletMarginMiner``.
  """
  check_distance(distance, LOSS_DISTANCES)
  check_mining(mining)
  check_reduction(reduction)
  check_inputs(embeddings, labels, margin)
  check_valid(valid, embeddings.shape[0])
  chex.assert_rank([embeddings, labels], [2, 1])
  if valid is not None:
    valid = valid.astype(bool)
  if _mined.uses_general_path(ref_embeddings, ref_labels, pair_weights, triplet_weights):
    _mined.check_general_inputs(embeddings, ref_embeddings, ref_labels, pair_weights,
                                triplet_weights)
    if mining != "all":
      raise ValueError(f"mining={mining!r} is an in-batch mode; with ref_embeddings / "
                       "pair_weights / triplet_weights use mining='all' and mine with a "
                       "tsm.miners function.")
    return _mined.triplet_general(
        embeddings, labels, margin, distance=distance, reduction=reduction, valid=valid,
        ref_embeddings=ref_embeddings, ref_labels=ref_labels, pair_weights=pair_weights,
        triplet_weights=triplet_weights)
  if not is_named(reduction) and mining in ("all", "semihard", "hard", "easy"):
    return _mined.triplet_general(
        embeddings, labels, margin, distance=distance, reduction=reduction, valid=valid,
        ref_embeddings=None, ref_labels=None, pair_weights=None, triplet_weights=None,
        band=mining)

  dtype = _float_dtype(embeddings)
  rows = jnp.ones(labels.shape, bool) if valid is None else valid
  # Padding rows take part in no term; zeroing them keeps a NaN there out of the
  # gradient (the distance matrix's backward pass would multiply it by zero).
  embeddings = jnp.where(rows[:, None], embeddings.astype(dtype), 0)
  dist, defined = query_distances(embeddings, distance=distance)
  margin = jnp.asarray(margin, dtype)
  positive, negative = mining_lib.label_masks(labels, valid)
  if distance == "snr":
    # A row of zero variance has no SNR distance as an anchor (PML: inf): it anchors no
    # triplet, and the label groups (which assume every row anchors) are not used.
    positive, negative = positive & defined[:, None], negative & defined[:, None]
    groups = None
  else:
    groups = mining_lib.label_groups(labels, valid)

  if mining in ("all", "semihard", "hard"):
    total, counts, num_mined, num_mined_active = _no_grad_counts(
        _band_hinge(dist, margin, positive, negative, groups, mining))
  elif mining == "easy":
    counts = mining_lib.triplet_type_counts(dist, positive, negative, margin,
                                            groups=groups)
    total = jnp.zeros((), dtype)  # Every easy hinge is max(0, t - d_an) = 0.
    num_mined = counts.num_easy
    num_mined_active = jnp.zeros((), jnp.float32)
  else:
    counts = mining_lib.triplet_type_counts(dist, positive, negative, margin,
                                            groups=groups)
    if mining == "batch_hard":
      pos_index, neg_index, mask = mining_lib.batch_hard(
          jax.lax.stop_gradient(dist), positive, negative)
      d_ap = jnp.take_along_axis(dist, pos_index[:, None], axis=1)[:, 0]
      d_an = jnp.take_along_axis(dist, neg_index[:, None], axis=1)[:, 0]
    else:  # "batch_semihard"
      neg_index, mask = mining_lib.semihard_negatives(dist, positive, negative)
      d_ap = dist
      d_an = jnp.take_along_axis(dist, neg_index, axis=1)
    losses = jnp.where(mask, jax.nn.relu((d_ap + margin) - d_an), 0.0)
    total = jnp.sum(losses)
    num_mined = mining_lib.count_sum(mask)
    num_mined_active = mining_lib.count_sum(mask & (losses > 0))
    if not is_named(reduction):  # [B] or [B, B] terms, the anchor first
      total, _ = reduce_terms(losses, mask, reduction, labels=labels, rows=rows)
      reduction = "sum"

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
  # A valid pair is positive, negative or on the diagonal (finite for finite rows), and
  # a mean of finite distances is finite (each is below ~1.8e19), so the two means are
  # not finite exactly when a distance between valid rows is not.
  bad = (jnp.any(_nonfinite_rows(embeddings)) | ~jnp.isfinite(margin)
         | ~jnp.isfinite(stats.mean_pos_dist) | ~jnp.isfinite(stats.mean_neg_dist))
  dependents = jnp.sum(embeddings) + margin
  return _nan_out(loss, _no_grad(stats), bad, dependents)


def triplet_margin_loss_from_triplets(
    anchor: chex.Array,
    positive: chex.Array,
    negative: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
    labels: chex.Array | None = None,
) -> tuple[chex.Array, TripletStats]:
  """Triplet margin loss over explicit triplets ``(anchor[i], positive[i], negative[i])``.

  For users who sample their own triplets (paper B samples one random positive and
  negative per anchor). The stats count the given triplets (``num_triplets`` =
  ``num_mined`` = number of valid rows) by type with the conventions of
  :mod:`tsm.mining`. NaN in, NaN out: a non-finite (or overflowing) valid row, distance
  or margin makes the loss, its gradients and every stat NaN.

  Args:
    anchor: ``[N, D]`` anchors.
    positive: ``[N, D]`` positives (same class as the anchor).
    negative: ``[N, D]`` negatives (another class).
    margin: scalar margin (may be traced).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES`, as
      :func:`triplet_margin_loss` (``"snr"``: a triplet whose anchor has zero variance
      is left out).
    reduction: ``"mean"``, ``"mean_nonzero"``, ``"sum"`` or a :mod:`tsm.reducers`
      value; each triplet is its own anchor (a per-anchor reduction is its inner one
      over the triplets).
    valid: optional ``[N]`` bool mask of rows to use.
    labels: optional ``[N]`` labels of the anchors, needed by a class-weighted
      reduction.

  Returns:
    ``(loss, stats)`` with :class:`TripletStats`.

  Raises:
    ValueError: (before tracing) on an unknown name or malformed input.
  """
  check_distance(distance, LOSS_DISTANCES)
  check_reduction(reduction)
  check_tuple_inputs({"anchor": anchor, "positive": positive, "negative": negative},
                     margin)
  check_valid(valid, anchor.shape[0], rows_name="anchor")
  check_anchor_labels(labels, reduction, anchor.shape[0], "anchor")
  chex.assert_equal_shape([anchor, positive, negative])
  dtype = _float_dtype(anchor)
  if valid is None:
    valid = jnp.ones(anchor.shape[:1], bool)
  valid = valid.astype(bool)
  anchor, positive, negative = (jnp.where(valid[:, None], x.astype(dtype), 0)
                                for x in (anchor, positive, negative))
  margin = jnp.asarray(margin, dtype)
  d_ap, defined = paired_query_distances(anchor, positive, distance=distance)
  d_an, _ = paired_query_distances(anchor, negative, distance=distance)
  valid = valid & defined  # "snr": an anchor of zero variance has no distance (PML: inf)
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
  if is_named(reduction):
    loss = _reduce(total, num, num_active, reduction)
  else:
    loss, _ = reduce_terms(losses, valid, reduction, labels=labels)
  rows_bad = (_nonfinite_rows(anchor) | _nonfinite_rows(positive)
              | _nonfinite_rows(negative) | ~jnp.isfinite(s_ap) | ~jnp.isfinite(s_an))
  bad = jnp.any(rows_bad & valid) | ~jnp.isfinite(margin)
  dependents = jnp.sum(anchor) + jnp.sum(positive) + jnp.sum(negative) + margin
  return _nan_out(loss, _no_grad(stats), bad, dependents)
