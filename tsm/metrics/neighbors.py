"""Exact k-nearest-neighbour search over a reference set, in chunks of queries.

Memory is O(chunk_size x N) for N references, never N x N: each chunk of queries is
padded to a fixed shape, so one compiled function serves every chunk, and its block of
ranking keys against the whole reference set is reduced to the chunk's k nearest
neighbours. The next chunk is dispatched before the current one is reduced, so the
device and the host work at the same time and at most two blocks exist at once (on CPU
the host reads the device arrays without a copy). The reference set (it may be a
memory-mapped ``.npy``) is read once, in chunks, into one ``[N, D + 1]`` device array of
ranking rows (no full-size host copy): memory is one O(N x D) copy of the gallery plus
O(chunk_size x N) for the blocks, whatever the number of queries.

Ranking key: one matrix product of augmented rows, no elementwise pass over the block.
For ``"euclidean"`` and ``"squared_euclidean"`` the key of (q, r) is
``|r|^2 - 2 q.r = |q - r|^2 - |q|^2`` (rows ``[-2q, 1]`` times ``[r, |r|^2]``); for
``"cosine"`` it is ``-cos(q, r)`` (unit rows via ``tsm.distances.l2_normalize``; a zero
vector is at cosine distance 1 from everything, as in ``tsm.distances``). Along a query's
row the key orders references exactly like the distance. Distances of the k returned
neighbours are recovered from their keys (``sqrt(max(key + |q|^2, 0))`` etc.).

Tie rule (deterministic, identical for both methods): references are ordered by key
ascending, and references with exactly the same float32 key by reference index
ascending. "The same key" is a float32 statement: distances that are mathematically equal
but computed with different rounding (e.g. cosines of integer vectors) are ordered by
their computed values. In self mode (no separate reference set) each query is excluded
from its own neighbours: k + 1 neighbours are searched and the query's own index removed
(or the last one if the query is not among them, e.g. behind exact duplicates with lower
indices).

Two selection methods give identical results:

* ``"top_k"``: ``jax.lax.top_k`` over the key block inside the jitted chunk function
  (``lax.top_k`` puts the lower index first among equal values). The default on GPU/TPU.
  On CPU, XLA's ``TopK`` partially sorts each row with an indirect comparator at ~10 ns
  per element (and ``jnp.sort`` is slower still): ~2 minutes of a 2-core CPU for the
  10^10 keys of 10^5 queries x 10^5 references.
* ``"blocks"`` (the CPU default): the jitted chunk function returns the key block and
  the minimum of every block of b = 16 consecutive references. On the host, a bound tau
  with at least k block minima <= tau (the k-th smallest block minimum, or a checked
  quantile of a sample of them) bounds the k-th nearest key from above, since k distinct
  blocks hold an element <= tau. So the k nearest are among the elements <= tau of the
  blocks whose minimum is <= tau: ~1.1-1.3 k candidates per query instead of N. The
  candidates are sorted by the 64-bit code ``(order-preserving uint32 of the float32 key)
  << 32 | reference index``, which is the tie rule above, exactly. The references are put
  in a fixed random order first, so that neighbours spread over blocks even when the data
  is sorted by class; the code carries the original index, so results do not depend on
  that order.
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tsm.distances import check_distance, l2_normalize

METHODS = ("auto", "top_k", "blocks")

# Distance blocks of about this many float32 entries (~128 MiB) when chunk_size is None.
_BLOCK_ENTRIES = 1 << 25
_MAX_BLOCK = 16  # references per block of the "blocks" method
_UINT64_MAX = np.iinfo(np.uint64).max


class NeighborChunk(NamedTuple):
  """The k nearest references of queries ``start .. start + len(indices) - 1``.

  Attributes:
    start: index of the chunk's first query.
    indices: ``[n, k]`` int64 reference indices, nearest first (ranking rule above).
    distances: ``[n, k]`` float32 distances to those references (``distance`` units),
      or None when not asked for.
  """
  start: int
  indices: np.ndarray
  distances: np.ndarray


def check_method(method: str) -> None:
  """Raises a one-line ValueError unless ``method`` is a known selection method."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")


class NonFiniteEmbeddings(ValueError):
  """Embeddings (or the distances between them) hold NaN or inf: the model that made
  them diverged or was fed NaN; the message is one line."""


