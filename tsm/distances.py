"""Pairwise distance matrices with finite gradients everywhere.

All functions are pure, jit/grad/vmap-safe and fixed-shape. Euclidean distances are
computed from the Gram matrix (``|x|^2 + |y|^2 - 2 x.y``), which costs O(N M D) time and
O(N M) memory instead of the O(N M D) memory of explicit differences.

The square root of a squared distance has an infinite derivative at zero, which is
exactly where identical points, duplicates in a batch and the diagonal of a
self-distance matrix sit. ``euclidean`` therefore routes zero entries through a branch
whose derivative is zero (the subgradient a practitioner expects: a pair at zero distance
gets no push from the distance itself), so ``jax.grad`` never sees ``0 * inf``.

Besides the three metric distances (:data:`DISTANCES`), PML's dot-product similarity
and SNR distance are distances here too (:data:`LOSS_DISTANCES`): ``"dot_product"``
is ``-x.y`` and ``"snr"`` ``var(y - x) / var(x)`` with the row ``x`` the query. The losses
whose rule holds for any distance take all five; evaluation and :mod:`tsm.search` rank
by :data:`RANKING_DISTANCES`.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

# The metric distances: non-negative, symmetric, zero from a point to itself. Every
# function of tsm that takes a distance takes these (evaluation, search, miners, losses).
DISTANCES = ("euclidean", "squared_euclidean", "cosine")
# PML's two other distances, as distances (smaller is closer): ``"dot_product"`` is
# ``-x.y`` (DotProductSimilarity), ``"snr"`` SNRDistance (not symmetric). The losses
# whose rule holds for any distance take them (docs/pml.md); a similarity margin ``m``
# of PML is ``-m`` in dot-product distance units (``1 - m`` for ``"cosine"``).
LOSS_DISTANCES = DISTANCES + ("dot_product", "snr")
# What an exact nearest-neighbour search ranks by (evaluation, tsm.search): the metric
# distances and the dot product (maximum inner product); SNR has no such search.
RANKING_DISTANCES = DISTANCES + ("dot_product",)


def _check_pair(x: chex.Array, y: chex.Array | None) -> chex.Array:
  chex.assert_rank(x, 2)
  if y is None:
    return x
  chex.assert_rank(y, 2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"x and y must have the same embedding size, got {x.shape[1]} and {y.shape[1]}; "
        "pass embeddings of the same model.")
  return y


def safe_norm(x: chex.Array, axis: int = -1, keepdims: bool = False,
              eps: float = 1e-12) -> chex.Array:
  """L2 norm whose gradient is zero (not NaN) at the zero vector.

  Args:
    x: input array.
    axis: axis to reduce.
    keepdims: keep the reduced axis.
    eps: squared norms at or below this are treated as zero.

  Returns:
    The L2 norm of ``x`` along ``axis``.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
  positive = sq > eps
  # `sq * 0` (not 0) keeps NaN in -> NaN out; its gradient is 0, as the constant's.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq * 0.0)


def l2_normalize(x: chex.Array, axis: int = -1, eps: float = 1e-12) -> chex.Array:
  """Scales ``x`` to unit L2 norm along ``axis``; zero vectors stay zero (finite grads)."""
  norm = safe_norm(x, axis=axis, keepdims=True, eps=eps)
  return x / jnp.where(norm > 0, norm, 1.0)


def pairwise_squared_euclidean(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """Squared Euclidean distances ``[N, M]`` between rows of ``x [N, D]`` and ``y [M, D]``.

  With ``y=None`` the distances are between the rows of ``x`` and the diagonal is exactly
  zero. Negative values from floating-point cancellation are clipped to zero.

  Args:
    x: ``[N, D]`` float array.
    y: optional ``[M, D]`` float array; defaults to ``x``.

  Returns:
    ``[N, M]`` array of squared distances.
  """
  self_distances = y is None
  y = _check_pair(x, y)
  x_sq = jnp.sum(jnp.square(x), axis=-1)
  y_sq = jnp.sum(jnp.square(y), axis=-1)
  gram = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.maximum(x_sq[:, None] + y_sq[None, :] - 2.0 * gram, 0.0)
  if self_distances:
    sq = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, sq)
  return sq


