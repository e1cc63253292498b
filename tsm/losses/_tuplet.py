"""Tuplet margin loss: each positive pair against its anchor's negatives, angular margin."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, cosine_similarity, masked_logsumexp,
                                  nan_guard, pair_masks)
from tsm.losses._proxy import _safe_sqrt, check_angle
from tsm.losses._softmax import _check_positive, _pair_softmax_stats, _prologue

TUPLET_MARGIN = math.radians(5.73)  # PML's default, 5.73 degrees, in radians.


def tuplet_margin_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    margin: chex.Numeric = TUPLET_MARGIN,
    scale: float = 64.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Tuplet margin loss: a softmax of each positive pair, with a margin, over negatives.

  For every ordered positive pair ``(a, p)``, ``a != p``, with ``theta_ap`` its angle and
  ``cos`` the cosine similarity:
  ``l_ap = log(1 + sum_{n in N(a)} exp(s (cos_an - cos(theta_ap - m))))``; the loss is
  the mean over positive pairs (PML ``TupletMarginLoss`` with its ``MeanReducer``). A
  batch without a positive pair or without a negative pair gives 0, as PML.

  The sum over negatives is taken once per anchor (``log sum_n exp(s cos_an)``), so the
  loss never builds the ``[B, B, B]`` tuples. ``cos(theta - m)`` is written as
  ``cos m cos + sin m sqrt(1 - cos^2)`` with the cosine clipped to ``[-1, 1]`` (no
  ``acos``): identical positives (``cos = 1``, where the derivative of the exact form is
  infinite) get the square root's zero gradient.

  The paper pairs this loss with an intra-pair variance term; PML keeps that as a
  separate loss (``IntraPairVarianceLoss``), and so does tsm (not here).

  Differences from PML: ``margin`` is in radians (PML: degrees; the default is PML's
  5.73 degrees); PML's ``acos`` of an unclipped cosine gives NaN when rounding puts a
  positive pair's cosine above 1, tsm clips.

  Statistics (:class:`ActivityStats`): the terms are the positive pairs; a pair is
  active when a negative of its anchor is within one logit unit of it,
  ``max_n s cos_an > s cos(theta_ap - m) - 1`` (as ``ntxent_loss``, with the
  margin-penalised positive logit).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    margin: angular margin ``m`` in radians (may be traced).
    scale: logit scale ``s`` (PML default 64).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over positive pairs.

  References:
    Yu, Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019; PML
    ``TupletMarginLoss``.
  """
  _check_positive(scale, "scale")
  check_angle(margin)
  x, v = _prologue(embeddings, labels, valid)
  chex.assert_rank(margin, 0)
  x = jnp.where(v[:, None], x, 0.0)
  pos, neg = pair_masks(labels, v)
  cos = cosine_similarity(x)
  m = jnp.asarray(margin, cos.dtype)
  c = jnp.clip(cos, -1.0, 1.0)
  z_pos = scale * (c * jnp.cos(m) + _safe_sqrt(1.0 - jnp.square(c)) * jnp.sin(m))
  z_neg = scale * cos
  has_neg = jnp.any(neg, axis=1)
  neg_lse = jnp.where(has_neg, masked_logsumexp(z_neg, neg, axis=1), 0.0)
  pair_loss = jnp.where(pos & has_neg[:, None],
                        jax.nn.softplus(neg_lse[:, None] - z_pos), 0.0)
  num_pairs = jnp.sum(pos, dtype=jnp.float32)
  loss = jnp.sum(pair_loss) / jnp.maximum(num_pairs, 1.0).astype(pair_loss.dtype)
  z = jax.lax.stop_gradient(jnp.where(pos, z_pos, z_neg))
  stats = _pair_softmax_stats(z, pos, neg, x, labels, v, cos)
  return nan_guard(loss, x, v), stats
