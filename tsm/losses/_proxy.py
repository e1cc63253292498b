"""Losses against trainable class vectors: ArcFace (class weights), ProxyAnchor (proxies).

Each comes as a pure function of ``(embeddings, labels, class vectors)`` and as a
:class:`tsm.losses.ParametricLoss` constructor whose ``init`` draws the class vectors as
PML does and whose ``apply`` takes tsm's scheduled margin. Labels must lie in
``[0, num_classes)``; a label outside (not checkable before tracing) belongs to no class:
it is negative for every class vector and has no target.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_log1p_sum_exp, masked_logsumexp, nan_guard,
                                  valid_rows)
from tsm.losses._base import LossVariables, ParametricLoss, _float_dtype, check_inputs

ARCFACE_MARGIN = math.radians(28.6)  # PML's default, 28.6 degrees, in radians.


def check_angle(margin, name: str = "margin") -> None:
  """One-line ValueError unless a Python-number ``margin`` is an angle in ``[0, pi)``
  radians (traced margins are not checkable before tracing)."""
  if isinstance(margin, (int, float)) and not 0.0 <= margin < math.pi:
    raise ValueError(f"{name} is an angle in radians in [0, pi); got {margin} (PML's "
                     "degrees: use math.radians).")


def _check_class_vectors(vectors, embeddings, name: str, *,
                         sub_centres: bool = False) -> None:
  """One-line ValueError unless ``vectors`` is ``[num_classes, D]`` (with ``sub_centres``:
  ``[num_classes, per_class, D]``), ``D`` the embedding size."""
  layout, what = (("num_classes, per_class", "the centres of each class") if sub_centres
                  else ("num_classes", "one row per class"))
  shape = getattr(vectors, "shape", None)
  if (shape is None or len(shape) != 2 + sub_centres
      or shape[-1] != embeddings.shape[1]):
    raise ValueError(f"{name} must be [{layout}, {embeddings.shape[1]}] ({what}, the "
                     f"embedding size); got shape {shape}.")


def _prologue(embeddings, labels, vectors, name, valid, *, sub_centres: bool = False):
  """Checked inputs of a loss against class vectors (see :func:`_check_class_vectors`).

  Returns:
    ``(x, w, onehot, v)``: the embeddings and class vectors in the working dtype, the
    ``[B, C]`` own-class mask and the ``[B]`` valid rows.
  """
  check_inputs(embeddings, labels)
  _check_class_vectors(vectors, embeddings, name, sub_centres=sub_centres)
  chex.assert_type(labels, int)
  dtype = _float_dtype(embeddings)
  onehot = labels[:, None] == jnp.arange(vectors.shape[0])[None, :]
  return embeddings.astype(dtype), vectors.astype(dtype), onehot, valid_rows(labels, valid)


def own_class(values: chex.Array, labels: chex.Array) -> chex.Array:
  """``[B]``: each row's entry at its label, ``values[i, labels[i]]`` of a ``[B, C]``
  array, by gather (a masked sum over the ``[B, C]`` one-hot mask costs a pass more,
  forward and backward). A label outside ``[0, C)`` reads a clipped column: such a row
  is no term of the losses (:func:`has_class`)."""
  c = values.shape[1]
  return jnp.take_along_axis(values, jnp.clip(labels, 0, c - 1)[:, None], axis=1)[:, 0]


def has_class(labels: chex.Array, num_classes: int) -> chex.Array:
  """``[B]`` bool: the label is a class in ``[0, num_classes)`` (the row has a target)."""
  return (labels >= 0) & (labels < num_classes)


def _safe_sqrt(x):
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def arcface_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    class_weights: chex.Array,
    *,
    margin: chex.Numeric = ARCFACE_MARGIN,
    scale: float = 64.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """ArcFace: softmax over scaled class cosines with an additive angular target margin.

  With ``cos_k`` the cosine between a sample and class weight ``W_k`` and ``theta`` the
  angle to its own class: the target logit is ``cos(theta + m)`` while
  ``theta <= pi - m``, and ``cos(theta) - m sin(m)`` beyond (PML's continuation, which
  keeps the logit decreasing in ``theta``); logits are ``scale`` times these; the loss is
  the mean cross-entropy over valid samples (PML ``ArcFaceLoss``, ``MeanReducer``).

  ``cos(theta + m)`` is written as ``cos m cos - sin m sqrt(1 - cos^2)`` (no ``acos``,
  whose derivative is infinite at ``cos = +-1``); the square root has zero gradient at
  ``cos = +-1`` instead of an infinite one.

  Differences from PML: ``margin`` is in radians (PML takes degrees; the default is PML's
  28.6 degrees); ``class_weights`` is ``[C, D]`` (PML stores ``W`` as ``[D, C]``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    class_weights: ``[C, D]`` class weights (normalised here).
    margin: additive angular margin in radians (may be traced).
    scale: logit scale ``s`` (PML and the paper: 64).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples.

  References:
    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019; PML ``ArcFaceLoss``.
  """
  if not scale > 0:
    raise ValueError(f"scale must be > 0; got {scale}.")
  check_angle(margin)
  x, w, onehot, v = _prologue(embeddings, labels, class_weights, "class_weights", valid)
  chex.assert_rank(margin, 0)
  return _arcface_from_cosine(cosine_similarity(x, w), onehot, v, margin, scale, x, labels)


def _arcface_from_cosine(cos, onehot, v, margin, scale, x, labels):
  """ArcFace's loss and stats from the ``[B, C]`` sample-class cosines (see
  :func:`arcface_loss`; also the core of the sub-centre variant)."""
  m = jnp.asarray(margin, cos.dtype)
  c = jnp.clip(own_class(cos, labels), -1.0, 1.0)
  sin = _safe_sqrt(1.0 - jnp.square(c))
  target = jnp.where(c >= -jnp.cos(m), c * jnp.cos(m) - sin * jnp.sin(m),
                     c - m * jnp.sin(m))
  z = scale * jnp.where(onehot, target[:, None], cos)
  used = v & has_class(labels, cos.shape[1])
  lse = masked_logsumexp(z, None, axis=1)
  sample_loss = jnp.where(used, lse - scale * target, 0.0)
  loss = jnp.sum(sample_loss) / jnp.maximum(jnp.sum(used, dtype=jnp.float32), 1.0).astype(
      sample_loss.dtype)
  return nan_guard(loss, x, v), _class_softmax_stats(z, scale * target, onehot, used, x,
                                                     labels, v)


def _class_softmax_stats(z, z_target, onehot, used, x, labels, v, classes=None):
  """Activity against the class vectors: a wrong class within one logit of the target."""
  z = jax.lax.stop_gradient(z)
  z_target = jax.lax.stop_gradient(z_target)
  others = ~onehot & v[:, None]
  if classes is not None:
    others = others & classes[None, :]
  max_other = jnp.max(jnp.where(others, z, -jnp.inf), axis=1)
  neg_active = z > z_target[:, None] - 1.0
  return activity_stats(terms=used, active=max_other > z_target - 1.0,
                        neg_terms=others & used[:, None], neg_active=neg_active,
                        embeddings=x, labels=labels, valid=v)


def proxy_anchor_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    proxies: chex.Array,
    *,
    margin: chex.Numeric = 0.1,
    alpha: float = 32.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Proxy-Anchor loss: each proxy is an anchor against every sample of the batch.

  With ``s`` the cosine between a sample and a proxy, ``X+_c`` / ``X-_c`` the batch's
  samples of class ``c`` / of other classes:
  ``(1/|P+|) sum_{c in P+} log(1 + sum_{x in X+_c} exp(-alpha (s(x, c) - delta)))
   + (1/C) sum_c log(1 + sum_{x in X-_c} exp(alpha (s(x, c) + delta)))``,
  ``P+`` = the proxies with a positive in the batch (PML ``ProxyAnchorLoss`` with its
  ``DivisorReducer``; with no positive at all the first part is 0).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    proxies: ``[C, D]`` proxies (normalised here).
    margin: ``delta`` (PML default 0.1; may be traced).
    alpha: scale (PML default 32).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over (valid sample, proxy) pairs.

  References:
    Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020; PML
    ``ProxyAnchorLoss``.
  """
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0; got {alpha}.")
  x, p, onehot, v = _prologue(embeddings, labels, proxies, "proxies", valid)
  chex.assert_rank(margin, 0)
  cos = cosine_similarity(x, p)
  delta = jnp.asarray(margin, cos.dtype)
  pos = onehot & v[:, None]
  neg = ~onehot & v[:, None]
  pos_exp = alpha * (delta - cos)
  neg_exp = alpha * (cos + delta)
  pos_term = masked_log1p_sum_exp(pos_exp, pos, axis=0)
  neg_term = masked_log1p_sum_exp(neg_exp, neg, axis=0)
  num_with_pos = jnp.sum(jnp.any(pos, axis=0), dtype=jnp.float32)
  loss = (jnp.sum(pos_term) / jnp.maximum(num_with_pos, 1.0).astype(cos.dtype) +
          jnp.sum(neg_term) / proxies.shape[0])
  pe, ne = jax.lax.stop_gradient(pos_exp), jax.lax.stop_gradient(neg_exp)
  neg_active = ne >= -1.0
  stats = activity_stats(terms=pos | neg, active=(pos & (pe >= -1.0)) | (neg & neg_active),
                         neg_terms=neg, neg_active=neg_active, embeddings=x, labels=labels,
                         valid=v)
  return nan_guard(loss, x, v), stats


