"""Ranked list loss: per anchor, weighted hinges on its positive and negative lists."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize, pairwise_squared_euclidean
from tsm.losses._activity import pair_masks, valid_rows
from tsm.losses._base import (_float_dtype, _nan_out, _nonfinite_rows, check_inputs,
                              check_valid)
from tsm.losses._contrastive import PairStats
from tsm.losses._pair_stats import ordered_pair_stats
from tsm.losses._proxy import _safe_sqrt


def ranked_list_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    margin: chex.Numeric,
    *,
    tn: float,
    imbalance: float = 0.5,
    alpha: chex.Numeric | None = None,
    tp: float = 0.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, PairStats]:
  """Ranked List Loss (RLL), as PML's ``RankedListLoss`` (default: RLL-Simpler).

  With ``d`` the Euclidean distance between L2-normalised embeddings (PML's default
  ``LpDistance``), ``alpha`` the negatives' boundary and ``alpha - margin`` the
  positives': per anchor ``i``, the non-trivial positives ``P*`` (``d_ij > alpha -
  margin``) and negatives ``N*`` (``d_ij < alpha``), each with ``d_ij > 0``, get weights
  ``w_p = exp(tp (d - (alpha - margin)))`` and ``w_n = exp(tn (alpha - d))``, and
  ``L_P = sum_{P*} w_p (d - (alpha - margin)) / (sum_{P*} w_p + 1e-5 B)``,
  ``L_N = sum_{N*} w_n (alpha - d) / (sum_{N*} w_n + 1e-5 B)``; the anchor's loss is
  ``(1 - imbalance) L_P + imbalance L_N`` and the loss is the mean over valid anchors
  (PML ``MeanReducer``). ``B`` is the number of valid rows (PML adds ``1e-5`` per
  column of its ``[B, B]`` weight matrix). The weights are differentiated through, as
  in PML.

  Pairs at distance 0 are in neither list, as PML's (it selects by ``d > 0``): identical
  embeddings of two classes cost nothing. tsm computes distances from the Gram matrix
  (``O(B^2)`` memory), so "0" means a squared distance within ``8 eps`` of the dtype
  (rounding); the loss is discontinuous there and at the lists' boundaries (a pair
  entering a list adds its weight to the normaliser), as PML's.

  Statistics (:class:`tsm.losses.PairStats`): the terms are the ordered pairs
  ``(i, j)``, ``i != j``, of valid rows; a pair is active when it is in ``P*`` or ``N*``
  (non-zero loss); the mean distances are RLL's.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels.
    margin: ``m``, the gap between the positive and the negative boundary (required, as
      in PML; may be traced: a margin schedule's margin).
    tn: the negatives' weighting temperature (required, as in PML).
    imbalance: weight of the negative part, in ``[0, 1]`` (PML default 0.5).
    alpha: the negatives' boundary (PML default ``1 + margin / 2``).
    tp: the positives' weighting temperature (PML default 0: RLL-Simpler).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`tsm.losses.PairStats`.

  References:
    Wang et al., "Ranked List Loss for Deep Metric Learning", CVPR 2019; PML
    ``RankedListLoss``.
  """
  check_inputs(embeddings, labels, margin)
  check_valid(valid, embeddings.shape[0])
  if not 0.0 <= imbalance <= 1.0:
    raise ValueError(f"imbalance must be in [0, 1]; got {imbalance}.")
  if alpha is not None:
    check_inputs(embeddings, margin=alpha, margin_name="alpha")
  chex.assert_type(labels, int)
  v = valid_rows(labels, valid)
  x = jnp.where(v[:, None], embeddings.astype(_float_dtype(embeddings)), 0.0)
  sq = pairwise_squared_euclidean(l2_normalize(x))
  d = _safe_sqrt(sq)
  m = jnp.asarray(margin, d.dtype)
  a = 1.0 + m / 2.0 if alpha is None else jnp.asarray(alpha, d.dtype)
  pos, neg = pair_masks(labels, v)
  sd = jax.lax.stop_gradient(d)
  # Distance 0 up to the Gram form's rounding (unit rows: |x - y|^2 within a few ulp).
  apart = jax.lax.stop_gradient(sq) > 8.0 * jnp.finfo(sq.dtype).eps
  p_star = pos & (sd > a - m) & apart
  n_star = neg & (sd < a) & apart
  w_p = jnp.where(p_star, jnp.exp(tp * jnp.where(p_star, d - (a - m), 0.0)), 0.0)
  w_n = jnp.where(n_star, jnp.exp(tn * jnp.where(n_star, a - d, 0.0)), 0.0)
  pad = 1e-5 * jnp.sum(v).astype(d.dtype)
  loss_p = jnp.sum(w_p * jnp.where(p_star, d - (a - m), 0.0), axis=1) / (
      jnp.sum(w_p, axis=1) + pad)
  loss_n = jnp.sum(w_n * jnp.where(n_star, a - d, 0.0), axis=1) / (
      jnp.sum(w_n, axis=1) + pad)
  anchor_loss = jnp.where(v, (1.0 - imbalance) * loss_p + imbalance * loss_n, 0.0)
  loss = jnp.sum(anchor_loss) / jnp.maximum(jnp.sum(v, dtype=jnp.float32), 1.0).astype(
      d.dtype)
  stats = ordered_pair_stats(pos, neg, p_star, n_star, d)
  bad = jnp.any(_nonfinite_rows(x)) | ~jnp.isfinite(m) | ~jnp.isfinite(a)
  return _nan_out(loss, stats, bad, jnp.sum(x) + m + a)
