"""Margin loss (Wu et al.'s "sampling matters"): a learnable boundary ``beta`` between
positive and negative distances, over every triplet of a labelled batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import ActivityStats, activity_stats, nan_guard, pair_masks
from tsm.losses._base import LossVariables, ParametricLoss, _reduce, check_reduction
from tsm.losses._lp import batch_distances, check_loss_distance
from tsm.losses._softmax import _prologue


def _check_beta(beta) -> None:
  if jnp.ndim(beta) > 1:
    raise ValueError(f"beta must be a scalar or a [num_classes] vector; got shape "
                     f"{jnp.shape(beta)}.")


def margin_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    margin: chex.Numeric = 0.2,
    beta: chex.Numeric | chex.Array = 1.2,
    nu: float = 0.0,
    distance: str = "euclidean",
    normalize: bool = True,
    reduction: str = "mean_nonzero",
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Margin loss over all triplets (PML ``MarginLoss``, ``triplets_per_anchor="all"``).

  Each valid triplet ``(a, p, n)`` with distances ``d`` (row = anchor; by default
  Euclidean of L2-normalised embeddings: PML's ``LpDistance``) costs
  ``relu(d_ap - beta_a + margin) + relu(beta_a - d_an + margin)``, ``beta_a`` the
  scalar ``beta`` or ``beta[label_a]``. Triplets are never built: a pair ``(a, p)``
  appears in ``|N(a)|`` triplets and ``(a, n)`` in ``|P(a)|``, so every sum is over
  pairs (``O(B^2)``). The default reduction is PML's ``DivisorReducer``: the sum over
  triplets divided by the number of non-zero hinge halves (positive plus negative,
  counted per triplet); ``"mean"`` divides by the number of triplets. With ``nu > 0``
  the regulariser ``nu beta`` is added: ``nu beta`` for a scalar ``beta``, and for a
  per-class one ``nu sum_triplets beta_a`` with the loss's denominator (PML's
  ``beta_reg_loss``; PML adds it only with ``learn_beta``: with a fixed ``beta`` it
  is a constant).

  PML's ``MarginLoss`` departs from the paper, and tsm follows PML: the paper weighs
  independent pairs drawn by distance-weighted sampling; PML (and tsm) takes every
  triplet, so a positive pair counts ``|N(a)|`` times.

  Terms (``num_total``): valid triplets. Active: a triplet with non-zero loss (either
  hinge positive). Negative terms: anchor-negative pairs of anchors with a positive,
  active when ``d_an < beta_a + margin``.

  Args:
    embeddings: ``[B, D]`` float embeddings.
    labels: ``[B]`` integer labels (in ``[0, C)`` with a per-class ``beta``).
    margin: ``alpha``, the half-width of the band around ``beta`` (PML default 0.2;
      may be traced).
    beta: the boundary: a scalar or a ``[C]`` vector (PML default 1.2; may be traced
      and differentiated).
    nu: weight of the ``beta`` regulariser (PML default 0).
    distance: one of :data:`tsm.distances.LOSS_DISTANCES` (PML's default
      ``LpDistance``: ``"euclidean"``); ``margin`` and ``beta`` are in its units (PML's
      ``beta`` on a similarity is ``-beta`` for ``"dot_product"``, ``1 - beta`` for
      ``"cosine"``; ``margin`` is the same).
    normalize: L2-normalise before the distances (PML's ``normalize_embeddings=True``
      default of every distance object).
    reduction: ``"mean_nonzero"`` (PML's divisor), ``"mean"`` over triplets, or
      ``"sum"``.
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over triplets.

  References:
    Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017; PML
    ``MarginLoss``.
  """
  _check_beta(beta)
  check_loss_distance(distance)
  check_reduction(reduction, names_only="margin_loss")
  chex.assert_rank(margin, 0)
  x, v = _prologue(embeddings, labels, valid)
  d, pos, neg, _ = batch_distances(x, *pair_masks(labels, v), distance=distance,
                                   normalize=normalize)
  alpha = jnp.asarray(margin, d.dtype)
  beta = jnp.asarray(beta, d.dtype)
  beta_a = beta if beta.ndim == 0 else beta[labels]
  if beta_a.ndim == 1:
    beta_a = beta_a[:, None]
  pos_hinge = jnp.where(pos, jax.nn.relu(d - beta_a + alpha), 0.0)
  neg_hinge = jnp.where(neg, jax.nn.relu(beta_a - d + alpha), 0.0)
  num_p = jnp.sum(pos, axis=1).astype(d.dtype)
  num_n = jnp.sum(neg, axis=1).astype(d.dtype)
  total = jnp.sum(jnp.sum(pos_hinge, axis=1) * num_n + jnp.sum(neg_hinge, axis=1) * num_p)
  pos_on = pos & (jax.lax.stop_gradient(pos_hinge) > 0)
  neg_on = neg & (jax.lax.stop_gradient(neg_hinge) > 0)
  count = lambda mask: jnp.sum(mask, axis=1).astype(jnp.float32)
  np32, nn32 = num_p.astype(jnp.float32), num_n.astype(jnp.float32)
  num_triplets = jnp.sum(np32 * nn32)
  divisor = jnp.sum(count(pos_on) * nn32 + count(neg_on) * np32)
  loss = _reduce(total, num_triplets, divisor, reduction)
  if nu:
    if beta.ndim == 0:
      loss = loss + jnp.where(num_triplets > 0, nu * beta, 0.0)
    else:
      reg = nu * jnp.sum(beta_a[:, 0] * num_p * num_n)
      loss = loss + _reduce(reg, num_triplets, divisor, reduction)
  num_active = jnp.sum(count(pos_on) * nn32 + count(neg_on) * np32
                       - count(pos_on) * count(neg_on))
  stats = activity_stats(terms=pos, active=pos, neg_terms=neg & (num_p > 0)[:, None],
                         neg_active=neg_on, embeddings=x, labels=labels, valid=v)
  stats = stats._replace(num_total=num_triplets, num_active=num_active,
                         active_ratio=num_active / jnp.maximum(num_triplets, 1.0))
  return nan_guard(loss, x, v), jax.lax.stop_gradient(stats)