def _check_num_classes(num_classes) -> None:
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int; got {num_classes!r}.")


def class_vector_loss(loss_fn, key: str, num_classes: int, *, draw=None,
                      margin_from_schedule: bool = False, **kwargs) -> ParametricLoss:
  """``loss_fn(embeddings, labels, params[key], **kwargs)`` as a :class:`ParametricLoss`
  with trainable class vectors and no state.

  Args:
    loss_fn: ``(embeddings, labels, class_vectors, **kwargs) -> (loss, stats)``.
    key: the name of the class vectors in ``params``.
    num_classes: number of classes ``C`` (checked here).
    draw: ``(rng, embedding_dim) -> array``, the initial class vectors; by default
      ``[C, D]`` from a standard normal (PML's ``normal_``).
    margin_from_schedule: pass ``apply``'s scheduled margin as ``margin=`` (replacing
      ``kwargs["margin"]``); otherwise ``apply`` ignores it.
    **kwargs: fixed keyword arguments of ``loss_fn``.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_num_classes(num_classes)
  if draw is None:

    def draw(rng, embedding_dim):
      return jax.random.normal(rng, (num_classes, embedding_dim), jnp.float32)

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    return LossVariables(params={key: draw(rng, embedding_dim)}, state={})

  def apply(params, state, embeddings, labels, sched_margin):
    kw = dict(kwargs, margin=sched_margin) if margin_from_schedule else kwargs
    loss, stats = loss_fn(embeddings, labels, params[key], **kw)
    return loss, stats, state

  return ParametricLoss(init=init, apply=apply)


def arcface(num_classes: int, *, margin: float = ARCFACE_MARGIN, scale: float = 64.0,
            margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`arcface_loss` as a :class:`ParametricLoss` with trainable class weights.

  ``init`` draws ``params = {"class_weights": [C, D]}`` from a standard normal (PML's
  ``torch.nn.init.normal_``; the scale is irrelevant, rows are normalised); ``state`` is
  empty. ``apply``'s scheduled margin replaces ``margin`` (radians) only with
  ``margin_from_schedule=True``; by default it is ignored, since tsm's schedules are in
  distance units.

  Args:
    num_classes: number of classes ``C``.
    margin: angular margin in radians (PML's 28.6 degrees).
    scale: logit scale.
    margin_from_schedule: use the schedule's margin as the angular margin.

  Returns:
    The :class:`ParametricLoss`.
  """
  return class_vector_loss(arcface_loss, "class_weights", num_classes, margin=margin,
                           scale=scale, margin_from_schedule=margin_from_schedule)


def proxy_anchor(num_classes: int, *, margin: float = 0.1, alpha: float = 32.0,
                 margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`proxy_anchor_loss` as a :class:`ParametricLoss` with trainable proxies.

  ``init`` draws ``params = {"proxies": [C, D]}`` as PML (``kaiming_normal_`` with
  ``mode="fan_out"`` on a ``[C, D]`` tensor: normal with std ``sqrt(2 / C)``); ``state``
  is empty. ``apply``'s scheduled margin replaces ``delta`` only with
  ``margin_from_schedule=True``; by default it is ignored.

  Args:
    num_classes: number of classes ``C``.
    margin: ``delta`` (PML default 0.1).
    alpha: scale (PML default 32).
    margin_from_schedule: use the schedule's margin as ``delta``.

  Returns:
    The :class:`ParametricLoss`.
  """

  def draw(rng, embedding_dim):
    p = jax.random.normal(rng, (num_classes, embedding_dim), jnp.float32)
    return p * math.sqrt(2.0 / num_classes)

  return class_vector_loss(proxy_anchor_loss, "proxies", num_classes, draw=draw, margin=margin,
                           alpha=alpha, margin_from_schedule=margin_from_schedule)
