"""Histogram loss: the estimated probability that a negative pair is more similar than a
positive one."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  nan_guard, pair_masks)
from tsm.losses._softmax import _prologue


def _node_weights(s, num_bins):
  """Linear-interpolation weights of similarities ``s`` on the nodes ``-1 + r Delta``:
  ``(r, w_r, w_{r+1})`` with ``r`` the lower node (held constant for the gradient)."""
  delta = 2.0 / num_bins
  s = jnp.clip(s, -1.0, 1.0)  # rounding can take a cosine past +-1
  r = jnp.floor((jax.lax.stop_gradient(s) + 1.0) / delta)
  # s = 1 stays in the last bin.
  r = jnp.clip(r, 0, num_bins - 1)
  upper = (s + 1.0 - r * delta) / delta
  lower = ((r + 1.0) * delta - 1.0 - s) / delta
  return r.astype(jnp.int32), lower, upper


def _density(r, lower, upper, mask, num_bins):
  count = jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0).astype(lower.dtype)
  nodes = jnp.zeros(num_bins + 1, lower.dtype)
  nodes = nodes.at[r.ravel()].add(jnp.where(mask, lower, 0.0).ravel())
  nodes = nodes.at[r.ravel() + 1].add(jnp.where(mask, upper, 0.0).ravel())
  return nodes / count


def histogram_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    num_bins: int = 100,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Histogram loss (PML ``HistogramLoss``).

  The cosine similarities of the positive and of the negative pairs are spread on
  ``num_bins + 1`` nodes ``-1 + r Delta``, ``Delta = 2 / num_bins``, by linear
  interpolation, giving densities ``p+`` and ``p-``; the loss is
  ``sum_r p-_r Phi+_r`` with ``Phi+`` the cumulative ``p+``: the estimated probability
  that a random negative pair is more similar than a random positive one. As PML, the
  pairs are those of the batch's triplets, each unordered pair once: positive pairs of
  a batch with two classes, negative pairs with an end that has a positive. A batch
  without a triplet gives 0. The loss is already a batch mean (PML's
  ``already_reduced``): there is no ``reduction``.

  Differences from PML: similarities are clipped to ``[-1, 1]`` (rounding can pass
  them) and a similarity of exactly 1 (identical directions) is put on the last node;
  PML indexes past the end of its histogram there (an error).

  Terms (``num_total``): the positive and negative pairs used. Active: the pair adds to
  the loss: a negative pair whose nodes carry cumulative positive mass
  (``Phi+ > 0``), a positive pair whose nodes have negative mass at or above them.
  Negative terms: the negative pairs, active likewise.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    num_bins: number of bins (PML default 100, ``delta = 0.02``).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over unordered pairs.

  References:
    Ustinova and Lempitsky, "Learning Deep Embeddings with Histogram Loss", NeurIPS
    2016; PML ``HistogramLoss``.
  """
  if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int; got {num_bins!r}.")
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  b = labels.shape[0]
  upper_triangle = jnp.triu(jnp.ones((b, b), bool), k=1)
  has_pos, has_neg = jnp.any(pos, axis=1), jnp.any(neg, axis=1)
  any_triplet = jnp.any(has_pos & has_neg)
  pos_pairs = pos & upper_triangle & has_neg[:, None]
  neg_pairs = neg & upper_triangle & (has_pos[:, None] | has_pos[None, :])
  s = cosine_similarity(x)
  r, lower, upper = _node_weights(s, num_bins)
  p_pos = _density(r, lower, upper, pos_pairs, num_bins)
  p_neg = _density(r, lower, upper, neg_pairs, num_bins)
  phi = jnp.cumsum(p_pos)
  loss = jnp.where(any_triplet, jnp.sum(p_neg * phi), 0.0)
  # Stats: each pair's own share of the loss.
  lo, up = jax.lax.stop_gradient(lower), jax.lax.stop_gradient(upper)
  phi, p_neg = jax.lax.stop_gradient(phi), jax.lax.stop_gradient(p_neg)
  tail_neg = jnp.cumsum(p_neg[::-1])[::-1]  # negative mass at or above each node
  neg_active = neg_pairs & (lo * phi[r] + up * phi[r + 1] > 0)
  pos_active = pos_pairs & (lo * tail_neg[r] + up * tail_neg[r + 1] > 0)
  stats = activity_stats(terms=pos_pairs | neg_pairs, active=pos_active | neg_active,
                         neg_terms=neg_pairs, neg_active=neg_active, embeddings=x,
                         labels=labels, valid=v, cosines=s)
  return nan_guard(loss, x, v), stats
