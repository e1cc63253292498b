"""The :class:`tsm.losses.PairStats` of losses taken over ordered pairs ``(i, j)``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses._base import _no_grad
from tsm.losses._contrastive import PairStats


def ordered_pair_stats(pos: chex.Array, neg: chex.Array, pos_active: chex.Array,
                       neg_active: chex.Array, dist: chex.Array) -> PairStats:
  """:class:`PairStats` (no gradient) from ``[B, B]`` masks of ordered pairs.

  Args:
    pos: the positive pairs that are terms of the loss.
    neg: the negative pairs that are terms of the loss.
    pos_active: the active positive pairs (a subset of ``pos``).
    neg_active: the active negative pairs (a subset of ``neg``).
    dist: the loss's ``[B, B]`` distance (or similarity), for the means.

  Returns:
    The statistics; ``num_total`` counts ``pos | neg``.
  """
  d = jax.lax.stop_gradient(dist)
  num_pos, num_neg = mining_lib.count_sum(pos), mining_lib.count_sum(neg)
  num_neg_active = mining_lib.count_sum(neg_active)
  num_pairs = num_pos + num_neg
  num_active = mining_lib.count_sum(pos_active) + num_neg_active
  return _no_grad(PairStats(
      num_pairs=num_pairs, num_positive=num_pos, num_negative=num_neg,
      num_active=num_active, active_ratio=num_active / jnp.maximum(num_pairs, 1.0),
      mean_pos_dist=mining_lib.masked_mean(d, pos).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(d, neg).astype(jnp.float32),
      num_negative_active=num_neg_active))
