"""Contrastive losses: in-batch over every pair, and over explicit pairs."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses import _mined
from tsm.distances import (LOSS_DISTANCES, check_distance, paired_query_distances,
                           query_distances)
from tsm.losses._base import (_float_dtype, _nan_out, _no_grad, _nonfinite_rows,
                              check_anchor_labels, check_inputs, check_pair_labels,
                              check_reduction, check_tuple_inputs, check_valid, is_named,
                              reduce_terms)
from tsm.reducers import Reduction


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
    num_negative_active: negative pairs with non-zero loss (closer than the margin); the
      active share of the negative terms, ``num_negative_active / num_negative``, does
      not follow from the ``y d^2`` form the way the overall active ratio does.

  The common statistics shape of every tsm loss is exposed too: ``num_total`` (=
  ``num_pairs``), ``num_active`` and ``num_easy`` (pairs with zero loss).

  When an input is not finite (see :func:`contrastive_loss`) every field is NaN.
  """
  num_pairs: chex.Array
  num_positive: chex.Array
  num_negative: chex.Array
  num_active: chex.Array
  active_ratio: chex.Array
  mean_pos_dist: chex.Array
  mean_neg_dist: chex.Array
  num_negative_active: chex.Array

  @property
  def num_total(self) -> chex.Array:
    """The terms of the common statistics shape: every valid pair."""
    return self.num_pairs

  @property
  def num_easy(self) -> chex.Array:
    """Pairs with zero loss, ``num_pairs - num_active``."""
    return self.num_pairs - self.num_active


def _contrastive(dist, same, mask, margin, positive_margin, reduction, inputs,
                 weights=None, labels=None, rows=None):
  """Contrastive loss and :class:`PairStats` over the pairs ``mask`` of ``dist``.

  ``inputs``: the embedding arrays ``dist`` was computed from, with padding rows zeroed
  (for NaN in, NaN out). ``weights``: optional multiplicity of each pair (mined pairs,
  :mod:`tsm.losses._mined`); the reduction weighs each term by it, the counts in the
  stats count the pairs once. ``labels`` / ``rows``: the anchors' labels and the valid
  anchors, for :mod:`tsm.reducers` values (``dist``'s leading axis is the anchor).
  """
  margin = jnp.asarray(margin, dist.dtype)
  positive_margin = jnp.asarray(positive_margin, dist.dtype)
  pull = jnp.square(jax.nn.relu(dist - positive_margin))
  push = jnp.square(jax.nn.relu(margin - dist))
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
      num_negative_active=mining_lib.count_sum(
          mask & ~same & (jax.lax.stop_gradient(losses) > 0)),
  )
  loss, _ = reduce_terms(jnp.where(mask, losses, 0.0), mask, reduction, weights=weights,
                         labels=labels, rows=rows)
  bad = (jnp.any(jnp.stack([jnp.any(_nonfinite_rows(x)) for x in inputs]))
         | jnp.any(~jnp.isfinite(sdist) & mask)
         | ~jnp.isfinite(margin) | ~jnp.isfinite(positive_margin))
  dependents = sum(jnp.sum(x) for x in inputs) + margin + positive_margin
  return _nan_out(loss, _no_grad(stats), bad, dependents)


