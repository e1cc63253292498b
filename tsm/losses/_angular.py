"""Angular loss: a negative against the centre of a positive pair, by angle."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  nan_guard, pair_masks)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._softmax import _prologue
from tsm.reducers import Reduction

ANGULAR_ALPHA = math.radians(40.0)  # PML's default, 40 degrees, in radians.


def _shifted_exp(x, mask):
  """``exp(x - m)`` on ``mask`` (0 elsewhere) and the row maxima ``m`` (0 on empty rows),
  ``m`` held constant for the gradient."""
  top = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  return jnp.exp(jnp.where(mask, x - shift[:, None], -jnp.inf)), shift


def _safe_log(x):
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def angular_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    alpha: float = ANGULAR_ALPHA,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Angular loss (N-pair form) over every positive pair (PML ``AngularLoss``).

  With L2-normalised embeddings ``x`` and ``t = tan(alpha)^2``, each ordered positive
  pair ``(a, p)`` costs ``log(1 + sum_{n in N(a)} exp(f_apn))``,
  ``f_apn = 4 t (x_a + x_p) . x_n - 2 (1 + t) x_a . x_p``; the default reduction is the
  mean over ordered positive pairs (PML's ``MeanReducer``). A batch without a negative
  gives 0. ``sum_n exp(4 t (s_an + s_pn))`` is a product of two ``[B, B]`` matrices
  (``N(a) = N(p)`` for a positive pair), so memory is ``O(B^2)``.

  Differences from PML: ``alpha`` is in radians (PML takes degrees; the default is
  PML's 40 degrees). PML normalises the anchor and the positive but dots them with the
  negatives as given; tsm follows the paper and normalises the negatives too (the same
  value when the embeddings are L2-normalised, the usual input).

  Terms (``num_total``): ordered positive pairs of a batch with a negative. Active: the
  negatives together weigh at least ``e^-1`` of the ``1`` in ``log(1 + sum exp)``,
  ``logsumexp_n f_apn >= -1``. Negative terms: anchor-negative pairs of anchors with a
  positive, active when ``logsumexp_{p in P(a)} f_apn >= -1``.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels.
    alpha: the angle bound in radians, in ``(0, pi / 2)`` (PML default 40 degrees).
    reduction: ``"mean"`` (PML) over the terms, ``"mean_nonzero"``, ``"sum"``, or a
      :mod:`tsm.reducers` value (the terms are (anchor, positive) pairs).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over ordered positive pairs.

  References:
    Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017 (arXiv
    1708.01682); PML ``AngularLoss``.
  """
  if not 0.0 < alpha < math.pi / 2:
    raise ValueError(f"alpha is an angle in radians in (0, pi/2); got {alpha} (PML's "
                     "degrees: use math.radians).")
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  s = cosine_similarity(x)
  t = math.tan(alpha) ** 2
  c, k = 4.0 * t, 2.0 * (1.0 + t)
  hp = jax.lax.Precision.HIGHEST
  e, m = _shifted_exp(c * s, neg)  # e_an = exp(c s_an - m_a) on N(a)
  q = jnp.matmul(e, e.T, precision=hp)  # sum_{n in N(a)} e_an e_pn
  terms = pos & jnp.any(neg)
  log_sum = m[:, None] + m[None, :] + _safe_log(q) - k * s  # logsumexp_n f_apn
  log_sum = jnp.where(terms, log_sum, 0.0)
  pair_loss = jnp.where(terms, jax.nn.softplus(log_sum), 0.0)
  loss, _ = reduce_terms(pair_loss, terms, reduction, labels=labels, rows=v)
  # Negatives: logsumexp_{p in P(a)} f_apn = c s_an + log sum_p exp(m_p - k s_ap) e_pn.
  ss, es = jax.lax.stop_gradient(s), jax.lax.stop_gradient(e)
  w, h = _shifted_exp(m[None, :] - k * ss, pos)
  per_neg = c * ss + h[:, None] + _safe_log(jnp.matmul(w, es, precision=hp))
  neg_terms = neg & jnp.any(pos, axis=1)[:, None]
  stats = activity_stats(terms=terms, active=jax.lax.stop_gradient(log_sum) >= -1.0,
                         neg_terms=neg_terms, neg_active=per_neg >= -1.0, embeddings=x,
                         labels=labels, valid=v, cosines=s)
  return nan_guard(loss, x, v), stats
