"""Average-precision surrogates with sigmoid-relaxed ranks: Smooth-AP and PNP.

Both compare, per anchor, every ranked item with every other through
``sigmoid((s_aj - s_ak) / t)``: ``O(B^3)`` time, done one anchor at a time (a
``lax.map`` over anchor indices whose steps compute the anchor's similarities and are
rematerialised in the backward pass) in ``O(B^2)`` memory.

Statistics (:class:`tsm.losses.ActivityStats`): an anchor is active when a negative is
within one temperature unit of its least similar positive (``max_n s_an > min_{p in
P(a)} s_ap - t``, ``P(a)`` with the anchor itself: that negative still weighs at least
``sigmoid(-1)`` in a positive's rank); the negative terms are the anchor-negative pairs,
active by the same rule on their own (of the anchors that are terms).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize
from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  nan_guard, pair_masks)
from tsm.losses._softmax import _check_positive, _prologue


def smooth_ap_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    temperature: float = 0.01,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Smooth-AP: the ranks in average precision counted with sigmoids.

  For an anchor ``a`` with cosine similarities ``s_a.`` and positive set ``P(a)`` (its
  class, ``a`` itself included, as PML and the authors' code), each ``k in P(a)`` has
  the smoothed ranks ``R_P(k) = 1 + sum_{j in P(a), j != k} sigmoid((s_aj - s_ak) / t)``
  and ``R(k) = 1 + sum_{j != k} sigmoid((s_aj - s_ak) / t)`` (over the whole batch);
  ``AP_a = (1 / |P(a)|) sum_{k in P(a)} R_P(k) / R(k)`` and the loss is the mean of
  ``1 - AP_a`` over valid anchors (PML ``SmoothAPLoss``, ``MeanReducer``).

  The paper leaves the query out of its own ranking; PML and the authors' code keep it
  (its self-similarity 1 ranks first), and so does tsm: a one-class batch then has
  ``AP = 1`` everywhere (loss 0), a singleton anchor ``AP = 1 / R(a)``.

  Differences from PML: PML requires every class of the batch to have the same number
  of samples, in consecutive blocks, and then reads the classes as consecutive blocks
  of (number of classes) rows, which are the classes only when the number of classes
  equals the samples per class; tsm takes the classes from ``labels``, for any batch.
  On the batches PML reads right the two agree (PML stores the APs in float32 whatever
  the input's dtype: its float64 loss is rounded to ~1e-7).

  Statistics (:class:`ActivityStats`, see the module): the terms are the valid
  anchors.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    temperature: the sigmoid's temperature ``t`` (PML default 0.01).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over valid anchors.

  References:
    Brown et al., "Smooth-AP: Smoothing the Path Towards Large-Scale Image Retrieval",
    ECCV 2020; PML ``SmoothAPLoss``.
  """
  x, v, s, same = _setup(embeddings, labels, temperature, valid)
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)

  row_of = _similarity_rows(x)

  @jax.checkpoint
  def anchor_ap(a):
    s_a, p_a = row_of(a), same[a]  # [B] similarities, [B] bool positives (self included)
    sig = jax.nn.sigmoid((s_a[None, :] - s_a[:, None]) / temperature)  # [k, j]
    sig = jnp.where(not_self & v[None, :], sig, 0.0)
    rank_all = 1.0 + jnp.sum(sig, axis=1)
    rank_pos = 1.0 + jnp.sum(jnp.where(p_a[None, :], sig, 0.0), axis=1)
    num_pos = jnp.maximum(jnp.sum(p_a), 1).astype(s_a.dtype)
    return jnp.sum(jnp.where(p_a, rank_pos / rank_all, 0.0)) / num_pos

  ap = jax.lax.map(anchor_ap, jnp.arange(labels.shape[0]))
  anchor_loss = jnp.where(v, 1.0 - ap, 0.0)
  loss = jnp.sum(anchor_loss) / jnp.maximum(jnp.sum(v, dtype=jnp.float32), 1.0).astype(
      anchor_loss.dtype)
  stats = _rank_stats(s, same, labels, v, x, temperature, terms=v)
  return nan_guard(loss, x, v), stats


def _rank_stats(s, same, labels, v, x, temperature, terms):
  """The module's :class:`ActivityStats` (``same``: positives with the anchor itself)."""
  ss = jax.lax.stop_gradient(s)
  _, neg = pair_masks(labels, v)
  min_pos = jnp.min(jnp.where(same, ss, jnp.inf), axis=1)
  neg_active = neg & (ss > min_pos[:, None] - temperature)
  return activity_stats(terms=terms, active=jnp.any(neg_active, axis=1),
                        neg_terms=neg & terms[:, None], neg_active=neg_active,
                        embeddings=x, labels=labels, valid=v, cosines=s)