def pairwise_euclidean(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """Euclidean distances ``[N, M]``, with zero (not NaN) gradient at zero distance.

  Args:
    x: ``[N, D]`` float array.
    y: optional ``[M, D]`` float array; defaults to ``x``.

  Returns:
    ``[N, M]`` array of distances.
  """
  if y is None:
    return _self_euclidean(x)
  sq = pairwise_squared_euclidean(x, y)
  positive = sq > 0.0
  # `sq * 0` (not 0) keeps NaN in -> NaN out; its gradient is 0, as the constant's.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq * 0.0)


# The self-distance matrix of a batch is the hot path of every in-batch loss. Its
# gradient is written in closed form so that XLA materialises one [B, B] array
# forward (the distances) and one backward (d loss / d sq); through autodiff of the
# safe square root it recomputed the squared distances in three fusions and wrote
# four. (Reverse mode only, like every custom_vjp.)
@jax.custom_vjp
def _self_euclidean(x: chex.Array) -> chex.Array:
  # sq >= 0 (or NaN), with an exact zero diagonal: sqrt is the safe form's value.
  return jnp.sqrt(pairwise_squared_euclidean(x))


def _self_euclidean_fwd(x):
  dist = _self_euclidean(x)
  return dist, (x, dist)


def _self_euclidean_bwd(residuals, cotangent):
  x, dist = residuals
  # d dist / d sq = 1 / (2 dist) where dist > 0, and 0 at zero distance (duplicates,
  # the diagonal), the subgradient of the safe square root.
  positive = dist > 0
  g_sq = jnp.where(positive, cotangent / jnp.where(positive, 2.0 * dist, 1.0), 0.0)
  # sq_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j.
  weight = jnp.sum(g_sq, axis=1) + jnp.sum(g_sq, axis=0)
  return (2.0 * (x * weight[:, None] - _symmetric_product(g_sq, x))).astype(x.dtype),


_self_euclidean.defvjp(_self_euclidean_fwd, _self_euclidean_bwd)


def _symmetric_product(g: chex.Array, x: chex.Array) -> chex.Array:
  """``g x + g^T x`` as two products, as autodiff of ``x @ x.T`` gives it.

  Not ``(g + g^T) x``: one product fewer, but on XLA:CPU (jaxlib 0.10) the fused
  ``g + g^T`` of a ``[1024, 1024]`` cotangent reads ``g`` column-wise and costs more
  than the product it saves (``bench/losses.py``; BUILD_NOTES, "Loss speed and
  memory").
  """
  hi = jax.lax.Precision.HIGHEST
  return (jnp.matmul(g, x, precision=hi)
          + jax.lax.dot_general(g, x, (((0,), (0,)), ((), ())), precision=hi))


def pairwise_cosine(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """Cosine distances ``1 - cos(x_i, y_j)`` in ``[0, 2]``.

  Zero vectors have no direction; they are given distance 1 to everything (cosine
  similarity 0), with finite gradients.

  Args:
    x: ``[N, D]`` float array.
    y: optional ``[M, D]`` float array; defaults to ``x``.

  Returns:
    ``[N, M]`` array of distances.
  """
  self_distances = y is None
  y = _check_pair(x, y)
  xn = l2_normalize(x)
  yn = l2_normalize(y)
  sim = jnp.matmul(xn, yn.T, precision=jax.lax.Precision.HIGHEST)
  dist = 1.0 - jnp.clip(sim, -1.0, 1.0)
  if self_distances:
    # A non-zero vector is at distance 0 from itself; a zero vector keeps distance 1.
    nonzero = jnp.any(x != 0, axis=-1)
    dist = jnp.where(jnp.eye(x.shape[0], dtype=bool) & nonzero[:, None], 0.0, dist)
  return dist


def pairwise_dot_product(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """PML's ``DotProductSimilarity`` as a distance: ``-x_i.y_j`` (smaller is closer).

  A similarity, not a metric: negative values, and a diagonal ``-|x_i|^2`` that is not
  zero. The embeddings are taken as given (PML's ``DotProductSimilarity()`` normalises
  them first by default, which makes it the cosine similarity).

  Args:
    x: ``[N, D]`` float array.
    y: optional ``[M, D]`` float array; defaults to ``x``.

  Returns:
    ``[N, M]`` array of negated inner products.
  """
  y = _check_pair(x, y)
  return -jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


def _centred(x: chex.Array) -> chex.Array:
  """Rows minus their means, after shifting each by its first component: a constant
  row is then exactly zero (its mean, rounded, need not equal its entries), and the
  variance, which does not depend on the shift, has no signal at all."""
  x = x - x[:, :1]
  return x - jnp.mean(x, axis=1, keepdims=True)


def _snr_parts(x: chex.Array, y: chex.Array | None) -> tuple[chex.Array, chex.Array]:
  """``(dist, has_signal)``: the SNR distances, 0 in the rows of queries without
  variance, and the ``[N]`` bool queries with non-zero variance."""
  self_distances = y is None
  y = _check_pair(x, y)
  xc = _centred(x)
  # var(y_j - x_i) / var(x_i) = |c(y_j) - c(x_i)|^2 / |c(x_i)|^2 with c() a row minus its
  # mean: the variances' 1 / (D - 1) cancels.
  noise = pairwise_squared_euclidean(xc, None if self_distances else _centred(y))
  signal = jnp.sum(jnp.square(xc), axis=1)
  has_signal = signal > 0
  dist = noise / jnp.where(has_signal, signal, 1.0)[:, None]
  return jnp.where(has_signal[:, None], dist, 0.0), has_signal


def pairwise_snr(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """PML's ``SNRDistance``: ``d_ij = var(y_j - x_i) / var(x_i)`` (variances over the
  features), the query ``x_i``'s variance the signal.

  Not symmetric: row ``i`` is the query (PML's ``distance(query, ref)`` orientation, so
  in a loss the anchor is the row). Infinite for a query row of zero variance (a zero
  or constant row), as PML's, with zero (not NaN) gradients there. The embeddings are
  taken as given (PML's ``SNRDistance()`` normalises them first by default).

  Args:
    x: ``[N, D]`` float array (the queries).
    y: optional ``[M, D]`` float array; defaults to ``x`` (exact zero diagonal where
      ``x_i`` has a variance).

  Returns:
    ``[N, M]`` array of distances.
  """
  dist, has_signal = _snr_parts(x, y)
  return jnp.where(has_signal[:, None], dist, jnp.inf)


_PAIRWISE: dict[str, Callable[..., chex.Array]] = {
    "euclidean": pairwise_euclidean,
    "squared_euclidean": pairwise_squared_euclidean,
    "cosine": pairwise_cosine,
    "dot_product": pairwise_dot_product,
    "snr": pairwise_snr,
}


def check_distance(distance: str, names: tuple[str, ...] = DISTANCES) -> None:
  """Raises a one-line ValueError unless ``distance`` is one of ``names``.

  Args:
    distance: the name to check.
    names: the names allowed where it is used: :data:`DISTANCES` (the metric distances:
      miners, diagnostics; the default), :data:`RANKING_DISTANCES` (evaluation, search)
      or :data:`LOSS_DISTANCES` (the losses that take every distance).
  """
  if distance not in names:
    unsupported = (f" ({distance} is a loss distance, not one here)"
                   if distance in LOSS_DISTANCES else "")
    raise ValueError(f"unknown distance {distance!r}{unsupported}; use one of "
                     f"{', '.join(names)}.")


def query_distances(x: chex.Array, y: chex.Array | None = None, *,
                    distance: str = "euclidean") -> tuple[chex.Array, chex.Array]:
  """Pairwise distances for a loss, and the query rows that have them.

  The same matrix as :func:`pairwise_distances` except that a row without a distance
  (``"snr"``: a query of zero variance, which PML's ``SNRDistance`` makes infinite) is
  0 and marked: the losses leave such a row out, like padding, so no infinity reaches
  their sums or gradients.

  Args:
    x: ``[N, D]`` float array (the queries: a loss's anchors).
    y: optional ``[M, D]`` float array; defaults to ``x``.
    distance: one of :data:`LOSS_DISTANCES`.

  Returns:
    ``(dist [N, M], defined [N] bool)``.
  """
  check_distance(distance, LOSS_DISTANCES)
  if distance == "snr":
    return _snr_parts(x, y)
  return _PAIRWISE[distance](x, y), jnp.ones(x.shape[:1], bool)


def pairwise_distances(x: chex.Array, y: chex.Array | None = None, *,
                       distance: str = "euclidean") -> chex.Array:
  """Pairwise distance matrix by name.

  Args:
    x: ``[N, D]`` float array (the queries: rows).
    y: optional ``[M, D]`` float array; defaults to ``x`` (exact zero diagonal for the
      metric distances).
    distance: one of :data:`LOSS_DISTANCES` (``"euclidean"``, ``"squared_euclidean"``,
      ``"cosine"``, ``"dot_product"``, ``"snr"``).

  Returns:
    ``[N, M]`` distance matrix.
  """
  check_distance(distance, LOSS_DISTANCES)
  return _PAIRWISE[distance](x, y)


def paired_query_distances(x: chex.Array, y: chex.Array, *,
                           distance: str = "euclidean") -> tuple[chex.Array, chex.Array]:
  """Row-wise ``d(x_i, y_i)`` for a loss over explicit tuples, and the rows that have one.

  As :func:`query_distances` for explicit pairs: ``x_i`` is the query (the anchor); a
  row without a distance (``"snr"``: ``x_i`` of zero variance) is 0 and marked.

  Args:
    x: ``[N, D]`` float array (the queries).
    y: ``[N, D]`` float array.
    distance: one of :data:`LOSS_DISTANCES`.

  Returns:
    ``(dist [N], defined [N] bool)``.
  """
  check_distance(distance, LOSS_DISTANCES)
  chex.assert_rank([x, y], 2)
  chex.assert_equal_shape([x, y])
  defined = jnp.ones(x.shape[:1], bool)
  if distance == "cosine":
    sim = jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
    return 1.0 - jnp.clip(sim, -1.0, 1.0), defined
  if distance == "dot_product":
    return -jnp.sum(x * y, axis=-1), defined
  if distance == "snr":
    xc, yc = _centred(x), _centred(y)
    signal = jnp.sum(jnp.square(xc), axis=-1)
    has_signal = signal > 0
    noise = jnp.sum(jnp.square(yc - xc), axis=-1)
    return jnp.where(has_signal, noise / jnp.where(has_signal, signal, 1.0), 0.0), has_signal
  sq = jnp.sum(jnp.square(x - y), axis=-1)
  if distance == "squared_euclidean":
    return sq, defined
  positive = sq > 0.0
  # `sq * 0` (not 0) keeps NaN in -> NaN out; its gradient is 0, as the constant's.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq * 0.0), defined


def paired_distances(x: chex.Array, y: chex.Array, *,
                     distance: str = "euclidean") -> chex.Array:
  """Row-wise distances ``d(x_i, y_i)`` ``[N]`` for explicit pairs, same conventions as
  :func:`pairwise_distances` (``"snr"``: infinite where ``x_i`` has no variance)."""
  dist, defined = paired_query_distances(x, y, distance=distance)
  return jnp.where(defined, dist, jnp.inf)
