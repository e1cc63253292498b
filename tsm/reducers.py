"""PML's reducers beyond mean / mean-non-zero / sum, over per-term losses.

tsm's losses reduce internally by name (``reduction="mean"`` is PML's
``MeanReducer``, ``"mean_nonzero"`` its ``AvgNonZeroReducer``, ``"sum"`` its
``SumReducer``). These are PML's other reducers as pure functions of fixed-shape
per-term losses with a mask of the terms that exist (``[N]`` element losses or
``[B, M]`` pair losses), for losses that expose their terms.

References:
  pytorch-metric-learning 2.9 ``reducers/``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def _mask(losses, mask):
  return jnp.ones(losses.shape, bool) if mask is None else mask.astype(bool)


def threshold_reduce(losses: chex.Array, mask: chex.Array | None = None, *,
                     low: float | None = None, high: float | None = None) -> chex.Array:
  """PML's ``ThresholdReducer``: the mean of the terms with ``low < loss < high``
  (0 when none is)."""
  if low is None and high is None:
    raise ValueError("threshold_reduce needs low or high (or both).")
  keep = _mask(losses, mask)
  if low is not None:
    keep = keep & (losses > low)
  if high is not None:
    keep = keep & (losses < high)
  n = jnp.sum(keep)
  return jnp.where(n > 0, jnp.sum(jnp.where(keep, losses, 0.0)) / jnp.maximum(n, 1), 0.0)


def class_weighted_reduce(losses: chex.Array, labels: chex.Array,
                          class_weights: chex.Array,
                          mask: chex.Array | None = None) -> chex.Array:
  """PML's ``ClassWeightedReducer``: the mean of ``loss * class_weights[label]``,
  ``labels`` the anchor's label of each term (broadcast to ``losses``' shape)."""
  keep = _mask(losses, mask)
  w = jnp.asarray(class_weights, losses.dtype)[jnp.broadcast_to(labels, losses.shape)]
  return jnp.sum(jnp.where(keep, losses * w, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


def per_anchor_reduce(pair_losses: chex.Array, mask: chex.Array) -> chex.Array:
  """PML's ``PerAnchorReducer`` (with its default ``MeanReducer``) of ``[B, M]`` pair
  losses: each anchor's mean over its pairs (0 without pairs), then the mean over all
  ``B`` anchors."""
  keep = mask.astype(bool)
  per_row = jnp.sum(jnp.where(keep, pair_losses, 0.0), axis=1)
  count = jnp.sum(keep, axis=1)
  return jnp.mean(jnp.where(count > 0, per_row / jnp.maximum(count, 1), 0.0))


def divisor_reduce(losses: chex.Array, divisor: chex.Numeric,
                   mask: chex.Array | None = None) -> chex.Array:
  """PML's ``DivisorReducer``: ``sum(losses) / divisor`` (0 when ``divisor == 0``)."""
  total = jnp.sum(jnp.where(_mask(losses, mask), losses, 0.0))
  divisor = jnp.asarray(divisor, total.dtype)
  return jnp.where(divisor != 0, total / jnp.where(divisor != 0, divisor, 1.0), 0.0)
