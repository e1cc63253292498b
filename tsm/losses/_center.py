"""Center Contrastive Loss: queries against a bank of class centres kept by its own rule.

The centres are state, not parameters: the optimiser never moves them. The paper (Cai,
Xiong, Tian 2023) keeps a class-wise centre bank "updated in real time" and compares
each query with every centre by a contrastive softmax; its exact update rule is not
public to us, so tsm's rule is :func:`update_centers` (an option of
:func:`center_contrastive`):

  * each batch class's centre moves to ``normalise(momentum * c + (1 - momentum) * m)``,
    ``m`` the mean of the class's L2-normalised batch embeddings (no gradient);
  * a class never seen before (its centre is the zero vector, the initial bank) takes
    ``normalise(m)`` directly;
  * classes absent from the batch keep their centre.

A zero centre means "no centre yet": that class is left out of the softmax, and
samples of such a class are no term of the loss.
"""

from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize
from tsm.losses._activity import (ActivityStats, cosine_similarity, masked_logsumexp,
                                  nan_guard, valid_rows)
from tsm.losses._base import LossVariables, ParametricLoss, _float_dtype, check_inputs
from tsm.losses._proxy import _check_class_vectors, _check_num_classes, _class_softmax_stats


def update_centers(centers: chex.Array, embeddings: chex.Array, labels: chex.Array, *,
                   momentum: chex.Numeric = 0.9,
                   valid: chex.Array | None = None) -> chex.Array:
  """The centre bank after one batch: EMA of the class means, renormalised.

  Args:
    centers: ``[C, D]`` centres; zero rows are classes without a centre yet.
    embeddings: ``[B, D]`` batch embeddings (no gradient flows through the update).
    labels: ``[B]`` integer labels; labels outside ``[0, C)`` are ignored.
    momentum: weight of the old centre, in ``[0, 1]`` (0: the batch mean direction).
    valid: optional ``[B]`` bool mask of rows to use.

  Returns:
    ``[C, D]`` new centres (unit rows for every class seen so far).
  """
  check_inputs(embeddings, labels)
  _check_class_vectors(centers, embeddings, "centers")
  if isinstance(momentum, (int, float)) and not 0.0 <= momentum <= 1.0:
    raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
  chex.assert_rank([centers, embeddings, labels], [2, 2, 1])
  num_classes = centers.shape[0]
  v = valid_rows(labels, valid)
  x = l2_normalize(jax.lax.stop_gradient(embeddings).astype(centers.dtype))
  ids = jnp.where(v, labels, num_classes)  # out of range: dropped by segment_sum
  sums = jax.ops.segment_sum(x, ids, num_segments=num_classes)
  counts = jax.ops.segment_sum(v.astype(centers.dtype), ids, num_segments=num_classes)
  present = counts > 0
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  seen = jnp.any(centers != 0, axis=1)
  blended = jnp.where(seen[:, None], momentum * centers + (1.0 - momentum) * means, means)
  return jnp.where(present[:, None], l2_normalize(blended), centers)


def center_contrastive_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    centers: chex.Array,
    *,
    scale: float = 16.0,
    margin: chex.Numeric = 0.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Center Contrastive Loss: a scaled-cosine softmax of each query over the centres.

  ``l_i = -log(exp(s (cos(x_i, c_y) - m)) / (exp(s (cos(x_i, c_y) - m)) +
  sum_{k != y, k seen} exp(s cos(x_i, c_k))))``, the mean over valid samples whose
  class has a centre. The centres get no gradient (``stop_gradient``): they follow
  :func:`update_centers`, not the optimiser.

  ``scale`` and ``margin`` are tsm's choices (the paper's values are not known to us):
  ``s = 16``, no margin, as the paper's margin is optional.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    centers: ``[C, D]`` centre bank; zero rows are classes without a centre.
    scale: logit scale ``s``.
    margin: additive cosine margin ``m`` on the target (may be traced).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over the samples with a centre.

  References:
    Cai, Xiong, Tian, "Center Contrastive Loss for Metric Learning", arXiv 2308.00458.
  """
  if not scale > 0:
    raise ValueError(f"scale must be > 0; got {scale}.")
  check_inputs(embeddings, labels)
  _check_class_vectors(centers, embeddings, "centers")
  chex.assert_rank([embeddings, labels, centers, margin], [2, 1, 2, 0])
  chex.assert_type(labels, int)
  dtype = _float_dtype(embeddings)
  x = embeddings.astype(dtype)
  c = jax.lax.stop_gradient(centers).astype(dtype)
  v = valid_rows(labels, valid)
  onehot = labels[:, None] == jnp.arange(c.shape[0])[None, :]
  seen = jnp.any(c != 0, axis=1)
  cos = cosine_similarity(x, c)
  m = jnp.asarray(margin, dtype)
  z = scale * (cos - m * onehot)
  used = v & jnp.any(onehot & seen[None, :], axis=1)
  lse = masked_logsumexp(z, jnp.broadcast_to(seen[None, :], z.shape), axis=1)
  z_target = jnp.sum(jnp.where(onehot, z, 0.0), axis=1)
  sample_loss = jnp.where(used, jnp.where(used, lse, 0.0) - z_target, 0.0)
  loss = jnp.sum(sample_loss) / jnp.maximum(jnp.sum(used, dtype=jnp.float32), 1.0).astype(
      dtype)
  stats = _class_softmax_stats(z, z_target, onehot, used, x, labels, v, classes=seen)
  return nan_guard(loss, x, v), stats


def center_contrastive(
    num_classes: int, *, scale: float = 16.0, margin: float = 0.0,
    momentum: float = 0.9, margin_from_schedule: bool = False,
    update_fn: Callable[[chex.Array, chex.Array, chex.Array], chex.Array] | None = None,
) -> ParametricLoss:
  """:func:`center_contrastive_loss` as a :class:`ParametricLoss` with a centre bank.

  ``init`` gives ``params = {}`` and ``state = {"centers": zeros [C, D]}`` (no class has
  a centre yet). ``apply`` first updates the bank with the batch (so every batch class
  has a centre), then takes the loss against the updated bank, and returns the bank as
  the new state. The scheduled margin replaces ``margin`` only with
  ``margin_from_schedule=True``; by default it is ignored.

  Args:
    num_classes: number of classes ``C``.
    scale: logit scale.
    margin: cosine margin on the target.
    momentum: the default rule's momentum (:func:`update_centers`).
    margin_from_schedule: use the schedule's margin as ``margin``.
    update_fn: ``(centers, embeddings, labels) -> centers``, replacing the default rule.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_num_classes(num_classes)
  if update_fn is None:
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"momentum must be in [0, 1]; got {momentum}.")
    update_fn = functools.partial(update_centers, momentum=momentum)

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    del rng
    return LossVariables(params={},
                         state={"centers": jnp.zeros((num_classes, embedding_dim),
                                                     jnp.float32)})

  def apply(params, state, embeddings, labels, sched_margin):
    del params
    m = sched_margin if margin_from_schedule else margin
    centers = jax.lax.stop_gradient(update_fn(state["centers"], embeddings, labels))
    loss, stats = center_contrastive_loss(embeddings, labels, centers, scale=scale,
                                          margin=m)
    return loss, stats, {"centers": centers}

  return ParametricLoss(init=init, apply=apply)
