"""Exact k-nearest-neighbour search over saved embeddings: build, save, load, query.

``Index`` holds a reference set of embeddings (a numpy array, or a memory-mapped one from
``np.load(path, mmap_mode="r")``) with one id per row, and answers a batch of queries
with the ids and distances of their k nearest references. The search is exact and
memory-bounded in both directions: queries are taken ``batch_size`` at a time and the
references ``chunk_size`` at a time, each (query batch, reference chunk) pair searched by
:func:`tsm.metrics.nearest_neighbors` (one compiled function per chunk shape) and the
chunk results merged into a running top-k. Memory is O(batch_size x chunk_size); a
memory-mapped reference set is read one chunk at a time and never loaded whole.

Tie rule: as in ``tsm.metrics``: neighbours are ordered by distance, and equal
distances by reference position (row of the index) ascending, so results are
deterministic and do not depend on ``batch_size`` or ``chunk_size``. (Within a chunk,
``tsm.metrics`` orders by float32 ranking key; the merge keeps that order for equal
distances, so the rule holds exactly whenever equal keys mean equal distances, e.g.
duplicates.)

Example::

  index = tsm.search.Index.build(gallery_embeddings, ids=gallery_ids, distance="cosine")
  index.save("gallery.npz")
  index = tsm.search.Index.load("gallery.npz")
  ids, distances = index.search(query_embeddings, k=10)  # [Q, 10] each, nearest first
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tsm import artifacts
from tsm.distances import RANKING_DISTANCES, check_distance
from tsm.metrics.neighbors import check_embeddings, nearest_neighbors

__all__ = ["Index"]

_FORMAT_VERSION = 1


def _check_positive(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive integer; pass e.g. 1024.")
  return int(value)


def _check_reference_rows(embeddings: Any) -> Any:
  """Validates shape and dtype only, so a memory-mapped array is not read whole."""
  if not hasattr(embeddings, "shape") or not hasattr(embeddings, "dtype"):
    embeddings = np.asarray(embeddings)
  if len(embeddings.shape) != 2 or embeddings.shape[0] < 1:
    raise ValueError(f"embeddings must be a [N, D] array with N >= 1, got shape "
                     f"{tuple(embeddings.shape)}; pass one embedding per row.")
  dtype = np.dtype(embeddings.dtype)
  if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
    raise ValueError(f"embeddings must be real numbers, got dtype {dtype}; pass float "
                     "embeddings.")
  return embeddings


class Index:
  """An exact k-NN index over a fixed reference set.

  Build one with :meth:`build` or :meth:`load`; the constructor takes the same arguments
  as :meth:`build`.

  Attributes:
    embeddings: ``[N, D]`` reference embeddings (numpy array or memmap, as given).
    ids: ``[N]`` id of each reference row (``arange(N)`` by default).
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-q.r``: a maximum-inner-product search).
  """

  def __init__(self, embeddings: Any, ids: Any = None, distance: str = "euclidean"):
    check_distance(distance, RANKING_DISTANCES)
    embeddings = _check_reference_rows(embeddings)
    n = embeddings.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
      raise ValueError(f"ids must be a [N] array with one id per embedding (N={n}), got "
                       f"shape {ids.shape}; pass ids=None for row numbers.")
    if ids.dtype == object:
      raise ValueError("ids must be numbers or strings, got Python objects; pass "
                       "np.asarray(ids, dtype=str) or integer ids.")
    self.embeddings = embeddings
    self.ids = ids
    self.distance = distance

  @classmethod
  def build(cls, embeddings: Any, ids: Any = None, distance: str = "euclidean") -> Index:
    """An index over ``embeddings``.

    Args:
      embeddings: ``[N, D]`` float reference embeddings; a ``np.memmap`` (e.g.
        ``np.load("emb.npy", mmap_mode="r")``) is kept as is and read chunk by chunk.
      ids: optional ``[N]`` ids (integers or strings) returned by :meth:`search`;
        default ``arange(N)``.
      distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-q.r``: a maximum-inner-product search).

    Returns:
      The index.
    """
    return cls(embeddings, ids, distance)

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  @property
  def dim(self) -> int:
    """Embedding dimension D."""
    return int(self.embeddings.shape[1])

  def __repr__(self) -> str:
    return f"Index(size={len(self)}, dim={self.dim}, distance={self.distance!r})"

  def save(self, path: str) -> None:
    """Writes the index to ``path`` (an ``.npz``, atomically, honouring the umask).

    Args:
      path: output file; numpy appends ``.npz`` to names without it, so pass one with it.
    """
    if not str(path).endswith(".npz"):
      raise ValueError(f"path={path!r} must end with .npz; pass e.g. 'index.npz'.")
    with artifacts.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, embeddings=np.asarray(self.embeddings, dtype=np.float32),
                 ids=self.ids, distance=np.asarray(self.distance),
                 version=np.asarray(_FORMAT_VERSION))

  @classmethod
  def load(cls, path: str) -> Index:
    """Reads an index written by :meth:`save`.

    Args:
      path: the ``.npz`` file.

    Returns:
      The index.

    Raises:
      ValueError: the file is missing, damaged or not an index (one line).
    """
    if not os.path.exists(path):
      raise ValueError(f"path={path!r} does not exist; pass a file written by Index.save.")
    data = artifacts.read_npz(path)   # a damaged file: one line
    missing = {"embeddings", "ids", "distance", "version"} - set(data)
    if missing:
      raise ValueError(f"{path} lacks {sorted(missing)}; pass a file written by "
                       "Index.save.")
    if int(data["version"]) != _FORMAT_VERSION:
      raise ValueError(f"{path} has format version {int(data['version'])}, this tsm "
                       f"reads {_FORMAT_VERSION}; rebuild the index.")
    return cls(data["embeddings"], data["ids"], str(data["distance"]))

  def search(self, queries: Any, k: int, *, batch_size: int = 1024,
             chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest references of every query.

    Args:
      queries: ``[Q, D]`` float embeddings (D as the index).
      k: neighbours per query, ``1 <= k <= len(index)``.
      batch_size: queries searched at once.
      chunk_size: references searched at once; memory is O(batch_size x chunk_size).

    Returns:
      ``(ids [Q, k], distances [Q, k] float32)``, nearest first; equal distances are
      ordered by reference row. ``ids`` has the dtype of :attr:`ids`.
    """
    queries = check_embeddings(queries, "queries")
    if queries.shape[1] != self.dim:
      raise ValueError(f"queries have {queries.shape[1]} dimensions but the index "
                       f"{self.dim}; pass embeddings of the same model.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self):
      raise ValueError(f"k={k!r} must be an integer in [1, {len(self)}] (the index size); "
                       "lower k.")
    batch_size = _check_positive("batch_size", batch_size)
    chunk_size = _check_positive("chunk_size", chunk_size)
    k = int(k)
    rows = np.zeros((queries.shape[0], k), np.int64)
    dists = np.zeros((queries.shape[0], k), np.float32)
    for q0 in range(0, queries.shape[0], batch_size):
      q = queries[q0:q0 + batch_size]
      rows[q0:q0 + q.shape[0]], dists[q0:q0 + q.shape[0]] = self._search_batch(
          q, k, batch_size, chunk_size)
    return self.ids[rows], dists

  def _search_batch(self, queries: np.ndarray, k: int, batch_size: int,
                    chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k of one query batch over the reference chunks."""
    best_rows = np.zeros((queries.shape[0], 0), np.int64)
    best_dist = np.zeros((queries.shape[0], 0), np.float32)
    n = len(self)
    for r0 in range(0, n, chunk_size):
      chunk = check_embeddings(self.embeddings[r0:r0 + chunk_size], "embeddings")
      kc = min(k, chunk.shape[0])
      idx, dist = nearest_neighbors(queries, chunk, k=kc, distance=self.distance,
                                    chunk_size=min(batch_size, queries.shape[0]))
      # Earlier chunks hold lower rows, and each chunk's neighbours come in the
      # tie order, so a stable sort by distance keeps "equal distance: lower row first".
      rows = np.concatenate([best_rows, idx + r0], axis=1)
      dist = np.concatenate([best_dist, dist], axis=1)
      order = np.argsort(dist, axis=1, kind="stable")[:, :k]
      best_rows = np.take_along_axis(rows, order, axis=1)
      best_dist = np.take_along_axis(dist, order, axis=1)
    return best_rows, best_dist
