"""FastAP: average precision of a ranking by distance, from soft distance histograms."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import ActivityStats, activity_stats, nan_guard, pair_masks
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._lp import lp_distances
from tsm.losses._softmax import _prologue
from tsm.reducers import Reduction


def fast_ap_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    num_bins: int = 10,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """FastAP: one minus a histogram estimate of each anchor's average precision (PML
  ``FastAPLoss``).

  With squared Euclidean distances of L2-normalised embeddings ``d in [0, 4]`` (PML's
  ``LpDistance(power=2)``), ``L + 1 = num_bins + 1`` bin centres ``c_l = l Delta``,
  ``Delta = 4 / num_bins``, and triangular pulses ``w_l(d) = relu(1 - |d - c_l| / Delta)``,
  anchor ``a`` has histograms ``h+_l = sum_{p in P(a)} w_l(d_ap)`` and
  ``h-_l = sum_{n in N(a)} w_l(d_an)``, cumulative ``H+``, ``H-``, ``H = H+ + H-``, and
  ``FastAP_a = (1 / |P(a)|) sum_l h+_l H+_l / H_l``. The loss of an anchor with a
  positive is ``1 - FastAP_a``; the default reduction is the mean over those anchors
  (PML's ``MeanReducer``). It is computed as ``(1/|P(a)|) sum_l h+_l H-_l / H_l``: equal
  (the pulses sum to 1 at every ``d``), non-negative, and exactly 0 without negatives.

  Terms (``num_total``): valid anchors with a positive. Active: non-zero loss (some bin
  holds positive mass and, at or before it, negative mass). Negative terms: the
  anchor-negative pairs of the terms, active when the negative's first bin is at or
  before the anchor's last bin with positive mass (it lowers the anchor's precision).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels.
    num_bins: number of histogram bins (PML default 10).
    reduction: ``"mean"`` (PML) over the terms, ``"mean_nonzero"``, ``"sum"``, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors.

  References:
    Cakir et al., "Deep Metric Learning to Rank", CVPR 2019; PML ``FastAPLoss`` (after
    the authors' code, github.com/kunhe/FastAP-metric-learning).
  """
  if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int; got {num_bins!r}.")
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  pos, neg = pair_masks(labels, v)
  d = lp_distances(x, squared=True)
  delta = 4.0 / num_bins
  h_pos, h_neg = [], []
  first_bin = jnp.full(d.shape, num_bins + 1)  # of each pair's pulse, for the stats
  for l in range(num_bins + 1):  # one [B, B] pulse at a time
    pulse = jax.nn.relu(1.0 - jnp.abs(d - l * delta) / delta)
    h_pos.append(jnp.sum(jnp.where(pos, pulse, 0.0), axis=1))
    h_neg.append(jnp.sum(jnp.where(neg, pulse, 0.0), axis=1))
    reached = (jax.lax.stop_gradient(pulse) > 0) & (first_bin > num_bins)
    first_bin = jnp.where(reached, l, first_bin)
  hp, hn = jnp.stack(h_pos, axis=1), jnp.stack(h_neg, axis=1)  # [B, L + 1]
  cum_neg = jnp.cumsum(hn, axis=1)
  cum_all = jnp.cumsum(hp, axis=1) + cum_neg
  safe = (hp * cum_neg > 0) & (cum_all > 0)
  missed = jnp.sum(jnp.where(safe, hp * cum_neg / jnp.where(safe, cum_all, 1.0), 0.0),
                   axis=1)
  num_pos = jnp.sum(pos, axis=1)
  terms = num_pos > 0
  sample_loss = jnp.where(terms, missed / jnp.maximum(num_pos, 1).astype(d.dtype), 0.0)
  loss, nonzero = reduce_terms(sample_loss, terms, reduction, labels=labels)
  bins = jnp.arange(num_bins + 1)
  last_pos_bin = jnp.max(jnp.where(jax.lax.stop_gradient(hp) > 0, bins, -1), axis=1)
  stats = activity_stats(terms=terms, active=nonzero, neg_terms=neg & terms[:, None],
                         neg_active=first_bin <= last_pos_bin[:, None], embeddings=x,
                         labels=labels, valid=v)
  return nan_guard(loss, x, v), stats
