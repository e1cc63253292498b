"""PML's default ``LpDistance`` over a batch, and PML's distance objects in general, for
the losses that use them."""

from __future__ import annotations

import chex

from tsm.distances import (LOSS_DISTANCES, check_distance, l2_normalize,
                           pairwise_euclidean, pairwise_squared_euclidean,
                           query_distances)


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


def check_loss_distance(distance: str) -> None:
  """One-line ValueError unless ``distance`` is one of the losses' distances."""
  check_distance(distance, LOSS_DISTANCES)


def batch_distances(x: chex.Array, pos: chex.Array, neg: chex.Array, *, distance: str,
                    normalize: bool
                    ) -> tuple[chex.Array, chex.Array, chex.Array, chex.Array]:
  """``(d, pos, neg, anchors)``: the ``[B, B]`` distances of a PML distance object over a batch.

  Rows are L2-normalised first with ``normalize`` (PML's ``normalize_embeddings=True``
  default, every distance object's), then :func:`tsm.distances.query_distances` (row =
  anchor). A row without a distance (``"snr"``: zero variance) is the anchor of no pair:
  its rows of the ordered pair masks ``pos`` / ``neg`` are cleared (it stays the other
  end of its pairs).

  Args:
    x: ``[B, D]`` float embeddings.
    pos: ``[B, B]`` ordered positive pair mask.
    neg: ``[B, B]`` ordered negative pair mask.
    distance: one of :data:`tsm.distances.LOSS_DISTANCES`.
    normalize: L2-normalise the rows first.

  Returns:
    The distances, the two masks, and the ``[B]`` bool rows that may anchor a term.
  """
  d, defined = query_distances(l2_normalize(x) if normalize else x, distance=distance)
  if distance != "snr":
    return d, pos, neg, defined
  return d, pos & defined[:, None], neg & defined[:, None], defined
