"""Threshold-consistent margin loss: cosine hinges averaged over the pairs they select."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses._activity import cosine_similarity, nan_guard, pair_masks
from tsm.losses._contrastive import PairStats
from tsm.losses._pair_stats import ordered_pair_stats
from tsm.losses._softmax import _prologue


def tcm_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    lambda_plus: float = 1.0,
    lambda_minus: float = 1.0,
    margin_plus: float = 0.9,
    margin_minus: float = 0.5,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Threshold-Consistent Margin (TCM) loss (PML ``ThresholdConsistentMarginLoss``).

  Over the ordered pairs ``(i, j)``, ``i != j``, with cosine similarity ``s``: the
  positive pairs with ``s <= margin_plus`` cost ``margin_plus - s`` and the negative
  pairs with ``s >= margin_minus`` cost ``s - margin_minus``; each part is the mean over
  the pairs it selects (0 if none), and the loss is ``lambda_plus`` times the positive
  part plus ``lambda_minus`` times the negative part. The paper adds it to a base
  loss as a regulariser; like PML, tsm gives it alone (add it to another loss's value).

  Differences from PML: none in the value.

  Statistics (:class:`tsm.losses.PairStats`): the terms are the ordered pairs of valid
  rows; a pair is active when its part selects it (the means run over the active
  pairs); the mean "distances" are the cosine similarities.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    lambda_plus: weight of the positive part (PML default 1).
    lambda_minus: weight of the negative part (PML default 1).
    margin_plus: positive pairs below this similarity are pulled (PML default 0.9).
    margin_minus: negative pairs above this similarity are pushed (PML default 0.5).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`tsm.losses.PairStats`.

  References:
    Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep Metric
    Learning", ICLR 2024 (arXiv 2307.04047); PML ``ThresholdConsistentMarginLoss``.
  """
  x, v = _prologue(embeddings, labels, valid)
  x = jnp.where(v[:, None], x, 0.0)
  s = cosine_similarity(x)
  pos, neg = pair_masks(labels, v)
  ss = jax.lax.stop_gradient(s)
  pos_sel = pos & (ss <= margin_plus)
  neg_sel = neg & (ss >= margin_minus)
  num_pos_sel = mining_lib.count_sum(pos_sel)
  num_neg_sel = mining_lib.count_sum(neg_sel)
  pos_part = jnp.sum(jnp.where(pos_sel, margin_plus - s, 0.0)) / jnp.maximum(
      num_pos_sel, 1.0).astype(s.dtype)
  neg_part = jnp.sum(jnp.where(neg_sel, s - margin_minus, 0.0)) / jnp.maximum(
      num_neg_sel, 1.0).astype(s.dtype)
  loss = lambda_plus * pos_part + lambda_minus * neg_part
  stats = ordered_pair_stats(pos, neg, pos_sel, neg_sel, s)
  return nan_guard(loss, x, v), stats
