"""Angular-margin softmax losses beyond ArcFace: SphereFace and Sub-center ArcFace.

Each comes as a pure function of ``(embeddings, labels, class weights)`` and as a
:class:`tsm.losses.ParametricLoss` constructor whose ``init`` draws the weights as PML
(standard normal; rows are normalised, so the scale is irrelevant). Labels must lie in
``[0, num_classes)``; a label outside (not checkable before tracing) has no target.

Statistics (:class:`tsm.losses.ActivityStats`), as ``arcface_loss``: the terms are the
valid samples with a target; a sample is active when a wrong class's logit is within one
logit unit of its own margin-penalised logit (``max_{k != y} z_k > z_y - 1``).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.distances import safe_norm
from tsm.losses._activity import ActivityStats, cosine_similarity
from tsm.losses._base import ParametricLoss
from tsm.losses._proxy import (ARCFACE_MARGIN, _arcface_from_cosine, _check_num_classes,
                               _prologue, check_angle, class_vector_loss, own_class)
from tsm.losses._proxy_softmax import class_cross_entropy, zero_padding
from tsm.losses._softmax import _check_positive
from tsm.losses._soft_triple import sub_centre_prologue


def _check_int_margin(margin) -> None:
  if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
    raise ValueError(f"margin must be a positive int (the angle multiplier m); got "
                     f"{margin!r}.")


def _cos_multiple_angle(c: chex.Array, m: int) -> chex.Array:
  """``cos(m theta)`` from ``c = cos theta``: ``sum_n (-1)^n C(m, 2n) c^(m-2n)
  (1 - c^2)^n`` (the multiple-angle formula, a polynomial: finite gradients)."""
  sin_sq = 1.0 - jnp.square(c)
  return sum((-1) ** n * math.comb(m, 2 * n) * c ** (m - 2 * n) * sin_sq ** n
             for n in range(m // 2 + 1))


def sphereface_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    margin: int = 4,
    scale: float = 1.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """SphereFace (A-Softmax): a multiplicative angular margin on the target class.

  With ``theta`` the angle between a sample and its class weight ``W_y`` and
  ``k = floor(theta m / pi)``, the target's cosine becomes
  ``psi(theta) = (-1)^k cos(m theta) - 2k`` (monotonically decreasing in ``theta``); the
  logits are ``scale |x| cos`` for the other classes and ``scale |x| psi`` for the
  target, with ``|x|`` the embedding's own norm (the weights are normalised), and the
  loss is the mean cross-entropy over valid samples (PML ``SphereFaceLoss``,
  ``MeanReducer``).

  ``cos(m theta)`` is the multiple-angle polynomial in ``cos theta`` (as PML), so the
  gradient is finite everywhere; ``k`` is piecewise constant (no gradient).

  The paper trains with an annealed mix of the plain and the margin logit
  (``(lambda cos + psi) / (1 + lambda)``, ``lambda`` decaying from 1000 to 5); PML has no
  annealing and neither has tsm (a schedule of ``margin`` is not possible either: it
  is an integer).

  Differences from PML: ``class_weights`` is ``[C, D]`` (PML stores ``W`` as ``[D, C]``).

  Args:
    embeddings: ``[B, D]`` float embeddings (their norm scales the logits).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights (normalised here).
    margin: the angle multiplier ``m``, a positive int (PML default 4).
    scale: extra logit scale (PML default 1).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples (see the module).

  References:
    Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017;
    PML ``SphereFaceLoss`` (a ``LargeMarginSoftmaxLoss``).
  """
  _check_int_margin(margin)
  _check_positive(scale, "scale")
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  x = zero_padding(x, v)
  cos = cosine_similarity(x, w)
  c = own_class(cos, labels)
  theta = jnp.arccos(jnp.clip(jax.lax.stop_gradient(c), -1.0, 1.0))
  k = jnp.floor(theta / (math.pi / margin))
  sign = jnp.where(jnp.mod(k, 2.0) == 0, 1.0, -1.0).astype(c.dtype)
  psi = sign * _cos_multiple_angle(c, margin) - 2.0 * k
  z = jnp.where(onehot, psi[:, None], cos) * (scale * safe_norm(x, axis=1))[:, None]
  return class_cross_entropy(z, onehot, v, x, labels)


def subcenter_arcface_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    margin: chex.Numeric = ARCFACE_MARGIN,
    scale: float = 64.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Sub-center ArcFace: ArcFace against the closest of ``K`` sub-centres per class.

  The cosine between a sample and class ``c`` is ``max_k cos(x, W_ck)``; the rest is
  :func:`tsm.losses.arcface_loss` (additive angular margin on the target, PML's
  continuation beyond ``pi - m``, mean cross-entropy over valid samples; PML
  ``SubCenterArcFaceLoss``, ``MeanReducer``). The gradient of the max goes to the
  closest sub-centre (split equally among exact ties, where PML picks one).

  Differences from PML: ``margin`` is in radians (PML: degrees; the default is PML's
  28.6 degrees); ``class_weights`` is ``[C, K, D]`` (PML stores ``[D, C K]``, class
  ``c``'s sub-centres in columns ``c K .. c K + K - 1``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, K, D]`` sub-centres (normalised here).
    margin: additive angular margin in radians (may be traced).
    scale: logit scale (PML default 64).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples (see the module).

  References:
    Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
    Faces", ECCV 2020; PML ``SubCenterArcFaceLoss``.
  """
  _check_positive(scale, "scale")
  check_angle(margin)
  x, cos, onehot, v = sub_centre_prologue(embeddings, labels, class_weights,
                                          "class_weights", valid)
  chex.assert_rank(margin, 0)
  return _arcface_from_cosine(jnp.max(cos, axis=2), onehot, v, margin, scale, x, labels)


