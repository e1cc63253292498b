"""Cross-batch memory (XBM): a pair or triplet loss against a queue of past embeddings.

pytorch-metric-learning's ``CrossBatchMemory`` as a :class:`ParametricLoss` whose
non-gradient state is the queue, so it lives in the train state, is checkpointed with
it and resumes exactly. Each step, as PML:

  1. the batch is enqueued (no gradient) at slots ``(pointer + i) % memory_size``, the
     pointer advances by the batch size, and the count of filled slots grows up to
     ``memory_size`` (PML's ``queue_idx`` / ``has_been_filled``);
  2. the loss compares the batch (queries, with gradient) with the filled slots
     (references), the batch's own new copies included;
  3. the pairs are all (query, reference) pairs, or the ``miner``'s selection over
     the same queries and references, less each query's pair with its own copy
     (PML's ``remove_self_comparisons``).

The wrapped loss is any loss that takes ``ref_embeddings``, ``ref_labels`` and
``pair_weights`` / ``triplet_weights`` keywords (:func:`tsm.losses.triplet_margin_loss`,
:func:`tsm.losses.contrastive_loss`).

References:
  Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020;
  pytorch-metric-learning 2.9 ``losses/cross_batch_memory.py``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm.losses._base import LossVariables, ParametricLoss


class MemoryState(NamedTuple):
  """The queue of a cross-batch memory.

  Attributes:
    embeddings: ``[M, D]`` float32 stored embeddings (zeros in empty slots).
    labels: ``[M]`` int32 stored labels.
    pointer: int32 scalar, the next slot to write (PML's ``queue_idx``).
    filled: int32 scalar, slots holding an embedding (``M`` once the queue wrapped).
  """
  embeddings: chex.Array
  labels: chex.Array
  pointer: chex.Array
  filled: chex.Array


def init_memory(memory_size: int, embedding_dim: int) -> MemoryState:
  """An empty queue of ``memory_size`` slots."""
  return MemoryState(embeddings=jnp.zeros((memory_size, embedding_dim), jnp.float32),
                     labels=jnp.zeros((memory_size,), jnp.int32),
                     pointer=jnp.zeros((), jnp.int32), filled=jnp.zeros((), jnp.int32))


def enqueue(memory: MemoryState, embeddings: chex.Array, labels: chex.Array
            ) -> tuple[MemoryState, chex.Array]:
  """PML's ``add_to_memory``: the queue with the batch written, and its slots ``[B]``."""
  size = memory.labels.shape[0]
  b = embeddings.shape[0]
  slots = (memory.pointer + jnp.arange(b, dtype=jnp.int32)) % size
  new = MemoryState(
      embeddings=memory.embeddings.at[slots].set(
          jax.lax.stop_gradient(embeddings).astype(memory.embeddings.dtype)),
      labels=memory.labels.at[slots].set(labels.astype(memory.labels.dtype)),
      pointer=(memory.pointer + b) % size,
      filled=jnp.minimum(memory.filled + b, size))
  return new, slots


def _takes_references(loss_fn: Callable[..., Any]) -> bool:
  try:
    params = inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):
    return True   # not introspectable: let the call say
  return "ref_embeddings" in params or any(
      p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def cross_batch_memory(loss_fn: Callable[..., tuple[chex.Array, Any]], memory_size: int,
                       *, miner: Callable[..., chex.Array] | None = None
                       ) -> ParametricLoss:
  """A pair or triplet loss in its cross-batch-memory form (PML's ``CrossBatchMemory``).

  Args:
    loss_fn: ``(embeddings, labels, margin, *, ref_embeddings, ref_labels,
      pair_weights | triplet_weights) -> (loss, stats)``, e.g.
      ``functools.partial(tsm.losses.triplet_margin_loss, reduction="mean_nonzero")``.
    memory_size: slots of the queue (PML's default 1024); at least the batch size.
    miner: optional ``(embeddings, labels, ref_embeddings, ref_labels, ref_valid) ->
      weights``, a deterministic miner of :mod:`tsm.miners` (options bound with
      ``functools.partial``); its pair or triplet weights replace "all pairs".

  Returns:
    A :class:`ParametricLoss`; ``init`` gives ``params = {}`` and ``state`` an empty
    :class:`MemoryState`; ``apply`` enqueues, takes the loss, returns the new queue.

  Raises:
    ValueError: (one line) for a memory size below 1 or a loss without references.
  """
  if not isinstance(memory_size, int) or isinstance(memory_size, bool) or memory_size < 1:
    raise ValueError(f"memory_size must be an integer >= 1; got {memory_size!r}.")
  if not _takes_references(loss_fn):
    raise ValueError("loss_fn takes no ref_embeddings; cross_batch_memory wraps the pair "
                     "and triplet losses (triplet_margin_loss, contrastive_loss).")

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    del rng
    return LossVariables(params={}, state=init_memory(memory_size, embedding_dim))

  def apply(params, state, embeddings, labels, margin):
    del params
    b = embeddings.shape[0]
    if b > memory_size:
      raise ValueError(f"the batch has {b} rows but memory_size={memory_size}; use "
                       f"memory_size >= {b}.")
    memory, slots = enqueue(MemoryState(*state), embeddings, labels)
    ref_valid = jnp.arange(memory_size) < memory.filled
    not_self = slots[:, None] != jnp.arange(memory_size)[None, :]
    if miner is None:
      weights = (ref_valid[None, :] & not_self).astype(jnp.float32)
    else:
      weights = jax.lax.stop_gradient(
          miner(embeddings, labels, memory.embeddings, memory.labels, ref_valid))
      keep = ref_valid[None, :] & not_self
      weights = (weights * keep[:, :, None] * ref_valid[None, None, :]
                 if weights.ndim == 3 else weights * keep)
    key = "triplet_weights" if weights.ndim == 3 else "pair_weights"
    loss, stats = loss_fn(embeddings, labels, margin, ref_embeddings=memory.embeddings,
                          ref_labels=memory.labels, **{key: weights})
    return loss, stats, memory

  return ParametricLoss(init=init, apply=apply)
