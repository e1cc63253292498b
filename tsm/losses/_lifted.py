"""Lifted structure losses: a positive pair's distance against a soft-max over negatives."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, masked_logsumexp,
                                  nan_guard, pair_masks)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._lp import batch_distances, check_loss_distance
from tsm.losses._softmax import _prologue
from tsm.reducers import Reduction


def _margins(pos_margin, neg_margin, dtype):
  chex.assert_rank([pos_margin, neg_margin], [0, 0])
  return jnp.asarray(pos_margin, dtype), jnp.asarray(neg_margin, dtype)


def lifted_structure_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    neg_margin: chex.Numeric = 1.0,
    pos_margin: chex.Numeric = 0.0,
    distance: str = "euclidean",
    normalize: bool = True,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Lifted structure loss over every positive pair (PML ``LiftedStructureLoss``).

  For each ordered positive pair ``(a, p)``, with ``d`` the distance (Euclidean by
  default; row = anchor),
  ``J_ap = logsumexp_{(i, n): i in {a, p}, n in N(i)} (neg_margin - d_in) +
  d_ap - pos_margin`` (the negatives of both ends), the term is
  ``relu(J_ap)^2 / 2``; the default reduction is the mean over ordered positive
  pairs (PML's ``MeanReducer``; each unordered pair counted twice, hence the ``/ 2``).
  A batch with no negative pair gives 0.

  PML follows the paper (Song et al., eq. 4) except that the paper sums over unordered
  pairs and divides by ``2 |P|``; the value is the same. The log-sum-exp over both ends'
  negatives is ``logaddexp`` of the two rows' log-sum-exps, so memory is ``O(B^2)``.

  Terms (``num_total``): ordered positive pairs whose batch holds a negative (PML's
  ``pos_pair`` terms). Active: ``J_ap > 0`` (non-zero loss). Negative terms: the
  anchor-negative pairs of anchors with a positive, active when the negative alone
  makes a pair's hinge positive, ``neg_margin - d_an + max_P d_ap - pos_margin > 0``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    neg_margin: margin of the negatives (PML default 1; may be traced).
    pos_margin: margin of the positive pair (PML default 0; may be traced).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``LpDistance``: ``"euclidean"``); the margins are in its units (see
      ``docs/pml.md``: a PML similarity margin ``m`` is ``-m`` for ``"dot_product"``).
    normalize: L2-normalise before the distances (PML's ``normalize_embeddings=True``
      default of every distance object).
    reduction: ``"mean"`` (PML) over the terms, ``"mean_nonzero"``, ``"sum"``, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over ordered positive pairs.

  References:
    Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
    CVPR 2016; PML ``LiftedStructureLoss``.
  """
  check_loss_distance(distance)
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  d, pos, neg, _ = batch_distances(x, *pair_masks(labels, v), distance=distance,
                                   normalize=normalize)
  mp, mn = _margins(pos_margin, neg_margin, d.dtype)
  row_lse = masked_logsumexp(mn - d, neg, axis=1)  # [B], -inf without negatives
  has_neg = jnp.any(neg, axis=1)
  safe = jnp.where(has_neg, row_lse, 0.0)
  # Both ends have negatives as soon as the batch has one (two classes), except a
  # positive that anchors no pair ("snr", zero variance): then the anchor's alone.
  both = jnp.where(has_neg[None, :], jnp.logaddexp(safe[:, None], safe[None, :]),
                   safe[:, None])
  terms = pos & jnp.any(neg)
  j = jnp.where(terms, both + d - mp, 0.0)
  pair_loss = jnp.square(jax.nn.relu(j)) / 2.0
  js = jax.lax.stop_gradient(j)
  active = terms & (js > 0)
  loss, _ = reduce_terms(pair_loss, terms, reduction, labels=labels, rows=v)
  ds = jax.lax.stop_gradient(d)
  max_p = jnp.max(jnp.where(pos, ds, -jnp.inf), axis=1)
  neg_terms = neg & jnp.any(pos, axis=1)[:, None]
  stats = activity_stats(terms=terms, active=active, neg_terms=neg_terms,
                         neg_active=mn - ds + max_p[:, None] - mp > 0, embeddings=x,
                         labels=labels, valid=v)
  return nan_guard(loss, x, v), stats


def generalized_lifted_structure_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    neg_margin: chex.Numeric = 1.0,
    pos_margin: chex.Numeric = 0.0,
    distance: str = "euclidean",
    normalize: bool = True,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Generalised lifted structure loss, one term per anchor (PML
  ``GeneralizedLiftedStructureLoss``).

  Per anchor ``a`` with distances ``d`` (Euclidean by default; row = anchor):
  ``l_a = relu(logsumexp_{p in P(a)} (d_ap - pos_margin)
  + logsumexp_{n in N(a)} (neg_margin - d_an))``, an empty log-sum-exp giving 0 (so an
  anchor without positives still pushes its negatives, as in PML). The default
  reduction is the mean over all valid anchors (PML's ``MeanReducer``).

  This is the form of Hermans et al. (page 4), which PML follows.

  Terms (``num_total``): valid anchors. Active: ``l_a > 0``. Negative terms: the
  anchor-negative pairs, active when the negative alone makes the hinge positive,
  ``logsumexp_P (d_ap - pos_margin) + neg_margin - d_an > 0``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    neg_margin: margin of the negatives (PML default 1; may be traced).
    pos_margin: margin of the positives (PML default 0; may be traced).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``LpDistance``: ``"euclidean"``); the margins are in its units (see
      ``docs/pml.md``: a PML similarity margin ``m`` is ``-m`` for ``"dot_product"``).
    normalize: L2-normalise before the distances (PML's ``normalize_embeddings=True``
      default of every distance object).
    reduction: ``"mean"`` (PML) over the terms, ``"mean_nonzero"``, ``"sum"``, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors.

  References:
    Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv 1703.07737; PML ``GeneralizedLiftedStructureLoss``.
  """
  check_loss_distance(distance)
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  d, pos, neg, anchors = batch_distances(x, *pair_masks(labels, v), distance=distance,
                                         normalize=normalize)
  mp, mn = _margins(pos_margin, neg_margin, d.dtype)
  lse_p = masked_logsumexp(d - mp, pos, axis=1)
  lse_n = masked_logsumexp(mn - d, neg, axis=1)
  lse_p = jnp.where(jnp.any(pos, axis=1), lse_p, 0.0)
  lse_n = jnp.where(jnp.any(neg, axis=1), lse_n, 0.0)
  terms = v & anchors
  anchor_loss = jnp.where(terms, jax.nn.relu(lse_p + lse_n), 0.0)
  loss, active = reduce_terms(anchor_loss, terms, reduction, labels=labels)
  ds = jax.lax.stop_gradient(d)
  neg_active = jax.lax.stop_gradient(lse_p)[:, None] + mn - ds > 0
  stats = activity_stats(terms=terms, active=active, neg_terms=neg, neg_active=neg_active,
                         embeddings=x, labels=labels, valid=v)
  return nan_guard(loss, x, v), stats
