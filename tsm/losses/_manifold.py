"""Manifold proxy loss: samples and proxies ranked by random-walk (manifold) similarity."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from tsm.losses._activity import (ActivityStats, activity_stats, cosine_similarity,
                                  masked_log1p_sum_exp, nan_guard, valid_rows)
from tsm.losses._base import (LossVariables, ParametricLoss, _float_dtype, check_inputs)
from tsm.losses._proxy import _check_class_vectors


def _check(lambda_c, alpha) -> None:
  if not lambda_c >= 0:
    raise ValueError(f"lambda_c must be >= 0 (math.inf: the context loss only); got "
                     f"{lambda_c}.")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha (the random walk's propagation) must be in (0, 1); got "
                     f"{alpha}.")


def _hinge_softplus(v, own):
  """Per row ``log(1 + sum exp(v))`` over the entries with ``v >= 0`` other than ``own``
  (PML's -inf masking), and the kept mask."""
  kept = (jax.lax.stop_gradient(v) >= 0) & ~own
  return masked_log1p_sum_exp(v, kept, axis=1), kept


def manifold_loss(
    embeddings: chex.Array,
    meta_classes: chex.Array,
    proxies: chex.Array,
    *,
    lambda_c: float = 1.0,
    alpha: float = 0.8,
    margin: chex.Numeric = 5e-4,
    valid: chex.Array | None = None,
) -> tuple[chex.Array, ActivityStats]:
  """Manifold proxy loss (PML ``ManifoldLoss``), given each sample's meta-class.

  The ``B`` samples and ``K`` proxies form a graph with affinities
  ``S_ij = exp(max(cos_ij, 0) / 0.5)`` (``S_ii = 0``); with
  ``S_bar = D^-1/2 S D^-1/2`` the random walk's similarities are
  ``F = (1 - alpha) (I - alpha S_bar)^-1``. Sample ``i`` of meta-class ``m_i`` (its
  proxy) costs, intrinsically, ``log(1 + sum_{k != m_i, v_ik >= 0} exp(v_ik))`` with
  ``v_ik = F_{i, N+k} - F_{i, N+m_i} + margin`` (a proxy below its own by more than the
  margin costs nothing), and in context the same with ``v`` from the cosine between
  row ``i`` of ``F`` and proxy ``k``'s row; the loss is ``mean_i intrinsic +
  lambda_c mean_i context`` (PML's ``already_reduced``: there is no ``reduction``).
  ``lambda_c = inf`` keeps the context part alone (PML documents this but computes
  ``0 + inf * context``). The loss takes no labels: meta-classes are a random proxy per
  sample, drawn by :func:`manifold` each step (every proxy used once when
  ``B >= K``), as PML does without ``indices_tuple``.

  Memory and time: the ``(B + K)^2`` affinities and their inverse, ``O((B + K)^3)``
  time.

  Terms (``num_total``): valid samples. Active: non-zero loss (some other proxy within
  the margin of its own, intrinsically or in context). Negative terms: the (sample,
  other proxy) pairs, active when either ``v_ik >= 0``.

  Args:
    embeddings: ``[B, D]`` float embeddings (normalised here: cosine affinities).
    meta_classes: ``[B]`` integer proxy index of each sample, in ``[0, K)``.
    proxies: ``[K, D]`` proxies.
    lambda_c: weight of the context loss (PML default 1; ``math.inf``: context only).
    alpha: the random walk's propagation, in ``(0, 1)`` (PML default 0.8).
    margin: margin (PML default 5e-4; may be traced).
    valid: optional ``[B]`` bool mask; ``False`` rows (padding) are left out of the
      graph.

  Returns:
    ``(loss, stats)`` with :class:`ActivityStats` over samples.

  References:
    Aziere and Todorovic, "Ensemble Deep Manifold Similarity Learning using Hard
    Proxies", CVPR 2019; PML ``ManifoldLoss``.
  """
  _check(lambda_c, alpha)
  check_inputs(embeddings, meta_classes, labels_name="meta_classes")
  _check_class_vectors(proxies, embeddings, "proxies")
  chex.assert_rank(margin, 0)
  dtype = _float_dtype(embeddings)
  x, p = embeddings.astype(dtype), proxies.astype(dtype)
  n, k = x.shape[0], p.shape[0]
  v = valid_rows(meta_classes, valid)
  nodes = jnp.concatenate([v, jnp.ones((k,), bool)])
  points = jnp.concatenate([jnp.where(v[:, None], x, 0.0), p])
  s = jnp.exp(jnp.maximum(cosine_similarity(points), 0.0) / 0.5)
  edge = nodes[:, None] & nodes[None, :] & ~jnp.eye(n + k, dtype=bool)
  s = jnp.where(edge, s, 0.0)
  degree = jnp.sum(s, axis=1)
  inv_sqrt = jnp.where(nodes, jax.lax.rsqrt(jnp.where(nodes, degree, 1.0)), 0.0)
  s_bar = inv_sqrt[:, None] * s * inv_sqrt[None, :]
  f = (1.0 - alpha) * jnp.linalg.inv(jnp.eye(n + k, dtype=dtype) - alpha * s_bar)
  own = meta_classes[:, None] == jnp.arange(k)[None, :]  # [B, K]
  m = jnp.asarray(margin, dtype)
  loss = jnp.zeros((), dtype)
  count = jnp.maximum(jnp.sum(v, dtype=jnp.float32), 1.0).astype(dtype)
  kept_any = jnp.zeros(own.shape, bool)
  if lambda_c != math.inf:
    fi = f[:n, n:]
    vi = fi - jnp.sum(jnp.where(own, fi, 0.0), axis=1, keepdims=True) + m
    intrinsic, kept = _hinge_softplus(vi, own)
    loss = loss + jnp.sum(jnp.where(v, intrinsic, 0.0)) / count
    kept_any = kept_any | kept
  if lambda_c:
    fc = cosine_similarity(f[:n], f[n:])
    vc = fc - jnp.sum(jnp.where(own, fc, 0.0), axis=1, keepdims=True) + m
    context, kept = _hinge_softplus(vc, own)
    weight = 1.0 if lambda_c == math.inf else lambda_c
    loss = loss + weight * jnp.sum(jnp.where(v, context, 0.0)) / count
    kept_any = kept_any | kept
  pairs = ~own & v[:, None]
  stats = activity_stats(terms=v, active=jnp.any(kept_any & pairs, axis=1),
                         neg_terms=pairs, neg_active=kept_any, embeddings=x,
                         labels=meta_classes, valid=v)
  return nan_guard(loss, x, v), stats


def draw_meta_classes(rng: chex.PRNGKey, batch_size: int, num_proxies: int) -> chex.Array:
  """A random proxy per sample, every proxy once when ``batch_size >= num_proxies``
  (PML: ``arange(K)`` and ``batch_size - K`` uniform draws, shuffled)."""
  extra = jax.random.randint(rng, (max(batch_size - num_proxies, 0),), 0, num_proxies)
  pool = jnp.concatenate([jnp.arange(num_proxies), extra])
  return jax.random.permutation(jax.random.fold_in(rng, 1), pool)[:batch_size]


def manifold(num_proxies: int = 50, *, lambda_c: float = 1.0, alpha: float = 0.8,
             margin: float = 5e-4) -> ParametricLoss:
  """:func:`manifold_loss` as a :class:`ParametricLoss`: trainable proxies, a PRNG key.

  ``init`` draws ``params = {"proxies": [K, D]}`` from a standard normal (PML's
  ``torch.randn``) and keeps ``state = {"key": ...}``; each ``apply`` draws the batch's
  meta-classes (:func:`draw_meta_classes`) from the key and returns the next key. The
  labels and the schedule's margin are ignored (PML's loss takes no labels).

  Args:
    num_proxies: number of proxies ``K`` (PML default 50).
    lambda_c: weight of the context loss (PML default 1).
    alpha: the random walk's propagation (PML default 0.8).
    margin: margin (PML default 5e-4).

  Returns:
    The :class:`ParametricLoss`.
  """
  if not isinstance(num_proxies, int) or num_proxies < 1:
    raise ValueError(f"num_proxies must be a positive int; got {num_proxies!r}.")
  _check(lambda_c, alpha)

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    w_rng, key = jax.random.split(rng)
    proxies = jax.random.normal(w_rng, (num_proxies, embedding_dim), jnp.float32)
    return LossVariables(params={"proxies": proxies}, state={"key": key})

  def apply(params, state, embeddings, labels, sched_margin):
    del labels, sched_margin
    key, draw = jax.random.split(state["key"])
    meta = draw_meta_classes(draw, embeddings.shape[0], num_proxies)
    loss, stats = manifold_loss(embeddings, meta, params["proxies"], lambda_c=lambda_c,
                                alpha=alpha, margin=margin)
    return loss, stats, {"key": key}

  return ParametricLoss(init=init, apply=apply)
