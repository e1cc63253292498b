"""Losses over explicit tuples in one batch: paper B's triplet and pair samplers.

The samplers ``tsm.data.samplers.TripletSampler`` / ``PairSampler`` lay a batch out as
``[anchors; positives; negatives]`` or ``[first members; second members]``; these wrap
:func:`tsm.losses.triplet_margin_loss_from_triplets` and
:func:`tsm.losses.contrastive_loss_from_pairs` as losses of the train step,
``(embeddings, labels, margin) -> (loss, stats)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from tsm.losses._contrastive import contrastive_loss_from_pairs
from tsm.losses._triplet import triplet_margin_loss_from_triplets
from tsm.reducers import Reduction


def explicit_triplets_loss(*, distance: str = "euclidean", reduction: Reduction = "mean"
                           ) -> Callable[..., Any]:
  """The triplet loss over batches ``[anchors; positives; negatives]`` (paper B's).

  Args:
    distance: see :func:`tsm.losses.triplet_margin_loss_from_triplets`.
    reduction: see :func:`tsm.losses.triplet_margin_loss_from_triplets`.

  Returns:
    ``(embeddings [3B, D], labels [3B], margin) -> (loss, TripletStats)``.
  """
  def loss_fn(embeddings, labels, margin):
    anchor, positive, negative = jnp.split(embeddings, 3)
    return triplet_margin_loss_from_triplets(
        anchor, positive, negative, margin, distance=distance, reduction=reduction,
        labels=jnp.split(labels, 3)[0])
  return loss_fn


def explicit_pairs_loss(*, distance: str = "euclidean", reduction: Reduction = "mean",
                        positive_margin: float = 0.0) -> Callable[..., Any]:
  """The contrastive loss over batches ``[first members; second members]`` (paper B's).

  ``same`` comes from the labels of the two halves.

  Args:
    distance: see :func:`tsm.losses.contrastive_loss_from_pairs`.
    reduction: see :func:`tsm.losses.contrastive_loss_from_pairs`.
    positive_margin: see :func:`tsm.losses.contrastive_loss_from_pairs`.

  Returns:
    ``(embeddings [2B, D], labels [2B], margin) -> (loss, PairStats)``.
  """
  def loss_fn(embeddings, labels, margin):
    x1, x2 = jnp.split(embeddings, 2)
    l1, l2 = jnp.split(labels, 2)
    return contrastive_loss_from_pairs(
        x1, x2, l1 == l2, margin, distance=distance, reduction=reduction,
        positive_margin=positive_margin, labels=l1)
  return loss_fn


__all__ = ["explicit_pairs_loss", "explicit_triplets_loss"]
