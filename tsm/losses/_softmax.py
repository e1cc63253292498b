"""In-batch softmax losses over labelled batches: N-pair, NT-Xent (InfoNCE), SupCon.

Each matches pytorch-metric-learning 2.x (PML) with its default distance and reducer
(differences are listed per function); the terms and their activity are defined in
:mod:`tsm.losses._activity`. None of them has a margin: in a train loop with a margin
schedule, the schedule's margin is ignored (wrap them as
``lambda e, l, m: ntxent_loss(e, l)``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_logsumexp, nan_guard, pair_masks, valid_rows)
from tsm.losses._base import _float_dtype, check_inputs
from tsm.losses._lp import batch_distances, check_loss_distance


def _check_positive(value, name: str) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be > 0; got {value}.")


def _similarities(x, pos, neg, distance, normalize):
  """``(s, pos, neg, cosines)``: PML's rule for a softmax over a distance
  object, ``s = -d`` for a distance (``s`` itself for a similarity; for ``"cosine"``
  the cosine similarity, ``1 - d``: a softmax is the same after a constant shift), and
  the cosines for the statistics where ``s`` is them."""
  if distance == "cosine":
    s = cosine_similarity(x)
    return s, pos, neg, s
  d, pos, neg, _ = batch_distances(x, pos, neg, distance=distance, normalize=normalize)
  return -d, pos, neg, None


def _prologue(embeddings, labels, valid):
  check_inputs(embeddings, labels)
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_type(labels, int)
  x = embeddings.astype(_float_dtype(embeddings))
  v = valid_rows(labels, valid)
  return x, v


def ntxent_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 0.07,
    distance: str = "cosine",
    normalize: bool = True,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """NT-Xent / InfoNCE with labels: one softmax per positive pair over its negatives.

  For every ordered positive pair ``(a, p)``, ``a != p``, with ``z = cos / temperature``:
  ``l_ap = -log(exp(z_ap) / (exp(z_ap) + sum_{n in N(a)} exp(z_an)))``; the loss is the
  mean over positive pairs (PML ``NTXentLoss`` with its ``MeanReducer``). Pairs whose
  anchor has no negative cost 0 but still count in the mean, as in PML.

  Differences from PML: PML adds ``finfo.tiny`` inside its log; here the log-softmax is
  exact (the two differ by at most ``tiny`` relative).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here by default).
    labels: ``[B]`` integer labels.
    temperature: softmax temperature (PML default 0.07).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``CosineSimilarity``: ``"cosine"``); PML's rule ``z = -d / temperature`` for a
      distance, ``s / temperature`` for a similarity (``"dot_product"``: ``d = -s``).
    normalize: L2-normalise before a distance other than ``"cosine"`` (PML's
      ``normalize_embeddings=True`` default of every distance object).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over positive pairs.

  References:
    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020; Oord et al., "Representation Learning with
    Contrastive Predictive Coding", arXiv 1807.03748; PML ``NTXentLoss``.
  """
  _check_positive(temperature, "temperature")
  check_loss_distance(distance)
  x, v = _prologue(embeddings, labels, valid)
  s, pos, neg, cosines = _similarities(x, *pair_masks(labels, v), distance, normalize)
  z = s / temperature
  neg_lse = masked_logsumexp(z, neg, axis=1)  # [B], -inf without negatives
  has_neg = jnp.any(neg, axis=1)
  safe_lse = jnp.where(has_neg, neg_lse, 0.0)
  # -log softmax of the positive against {positive} + negatives = softplus(lse_N - z_ap).
  pair_loss = jnp.where(pos & has_neg[:, None],
                        jax.nn.softplus(safe_lse[:, None] - z), 0.0)
  num_pairs = jnp.sum(pos, dtype=jnp.float32)
  loss = jnp.sum(pair_loss) / jnp.maximum(num_pairs, 1.0).astype(pair_loss.dtype)
  stats = _pair_softmax_stats(jax.lax.stop_gradient(z), pos, neg, x, labels, v, cosines)
  return nan_guard(loss, x, v), stats


def _pair_softmax_stats(z, pos, neg, x, labels, v, cosines, per_anchor=False):
  """Activity of positive pairs (or anchors) and negatives in logit units of ``z``;
  ``cosines``: the cosine similarities of ``x``, for the pair distances."""
  max_neg = jnp.max(jnp.where(neg, z, -jnp.inf), axis=1)
  min_pos = jnp.min(jnp.where(pos, z, jnp.inf), axis=1)
  pair_active = pos & (max_neg[:, None] > z - 1.0)
  neg_active = neg & (z > min_pos[:, None] - 1.0)
  if per_anchor:
    terms = jnp.any(pos, axis=1) & jnp.any(neg)
    active = jnp.any(pair_active, axis=1)
  else:
    terms, active = pos, pair_active
  neg_terms = neg & jnp.any(pos, axis=1)[:, None]  # negatives of anchors with a positive
  return activity_stats(terms=terms, active=active, neg_terms=neg_terms,
                        neg_active=neg_active, embeddings=x, labels=labels, valid=v,
                        cosines=cosines)


def supcon_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 0.1,
    distance: str = "cosine",
    normalize: bool = True,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Supervised contrastive loss (``L_out``): per anchor, mean over its positives.

  For an anchor ``a`` with positives ``P(a)`` and ``A(a)`` = every other valid sample,
  ``z = cos / temperature``: ``l_a = -(1/|P(a)|) sum_{p in P(a)} log(exp(z_ap) /
  sum_{j in A(a)} exp(z_aj))``. The loss is the mean of ``l_a`` over anchors with
  ``l_a > 0`` (PML ``SupConLoss`` with its ``AvgNonZeroReducer``; anchors without a
  positive give 0 and drop out). A batch with no positive pair or no negative pair
  gives 0, as in PML: with one class the softmax only ranks positives against each
  other, which teaches nothing about classes.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here by default).
    labels: ``[B]`` integer labels.
    temperature: softmax temperature (PML default 0.1).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``CosineSimilarity``: ``"cosine"``); PML's rule ``z = -d / temperature`` for a
      distance, ``s / temperature`` for a similarity (``"dot_product"``: ``d = -s``).
    normalize: L2-normalise before a distance other than ``"cosine"`` (PML's
      ``normalize_embeddings=True`` default of every distance object).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors with a positive.

  References:
    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020; PML
    ``SupConLoss``.
  """
  _check_positive(temperature, "temperature")
  check_loss_distance(distance)
  x, v = _prologue(embeddings, labels, valid)
  s, pos, neg, cosines = _similarities(x, *pair_masks(labels, v), distance, normalize)
  z = s / temperature
  lse = masked_logsumexp(z, pos | neg, axis=1)
  num_pos = jnp.sum(pos, axis=1)
  has_pos = num_pos > 0
  safe_lse = jnp.where(has_pos, lse, 0.0)
  anchor_loss = jnp.sum(jnp.where(pos, safe_lse[:, None] - z, 0.0), axis=1) / jnp.maximum(
      num_pos, 1).astype(z.dtype)
  learnable = jnp.any(pos) & jnp.any(neg)
  nonzero = has_pos & (jax.lax.stop_gradient(anchor_loss) > 0) & learnable
  total = jnp.sum(jnp.where(nonzero, anchor_loss, 0.0))
  loss = total / jnp.maximum(jnp.sum(nonzero, dtype=jnp.float32), 1.0).astype(total.dtype)
  stats = _pair_softmax_stats(jax.lax.stop_gradient(z), pos, neg, x, labels, v, cosines,
                              per_anchor=True)
  return nan_guard(loss, x, v), stats


