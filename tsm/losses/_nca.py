"""Neighbourhood components analysis (NCA) loss over a labelled batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, masked_logsumexp,
                                  nan_guard, pair_masks)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._lp import batch_distances, check_loss_distance
from tsm.losses._softmax import _check_positive, _prologue
from tsm.reducers import Reduction


def nca_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    softmax_scale: float = 1.0,
    distance: str = "squared_euclidean",
    normalize: bool = True,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """NCA: minus the log-probability that a sample's stochastic neighbour shares its class.

  With ``z_ij = -softmax_scale d_ij`` over ``j != i``, ``d`` the distance (row = the
  sample; by default squared Euclidean distances of the L2-normalised embeddings:
  PML's ``LpDistance(power=2)``; for a similarity PML's rule ``z = softmax_scale s`` is
  ``d = -s``, ``"dot_product"``),
  ``l_i = -log sum_{p in P(i)} softmax_j(z_ij)_p
  = logsumexp_{j != i} z_ij - logsumexp_{p in P(i)} z_ip``; the default reduction is the
  mean over samples with a positive (PML ``NCALoss``, ``MeanReducer``).

  Differences from PML, both where PML has no finite answer: PML computes the
  probability and drops samples whose positive mass underflows to 0 (their loss would
  be infinite); here the loss is computed in log space, so such a sample keeps its
  (large, finite) loss and gradient. A batch in which no sample has a positive gives 0
  (PML takes the mean of an empty tensor: NaN).

  Terms (``num_total``): valid samples with a positive. Active: a negative's logit
  within one unit of the best positive's, ``max_N z_in > max_P z_ip - 1`` (the
  softmax's convention of :mod:`tsm.losses._activity`). Negative terms: the
  sample-negative pairs of the terms, active when ``z_in > max_P z_ip - 1``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels.
    softmax_scale: scale of the negative distances (PML default 1).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``LpDistance(power=2)``: ``"squared_euclidean"``).
    normalize: L2-normalise before the distances (PML's ``normalize_embeddings=True``
      default of every distance object).
    reduction: ``"mean"`` (PML) over the terms, ``"mean_nonzero"``, ``"sum"``, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over samples.

  References:
    Goldberger et al., "Neighbourhood Components Analysis", NeurIPS 2004; Movshovitz-
    Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017; PML
    ``NCALoss``.
  """
  _check_positive(softmax_scale, "softmax_scale")
  check_loss_distance(distance)
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  d, pos, neg, _ = batch_distances(x, *pair_masks(labels, v), distance=distance,
                                   normalize=normalize)
  z = -softmax_scale * d
  terms = jnp.any(pos, axis=1)
  lse_all = masked_logsumexp(z, pos | neg, axis=1)
  lse_pos = masked_logsumexp(z, pos, axis=1)
  sample_loss = jnp.where(terms, jnp.where(terms, lse_all - lse_pos, 0.0), 0.0)
  loss, _ = reduce_terms(sample_loss, terms, reduction, labels=labels)
  zs = jax.lax.stop_gradient(z)
  max_p = jnp.max(jnp.where(pos, zs, -jnp.inf), axis=1)
  max_n = jnp.max(jnp.where(neg, zs, -jnp.inf), axis=1)
  stats = activity_stats(terms=terms, active=max_n > max_p - 1.0,
                         neg_terms=neg & terms[:, None],
                         neg_active=zs > max_p[:, None] - 1.0, embeddings=x,
                         labels=labels, valid=v)
  return nan_guard(loss, x, v), stats
