"""Pairwise distance matrices with finite gradients everywhere.

All functions are pure, jit/grad/vmap-safe and fixed-shape. Euclidean distances are
computed from the Gram matrix (``|x|^2 + |y|^2 - 2 x.y``), which costs O(N M D) time and
O(N M) memory instead of the O(N M D) memory of explicit differences.

The square root of a squared distance has an infinite derivative at zero, which is
exactly where identical points, duplicates in a batch and the diagonal of a
self-distance matrix sit. ``euclidean`` therefore routes zero entries through a branch
whose derivative is zero (the subgradient a practitioner expects: a pair at zero distance
gets no push from the distance itself), so ``jax.grad`` never sees ``0 * inf``.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


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
  than the product it saves (``bench/losses.py``, BUILD_NOTES "Losses").
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


_PAIRWISE: dict[str, Callable[..., chex.Array]] = {
    "euclidean": pairwise_euclidean,
    "squared_euclidean": pairwise_squared_euclidean,
    "cosine": pairwise_cosine,
}


def pairwise_dot_product(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """PML's ``DotProductSimilarity`` as a distance: ``-x.y`` (smaller is closer).

  A similarity, not a metric (negative, no zero diagonal): a function for miners and
  custom losses, not a ``distance=`` name of tsm's losses, whose exact paths assume a
  non-negative distance with a zero diagonal.
  """
  y = _check_pair(x, y)
  return -(x @ y.T)


def pairwise_snr(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """PML's ``SNRDistance``: ``var(x_i - y_j) / var(x_i)`` (variances over the
  features, unbiased as ``torch.var``).

  Not symmetric, and infinite for a constant query row (zero variance), as PML's: a
  function for miners and custom losses, not a ``distance=`` name of tsm's losses.
  """
  y = _check_pair(x, y)
  d = x.shape[-1]
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  yc = y - jnp.mean(y, axis=1, keepdims=True)
  # var(x - y) * (d - 1) = |xc|^2 + |yc|^2 - 2 xc.yc (centred rows), from Gram matrices.
  sq = (jnp.sum(xc * xc, axis=1)[:, None] + jnp.sum(yc * yc, axis=1)[None, :]
        - 2 * xc @ yc.T)
  var_diff = jnp.maximum(sq, 0.0) / (d - 1)
  var_x = jnp.sum(xc * xc, axis=1) / (d - 1)
  return var_diff / var_x[:, None]


def check_distance(distance: str) -> None:
  """Raises a one-line ValueError unless ``distance`` is a known distance name."""
  if distance not in _PAIRWISE:
    raise ValueError(
        f"unknown distance {distance!r}; use one of {', '.join(DISTANCES)}.")


def pairwise_distances(x: chex.Array, y: chex.Array | None = None, *,
                       distance: str = "euclidean") -> chex.Array:
  """Pairwise distance matrix by name.

  Args:
    x: ``[N, D]`` float array.
    y: optional ``[M, D]`` float array; defaults to ``x`` (exact zero diagonal).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

  Returns:
    ``[N, M]`` distance matrix.
  """
  check_distance(distance)
  return _PAIRWISE[distance](x, y)


def paired_distances(x: chex.Array, y: chex.Array, *,
                     distance: str = "euclidean") -> chex.Array:
  """Row-wise distances ``d(x_i, y_i)`` ``[N]`` for explicit pairs, same conventions."""
  check_distance(distance)
  chex.assert_rank([x, y], 2)
  chex.assert_equal_shape([x, y])
  if distance == "cosine":
    sim = jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
    return 1.0 - jnp.clip(sim, -1.0, 1.0)
  sq = jnp.sum(jnp.square(x - y), axis=-1)
  if distance == "squared_euclidean":
    return sq
  positive = sq > 0.0
  # `sq * 0` (not 0) keeps NaN in -> NaN out; its gradient is 0, as the constant's.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), sq * 0.0)