def _similarity_rows(x):
  """``a -> `` row ``a`` of the cosine similarities, computed in the step: mapping over
  anchor indices (the row's gradient flows to the ``[B, D]`` embeddings) runs several
  times faster on CPU, loss + gradient, than mapping over the rows of a ``[B, B]``
  similarity matrix (``bench/losses.py``, ``zoo_main``)."""
  xn = l2_normalize(x)
  return lambda a: jnp.matmul(xn, xn[a], precision=jax.lax.Precision.HIGHEST)


def _setup(embeddings, labels, temperature, valid):
  _check_positive(temperature, "temperature")
  x, v = _prologue(embeddings, labels, valid)
  x = jnp.where(v[:, None], x, 0.0)
  same = (labels[:, None] == labels[None, :]) & v[:, None] & v[None, :]
  return x, v, cosine_similarity(x), same


PNP_VARIANTS = ("O", "Ds", "Dq", "Iu", "Ib")


def pnp_loss(
    embeddings: chex.Array,
    labels: chex.Array,
    *,
    variant: str = "O",
    temperature: float = 0.01,
    b: float = 2.0,
    alpha: float = 1.0,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """PNP loss: penalise the negatives ranked before each positive (PML ``PNPLoss``).

  For an anchor ``a`` with positive set ``P(a)`` (its other samples and, as PML,
  ``a`` itself) and negatives ``N(a)``, each ``k in P(a)`` has the smoothed count of
  negatives before it, ``r_k = sum_{n in N(a)} sigmoid((s_an - s_ak) / t)`` (cosine
  similarities); the anchor's loss is ``(1 / |P(a)|) sum_k f(r_k)`` and the loss is the
  mean over anchors with another sample of their class (0 if none), with ``f`` by
  ``variant``: ``"O"`` ``r`` (PML's default); ``"Ds"`` ``log(1 + r)``; ``"Iu"``
  ``(1 + r) log(1 + r)``; ``"Ib"`` ``(b r - log(1 + b r)) / b^2``; ``"Dq"``
  ``1 / (1 + r)^alpha``, for which the loss is one minus that mean.

  Differences from PML: PML clips the sigmoid's exponent to ``[-50, 50]`` (values move
  by at most ``2e-22`` per term, gradients by a factor ``e^-50``); tsm's sigmoid is
  exact. ``temperature`` is PML's ``anneal``.

  Statistics (:class:`ActivityStats`, see the module): the terms are the anchors with
  another sample of their class.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine similarity).
    labels: ``[B]`` integer labels.
    variant: one of ``PNP_VARIANTS`` (PML default ``"O"``).
    temperature: the sigmoid's temperature (PML ``anneal``, default 0.01).
    b: the ``"Ib"`` variant's constant (PML default 2).
    alpha: the ``"Dq"`` variant's exponent (PML default 1).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are ignored.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over anchors with a positive.

  References:
    Li et al., "Rethinking the Optimization of Average Precision: Only Penalizing
    Negative Instances before Positive Ones is Enough", AAAI 2022; PML ``PNPLoss``.
  """
  if variant not in PNP_VARIANTS:
    raise ValueError(f"unknown PNP variant {variant!r}; use one of "
                     f"{', '.join(PNP_VARIANTS)}.")
  if not b > 0:
    raise ValueError(f"b must be > 0; got {b}.")
  x, v, s, same = _setup(embeddings, labels, temperature, valid)
  pos, neg = pair_masks(labels, v)
  has_pos = jnp.any(pos, axis=1)
  transform = {
      "O": lambda r: r,
      "Ds": jnp.log1p,
      "Dq": lambda r: 1.0 / (1.0 + r) ** alpha,
      "Iu": lambda r: (1.0 + r) * jnp.log1p(r),
      "Ib": lambda r: (b * r - jnp.log1p(b * r)) / b ** 2,
  }[variant]

  row_of = _similarity_rows(x)

  @jax.checkpoint
  def anchor_loss(a):
    # [B] similarities, positives (self included), negatives
    s_a, p_a, n_a = row_of(a), same[a], neg[a]
    sig = jax.nn.sigmoid((s_a[None, :] - s_a[:, None]) / temperature)  # [k, j]
    r = jnp.sum(jnp.where(n_a[None, :], sig, 0.0), axis=1)
    num_pos = jnp.maximum(jnp.sum(p_a), 1).astype(s_a.dtype)
    return jnp.sum(jnp.where(p_a, transform(r), 0.0)) / num_pos

  per_anchor = jax.lax.map(anchor_loss, jnp.arange(labels.shape[0]))
  num = jnp.sum(has_pos, dtype=jnp.float32)
  mean = jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(num, 1.0).astype(
      s.dtype)
  if variant == "Dq":
    mean = jnp.where(num > 0, 1.0 - mean, 0.0)
  stats = _rank_stats(s, same, labels, v, x, temperature, terms=has_pos)
  return nan_guard(mean, x, v), stats
