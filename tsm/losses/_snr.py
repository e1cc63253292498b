"""Signal-to-noise-ratio contrastive loss: the contrastive hinge on the SNR distance."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize, query_distances
from tsm.losses._activity import pair_masks, valid_rows
from tsm.losses._base import (_float_dtype, _nan_out, _nonfinite_rows, check_inputs,
                              check_reduction, check_valid, reduce_terms)
from tsm.losses._contrastive import PairStats
from tsm.losses._pair_stats import ordered_pair_stats
from tsm.reducers import Reduction


def snr_distances(embeddings: chex.Array) -> tuple[chex.Array, chex.Array]:
  """``[B, B]`` SNR distances ``var(x_j - x_i) / var(x_i)`` of L2-normalised rows.

  :func:`tsm.distances.query_distances` with ``"snr"`` (``O(B^2)`` memory, where PML
  builds the ``[B, B, D]`` differences). The distance is not symmetric: the anchor
  ``i``'s variance is the noise's reference.

  Args:
    embeddings: ``[B, D]`` embeddings (normalised here, as PML's ``SNRDistance``).

  Returns:
    ``(dist, has_signal)``: the distances (row ``i`` is 0 where ``var(x_i) = 0``) and the
    ``[B]`` bool rows with non-zero variance, the only ones with a defined distance.
  """
  return query_distances(l2_normalize(embeddings), distance="snr")


def snr_contrastive_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric = 1.0,
    *,
    positive_margin: chex.Numeric = 0.0,
    reduction: Reduction = "mean_nonzero",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Contrastive loss on the signal-to-noise-ratio distance (PML's SNR contrastive loss).

  With ``d`` the SNR distance (:func:`snr_distances`) over ordered pairs ``(i, j)``,
  ``i != j`` (PML's pairs: both orders, the distance is not symmetric): positive pairs
  cost ``max(0, d - positive_margin)``, negative pairs ``max(0, margin - d)`` (no square,
  unlike :func:`tsm.losses.contrastive_loss`); the loss is the positive part's reduction
  plus the negative part's (PML ``SignalToNoiseRatioContrastiveLoss``: a
  ``ContrastiveLoss`` with ``SNRDistance`` and ``AvgNonZeroReducer`` per part, i.e.
  ``reduction="mean_nonzero"``).

  The paper adds a regulariser pulling each embedding's mean to zero; PML leaves it to
  its generic ``embedding_regularizer`` and tsm leaves it out.

  Differences from PML: rows with zero variance after normalisation (a zero row, or
  all components equal) have no SNR distance (PML divides by 0: inf or NaN); here they
  are the anchor of no pair (they still serve as the other end of pairs).

  Statistics (:class:`tsm.losses.PairStats`): the terms are the ordered pairs with a
  defined distance; a pair is active when its hinge is non-zero; the mean distances are
  SNR distances.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels.
    margin: negative margin (PML ``neg_margin``, default 1; may be traced).
    positive_margin: positive margin (PML ``pos_margin``, default 0; may be traced).
    reduction: per part, ``"mean_nonzero"`` (PML), ``"mean"`` over the part's pairs,
      ``"sum"``, or a :mod:`tsm.reducers` value (PML's two sub-losses).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`tsm.losses.PairStats`.

  References:
    Yuan et al., "Signal-to-Noise Ratio: A Robust Distance Metric for Deep Metric
    Learning", CVPR 2019; PML ``SignalToNoiseRatioContrastiveLoss``.
  """
  check_reduction(reduction)
  check_inputs(embeddings, labels, margin)
  check_inputs(embeddings, margin=positive_margin, margin_name="positive_margin")
  check_valid(valid, embeddings.shape[0])
  chex.assert_type(labels, int)
  v = valid_rows(labels, valid)
  x = jnp.where(v[:, None], embeddings.astype(_float_dtype(embeddings)), 0.0)
  dist, has_signal = snr_distances(x)
  pos, neg = pair_masks(labels, v)
  # The anchor needs a signal; the other end need not have one.
  pos, neg = pos & has_signal[:, None], neg & has_signal[:, None]
  m = jnp.asarray(margin, dist.dtype)
  m_pos = jnp.asarray(positive_margin, dist.dtype)
  pull = jax.nn.relu(dist - m_pos)
  push = jax.nn.relu(m - dist)
  pos_active = pos & (jax.lax.stop_gradient(pull) > 0)
  neg_active = neg & (jax.lax.stop_gradient(push) > 0)
  loss = (reduce_terms(jnp.where(pos, pull, 0.0), pos, reduction, labels=labels,
                       rows=v)[0]
          + reduce_terms(jnp.where(neg, push, 0.0), neg, reduction, labels=labels,
                         rows=v)[0])
  stats = ordered_pair_stats(pos, neg, pos_active, neg_active, dist)
  bad = jnp.any(_nonfinite_rows(x)) | ~jnp.isfinite(m) | ~jnp.isfinite(m_pos)
  return _nan_out(loss, stats, bad, jnp.sum(x) + m + m_pos)
