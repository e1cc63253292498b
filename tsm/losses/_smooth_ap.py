"""Smooth-AP: one minus a sigmoid-relaxed average precision per anchor."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  nan_guard, pair_masks)
from tsm.losses._softmax import _check_positive, _prologue


def smooth_ap_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 0.01,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Smooth-AP: the ranks in average precision counted with sigmoids.

  For an anchor ``a`` with cosine similarities ``s_a.`` and positive set ``P(a)`` (its
  class, ``a`` itself included, as PML and the authors' code), each ``k in P(a)`` has
  the smoothed ranks ``R_P(k) = 1 + sum_{j in P(a), j != k} sigmoid((s_aj - s_ak) / t)``
  and ``R(k) = 1 + sum_{j != k} sigmoid((s_aj - s_ak) / t)`` (over the whole batch);
  ``AP_a = (1 / |P(a)|) sum_{k in P(a)} R_P(k) / R(k)`` and the loss is the mean of
  ``1 - AP_a`` over valid anchors (PML ``SmoothAPLoss``, ``MeanReducer``).

  The paper leaves the query out of its own ranking; PML and the authors' code keep it
  (its self-similarity 1 ranks first), and so does tsm: a one-class batch then has
  ``AP = 1`` everywhere (loss 0), a singleton anchor ``AP = 1 / R(a)``.

  ``O(B^3)`` time as any Smooth-AP, ``O(B^2)`` memory: one anchor's ``[B, B]``
  comparisons at a time (a ``lax.map`` whose steps are rematerialised in the backward
  pass).

  Differences from PML: PML requires every class of the batch to have the same number
  of samples, in consecutive blocks, and then reads the classes as consecutive blocks
  of (number of classes) rows, which are the classes only when the number of classes
  equals the samples per class; tsm takes the classes from ``labels``, for any batch.
  On the batches PML reads right the two agree.

  Statistics (:class:`ActivityStats`): the terms are the valid anchors; an anchor is
  active when a negative is within one temperature unit of its least similar positive
  (``max_n s_an > min_{p in P(a)} s_ap - t``: that negative still weighs at least
  ``sigmoid(-1)`` in a positive's rank); the negative terms are the anchor-negative
  pairs, active by the same rule on their own.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    temperature: the sigmoid's temperature ``t`` (PML default 0.01).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid anchors.

  References:
    Brown et al., "Smooth-AP: Smoothing the Path Towards Large-Scale Image Retrieval",
    ECCV 2020; PML ``SmoothAPLoss``.
  """
  _check_positive(temperature, "temperature")
  x, v = _prologue(embeddings, labels, valid)
  x = jnp.where(v[:, None], x, 0.0)
  b = labels.shape[0]
  s = cosine_similarity(x)
  same = (labels[:, None] == labels[None, :]) & v[:, None] & v[None, :]
  not_self = ~jnp.eye(b, dtype=bool)

  @jax.checkpoint
  def anchor_ap(row):
    s_a, p_a = row  # [B] similarities, [B] bool positives (self included)
    sig = jax.nn.sigmoid((s_a[None, :] - s_a[:, None]) / temperature)  # [k, j]
    sig = jnp.where(not_self & v[None, :], sig, 0.0)
    rank_all = 1.0 + jnp.sum(sig, axis=1)
    rank_pos = 1.0 + jnp.sum(jnp.where(p_a[None, :], sig, 0.0), axis=1)
    num_pos = jnp.maximum(jnp.sum(p_a), 1).astype(s_a.dtype)
    return jnp.sum(jnp.where(p_a, rank_pos / rank_all, 0.0)) / num_pos

  ap = jax.lax.map(anchor_ap, (s, same))
  anchor_loss = jnp.where(v, 1.0 - ap, 0.0)
  loss = jnp.sum(anchor_loss) / jnp.maximum(jnp.sum(v, dtype=jnp.float32), 1.0).astype(
      anchor_loss.dtype)
  ss = jax.lax.stop_gradient(s)
  _, neg = pair_masks(labels, v)
  min_pos = jnp.min(jnp.where(same, ss, jnp.inf), axis=1)
  neg_active = neg & (ss > min_pos[:, None] - temperature)
  stats = activity_stats(terms=v, active=jnp.any(neg_active, axis=1), neg_terms=neg,
                         neg_active=neg_active, embeddings=x, labels=labels, valid=v)
  return nan_guard(loss, x, v), stats
