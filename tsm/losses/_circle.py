"""Circle loss over every pair of a labelled batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_logsumexp, nan_guard, pair_masks)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._softmax import _check_positive, _prologue
from tsm.reducers import Reduction


def circle_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    m: chex.Numeric = 0.4,
    gamma: float = 80.0,
    reduction: Reduction = "mean_nonzero",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Circle loss with pair labels, one term per anchor (PML ``CircleLoss``).

  With cosine similarities ``s``, ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``,
  ``Delta_n = m`` and the self-paced weights ``alpha_p = relu(O_p - s_ap)``,
  ``alpha_n = relu(s_an - O_n)`` (constants for the gradient, as in the paper and PML),
  the logits are ``z_ap = -gamma alpha_p (s_ap - Delta_p)`` and
  ``z_an = gamma alpha_n (s_an - Delta_n)`` and per anchor ``a``
  ``l_a = softplus(logsumexp_{p in P(a)} z_ap + logsumexp_{n in N(a)} z_an)``
  ``= log(1 + sum_{p, n} exp(z_an + z_ap))``. Anchors without a positive or without a
  negative cost 0. The default reduction is PML's ``AvgNonZeroReducer``: the mean over
  anchors with non-zero loss.

  Terms (``num_total``): valid anchors with a positive and a negative. Active: as
  :func:`tsm.losses.proxy_anchor_loss`, a ``(p, n)`` exponent ``z_an + z_ap >= -1``,
  i.e. ``max_N z_an + max_P z_ap >= -1`` (the pair weighs at least ``e^-1`` of the
  ``1`` in the ``log(1 + sum exp)``). Negative terms: the anchor-negative pairs of the
  terms, active when ``z_an + max_P z_ap >= -1``.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    m: relaxation margin (PML default 0.4; may be traced).
    gamma: scale (PML default 80).
    reduction: ``"mean_nonzero"`` (PML), ``"mean"`` over the terms, ``"sum"``, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors.

  References:
    Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    CVPR 2020; PML ``CircleLoss``.
  """
  _check_positive(gamma, "gamma")
  check_reduction(reduction)
  chex.assert_rank(m, 0)
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  s = cosine_similarity(x)
  m = jnp.asarray(m, s.dtype)
  ss = jax.lax.stop_gradient(s)
  alpha_p = jax.nn.relu(1.0 + jax.lax.stop_gradient(m) - ss)
  alpha_n = jax.nn.relu(ss + jax.lax.stop_gradient(m))
  z = jnp.where(pos, -gamma * alpha_p * (s - (1.0 - m)), gamma * alpha_n * (s - m))
  lse_p = masked_logsumexp(z, pos, axis=1)
  lse_n = masked_logsumexp(z, neg, axis=1)
  terms = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
  anchor_loss = jnp.where(terms, jax.nn.softplus(jnp.where(terms, lse_p + lse_n, 0.0)),
                          0.0)
  loss, _ = reduce_terms(anchor_loss, terms, reduction, labels=labels)
  zs = jax.lax.stop_gradient(z)
  max_p = jnp.max(jnp.where(pos, zs, -jnp.inf), axis=1)
  max_n = jnp.max(jnp.where(neg, zs, -jnp.inf), axis=1)
  neg_terms = neg & terms[:, None]
  stats = activity_stats(terms=terms, active=max_p + max_n >= -1.0, neg_terms=neg_terms,
                         neg_active=zs + max_p[:, None] >= -1.0, embeddings=x,
                         labels=labels, valid=v, cosines=s)
  return nan_guard(loss, x, v), stats