def check_embeddings(x, name: str) -> np.ndarray:
  """Returns ``x`` as a finite float32 ``[N, D]`` numpy array or raises a ValueError."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a [N, D] array, got shape {x.shape}; "
                     "pass one embedding per row.")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}; pass float embeddings.")
  x = x.astype(np.float32, copy=False)
  if not np.all(np.isfinite(x)):
    raise NonFiniteEmbeddings(f"{name} contains NaN or inf; check the model that produced "
                              "them.")
  return x


def default_chunk_size(num_queries: int, num_references: int) -> int:
  """Chunk size giving key blocks of about 2^25 entries (multiple of 8, in [8, 4096])."""
  c = _BLOCK_ENTRIES // max(num_references, 1)
  c = int(min(max(c // 8 * 8, 8), 4096))
  return min(c, max(8, -(-num_queries // 8) * 8))


def _augment(x: np.ndarray, *, queries: bool, distance: str) -> np.ndarray:
  """Rows whose dot products are the ranking keys (see ``_ranking_key``)."""
  if distance == "cosine":
    x = np.asarray(l2_normalize(jnp.asarray(x)))
    extra = np.ones if queries else np.zeros
    return np.concatenate([-x if queries else x, extra((x.shape[0], 1), np.float32)], 1)
  if queries:
    return np.concatenate([-2.0 * x, np.ones((x.shape[0], 1), np.float32)], 1)
  return np.concatenate([x, np.sum(np.square(x), axis=1, keepdims=True)], 1)


@functools.partial(jax.jit, donate_argnums=0)
def _set_rows(rows, part, start):
  return jax.lax.dynamic_update_slice_in_dim(rows, part, start, axis=0)


def _reference_rows(references: np.ndarray, order: np.ndarray | None, padded: int, *,
                    distance: str, chunk_rows: int | None = None) -> jax.Array:
  """``_augment(references[order])`` padded with zero rows to ``padded``, on the device.

  Filled chunk by chunk into one donated ``[padded, D + 1]`` device array: the
  references (possibly a memory-mapped file) are read once and no full-size host copy
  exists (``_augment`` followed by ``[order]``, padding and the device copy held four).
  Each row is computed exactly as ``_augment`` computes it (a row's sums do not depend
  on the other rows).
  """
  num_r, dim = references.shape
  rows = jnp.zeros((padded, dim + 1), jnp.float32)
  step = chunk_rows or max(1, (1 << 22) // max(dim, 1))   # ~16 MiB of references a time
  for start in range(0, num_r, step):
    stop = min(start + step, num_r)
    part = references[order[start:stop]] if order is not None else references[start:stop]
    rows = _set_rows(rows, jnp.asarray(_augment(np.asarray(part, np.float32), queries=False,
                                                distance=distance)), start)
  return rows


def _ranking_key(queries, references, *, num_references):
  """Ranking keys ``[c, M]`` of augmented rows; padding columns (>= N) are +inf.

  For euclidean distances the key is ``|r|^2 - 2 q.r = |q - r|^2 - |q|^2`` and for cosine
  ``-cos(q, r)``: one matrix product (no elementwise passes over the block) whose order
  along a row is the order of the distances.
  """
  key = jnp.matmul(queries, references.T, precision=jax.lax.Precision.HIGHEST)
  if references.shape[0] != num_references:
    cols = jax.lax.broadcasted_iota(jnp.int32, key.shape, 1)
    key = jnp.where(cols >= num_references, jnp.inf, key)
  return key


@functools.partial(jax.jit, static_argnames=("num_references", "k"))
def _top_k_chunk(queries, references, *, num_references, k):
  key = _ranking_key(queries, references, num_references=num_references)
  key = jnp.where(key == 0.0, 0.0, key)  # -0.0 would sort before +0.0 in lax.top_k
  neg, idx = jax.lax.top_k(-key, k)
  return -neg, idx


@functools.partial(jax.jit, static_argnames=("num_references", "block"))
def _blocks_chunk(queries, references, *, num_references, block):
  key = _ranking_key(queries, references, num_references=num_references)
  return key, jnp.min(key.reshape(key.shape[0], -1, block), axis=2)


def _sortable(values: np.ndarray) -> np.ndarray:
  """uint32 codes that order like the float32 ``values`` (no NaN, no -0.0)."""
  bits = values.view(np.uint32)
  return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def _unsortable(codes: np.ndarray) -> np.ndarray:
  """Inverse of ``_sortable``."""
  codes = codes.astype(np.uint32)
  bits = np.where(codes >> 31 == 1, codes & np.uint32(0x7FFFFFFF), ~codes)
  return bits.view(np.float32)


def _kth_smallest_bound(mins: np.ndarray, k: int) -> np.ndarray:
  """Per row a tau with at least k entries of ``mins`` <= tau (close to the k-th smallest).

  Exact k-th smallest by ``np.partition`` is the costliest host step; with many blocks a
  quantile of every 4th entry (a random sample: the columns are in random order) is 4x
  cheaper, 15% looser, and checked: rows where it is too small fall back to the exact one.
  """
  stride = 4
  j = int(1.15 * k / stride) + 8
  if mins.shape[1] < max(1024, 2 * stride * j):
    return np.partition(mins, k - 1, axis=1)[:, k - 1]
  tau = np.partition(mins[:, ::stride], j - 1, axis=1)[:, j - 1]
  low = np.count_nonzero(mins <= tau[:, None], axis=1) < k
  if np.any(low):
    tau[low] = np.partition(mins[low], k - 1, axis=1)[:, k - 1]
  return tau


def _select_from_blocks(key: np.ndarray, mins: np.ndarray, k: int, block: int,
                        original: np.ndarray,
                        with_keys: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Exact k smallest of each row of ``key`` by (value, original index); see module doc.

  Args:
    key: ``[n, M]`` float32 ranking keys (+inf allowed, no NaN), M a multiple of ``block``.
    mins: ``[n, M // block]`` minima of consecutive blocks of ``key``.
    k: number of neighbours, at most the number of finite entries of each row.
    block: block size.
    original: ``[M]`` uint64 original index of each column.
    with_keys: also decode the keys of the k selected (else None).

  Returns:
    ``(indices [n, k] int64, keys [n, k] float32)``, sorted by (key, index).
  """
  n, num_blocks = mins.shape
  tau = _kth_smallest_bound(mins, k)
  flat_blocks = np.flatnonzero(mins <= tau[:, None])  # row-major: grouped by row
  rows = flat_blocks // num_blocks
  vals = np.take(key.reshape(-1, block), flat_blocks, axis=0)  # [candidate blocks, block]
  keep = np.flatnonzero(vals <= tau[rows][:, None])
  blk = keep // block
  cand_rows = rows[blk]
  cols = (flat_blocks[blk] - cand_rows * num_blocks) * block + keep % block
  cand = vals.reshape(-1)[keep] + np.float32(0.0)  # -0.0 -> +0.0
  codes = _sortable(cand).astype(np.uint64) << np.uint64(32)
  codes |= original[cols]
  counts = np.bincount(cand_rows, minlength=n)
  starts = np.cumsum(counts) - counts
  table = np.full((n, int(counts.max())), _UINT64_MAX, dtype=np.uint64)
  table[cand_rows, np.arange(cand_rows.size) - starts[cand_rows]] = codes
  top = np.sort(table, axis=1)[:, :k]
  indices = (top & np.uint64(0xFFFFFFFF)).astype(np.int64)
  return indices, _unsortable(top >> np.uint64(32)) if with_keys else None