def contrastive_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: Reduction = "mean",
    positive_margin: chex.Numeric = 0.0,
    valid: chex.Array | None = None,
    ref_embeddings: chex.Array | None = None,
    ref_labels: chex.Array | None = None,
    pair_weights: chex.Array | None = None,
    triplet_weights: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Contrastive loss over all pairs ``i < j`` of a labelled batch.

  ``y max(0, d - m_pos)^2 + (1 - y) max(0, m - d)^2`` with ``y = 1`` for same-class
  pairs; with ``positive_margin = 0`` (default) this is paper B's / Hadsell et al.'s
  ``y d^2 + (1 - y) max(0, m - d)^2``. ``d`` is the chosen distance (for
  ``"squared_euclidean"`` the squared distance is squared again).

  Distances (:data:`tsm.distances.LOSS_DISTANCES`), on the embeddings as given:
  ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` (``1 - cos``), PML's
  ``DotProductSimilarity`` as ``"dot_product"`` (``d = -x.y``) and ``SNRDistance`` as
  ``"snr"`` (``d_ij = var(x_j - x_i) / var(x_i)``; not symmetric, so the pairs are all
  ordered pairs ``i != j``, as PML's, and a row of zero variance, where PML's distance
  is infinite, anchors no pair). Margins are in the distance's units: PML's margins on
  a similarity map as ``neg_margin = n`` -> ``margin = -n`` and ``pos_margin = p`` ->
  ``positive_margin = -p`` for ``"dot_product"`` (``1 - n``, ``1 - p`` for
  ``CosineSimilarity`` and ``"cosine"``).

  NaN in, NaN out: if a valid row of ``embeddings`` holds a NaN or inf or overflows
  (squared norm above the float32 range, ``|x| > ~1.8e19``), a distance between valid
  rows is not finite, or a margin is not finite, the loss, its gradients and every
  stat are NaN. Padding rows (``valid`` false) are zeroed first, so a NaN there
  changes nothing.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    margin: scalar negative margin ``m`` (may be traced).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (see "Distances" above).
    reduction: ``"mean"`` over pairs, ``"mean_nonzero"`` over pairs with non-zero
      loss, ``"sum"``, or a :mod:`tsm.reducers` value (threshold, class weights by the
      first member's label, per-anchor means), which takes the ordered pairs of the
      general path below (``O(B^2)`` as the exact path); positive and negative pairs
      are reduced together (PML: as two sub-losses).
    positive_margin: scalar ``m_pos``: positive pairs closer than this cost nothing.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.
    ref_embeddings: optional ``[M, D]`` reference set (a second view, differentiated
      like the batch; a cross-batch memory's rows hold no gradient):
      the pairs are (batch row, reference row), all ordered pairs.
    ref_labels: ``[M]`` labels of ``ref_embeddings``.
    pair_weights: optional ``[B, M]`` mined pairs (multiplicities; :mod:`tsm.miners`).
    triplet_weights: optional ``[B, M, M]`` mined triplets, taken as their pairs.

  With any of the last four the pairs are the ordered (query, reference) pairs of
  :mod:`tsm.losses._mined` (with neither reference set nor weights: all pairs ``i < j``);
  the mean over ordered pairs equals the mean over ``i < j``.

  Returns:
    ``(loss, stats)`` with :class:`PairStats`.

  Raises:
    ValueError: (before tracing) on an unknown name or malformed input.

  References:
    Hadsell, Chopra, LeCun, CVPR 2006; Zeng, arXiv 2510.02161.
  """
  check_distance(distance, LOSS_DISTANCES)
  check_reduction(reduction)
  check_inputs(embeddings, labels, margin)
  check_inputs(embeddings, margin=positive_margin, margin_name="positive_margin")
  check_valid(valid, embeddings.shape[0])
  chex.assert_rank([embeddings, labels], [2, 1])
  if (_mined.uses_general_path(ref_embeddings, ref_labels, pair_weights, triplet_weights)
      or not is_named(reduction)):
    _mined.check_general_inputs(embeddings, ref_embeddings, ref_labels, pair_weights,
                                triplet_weights)
    return _mined.contrastive_general(
        embeddings, labels, margin, distance=distance, reduction=reduction,
        positive_margin=positive_margin, valid=valid, ref_embeddings=ref_embeddings,
        ref_labels=ref_labels, pair_weights=pair_weights, triplet_weights=triplet_weights)
  dtype = _float_dtype(embeddings)
  b = labels.shape[0]
  rows = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
  # Padding rows take part in no pair; zeroing them keeps a NaN there out of the
  # gradient (the distance matrix's backward pass would multiply it by zero).
  embeddings = jnp.where(rows[:, None], embeddings.astype(dtype), 0)
  dist, defined = query_distances(embeddings, distance=distance)
  same = labels[:, None] == labels[None, :]
  if distance == "snr":
    # Not symmetric: every ordered pair (PML's), anchored at a row with a variance.
    pairs = ~jnp.eye(b, dtype=bool) & defined[:, None]
  else:
    pairs = jnp.triu(jnp.ones((b, b), bool), k=1)
  mask = pairs & rows[:, None] & rows[None, :]
  return _contrastive(dist, same, mask, margin, positive_margin, reduction,
                      (embeddings,))


def contrastive_loss_from_pairs(
    x1: chex.Array,
    x2: chex.Array,
    same: chex.Array,
    margin: chex.Numeric,
    *,
    distance: str = "euclidean",
    reduction: Reduction = "mean",
    positive_margin: chex.Numeric = 0.0,
    valid: chex.Array | None = None,
    labels: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Contrastive loss over explicit pairs ``(x1[i], x2[i])`` with ``same[i]`` labels.

  Same loss as :func:`contrastive_loss`, for users who sample their own pairs (paper
  B flips a coin between a random positive and a random negative per anchor).

  Args:
    x1: ``[N, D]`` first elements.
    x2: ``[N, D]`` second elements.
    same: ``[N]`` bool (or 0/1), true for same-class pairs.
    margin: scalar negative margin (may be traced).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES`, as :func:`contrastive_loss`
      (``"snr"``: ``x1`` is the anchor; a pair whose anchor has zero variance is left
      out).
    reduction: ``"mean"``, ``"mean_nonzero"``, ``"sum"`` or a :mod:`tsm.reducers`
      value; each pair is its own anchor (a per-anchor reduction is its inner one over
      the pairs).
    positive_margin: scalar positive margin (default 0).
    valid: optional ``[N]`` bool mask of rows to use.
    labels: optional ``[N]`` labels of ``x1`` (the anchors), needed by a
      class-weighted reduction.

  Returns:
    ``(loss, stats)`` with :class:`PairStats` (NaN in, NaN out as
    :func:`contrastive_loss`).

  Raises:
    ValueError: (before tracing) on an unknown name or malformed input.
  """
  check_distance(distance, LOSS_DISTANCES)
  check_reduction(reduction)
  check_tuple_inputs({"x1": x1, "x2": x2}, margin)
  check_inputs(x1, margin=positive_margin, embeddings_name="x1",
               margin_name="positive_margin")
  check_pair_labels(same, x1.shape[0])
  check_valid(valid, x1.shape[0], rows_name="x1")
  check_anchor_labels(labels, reduction, x1.shape[0], "x1")
  chex.assert_equal_shape([x1, x2])
  dtype = _float_dtype(x1)
  if valid is None:
    valid = jnp.ones(same.shape, bool)
  valid = valid.astype(bool)
  same = same.astype(bool)
  x1, x2 = (jnp.where(valid[:, None], x.astype(dtype), 0) for x in (x1, x2))
  dist, defined = paired_query_distances(x1, x2, distance=distance)
  return _contrastive(dist, same, valid & defined, margin, positive_margin, reduction,
                      (x1, x2), labels=labels)
