"""Embedding extraction over a whole split, for any model and parameters.

``embed(apply_fn, variables, inputs, batch_size)`` runs ``apply_fn(variables, x) -> [n, D]``
over fixed-size batches under one ``jax.jit``: the last batch is padded (with copies of
the split's first example) to the same shape, so a single compilation serves every batch
of every split with the same input shape. Batches of a ``Split`` are decoded ahead by
``tsm.data.loader.batches`` (background threads) while the device computes; results stay
on the device until the end (no host transfer per batch).

The jitted wrapper is cached per ``apply_fn`` object: pass the same function object on
every call (e.g. built once per model) and later calls reuse the compilation; a new
lambda on each call is traced and compiled again.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import jax
import numpy as np

from tsm.data import loader

_JITTED: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jitted(apply_fn: Callable) -> Callable:
  try:
    return _JITTED[apply_fn]
  except (KeyError, TypeError):
    pass
  fn = jax.jit(apply_fn)
  try:
    _JITTED[apply_fn] = fn
  except TypeError:  # not weak-referenceable: no caching
    pass
  return fn


class _ArraySource:
  """Adapts an in-memory array to the Split protocol used by ``loader.batches``."""

  def __init__(self, array: np.ndarray):
    self.array = array
    self.labels = np.zeros(array.shape[0], np.int32)

  def __len__(self) -> int:
    return self.array.shape[0]

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self.array[indices]


class _SplitSource:
  """Any object with ``__len__`` and ``get(indices)``, labels optional."""

  def __init__(self, split: Any):
    self.split = split
    self.labels = np.zeros(len(split), np.int32)

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self.split.get(indices)


def embed(apply_fn: Callable[[Any, jax.Array], jax.Array], variables: Any, inputs: Any,
          batch_size: int = 256, *, prefetch: int = 2) -> np.ndarray:
  """Embeddings of every example of ``inputs``, in order.

  Args:
    apply_fn: ``apply_fn(variables, x [B, ...]) -> [B, D]``, e.g.
      ``lambda v, x: model.apply(v, x, train=False)`` (build it once and reuse it).
    variables: the model variables (any pytree), passed unchanged to ``apply_fn``.
    inputs: a ``[N, ...]`` array, or an object with ``__len__`` and ``get(indices) ->
      [n, ...]`` (the ``tsm.data.Split`` protocol).
    batch_size: examples per call; the batch shape is ``min(batch_size, N)``.
    prefetch: batches of a split decoded ahead by background threads.

  Returns:
    ``[N, D]`` float32 numpy array.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive; pass e.g. 256.")
  if hasattr(inputs, "get") and hasattr(inputs, "__len__") and not hasattr(inputs, "shape"):
    source = _SplitSource(inputs)
  else:
    source = _ArraySource(np.asarray(inputs))
  n = len(source.labels)
  if n == 0:
    raise ValueError("inputs is empty; pass at least one example.")
  size = min(batch_size, n)
  index_batches = []
  for start in range(0, n, size):
    idx = np.arange(start, min(start + size, n))
    index_batches.append(np.concatenate([idx, np.zeros(size - idx.size, np.int64)]))
  fn = _jitted(apply_fn)
  outputs = []
  for start, batch in zip(range(0, n, size),
                          loader.batches(source, index_batches, prefetch=prefetch)):
    out = fn(variables, batch["inputs"])
    if out.ndim != 2 or out.shape[0] != size:
      raise ValueError(f"apply_fn returned shape {out.shape} for a batch of {size}; it "
                       "must return [batch, embedding_dim].")
    outputs.append(out if start + size <= n else out[:n - start])
  return np.concatenate(jax.device_get(outputs)).astype(np.float32, copy=False)
