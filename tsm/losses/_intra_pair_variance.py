"""Intra-pair variance loss: the spread of positive and of negative similarities."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  nan_guard, pair_masks)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._softmax import _prologue
from tsm.reducers import Reduction


def intra_pair_variance_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    pos_eps: chex.Numeric = 0.01,
    neg_eps: chex.Numeric = 0.01,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Intra-pair variance loss (PML ``IntraPairVarianceLoss``).

  With cosine similarities ``s`` and ``mu_P`` / ``mu_N`` their means over the ordered
  positive / negative pairs (differentiated through, as in PML):
  ``L = mean_{(a,p)} relu((1 - pos_eps) mu_P - s_ap)^2
      + mean_{(a,n)} relu(s_an - (1 + neg_eps) mu_N)^2``;
  a part without pairs is 0. The default reduction is PML's ``MeanReducer`` on each
  part (``"mean_nonzero"`` / ``"sum"`` apply to each part likewise). Usually combined
  with another loss (the paper adds it to a contrastive or triplet loss).

  Terms (``num_total``): ordered positive and negative pairs. Active: non-zero loss
  (a positive below ``(1 - pos_eps) mu_P``, a negative above ``(1 + neg_eps) mu_N``).
  Negative terms: the negative pairs, active likewise.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    pos_eps: relative slack of the positives (PML default 0.01; may be traced).
    neg_eps: relative slack of the negatives (PML default 0.01; may be traced).
    reduction: ``"mean"`` (PML), ``"mean_nonzero"``, ``"sum"`` or a
      :mod:`tsm.reducers` value, per part (PML's two sub-losses).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over ordered pairs.

  References:
    Yu and Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019; PML
    ``IntraPairVarianceLoss``.
  """
  check_reduction(reduction)
  chex.assert_rank([pos_eps, neg_eps], [0, 0])
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  s = cosine_similarity(x)
  parts, active = [], []
  for mask, sign, scale in ((pos, -1.0, 1.0 - jnp.asarray(pos_eps, s.dtype)),
                            (neg, 1.0, 1.0 + jnp.asarray(neg_eps, s.dtype))):
    count = jnp.sum(mask, dtype=jnp.float32)
    mean = jnp.sum(jnp.where(mask, s, 0.0)) / jnp.maximum(count, 1.0).astype(s.dtype)
    pair_loss = jnp.where(mask, jnp.square(jax.nn.relu(sign * (s - scale * mean))), 0.0)
    part, on = reduce_terms(pair_loss, mask, reduction, labels=labels, rows=v)
    parts.append(part)
    active.append(on)
  stats = activity_stats(terms=pos | neg, active=active[0] | active[1], neg_terms=neg,
                         neg_active=active[1], embeddings=x, labels=labels, valid=v,
                         cosines=s)
  return nan_guard(parts[0] + parts[1], x, v), stats
