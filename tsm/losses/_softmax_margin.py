"""Large-margin softmax losses against trainable class weights: CosFace, L-Softmax.

ArcFace, of the same family, lives with the proxy losses (:mod:`tsm.losses._proxy`),
whose input checks and statistics these share. Each loss comes as a pure function of
``(embeddings, labels, class_weights)`` and as a :class:`tsm.losses.ParametricLoss`
constructor whose ``init`` draws the class weights as PML does (standard normal).
Labels must lie in ``[0, num_classes)``; a label outside (not checkable before tracing)
has no target and the sample is left out.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.distances import safe_norm
from tsm.losses._activity import ActivityStats, cosine_similarity, masked_logsumexp, nan_guard
from tsm.losses._base import ParametricLoss, check_reduction, reduce_terms
from tsm.losses._proxy import (_check_num_classes, _class_softmax_stats, _prologue,
                               class_vector_loss, has_class, own_class)
from tsm.reducers import Reduction


def _cross_entropy(z, z_target, onehot, used, reduction, x, labels, v):
  """Per-sample ``logsumexp_k z_k - z_y`` over ``used`` samples, reduced, and stats."""
  lse = masked_logsumexp(z, None, axis=1)
  sample_loss = jnp.where(used, lse - z_target, 0.0)
  loss, _ = reduce_terms(sample_loss, used, reduction, labels=labels)
  stats = _class_softmax_stats(z, z_target, onehot, used, x, labels, v)
  return nan_guard(loss, x, v), stats


def cosface_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    margin: chex.Numeric = 0.35,
    scale: float = 64.0,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """CosFace (large margin cosine loss): softmax over ``scale (cos_k - m [k = y])``.

  With ``cos_k`` the cosine between a sample and class weight ``W_k``, the logits are
  ``scale * cos_k`` and the target's ``scale * (cos_y - margin)``; the loss is the
  cross-entropy, by default the mean over valid samples (PML ``CosFaceLoss``,
  ``MeanReducer``).

  Terms (``num_total``): valid samples with a label in ``[0, C)``. Active: as
  :func:`tsm.losses.arcface_loss`, a wrong class's logit within one unit of the
  penalised target's, ``max_{k != y} z_k > z_y - 1``. Negative terms: the (sample,
  wrong class) pairs, active when ``z_k > z_y - 1``.

  Differences from PML: ``class_weights`` is ``[C, D]`` (PML stores ``W`` as ``[D, C]``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights (normalised here).
    margin: additive cosine margin ``m`` (PML default 0.35; may be traced).
    scale: logit scale ``s`` (PML default 64).
    reduction: ``"mean"`` (PML), ``"mean_nonzero"`` or ``"sum"`` over the samples, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples.

  References:
    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
    CVPR 2018 (arXiv 1801.09414); PML ``CosFaceLoss``.
  """
  if not scale > 0:
    raise ValueError(f"scale must be > 0; got {scale}.")
  check_reduction(reduction)
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  chex.assert_rank(margin, 0)
  cos = cosine_similarity(x, w)
  m = jnp.asarray(margin, cos.dtype)
  z = scale * (cos - jnp.where(onehot, m, 0.0))
  z_target = own_class(z, labels)
  used = v & has_class(labels, z.shape[1])
  return _cross_entropy(z, z_target, onehot, used, reduction, x, labels, v)


def _multiple_angle_cosine(c: chex.Array, m: int) -> chex.Array:
  """``cos(m theta)`` from ``c = cos(theta)`` by the multiple-angle formula.

  ``sum_n (-1)^n binom(m, 2n) c^(m - 2n) (1 - c^2)^n`` (L-Softmax paper, eq. 7), a
  polynomial in ``c``: smooth everywhere, including ``c = +-1``.
  """
  sin_sq = 1.0 - jnp.square(c)
  return sum((-1) ** n * math.comb(m, 2 * n) * c ** (m - 2 * n) * sin_sq ** n
             for n in range(m // 2 + 1))


def _check_lsoftmax(margin, scale) -> None:
  if not isinstance(margin, int) or isinstance(margin, bool) or margin < 1:
    raise ValueError(f"margin must be an integer >= 1 (the angle multiplier); got "
                     f"{margin!r}.")
  if not scale > 0:
    raise ValueError(f"scale must be > 0; got {scale}.")


def large_margin_softmax_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    margin: int = 4,
    scale: float = 1.0,
    reduction: Reduction = "mean",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """L-Softmax: a multiplicative angular margin on the target logit (PML
  ``LargeMarginSoftmaxLoss``).

  The logits are ``scale |x| |W_k| cos theta_k`` and, for the target class,
  ``scale |x| |W_y| psi(theta_y)`` with ``psi(theta) = (-1)^k cos(m theta) - 2k`` for
  ``theta in [k pi / m, (k + 1) pi / m]`` (monotone decreasing on ``[0, pi]``);
  ``cos(m theta)`` is the multiple-angle polynomial in ``cos theta`` and ``k`` a
  constant for the gradient, as in PML. The loss is the cross-entropy, by default the
  mean over valid samples (``MeanReducer``). Embeddings and weights are not
  normalised: their norms scale the logits, as in the paper.

  Where PML departs from the paper, tsm follows PML: no annealing between ``cos`` and
  ``psi`` (the paper's ``lambda``, an optimisation aid), and an extra ``scale``
  (default 1, the paper's form).

  Terms and activity as :func:`cosface_loss` (``z`` = these logits).

  Differences from PML: ``class_weights`` is ``[C, D]`` (PML stores ``W`` as ``[D, C]``).

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights.
    margin: integer angular multiplier ``m >= 1`` (PML default 4; ``m = 1`` is the
      plain softmax over ``W x``).
    scale: logit scale (PML default 1).
    reduction: ``"mean"`` (PML), ``"mean_nonzero"`` or ``"sum"`` over the samples, or a
      :mod:`tsm.reducers` value.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples.

  References:
    Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", ICML
    2016 (arXiv 1612.02295); PML ``LargeMarginSoftmaxLoss``.
  """
  _check_lsoftmax(margin, scale)
  check_reduction(reduction)
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  cos = cosine_similarity(x, w)
  c = own_class(cos, labels)
  theta = jnp.arccos(jnp.clip(jax.lax.stop_gradient(c), -1.0, 1.0))
  k = jnp.floor(theta / (math.pi / margin))
  sign = 1.0 - 2.0 * jnp.mod(k, 2.0)  # (-1)^k
  psi = sign * _multiple_angle_cosine(c, margin) - 2.0 * k
  magnitudes = safe_norm(x, axis=1)[:, None] * safe_norm(w, axis=1)[None, :]
  z = scale * magnitudes * jnp.where(onehot, psi[:, None], cos)
  z_target = own_class(z, labels)
  used = v & has_class(labels, z.shape[1])
  return _cross_entropy(z, z_target, onehot, used, reduction, x, labels, v)


def cosface(num_classes: int, *, margin: float = 0.35, scale: float = 64.0,
            margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`cosface_loss` as a :class:`ParametricLoss` with trainable class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` from a standard normal (PML's
  ``torch.nn.init.normal_``); ``state`` is empty. ``apply``'s scheduled margin replaces
  ``margin`` (a cosine margin) only with ``margin_from_schedule=True``; by default it
  is ignored.

  Args:
    num_classes: number of classes ``C``.
    margin: cosine margin (PML default 0.35).
    scale: logit scale (PML default 64).
    margin_from_schedule: use the schedule's margin as the cosine margin.

  Returns:
    The :class:`ParametricLoss`.
  """
  return class_vector_loss(cosface_loss, "class_weights", num_classes, margin=margin,
                           scale=scale, margin_from_schedule=margin_from_schedule)


def large_margin_softmax(num_classes: int, *, margin: int = 4,
                         scale: float = 1.0) -> ParametricLoss:
  """:func:`large_margin_softmax_loss` as a :class:`ParametricLoss` with class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` from a standard normal (PML's
  ``torch.nn.init.normal_``; the norms matter here, they scale the logits); ``state``
  is empty. The margin is an integer multiplier, so ``apply`` ignores the schedule's.

  Args:
    num_classes: number of classes ``C``.
    margin: integer angular multiplier (PML default 4).
    scale: logit scale (PML default 1).

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_num_classes(num_classes)
  _check_lsoftmax(margin, scale)
  return class_vector_loss(large_margin_softmax_loss, "class_weights", num_classes,
                           margin=margin, scale=scale)
