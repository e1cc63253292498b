"""Losses over trainable class vectors: ProxyNCA, Normalized Softmax, P2SGrad.

ProxyNCA and Normalized Softmax are a cross-entropy of each sample over one logit per
class vector, with no margin: ProxyNCA's logits are minus the squared Euclidean
distances between unit vectors, Normalized Softmax's are cosines over a temperature.
P2SGrad is a squared error of the cosines against the one-hot target. Each comes as a
pure function of ``(embeddings, labels, class vectors)`` and as a
:class:`tsm.losses.ParametricLoss` constructor whose ``init`` draws the class vectors as
PML does; none has a margin, so ``apply`` ignores the schedule's margin. Labels must lie
in ``[0, num_classes)``; a label outside (not checkable before tracing) has no target
and is no term of the loss.

Statistics (:class:`tsm.losses.ActivityStats`), as ``arcface_loss``: the terms are the
valid samples with a target; a sample is active when a wrong class's logit is within
one logit unit of its own (``max_{k != y} z_k > z_y - 1``; P2SGrad: the cosines).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize, pairwise_squared_euclidean
from tsm.losses._activity import (ActivityStats, cosine_similarity, masked_logsumexp,
                                  nan_guard)
from tsm.losses._base import ParametricLoss
from tsm.losses._proxy import (_class_softmax_stats, _prologue, class_vector_loss, has_class,
                               own_class)
from tsm.losses._softmax import _check_positive


def zero_padding(x: chex.Array, v: chex.Array) -> chex.Array:
  """``x`` with its padding rows (``v`` false) zeroed: junk or NaN there reaches no
  value and no gradient."""
  return jnp.where(v[:, None], x, 0.0)


def class_cross_entropy(z: chex.Array, onehot: chex.Array, v: chex.Array, x: chex.Array,
                        labels: chex.Array) -> tuple[chex.Array, ActivityStats]:
  """Mean cross-entropy of ``[B, C]`` logits ``z`` over the valid samples with a target.

  Args:
    z: ``[B, C]`` logits (the target's already holding any margin).
    onehot: ``[B, C]`` bool, the sample's own class.
    v: ``[B]`` bool, the valid rows.
    x: ``[B, D]`` embeddings as given (statistics, NaN in NaN out).
    labels: ``[B]`` labels.

  Returns:
    ``(loss, stats)``: ``mean_{used i} (logsumexp_k z_ik - z_iy)`` (0 when no sample has
    a target) and the class-softmax :class:`ActivityStats`.
  """
  used = v & has_class(labels, z.shape[1])
  z_target = own_class(z, labels)
  lse = masked_logsumexp(z, None, axis=1)
  sample_loss = jnp.where(used, lse - z_target, 0.0)
  loss = jnp.sum(sample_loss) / jnp.maximum(jnp.sum(used, dtype=jnp.float32), 1.0).astype(
      sample_loss.dtype)
  return nan_guard(loss, x, v), _class_softmax_stats(z, z_target, onehot, used, x, labels,
                                                     v)


def proxy_nca_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    proxies: chex.Array,
    *,
    softmax_scale: float = 1.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """ProxyNCA: each sample's softmax over the proxies, by negative squared distance.

  With ``d_k = |x/|x| - p_k/|p_k||^2`` (PML's default ``LpDistance(power=2)``, which
  normalises both sides) and ``z_k = -softmax_scale * d_k``:
  ``l_i = -log(exp(z_y) / sum_k exp(z_k))``; the loss is the mean over valid samples
  (PML ``ProxyNCALoss``, ``MeanReducer``).

  As PML, the softmax runs over every proxy, the sample's own included; the paper's
  NCA form leaves the own proxy out of the denominator (``exp(-d_y) / sum_{k != y}
  exp(-d_k)``, a loss that can go negative). tsm follows PML.

  Differences from PML: PML drops the samples whose softmax probability underflows to
  exactly 0 (``-log 0``); tsm's log-softmax is exact, so they keep their (finite, large)
  loss. With ``softmax_scale <= 10`` (distances in ``[0, 4]``) no probability
  underflows and the two agree. ``proxies`` is ``[C, D]`` as PML's.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    proxies: ``[C, D]`` proxies (normalised here).
    softmax_scale: multiplies the negative distances (PML default 1).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples (see the module).

  References:
    Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV
    2017; PML ``ProxyNCALoss``.
  """
  _check_positive(softmax_scale, "softmax_scale")
  x, p, onehot, v = _prologue(embeddings, labels, proxies, "proxies", valid)
  x = zero_padding(x, v)
  d = pairwise_squared_euclidean(l2_normalize(x), l2_normalize(p))
  return class_cross_entropy(-softmax_scale * d, onehot, v, x, labels)


def normalized_softmax_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    temperature: float = 0.05,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Normalized Softmax: cross-entropy over class cosines divided by a temperature.

  ``z_k = cos(x, W_k) / temperature``, ``l_i = -log softmax(z)_y``; the loss is the mean
  over valid samples (PML ``NormalizedSoftmaxLoss``: ``DotProductSimilarity`` of
  normalised embeddings against the normalised class weights, ``MeanReducer``).

  Differences from PML: ``class_weights`` is ``[C, D]`` (PML stores ``W`` as ``[D, C]``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights (normalised here).
    temperature: softmax temperature (PML default 0.05).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples (see the module).

  References:
    Zhai, Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019;
    PML ``NormalizedSoftmaxLoss``.
  """
  _check_positive(temperature, "temperature")
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  x = zero_padding(x, v)
  return class_cross_entropy(cosine_similarity(x, w) / temperature, onehot, v, x, labels)


def proxy_nca(num_classes: int, *, softmax_scale: float = 1.0) -> ParametricLoss:
  """:func:`proxy_nca_loss` as a :class:`ParametricLoss` with trainable proxies.

  ``init`` draws ``params = {"proxies": [C, D]}`` from a standard normal (PML's
  ``normal_``); ``state`` is empty; ``apply`` ignores the schedule's margin.

  Args:
    num_classes: number of classes ``C``.
    softmax_scale: see :func:`proxy_nca_loss`.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_positive(softmax_scale, "softmax_scale")
  return class_vector_loss(proxy_nca_loss, "proxies", num_classes,
                           softmax_scale=softmax_scale)


def normalized_softmax(num_classes: int, *, temperature: float = 0.05) -> ParametricLoss:
  """:func:`normalized_softmax_loss` as a :class:`ParametricLoss` with class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` from a standard normal (PML's
  ``normal_``); ``state`` is empty; ``apply`` ignores the schedule's margin.

  Args:
    num_classes: number of classes ``C``.
    temperature: see :func:`normalized_softmax_loss`.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_positive(temperature, "temperature")
  return class_vector_loss(normalized_softmax_loss, "class_weights", num_classes,
                           temperature=temperature)


def p2sgrad_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """P2SGrad: the mean squared error between the class cosines and the one-hot target.

  ``L = mean_{i, k} (cos(x_i, W_k) - [k = y_i])^2`` over valid samples and every class
  (PML ``P2SGradLoss``: ``MSELoss`` of the cosines, clipped to ``[-1, 1]``). Its
  gradient is the paper's P2SGrad (Eq. 11): the cosine's gradient weighted by
  ``cos - [k = y]``, with no scale or margin to tune.

  Differences from PML: PML renormalises its stored weights in place before each step
  (a projection outside the graph) and differentiates ``x . W / |x|``; tsm normalises
  ``W`` inside the graph (as every tsm class loss), which gives the same value and the
  paper's gradient (the cosine's, tangent to the sphere) rather than PML's; PML's
  ``renorm`` leaves its weights at norm ``1 / (1 + 1e-7)`` (``torch.renorm``'s epsilon),
  so its cosines, and its loss, differ from the exact ones by ~1e-7. Weights are
  ``[C, D]`` (PML: ``[D, C]``). A label outside ``[0, C)`` (PML: an index error) makes
  the sample no term.

  Statistics (:class:`ActivityStats`, as the module's rule with the cosines as logits):
  the terms are the valid samples with a target; a sample is active while a wrong
  class's cosine is less than the target gap 1 below its own (``max_{k != y} cos_k >
  cos_y - 1``), the geometry the loss drives to (``cos_y = 1``, ``cos_k = 0``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights (normalised here).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples.

  References:
    Zhang et al., "P2SGrad: Refined Gradients for Optimizing Deep Face Models", CVPR
    2019; PML ``P2SGradLoss``.
  """
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  x = zero_padding(x, v)
  cos = jnp.clip(cosine_similarity(x, w), -1.0, 1.0)
  used = v & has_class(labels, cos.shape[1])
  sq = jnp.where(used[:, None], jnp.square(cos - onehot.astype(cos.dtype)), 0.0)
  denom = jnp.maximum(jnp.sum(used, dtype=jnp.float32), 1.0) * onehot.shape[1]
  loss = jnp.sum(sq) / denom.astype(cos.dtype)
  z_target = own_class(cos, labels)
  return nan_guard(loss, x, v), _class_softmax_stats(cos, z_target, onehot, used, x,
                                                     labels, v)


def p2sgrad(num_classes: int) -> ParametricLoss:
  """:func:`p2sgrad_loss` as a :class:`ParametricLoss` with trainable class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` as PML (uniform in ``[-1, 1]``,
  rows scaled to unit norm); ``state`` is empty; ``apply`` ignores the schedule's
  margin (P2SGrad has none).

  Args:
    num_classes: number of classes ``C``.

  Returns:
    The :class:`ParametricLoss`.
  """

  def draw(rng, embedding_dim):
    w = jax.random.uniform(rng, (num_classes, embedding_dim), jnp.float32, -1.0, 1.0)
    return l2_normalize(w)

  return class_vector_loss(p2sgrad_loss, "class_weights", num_classes, draw=draw)
