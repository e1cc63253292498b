"""Regularizers of embeddings and of class weights (pytorch-metric-learning's), and the
wrapper that adds them to a loss.

Each regularizer is a pure function of an ``[N, D]`` array returning a scalar (PML's
default reducer applied: the mean over rows, or ``SparseCenters``' divisor); each is
differentiable and jit/vmap-safe. :func:`regularized` adds weighted regularizers to any
loss, as PML's ``embedding_regularizer`` / ``weight_regularizer`` options of every loss:
an embedding regularizer on the batch's embeddings, a weight regularizer on a class
matrix among the loss's parameters (``ParametricLoss`` params, e.g. ArcFace's class
weights).

References:
  pytorch-metric-learning 2.9 ``regularizers/``; Zhao et al., "RegularFace", CVPR 2019;
  Wu et al., "Deep Features for Recognizing Disguised Faces in the Wild" (center
  invariant loss), CVPRW 2018; Qian et al., "SoftTriple Loss", ICCV 2019.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize
from tsm.losses._base import LossVariables, ParametricLoss, as_parametric, check_inputs

EMBEDDING_REGULARIZERS = ("lp", "zero_mean")
WEIGHT_REGULARIZERS = ("regular_face", "center_invariant")


def lp_regularizer(embeddings: chex.Array, *, p: float = 2, power: float = 1
                   ) -> chex.Array:
  """PML's ``LpRegularizer``: the mean over rows of ``||x||_p ** power``."""
  check_inputs(embeddings)
  x = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
  # |x|_p with a zero row's gradient 0 (jnp.linalg.norm's is NaN there).
  a = jnp.abs(x)
  s = jnp.sum(a ** p, axis=1)
  nonzero = s > 0
  norm = jnp.where(nonzero, jnp.where(nonzero, s, 1.0) ** (1.0 / p), 0.0)
  return jnp.mean(norm ** power)


def zero_mean_regularizer(embeddings: chex.Array) -> chex.Array:
  """PML's ``ZeroMeanRegularizer``: the mean over rows of ``|sum_d x_d|``."""
  check_inputs(embeddings)
  return jnp.mean(jnp.abs(jnp.sum(embeddings, axis=1)))


def regular_face_regularizer(weights: chex.Array) -> chex.Array:
  """PML's ``RegularFaceRegularizer``: the mean over classes of the cosine to the
  class's most similar other class (the choice without gradient, as PML)."""
  check_inputs(weights, embeddings_name="weights")
  w = l2_normalize(weights.astype(jnp.promote_types(weights.dtype, jnp.float32)))
  cos = w @ w.T
  masked = jnp.where(jnp.eye(w.shape[0], dtype=bool), -jnp.inf,
                     jax.lax.stop_gradient(cos))
  nearest = jnp.argmax(masked, axis=1)
  return jnp.mean(jnp.take_along_axis(cos, nearest[:, None], axis=1))


def center_invariant_regularizer(weights: chex.Array) -> chex.Array:
  """PML's ``CenterInvariantRegularizer``: the mean of
  ``(|w_c|^2 - mean_c |w_c|^2)^2 / 4``."""
  check_inputs(weights, embeddings_name="weights")
  sq = jnp.sum(jnp.square(weights.astype(jnp.promote_types(weights.dtype, jnp.float32))),
               axis=1)
  return jnp.mean(jnp.square(sq - jnp.mean(sq)) / 4)


def sparse_centers_regularizer(weights: chex.Array, *, num_classes: int,
                               centers_per_class: int) -> chex.Array:
  """PML's ``SparseCentersRegularizer`` (SoftTriple's): over each class's pairs of
  centres ``i < j``, ``sum sqrt(2 + tiny - min(2 cos_ij, 2)) / (2 * #pairs)``; rows
  ``c * K .. (c + 1) * K - 1`` are class ``c``'s centres."""
  check_inputs(weights, embeddings_name="weights")
  if centers_per_class < 2:
    raise ValueError(f"centers_per_class must be > 1; got {centers_per_class}.")
  if weights.shape[0] != num_classes * centers_per_class:
    raise ValueError(f"weights has {weights.shape[0]} rows; num_classes * "
                     f"centers_per_class = {num_classes * centers_per_class}.")
  dtype = jnp.promote_types(weights.dtype, jnp.float32)
  w = l2_normalize(weights.astype(dtype))
  cos = w @ w.T
  cls = jnp.arange(w.shape[0]) // centers_per_class
  same = (cls[:, None] == cls[None, :]) & jnp.triu(jnp.ones(cos.shape, bool), k=1)
  reg = jnp.sqrt(2.0 + jnp.finfo(dtype).tiny - jnp.minimum(2.0 * cos, 2.0))
  return jnp.sum(jnp.where(same, reg, 0.0)) / (2 * jnp.sum(same))


def regularized(loss_fn: Callable[..., Any] | ParametricLoss, *,
                embedding_regularizer: Callable[[chex.Array], chex.Array] | None = None,
                embedding_reg_weight: float = 1.0,
                weight_regularizer: Callable[[chex.Array], chex.Array] | None = None,
                weight_reg_weight: float = 1.0,
                weights_of: Callable[[Any], chex.Array] | None = None) -> ParametricLoss:
  """``loss + embedding_reg_weight * R_e(embeddings) + weight_reg_weight * R_w(W)``.

  PML's ``embedding_regularizer`` / ``embedding_reg_weight`` and ``weight_regularizer``
  / ``weight_reg_weight`` options of its losses.

  Args:
    loss_fn: a loss function or :class:`ParametricLoss`.
    embedding_regularizer: e.g. :func:`lp_regularizer`, on the batch's embeddings.
    embedding_reg_weight: its weight (PML's default 1).
    weight_regularizer: e.g. :func:`regular_face_regularizer`, on the class matrix.
    weight_reg_weight: its weight (PML's default 1).
    weights_of: ``params -> [C, D]`` class matrix (default: the loss params' only
      array leaf).

  Returns:
    A :class:`ParametricLoss`; the stats gain ``embedding_reg`` / ``weight_reg``.
  """
  base = as_parametric(loss_fn)

  def class_matrix(params):
    if weights_of is not None:
      return weights_of(params)
    leaves = jax.tree_util.tree_leaves(params)
    if len(leaves) != 1:
      raise ValueError(f"the loss has {len(leaves)} parameter arrays; pass weights_of "
                       "to pick the class matrix for weight_regularizer.")
    return leaves[0]

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    return base.init(rng, embedding_dim)

  def apply(params, state, embeddings, labels, margin):
    loss, stats, new_state = base.apply(params, state, embeddings, labels, margin)
    extra = {}
    if embedding_regularizer is not None:
      r = embedding_regularizer(embeddings)
      loss = loss + embedding_reg_weight * r
      extra["embedding_reg"] = jax.lax.stop_gradient(r).astype(jnp.float32)
    if weight_regularizer is not None:
      r = weight_regularizer(class_matrix(params))
      loss = loss + weight_reg_weight * r
      extra["weight_reg"] = jax.lax.stop_gradient(r).astype(jnp.float32)
    fields = stats._asdict() if hasattr(stats, "_asdict") else dict(stats)
    merged = {**fields, **extra}
    for k in ("num_total", "num_active", "num_easy"):
      if k not in merged:
        merged[k] = getattr(stats, k)
    return loss, merged, new_state

  return ParametricLoss(init=init, apply=apply)
