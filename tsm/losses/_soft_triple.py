"""SoftTriple loss: a softmax over classes that each hold several trainable centres.

Statistics (:class:`tsm.losses.ActivityStats`), as ``arcface_loss``: the terms are the
valid samples with a target; a sample is active when a wrong class's logit is within one
logit unit of its own margin-penalised logit (``max_{k != y} z_k > z_y - 1``).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize
from tsm.losses._activity import ActivityStats
from tsm.losses._base import ParametricLoss
from tsm.losses._proxy import _check_num_classes, _prologue, class_vector_loss
from tsm.losses._proxy_softmax import class_cross_entropy, zero_padding
from tsm.losses._softmax import _check_positive


def sub_centre_prologue(embeddings, labels, vectors, name, valid):
  """Checked inputs of a loss against ``[C, K, D]`` class centres.

  Returns:
    ``(x, cos, onehot, v)``: the embeddings in the working dtype (padding rows zeroed),
    the ``[B, C, K]`` cosines to every centre, the ``[B, C]`` own-class mask and the
    ``[B]`` valid rows.
  """
  x, w, onehot, v = _prologue(embeddings, labels, vectors, name, valid, sub_centres=True)
  x = zero_padding(x, v)
  # One [B, D] x [D, C K] product as an einsum over the [C, K, D] centres: XLA:CPU
  # runs it faster than the same product on the centres reshaped to [C K, D].
  cos = jnp.einsum("bd,ckd->bck", l2_normalize(x), l2_normalize(w),
                   precision=jax.lax.Precision.HIGHEST)
  return x, cos, onehot, v


def soft_triple_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    centers: chex.Array,
    *,
    margin: chex.Numeric = 0.01,
    la: float = 20.0,
    gamma: float = 0.1,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """SoftTriple: cross-entropy over soft class similarities to several centres per class.

  With ``s_ck`` the cosine between a sample and centre ``k`` of class ``c``, the class
  similarity is ``S_c = sum_k softmax_k(s_ck / gamma) s_ck``; the logits are
  ``la (S_c - margin [c = y])`` and the loss is the mean cross-entropy over valid
  samples (PML ``SoftTripleLoss``, ``MeanReducer``).

  The paper adds a regulariser that merges similar centres of a class
  (``tau sum ||w_k - w_l||``, its adaptive number of centres); PML leaves it out by
  default (only its generic ``weight_regularizer``) and so does tsm.

  Differences from PML: ``centers`` is ``[C, K, D]`` (PML stores ``[D, C * K]``, class
  ``c``'s centres in columns ``c K .. c K + K - 1``: ``centers.reshape(C * K, D).T``).

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here).
    labels: ``[B]`` integer labels in ``[0, C)``.
    centers: ``[C, K, D]`` class centres (normalised here).
    margin: ``delta``, subtracted from the own class's similarity (PML default 0.01;
      may be traced).
    la: logit scale ``lambda`` (PML default 20).
    gamma: temperature of the softmax over a class's centres (PML default 0.1; the
      similarities are multiplied by ``1 / gamma``).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid samples (see the module).

  References:
    Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV
    2019; PML ``SoftTripleLoss``.
  """
  _check_positive(la, "la")
  _check_positive(gamma, "gamma")
  x, cos, onehot, v = sub_centre_prologue(embeddings, labels, centers, "centers", valid)
  chex.assert_rank(margin, 0)
  prob = jax.nn.softmax(cos * (1.0 / gamma), axis=2)
  sim = jnp.sum(prob * cos, axis=2)
  z = la * (sim - jnp.asarray(margin, sim.dtype) * onehot)
  return class_cross_entropy(z, onehot, v, x, labels)


def soft_triple(num_classes: int, *, centers_per_class: int = 10, margin: float = 0.01,
                la: float = 20.0, gamma: float = 0.1,
                margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`soft_triple_loss` as a :class:`ParametricLoss` with trainable centres.

  ``init`` draws ``params = {"centers": [C, K, D]}`` as PML (``kaiming_uniform_`` with
  ``a = sqrt(5)`` on its ``[D, C K]`` tensor: uniform in ``+-1 / sqrt(C K)``); ``state``
  is empty. ``apply``'s scheduled margin replaces ``margin`` only with
  ``margin_from_schedule=True``; by default it is ignored.

  Args:
    num_classes: number of classes ``C``.
    centers_per_class: ``K`` (PML default 10).
    margin: see :func:`soft_triple_loss`.
    la: see :func:`soft_triple_loss`.
    gamma: see :func:`soft_triple_loss`.
    margin_from_schedule: use the schedule's margin as ``margin``.

  Returns:
    The :class:`ParametricLoss`.
  """
  _check_num_classes(num_classes)
  if not isinstance(centers_per_class, int) or centers_per_class < 1:
    raise ValueError(f"centers_per_class must be a positive int; got "
                     f"{centers_per_class!r}.")
  _check_positive(la, "la")
  _check_positive(gamma, "gamma")

  def draw(rng, embedding_dim):
    bound = 1.0 / math.sqrt(num_classes * centers_per_class)
    return jax.random.uniform(rng, (num_classes, centers_per_class, embedding_dim),
                              jnp.float32, -bound, bound)

  return class_vector_loss(soft_triple_loss, "centers", num_classes, draw=draw,
                           margin=margin, la=la, gamma=gamma,
                           margin_from_schedule=margin_from_schedule)
