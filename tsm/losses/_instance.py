"""Instance loss: a softmax over the batch's own (cosine) similarities."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_logsumexp, nan_guard)
from tsm.losses._base import check_reduction, reduce_terms
from tsm.losses._softmax import _check_positive, _prologue
from tsm.reducers import Reduction


def _label_ranks(labels, v):
  """Rank of each row's label among the distinct labels of the valid rows (sorted)."""
  b = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  earlier = jnp.tril(jnp.ones((b, b), bool), k=-1)
  first = v & ~jnp.any(same & earlier & v[None, :], axis=1)  # first valid row of a label
  return jnp.sum(first[None, :] & (labels[None, :] < labels[:, None]), axis=1)


def instance_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    gamma: float = 64.0,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Instance loss as PML ``InstanceLoss`` (and the authors' code).

  With logits ``z_ij = gamma cos(x_i, x_j)`` over every valid ``j`` (``j = i`` included),
  sample ``i``'s target is column ``t_i`` = the rank of its label among the batch's
  distinct labels in ascending order (``torch.unique(labels, return_inverse=True)``), and
  it costs ``logsumexp_j z_ij - z_{i t_i}``; the default reduction is the mean over valid
  samples (``MeanReducer``). Columns count the valid rows only (padding is skipped).

  The paper treats every image (text pair) as its own class. That is this loss with
  ``labels = arange(B)``: each sample's target is itself, and the softmax pushes it away
  from every other sample (PML's and the authors' unlabelled form). With other labels
  the target is the sample at position ``t_i``, which need not share ``i``'s label: tsm
  follows PML and the authors' code there, as they do.

  Terms (``num_total``): valid samples. Active: a non-target column within one logit of
  the target's, ``max_{j != t_i} z_ij > z_{i t_i} - 1``. Negative terms: the (sample,
  non-target column) pairs, active when ``z_ij > z_{i t_i} - 1``.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels (``arange(B)`` for the paper's instance classes).
    gamma: logit scale (PML default 64).
    reduction: ``"mean"`` (PML), ``"mean_nonzero"`` or ``"sum"`` over the samples, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over samples.

  References:
    Zheng et al., "Dual-Path Convolutional Image-Text Embeddings with Instance Loss",
    ACM TOMM 2020 (arXiv 1711.05535); PML ``InstanceLoss``.
  """
  _check_positive(gamma, "gamma")
  check_reduction(reduction)
  x, v = _prologue(embeddings, labels, valid)
  s = cosine_similarity(x)
  z = gamma * s
  position = jnp.cumsum(v)   # 1 + each valid row's position among the valid rows
  ranks = _label_ranks(labels, v)
  target = v[None, :] & (position[None, :] - 1 == ranks[:, None])
  cols = jnp.broadcast_to(v[None, :], z.shape)
  lse = masked_logsumexp(z, None if valid is None else cols, axis=1)
  # The target column by gather (a masked sum over [B, B] is a pass more each way): the
  # first column whose position reaches the rank; a valid row's rank is below the count
  # of valid rows, so the column exists (padding rows' values are masked out below).
  column = jnp.searchsorted(position, ranks + 1, side="left")
  z_target = jnp.take_along_axis(z, jnp.minimum(column, z.shape[1] - 1)[:, None],
                                 axis=1)[:, 0]
  sample_loss = jnp.where(v, jnp.where(v, lse, 0.0) - z_target, 0.0)
  loss, _ = reduce_terms(sample_loss, v, reduction, labels=labels)
  zs, zt = jax.lax.stop_gradient(z), jax.lax.stop_gradient(z_target)
  others = cols & ~target & v[:, None]
  max_other = jnp.max(jnp.where(others, zs, -jnp.inf), axis=1)
  stats = activity_stats(terms=v, active=max_other > zt - 1.0, neg_terms=others,
                         neg_active=zs > zt[:, None] - 1.0, embeddings=x, labels=labels,
                         valid=v, cosines=s)
  return nan_guard(loss, x, v), stats
