"""PML's default ``LpDistance`` over a batch, for the losses that use it."""

from __future__ import annotations

import chex

from tsm.distances import l2_normalize, pairwise_euclidean, pairwise_squared_euclidean


def lp_distances(x: chex.Array, *, normalize: bool = True,
                 squared: bool = False) -> chex.Array:
  """``[B, B]`` Euclidean (or squared) distances between the rows of ``x``.

  PML's ``LpDistance(p=2)`` default: rows are L2-normalised first
  (``normalize_embeddings=True``; zero rows stay zero), ``power=1`` (``squared=False``)
  or ``power=2``. Zero distances (the diagonal, duplicates) have zero, not NaN,
  gradients (:func:`tsm.distances.pairwise_euclidean`).

  Args:
    x: ``[B, D]`` float embeddings.
    normalize: L2-normalise the rows first.
    squared: squared distances (PML ``power=2``).

  Returns:
    The ``[B, B]`` distance matrix with an exactly zero diagonal.
  """
  if normalize:
    x = l2_normalize(x)
  return pairwise_squared_euclidean(x) if squared else pairwise_euclidean(x)
