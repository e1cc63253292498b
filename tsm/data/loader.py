"""Background batch loading: decode and augment off the train step's path.

``batches(split, index_batches, ...)`` yields ``{"inputs", "labels"}`` dicts in the
order of ``index_batches``, while a small thread pool decodes the next ``prefetch``
batches. numpy, PIL and ArrayRecord reads release the GIL for most of their work, so
threads are enough here (no process pool, no grain dependency).

A batch whose indices repeat (the views of ``tsm.data.MultiViewSampler``) decodes each
input once; augmentation draws for every row on its own, so repeated inputs come out
differently augmented.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Iterable, Iterator, Sequence

import numpy as np


def _seed_sequence(seed: int | Sequence[int]) -> list[int]:
  return [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=np.int64))]


def load_batch(split, indices: np.ndarray, *, augment: bool = False,
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """One batch: ``{"inputs": float32 [B, ...], "labels": int32 [B]}`` (an index that
  repeats is decoded once)."""
  indices = np.asarray(indices, dtype=np.int64)
  distinct, inverse = np.unique(indices, return_inverse=True)
  if distinct.size < indices.size:
    inputs = split.get(distinct)[inverse.reshape(-1)]
  else:
    inputs = split.get(indices)
  if augment:
    inputs = split.augment(inputs, rng if rng is not None else np.random.default_rng(0))
  return {"inputs": inputs, "labels": split.labels[indices]}


def batches(split, index_batches: Iterable[np.ndarray], *, augment: bool = False,
            seed: int | Sequence[int] = 0, prefetch: int = 2,
            num_workers: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields decoded batches in order, prefetched by background threads.

  Args:
    split: a ``tsm.data.Split``.
    index_batches: iterable of int index arrays ``[B]`` (e.g. ``sampler.epoch(e)``).
    augment: apply ``split.augment`` with a generator seeded by ``(seed, step)``, so
      the result does not depend on thread scheduling.
    seed: int or sequence of ints; pass ``(seed, epoch)`` to vary augmentation per
      epoch.
    prefetch: number of batches decoded ahead (>= 1).
    num_workers: threads (default ``min(prefetch, 4)``).

  Yields:
    ``{"inputs": float32 [B, *input_shape], "labels": int32 [B]}``.
  """
  if prefetch < 1:
    raise ValueError(f"prefetch={prefetch} must be >= 1.")
  base = _seed_sequence(seed)
  workers = num_workers or min(prefetch, 4)

  def work(step: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(base + [step]) if augment else None
    return load_batch(split, indices, augment=augment, rng=rng)

  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tsm-data")
  pending: collections.deque = collections.deque()
  try:
    it = iter(enumerate(index_batches))
    for step, indices in it:
      pending.append(pool.submit(work, step, indices))
      if len(pending) >= prefetch:
        break
    while pending:
      result = pending.popleft().result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(work, *nxt))
      yield result
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)