def _drop_self(indices: np.ndarray, keys: np.ndarray | None,
               self_index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """Removes each row's own index from ``k + 1`` neighbours (else its last one)."""
  n, k1 = indices.shape
  keep = indices != self_index[:, None]
  keep[keep.all(axis=1), k1 - 1] = False
  return (indices[keep].reshape(n, k1 - 1),
          None if keys is None else keys[keep].reshape(n, k1 - 1))


def _key_to_distance(keys: np.ndarray, queries: np.ndarray, distance: str) -> np.ndarray:
  if distance == "cosine":
    return np.clip(1.0 + keys, 0.0, 2.0).astype(np.float32)
  sq = np.maximum(keys + np.sum(np.square(queries), axis=1, keepdims=True), 0.0)
  return (sq if distance == "squared_euclidean" else np.sqrt(sq)).astype(np.float32)


def iter_nearest_neighbors(queries, references=None, *, k: int,
                           distance: str = "euclidean", chunk_size: int | None = None,
                           method: str = "auto",
                           with_distances: bool = True) -> Iterator[NeighborChunk]:
  """Yields the exact k nearest references of each chunk of queries, in query order.

  Args:
    queries: ``[Q, D]`` float embeddings.
    references: ``[N, D]`` float embeddings, or None to search the queries themselves,
      each query excluded from its own neighbours (self mode).
    k: neighbours per query, 1 <= k <= N (N - 1 in self mode).
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    chunk_size: queries per chunk (memory O(chunk_size x N)); None picks
      ``default_chunk_size`` (key blocks of ~128 MiB).
    method: ``"top_k"``, ``"blocks"`` or ``"auto"`` (``"blocks"`` on CPU, else
      ``"top_k"``); all give the same result.
    with_distances: False skips the distances (``NeighborChunk.distances`` is None).

  Yields:
    ``NeighborChunk(start, indices [n, k], distances [n, k])`` per chunk.
  """
  check_distance(distance)
  check_method(method)
  queries = check_embeddings(queries, "queries")
  self_mode = references is None
  references = queries if self_mode else check_embeddings(references, "references")
  if references.shape[1] != queries.shape[1]:
    raise ValueError(f"references have {references.shape[1]} dimensions but queries "
                     f"{queries.shape[1]}; pass embeddings of the same model.")
  num_q, num_r = queries.shape[0], references.shape[0]
  available = num_r - 1 if self_mode else num_r
  if not 1 <= k <= available:
    raise ValueError(f"k={k} must be in [1, {available}] (the number of references "
                     f"{'other than the query ' if self_mode else ''}); lower k.")
  if chunk_size is None:
    chunk_size = default_chunk_size(num_q, num_r)
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be positive; pass e.g. 256.")
  if method == "auto":
    method = "blocks" if jax.default_backend() == "cpu" else "top_k"
  # In self mode each query asks for one more neighbour and drops itself on the host.
  k_search = k + 1 if self_mode else k
  query_rows = _augment(queries, queries=True, distance=distance)

  if method == "blocks":
    block = int(min(_MAX_BLOCK, max(1, num_r // k_search)))
    padded = -(-num_r // block) * block
    order = np.random.default_rng(0).permutation(num_r)
    original = np.arange(padded, dtype=np.uint64)
    original[:num_r] = order
    ref_dev = _reference_rows(references, order, padded, distance=distance)
    chunk_fn = functools.partial(_blocks_chunk, num_references=num_r, block=block)
  else:
    ref_dev = _reference_rows(references, None, num_r, distance=distance)
    chunk_fn = functools.partial(_top_k_chunk, num_references=num_r, k=k_search)

  def dispatch(start):
    stop = min(start + chunk_size, num_q)
    rows = np.zeros((chunk_size, query_rows.shape[1]), np.float32)
    rows[:stop - start] = query_rows[start:stop]
    return start, stop, chunk_fn(jnp.asarray(rows), ref_dev)

  starts = list(range(0, num_q, chunk_size))
  pending = dispatch(starts[0]) if starts else None
  for i in range(len(starts)):
    start, stop, out = pending
    pending = dispatch(starts[i + 1]) if i + 1 < len(starts) else None
    n = stop - start
    if method == "blocks":
      key, mins = (np.asarray(a)[:n] for a in out)
      indices, keys = _select_from_blocks(key, mins, k_search, block, original,
                                          with_keys=with_distances)
    else:
      keys, indices = (np.asarray(a)[:n] for a in out)
      indices = indices.astype(np.int64)
    if self_mode:
      indices, keys = _drop_self(indices, keys, np.arange(start, stop))
    values = (_key_to_distance(keys, queries[start:stop], distance)
              if with_distances else None)
    yield NeighborChunk(start, indices, values)


def nearest_neighbors(queries, references=None, *, k: int, distance: str = "euclidean",
                      chunk_size: int | None = None,
                      method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest references of every query (see ``iter_nearest_neighbors``).

  Args:
    queries: ``[Q, D]`` float embeddings.
    references: ``[N, D]`` float embeddings, or None for self mode (queries are the
      references, each query excluded from its own neighbours).
    k: neighbours per query.
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    chunk_size: queries per chunk; None for the default.
    method: ``"auto"``, ``"top_k"`` or ``"blocks"``.

  Returns:
    ``(indices [Q, k] int64, distances [Q, k] float32)``, nearest first; equal distances
    are ordered by reference index.
  """
  chunks = list(iter_nearest_neighbors(queries, references, k=k, distance=distance,
                                       chunk_size=chunk_size, method=method))
  if not chunks:
    return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
  return (np.concatenate([c.indices for c in chunks]),
          np.concatenate([c.distances for c in chunks]))
