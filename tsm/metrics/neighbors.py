"""Exact k-nearest-neighbour search over a reference set, in chunks of queries.

Memory is O(chunk_size x N) for N references, never N x N: each chunk of queries is
padded to a fixed shape, and its block of ranking keys against the whole reference set
is reduced to the chunk's k nearest neighbours. The next chunk's block is computed while
the current one is reduced, so at most two blocks exist at once. The reference set (it
may be a memory-mapped ``.npy``) is read once, in chunks, into one array of ranking rows
(no full-size host copy): memory is one O(N x D) copy of the gallery plus
O(chunk_size x N) for the blocks, whatever the number of queries.

Where the blocks are computed: with JAX's CPU backend, by numpy's BLAS (a ``[c, D + 1]``
by ``[D + 1, N]`` float32 product in a worker thread, the reference rows held transposed):
on a 2-core AMD EPYC that product runs at about twice the speed of XLA:CPU's dot of the
same shapes, and it needs no compilation, so a first call costs what later calls cost.
On an accelerator, by one jitted function on the device (one compiled program serves
every chunk), dispatched before the current chunk is reduced.

Ranking key: one matrix product of augmented rows, no elementwise pass over the block.
For ``"euclidean"`` and ``"squared_euclidean"`` the key of (q, r) is
``|r|^2 - 2 q.r = |q - r|^2 - |q|^2`` (rows ``[-2q, 1]`` times ``[r, |r|^2]``); for
``"cosine"`` it is ``-cos(q, r)`` (unit rows via ``tsm.distances.l2_normalize``; a zero
vector is at cosine distance 1 from everything, as in ``tsm.distances``), and for
``"dot_product"`` ``-q.r`` itself (the distance; a maximum-inner-product search). Along a query's
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

* ``"top_k"``: ``jax.lax.top_k`` over the key block, jitted (``lax.top_k`` puts the
  lower index first among equal values). The default on GPU/TPU. On CPU, XLA's ``TopK``
  partially sorts each row with an indirect comparator at ~10 ns per element (and
  ``jnp.sort`` is slower still): ~2 minutes of a 2-core CPU for the 10^10 keys of 10^5
  queries x 10^5 references.
* ``"blocks"`` (the CPU default): on the host, the minimum of every block of b = 16
  references of the key block (block j: the columns j, j + M/b, j + 2M/b, ... of the M
  columns, so that the minima are b - 1 elementwise passes over contiguous rows). A bound
  tau with at least k block minima <= tau (the k-th smallest block minimum, or a checked
  quantile of a sample of them) bounds the k-th nearest key from above, since k distinct
  blocks hold an element <= tau. So the k nearest are among the elements <= tau: ~1.1-1.3
  k candidates per query instead of N, found in one comparison pass over the block. The
  candidates are sorted by the 64-bit code ``(order-preserving uint32 of the float32 key)
  << 32 | reference index``, which is the tie rule above, exactly. The references are put
  in a fixed random order first, so that neighbours spread over blocks even when the data
  is sorted by class; the code carries the original index, so results do not depend on
  that order.

Both methods take their keys from the same computation (numpy's BLAS on the CPU backend,
XLA on an accelerator), so on one backend they give the same neighbours. Between backends
the keys may differ in the last float32 bit, and so may the order of references whose
distances are that close.
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tsm.distances import RANKING_DISTANCES, check_distance, l2_normalize

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
  if distance in ("cosine", "dot_product"):
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


def _augmented_parts(references: np.ndarray, order: np.ndarray | None, *, distance: str,
                     chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
  """``(start, _augment(references[order][start:stop]))`` for consecutive row chunks.

  The references (possibly a memory-mapped file) are read once, ~16 MiB at a time; each
  row is computed exactly as ``_augment`` computes it (a row's sums do not depend on the
  other rows).
  """
  num_r, dim = references.shape
  step = chunk_rows or max(1, (1 << 22) // max(dim, 1))
  for start in range(0, num_r, step):
    stop = min(start + step, num_r)
    part = references[order[start:stop]] if order is not None else references[start:stop]
    yield start, _augment(np.asarray(part, np.float32), queries=False, distance=distance)


def _reference_rows(references: np.ndarray, order: np.ndarray | None, padded: int, *,
                    distance: str, chunk_rows: int | None = None) -> jax.Array:
  """``_augment(references[order])`` padded with zero rows to ``padded``, on the device.

  Filled chunk by chunk into one donated ``[padded, D + 1]`` device array: no full-size
  host copy exists.
  """
  rows = jnp.zeros((padded, references.shape[1] + 1), jnp.float32)
  for start, part in _augmented_parts(references, order, distance=distance,
                                      chunk_rows=chunk_rows):
    rows = _set_rows(rows, jnp.asarray(part), start)
  return rows


def _reference_columns(references: np.ndarray, order: np.ndarray | None, padded: int, *,
                       distance: str, chunk_rows: int | None = None) -> np.ndarray:
  """The transpose of ``_reference_rows``'s array, ``[D + 1, padded]``, in host memory.

  The layout of the right operand of ``_host_key``'s BLAS product (contiguous columns).
  """
  columns = np.zeros((references.shape[1] + 1, padded), np.float32)
  for start, part in _augmented_parts(references, order, distance=distance,
                                      chunk_rows=chunk_rows):
    columns[:, start:start + part.shape[0]] = part.T
  return columns


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


_device_key = jax.jit(_ranking_key, static_argnames=("num_references",))


def _host_key(queries: np.ndarray, columns: np.ndarray, *, num_references: int) -> np.ndarray:
  """``_ranking_key`` on the host: numpy's float32 BLAS product with ``_reference_columns``."""
  key = queries @ columns
  key[:, num_references:] = np.inf
  return key


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k(key, *, k):
  key = jnp.where(key == 0.0, 0.0, key)  # -0.0 would sort before +0.0 in lax.top_k
  neg, idx = jax.lax.top_k(-key, k)
  return -neg, idx


