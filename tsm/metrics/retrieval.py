"""Retrieval metrics: Recall@K, Precision@1, R-precision and MAP@R.

Definitions (Musgrave et al. 2020, "A Metric Learning Reality Check", section 3.2; paper B
for Recall@K). For a query q, rank the references by distance (ties by reference index,
see ``tsm.metrics.neighbors``) and let ``rel_i = 1`` when the i-th reference has q's label.
R is the number of references with q's label (the query itself not counted in self mode).

* ``recall@K``: 1 if any of the first K references has q's label (paper B; "Recall@K" of
  the retrieval literature). K larger than the gallery means the whole gallery.
* ``precision@1``: ``rel_1`` (equal to recall@1).
* ``r_precision``: ``(1/R) sum_{i<=R} rel_i``.
* ``map@r``: ``(1/R) sum_{i<=R} rel_i * P(i)`` with ``P(i) = (1/i) sum_{j<=i} rel_j``.

Each is averaged over the queries that have R >= 1. Queries with no other member of their
class among the references (R = 0: a class with one image in self mode, or a query class
absent from the reference set) have no correct answer; like Musgrave et al.'s
pytorch-metric-learning they are left out of every metric (recall@K included), and a
warning says how many. If no query is left the metrics are NaN.

Labels are compared as given: a negative label (the synthetic set's -1 outliers) is a
class like any other here, so drop unlabelled points before calling (``tsm.fit`` does).

The ``max_r`` option caps R at ``min(R, max_r)`` for MAP@R and R-precision (both then use
the first ``min(R, max_r)`` references), which bounds the neighbours searched per query to
``max(max(ks), max_r)``; the default (None) is the exact definition, which needs the
largest R (the largest class, minus one in self mode) neighbours per query.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from tsm.metrics.neighbors import check_embeddings, iter_nearest_neighbors


def check_labels(labels, num: int, name: str) -> np.ndarray:
  """Returns ``labels`` as a 1-D integer array of length ``num`` or raises a ValueError."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != num:
    raise ValueError(f"{name} must have shape [{num}] (one label per embedding), got "
                     f"{labels.shape}; pass one integer label per row.")
  if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
    raise ValueError(f"{name} must be integers, got dtype {labels.dtype}; "
                     "pass integer class ids.")
  return labels


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  """Returns ``ks`` as a tuple of positive ints or raises a ValueError."""
  ks = tuple(ks)
  if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
    raise ValueError(f"ks must be positive integers, got {ks}; pass e.g. (1, 5, 10).")
  return tuple(int(k) for k in ks)


def retrieval_metrics(query_embeddings, query_labels, reference_embeddings=None,
                      reference_labels=None, ks: Sequence[int] = (1, 5, 10), *,
                      distance: str = "euclidean", chunk_size: int | None = None,
                      max_r: int | None = None, method: str = "auto") -> dict[str, float]:
  """Recall@K, Precision@1, R-precision and MAP@R of exact nearest-neighbour retrieval.

  Args:
    query_embeddings: ``[Q, D]`` float embeddings.
    query_labels: ``[Q]`` integer labels.
    reference_embeddings: ``[N, D]`` gallery, or None to use the queries as the gallery
      with each query excluded from its own results (paper B, Musgrave et al.).
    reference_labels: ``[N]`` labels; given exactly when ``reference_embeddings`` is.
    ks: the K of ``recall@K``.
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-q.r``; for L2-normalised embeddings all four rank identically).
    chunk_size: queries per chunk (memory O(chunk_size x N)); None for the default.
    max_r: optional cap on R (see the module docstring); None for the exact definition.
    method: nearest-neighbour selection, see ``tsm.metrics.neighbors``.

  Returns:
    ``{"recall@K": ..., "precision@1": ..., "r_precision": ..., "map@r": ...}`` as
    Python floats, averaged over the queries with R >= 1.

  References:
    Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020.
  """
  ks = check_ks(ks)
  if (reference_embeddings is None) != (reference_labels is None):
    raise ValueError("pass both reference_embeddings and reference_labels, or neither "
                     "(to use the queries as the gallery).")
  if max_r is not None and max_r < 1:
    raise ValueError(f"max_r={max_r} must be a positive integer or None.")
  queries = check_embeddings(query_embeddings, "query_embeddings")
  q_labels = check_labels(query_labels, queries.shape[0], "query_labels")
  self_mode = reference_embeddings is None
  if self_mode:
    references, r_labels = None, q_labels
  else:
    references = check_embeddings(reference_embeddings, "reference_embeddings")
    r_labels = check_labels(reference_labels, references.shape[0], "reference_labels")
  _, ids = np.unique(np.concatenate([q_labels, r_labels]), return_inverse=True)
  q_ids, r_ids = ids[:q_labels.shape[0]], ids[q_labels.shape[0]:]
  num_r = r_ids.shape[0]
  r_count = np.bincount(r_ids, minlength=int(ids.max(initial=-1)) + 1)[q_ids]
  r_count = r_count - 1 if self_mode else r_count
  if max_r is not None:
    r_count = np.minimum(r_count, max_r)

  names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
  totals = np.zeros(len(names))
  evaluated = int(np.count_nonzero(r_count > 0))
  if evaluated < q_ids.shape[0]:
    warnings.warn(f"{q_ids.shape[0] - evaluated} of {q_ids.shape[0]} queries have no "
                  "other member of their class among the references and are left out of "
                  "the retrieval metrics.", stacklevel=2)
  if evaluated == 0:
    return {name: float("nan") for name in names}

  k = min(num_r - 1 if self_mode else num_r, max(max(ks), int(r_count.max())))
  inverse_rank = (1.0 / np.arange(1, k + 1)).astype(np.float32)
  r_ids = r_ids.astype(np.int32)
  for chunk in iter_nearest_neighbors(queries, references, k=k, distance=distance,
                                      chunk_size=chunk_size, method=method,
                                      with_distances=False):
    stop = chunk.start + chunk.indices.shape[0]
    r = r_count[chunk.start:stop]
    ok = r > 0
    r = r[ok]
    rel = r_ids[chunk.indices[ok]] == q_ids[chunk.start:stop][ok, None]  # [n, k]
    hits = rel & (np.arange(k) < r[:, None])  # relevant within the first R
    cum_hits = np.cumsum(hits, axis=1, dtype=np.int32)  # = cumsum(rel) within the first R
    cum_hits *= hits  # P(i) * i where rel_i, else 0
    columns = [rel[:, :kk].any(axis=1) for kk in ks] + [
        rel[:, 0],
        cum_hits.max(axis=1) / r,
        (cum_hits.astype(np.float32) @ inverse_rank) / r,
    ]
    totals += [np.sum(c, dtype=np.float64) for c in columns]
  return {name: float(t / evaluated) for name, t in zip(names, totals)}