def npair_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    l2_reg: float = 0.0,
    normalize: bool = True,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """N-pair loss: one (anchor, positive) pair per class, a softmax over the positives.

  As PML ``NPairsLoss``: for each class with at least two valid samples, the anchor is
  its first sample (lowest index) and the positive its second; for each anchor ``a``
  with positive ``p_y``, ``l_a = -log(exp(s(a, p_y)) / sum_c exp(s(a, p_c)))`` over the
  positives ``p_c`` of every such class. The loss is the mean over anchors, plus
  ``l2_reg * 0.25 * (mean_a |x_a|^2 + mean_p |x_p|^2)`` on the raw embeddings of the
  pairs (Sohn's penalty in the form of TensorFlow's ``npairs_loss``, off by default as
  in PML). With one such class the loss is 0 (nothing to rank against).

  ``s`` is the dot product of L2-normalised embeddings (PML's ``DotProductSimilarity``
  normalises by default); ``normalize=False`` gives Sohn's raw dot products (then use
  ``l2_reg``, e.g. 0.002, to bound the norms).

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    l2_reg: weight of the embedding-norm penalty (Sohn / TF: 0.002; PML: none).
    normalize: L2-normalise before the dot product (PML default True).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors (one per class pair).

  References:
    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016; PML ``NPairsLoss``.
  """
  if not l2_reg >= 0:
    raise ValueError(f"l2_reg must be >= 0; got {l2_reg}.")
  x, v = _prologue(embeddings, labels, valid)
  b = labels.shape[0]
  same = (labels[:, None] == labels[None, :]) & v[:, None] & v[None, :]
  earlier = jnp.tril(jnp.ones((b, b), bool), k=-1)  # [i, j]: j < i
  rank = jnp.sum(same & earlier, axis=1)  # valid same-class samples before i
  count = jnp.sum(same, axis=1)
  anchor = v & (rank == 0) & (count >= 2)
  second = v & (rank == 1)
  if normalize:
    s = cosine_similarity(x)
  else:
    s = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  target = same & second[None, :] & anchor[:, None]  # [a, p_y]
  columns = anchor[:, None] & second[None, :]  # [a, p_c] for every class pair
  lse = masked_logsumexp(s, columns, axis=1)
  s_target = jnp.sum(jnp.where(target, s, 0.0), axis=1)
  anchor_loss = jnp.where(anchor, jnp.where(anchor, lse, 0.0) - s_target, 0.0)
  num_anchors = jnp.sum(anchor, dtype=jnp.float32)
  denom = jnp.maximum(num_anchors, 1.0).astype(s.dtype)
  loss = jnp.sum(anchor_loss) / denom
  if l2_reg:
    sq = jnp.sum(jnp.square(x), axis=1)
    loss = loss + l2_reg * 0.25 * (jnp.sum(jnp.where(anchor, sq, 0.0)) +
                                   jnp.sum(jnp.where(second, sq, 0.0))) / denom
  ss = jax.lax.stop_gradient(s)
  neg_cols = columns & ~target
  max_neg = jnp.max(jnp.where(neg_cols, ss, -jnp.inf), axis=1)
  s_t = jax.lax.stop_gradient(s_target)
  stats = activity_stats(terms=anchor, active=max_neg > s_t - 1.0, neg_terms=neg_cols,
                         neg_active=ss > s_t[:, None] - 1.0, embeddings=x, labels=labels,
                         valid=v, cosines=s if normalize else None)
  return nan_guard(loss, x, v), stats