def subcenter_arcface_outliers(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    threshold: float = math.radians(75.0),
    valid: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
  """The samples far from their class's dominant sub-centre (PML ``get_outliers``).

  Per class present in the batch, the dominant sub-centre is the one closest to the
  most of the class's samples (the lowest index among equals); a sample is an outlier
  when its angle to its class's dominant sub-centre exceeds ``threshold``
  (``cos < cos(threshold)``). The paper drops such samples (noisy labels) and then keeps
  only the dominant sub-centres.

  Differences from PML: a mask instead of a list of indices (fixed shape); classes
  absent from the batch get a zero dominant centre (PML leaves that column
  uninitialised); ``threshold`` in radians (PML: degrees).

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, K, D]`` sub-centres.
    threshold: angle in radians (PML default 75 degrees).
    valid: optional ``[B]`` bool mask; ``False`` rows are never outliers.

  Returns:
    ``(outliers, dominant)``: ``[B]`` bool and the ``[C, D]`` dominant sub-centres (as
    given, not normalised); no gradient.
  """
  x, cos, onehot, v = sub_centre_prologue(
      jax.lax.stop_gradient(embeddings), labels, jax.lax.stop_gradient(class_weights),
      "class_weights", valid)
  num_classes, per_class = class_weights.shape[:2]
  own = jnp.sum(jnp.where(onehot[:, :, None], cos, 0.0), axis=1)  # [B, K]
  votes = jax.nn.one_hot(jnp.argmax(own, axis=1), per_class, dtype=jnp.int32)
  votes = jnp.where((v & jnp.any(onehot, axis=1))[:, None], votes, 0)
  counts = jnp.einsum("bc,bk->ck", onehot.astype(jnp.int32), votes)  # [C, K]
  dominant_idx = jnp.argmax(counts, axis=1)
  present = jnp.any(counts > 0, axis=1)
  dominant = jnp.where(
      present[:, None],
      jnp.take_along_axis(jax.lax.stop_gradient(class_weights),
                          dominant_idx[:, None, None], axis=1)[:, 0], 0.0)
  own_dominant = jnp.sum(jnp.where(onehot, jnp.take_along_axis(
      cos, dominant_idx[None, :, None], axis=2)[..., 0], 0.0), axis=1)
  outliers = v & jnp.any(onehot, axis=1) & (own_dominant < math.cos(threshold))
  del x, num_classes
  return outliers, dominant


def sphereface(num_classes: int, *, margin: int = 4, scale: float = 1.0) -> ParametricLoss:
  """:func:`sphereface_loss` as a :class:`ParametricLoss` with trainable class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` from a standard normal (PML's
  ``normal_``); ``state`` is empty; ``apply`` ignores the schedule's margin (SphereFace's
  margin is an integer multiplier).

  Args:
    num_classes: number of classes ``C``.
    margin: see :func:`sphereface_loss`.
    scale: see :func:`sphereface_loss`.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_int_margin(margin)
  _check_positive(scale, "scale")
  return class_vector_loss(sphereface_loss, "class_weights", num_classes, margin=margin,
                           scale=scale)


def subcenter_arcface(num_classes: int, *, sub_centers: int = 3,
                      margin: float = ARCFACE_MARGIN, scale: float = 64.0,
                      margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`subcenter_arcface_loss` as a :class:`ParametricLoss` with sub-centres.

  ``init`` draws ``params = {"class_weights": [C, K, D]}`` from a standard normal (PML's
  ``normal_``); ``state`` is empty. ``apply``'s scheduled margin replaces ``margin``
  (radians) only with ``margin_from_schedule=True``; by default it is ignored.

  Args:
    num_classes: number of classes ``C``.
    sub_centers: ``K`` (PML default 3).
    margin: angular margin in radians (PML's 28.6 degrees).
    scale: logit scale (PML default 64).
    margin_from_schedule: use the schedule's margin as the angular margin.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_num_classes(num_classes)
  if not isinstance(sub_centers, int) or sub_centers < 1:
    raise ValueError(f"sub_centers must be a positive int; got {sub_centers!r}.")
  _check_positive(scale, "scale")

  def draw(rng, embedding_dim):
    return jax.random.normal(rng, (num_classes, sub_centers, embedding_dim), jnp.float32)

  return class_vector_loss(subcenter_arcface_loss, "class_weights", num_classes,
                           draw=draw, margin=margin, scale=scale,
                           margin_from_schedule=margin_from_schedule)
