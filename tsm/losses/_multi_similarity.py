"""Multi-similarity loss over every pair of a labelled batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_log1p_sum_exp, nan_guard, pair_masks, valid_rows)
from tsm.losses._base import _float_dtype, check_inputs


def multi_similarity_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Multi-similarity loss, averaged over anchors (PML ``MultiSimilarityLoss``).

  Per anchor ``a`` with cosine similarities ``s``:
  ``l_a = (1/alpha) log(1 + sum_{p in P(a)} exp(-alpha (s_ap - base)))
        + (1/beta) log(1 + sum_{n in N(a)} exp(beta (s_an - base)))``,
  an empty sum giving 0; the loss is the mean of ``l_a`` over all valid anchors (PML's
  ``MeanReducer`` over its elements, zero terms included).

  As PML's loss used without a miner, every pair is weighted: the MS paper's pair mining
  (keep negatives with ``s_an > min_P s_ap - epsilon`` and positives with
  ``s_ap < max_N s_an + epsilon``; PML's ``MultiSimilarityMiner``) is not applied to the
  loss. ``epsilon`` only defines the activity statistics (an anchor is active when it
  has a pair that this rule would keep; see :mod:`tsm.losses._activity`).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    alpha: positive-pair scale (PML default 2).
    beta: negative-pair scale (PML default 50).
    base: similarity offset ``lambda`` (PML default 0.5).
    epsilon: the mining rule's slack, for the statistics only (MS paper: 0.1).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid anchors.

  References:
    Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", CVPR 2019; PML ``MultiSimilarityLoss``.
  """
  for name, value in (("alpha", alpha), ("beta", beta)):
    if not value > 0:
      raise ValueError(f"{name} must be > 0; got {value}.")
  check_inputs(embeddings, labels)
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_type(labels, int)
  x = embeddings.astype(_float_dtype(embeddings))
  v = valid_rows(labels, valid)
  pos, neg = pair_masks(labels, v)
  s = cosine_similarity(x)
  pos_loss = masked_log1p_sum_exp(alpha * (base - s), pos, axis=1) / alpha
  neg_loss = masked_log1p_sum_exp(beta * (s - base), neg, axis=1) / beta
  anchor_loss = jnp.where(v, pos_loss + neg_loss, 0.0)
  loss = jnp.sum(anchor_loss) / jnp.maximum(jnp.sum(v, dtype=jnp.float32), 1.0).astype(
      anchor_loss.dtype)
  ss = jax.lax.stop_gradient(s)
  min_pos = jnp.min(jnp.where(pos, ss, jnp.inf), axis=1)
  max_neg = jnp.max(jnp.where(neg, ss, -jnp.inf), axis=1)
  hard_neg = neg & (ss > min_pos[:, None] - epsilon)
  hard_pos = pos & (ss < max_neg[:, None] + epsilon)
  active = jnp.any(hard_neg | hard_pos, axis=1)
  stats = activity_stats(terms=v, active=active, neg_terms=neg, neg_active=hard_neg,
                         embeddings=x, labels=labels, valid=v, cosines=s)
  return nan_guard(loss, x, v), stats
