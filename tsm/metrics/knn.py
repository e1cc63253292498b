"""k-nearest-neighbour classification accuracy (paper B's classification protocol).

The training embeddings are the reference set and the test embeddings the queries; the
neighbours come from the same exact chunked search as retrieval
(``tsm.metrics.neighbors``: ranked by distance, equal distances by training index).

Vote: the label held by most of the k neighbours. Tie rule (deterministic): among the
labels with the most votes, the one whose nearest member comes first in the neighbour
order wins (the tied class with the closest neighbour). k larger than the training set
is capped at its size.
"""

from __future__ import annotations

import numpy as np

from tsm.metrics.neighbors import check_embeddings, iter_nearest_neighbors
from tsm.metrics.retrieval import check_labels


def vote(neighbor_labels: np.ndarray) -> np.ndarray:
  """Majority label of each row of ``[n, k]`` labels, nearest first (tie rule above)."""
  votes = np.sum(neighbor_labels[:, :, None] == neighbor_labels[:, None, :], axis=2)
  winner = np.argmax(votes, axis=1)  # first (nearest) position among the most voted
  return neighbor_labels[np.arange(neighbor_labels.shape[0]), winner]


def knn_predict(train_embeddings, train_labels, test_embeddings, k: int = 5, *,
                distance: str = "euclidean", chunk_size: int | None = None,
                method: str = "auto") -> np.ndarray:
  """k-NN predicted labels of the test embeddings.

  Args:
    train_embeddings: ``[N, D]`` reference embeddings.
    train_labels: ``[N]`` integer labels.
    test_embeddings: ``[Q, D]`` query embeddings.
    k: neighbours voting (capped at N).
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``.
    chunk_size: queries per chunk; None for the default.
    method: neighbour selection method, see ``tsm.metrics.neighbors``.

  Returns:
    ``[Q]`` predicted labels (values of ``train_labels``).
  """
  train = check_embeddings(train_embeddings, "train_embeddings")
  labels = check_labels(train_labels, train.shape[0], "train_labels")
  if k < 1:
    raise ValueError(f"k={k} must be positive; pass e.g. k=5.")
  if train.shape[0] == 0:
    raise ValueError("train_embeddings is empty; pass at least one training embedding.")
  test = check_embeddings(test_embeddings, "test_embeddings")
  predictions = np.empty(test.shape[0], dtype=labels.dtype)
  for chunk in iter_nearest_neighbors(test, train, k=min(k, train.shape[0]),
                                      distance=distance, chunk_size=chunk_size,
                                      method=method, with_distances=False):
    stop = chunk.start + chunk.indices.shape[0]
    predictions[chunk.start:stop] = vote(labels[chunk.indices])
  return predictions


def knn_accuracy(train_embeddings, train_labels, test_embeddings, test_labels,
                 k: int = 5, *, distance: str = "euclidean", chunk_size: int | None = None,
                 method: str = "auto") -> float:
  """Share of test embeddings whose k-NN vote over the training set is their label.

  Args:
    train_embeddings: ``[N, D]`` reference embeddings.
    train_labels: ``[N]`` integer labels.
    test_embeddings: ``[Q, D]`` query embeddings.
    test_labels: ``[Q]`` integer labels.
    k: neighbours voting (paper B: 5), capped at N.
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``.
    chunk_size: queries per chunk; None for the default.
    method: neighbour selection method, see ``tsm.metrics.neighbors``.

  Returns:
    Accuracy in [0, 1] as a Python float (NaN for an empty test set).
  """
  test_labels = check_labels(test_labels, np.shape(test_embeddings)[0], "test_labels")
  predictions = knn_predict(train_embeddings, train_labels, test_embeddings, k,
                            distance=distance, chunk_size=chunk_size, method=method)
  if predictions.shape[0] == 0:
    return float("nan")
  return float(np.mean(predictions == test_labels))