def _block_minima(key: np.ndarray, block: int) -> np.ndarray:
  """``[n, M // block]`` minima of the blocks ``{j, j + M/block, ...}`` of each row."""
  return np.minimum.reduce(key.reshape(key.shape[0], block, -1), axis=1)


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


def _select_from_blocks(key: np.ndarray, mins: np.ndarray, k: int,
                        original: np.ndarray,
                        with_keys: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Exact k smallest of each row of ``key`` by (value, original index); see module doc.

  Args:
    key: ``[n, M]`` float32 ranking keys (+inf allowed, no NaN).
    mins: ``[n, B]`` minima of B disjoint blocks of the columns of ``key``.
    k: number of neighbours, at most the number of finite entries of each row.
    original: ``[M]`` uint64 original index of each column.
    with_keys: also decode the keys of the k selected (else None).

  Returns:
    ``(indices [n, k] int64, keys [n, k] float32)``, sorted by (key, index).
  """
  n, num_cols = key.shape
  tau = _kth_smallest_bound(mins, k)
  flat = np.flatnonzero(key <= tau[:, None])  # row-major: grouped by row
  cand_rows = flat // num_cols
  cols = flat - cand_rows * num_cols
  cand = key.reshape(-1)[flat] + np.float32(0.0)  # -0.0 -> +0.0
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
  if distance == "dot_product":
    return keys.astype(np.float32)
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
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-q.r``).
    chunk_size: queries per chunk (memory O(chunk_size x N)); None picks
      ``default_chunk_size`` (key blocks of ~128 MiB).
    method: ``"top_k"``, ``"blocks"`` or ``"auto"`` (``"blocks"`` on CPU, else
      ``"top_k"``); all give the same result.
    with_distances: False skips the distances (``NeighborChunk.distances`` is None).

  Yields:
    ``NeighborChunk(start, indices [n, k], distances [n, k])`` per chunk.
  """
  check_distance(distance, RANKING_DISTANCES)
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

  on_host = jax.default_backend() == "cpu"
  if method == "blocks":
    block = int(min(_MAX_BLOCK, max(1, num_r // k_search)))
    padded = -(-num_r // block) * block
    order = np.random.default_rng(0).permutation(num_r)
    original = np.arange(padded, dtype=np.uint64)
    original[:num_r] = order
  else:
    padded, order = num_r, None
  if on_host:
    refs = _reference_columns(references, order, padded, distance=distance)
    key_fn = functools.partial(_host_key, num_references=num_r)
  else:
    refs = _reference_rows(references, order, padded, distance=distance)
    key_fn = functools.partial(_device_key, num_references=num_r)

  def rows_of(start):
    stop = min(start + chunk_size, num_q)
    rows = np.zeros((chunk_size, query_rows.shape[1]), np.float32)
    rows[:stop - start] = query_rows[start:stop]
    return rows

  starts = list(range(0, num_q, chunk_size))
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    if on_host:  # numpy's BLAS releases the GIL: the next block is computed meanwhile
      dispatch = lambda start: pool.submit(key_fn, rows_of(start), refs)
    else:  # device work is asynchronous
      dispatch = lambda start: key_fn(jnp.asarray(rows_of(start)), refs)
    pending = dispatch(starts[0]) if starts else None
    for i, start in enumerate(starts):
      key = pending.result() if on_host else pending
      pending = dispatch(starts[i + 1]) if i + 1 < len(starts) else None
      n = min(start + chunk_size, num_q) - start
      if method == "blocks":
        key = np.asarray(key)[:n]
        indices, keys = _select_from_blocks(key, _block_minima(key, block), k_search,
                                            original, with_keys=with_distances)
      else:
        keys, indices = (np.asarray(a)[:n] for a in _top_k(key, k=k_search))
        indices = indices.astype(np.int64)
      del key
      if self_mode:
        indices, keys = _drop_self(indices, keys, np.arange(start, start + n))
      values = (_key_to_distance(keys, queries[start:start + n], distance)
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
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-q.r``).
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