def margin_beta(num_classes: int | None = None, *, margin: float = 0.2,
                beta: float = 1.2, nu: float = 0.0, distance: str = "euclidean",
                margin_from_schedule: bool = False) -> ParametricLoss:
  """:func:`margin_loss` with a learnt ``beta`` (PML ``learn_beta=True``), as a
  :class:`ParametricLoss`.

  ``init`` gives ``params = {"beta": beta}``: a scalar, or with ``num_classes`` a
  ``[C]`` vector (one boundary per class, PML's ``num_classes``), every entry ``beta``;
  ``state`` is empty. ``apply``'s scheduled margin replaces ``margin`` only with
  ``margin_from_schedule=True``; by default it is ignored.

  Args:
    num_classes: ``None`` for one ``beta``, or the number of classes for one each.
    margin: ``alpha`` (PML default 0.2).
    beta: initial boundary (PML default 1.2).
    nu: weight of the ``beta`` regulariser (PML default 0).
    distance: as :func:`margin_loss` (default ``"euclidean"``).
    margin_from_schedule: use the schedule's margin as ``alpha``.

  Returns:
    The :class:`ParametricLoss`.
  """
  check_loss_distance(distance)
  if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f"num_classes must be None or a positive int; got {num_classes!r}.")

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    del rng, embedding_dim
    shape = () if num_classes is None else (num_classes,)
    return LossVariables(params={"beta": jnp.full(shape, beta, jnp.float32)}, state={})

  def apply(params, state, embeddings, labels, sched_margin):
    m = sched_margin if margin_from_schedule else margin
    loss, stats = margin_loss(embeddings, labels, margin=m, beta=params["beta"], nu=nu,
                              distance=distance)
    return loss, stats, state

  return ParametricLoss(init=init, apply=apply)
