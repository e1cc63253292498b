"""Scale-out: multi-host start-up, the data mesh, and global batches from host shares.

Data parallelism is JAX's own sharding (no ``pmap``): one global ``jax.jit`` program over a
1-D ``jax.sharding.Mesh`` with the axis ``"data"``; the batch is sharded along it and the
train state replicated (see :func:`tsm.train.make_train_step`). The loss and its in-batch
mining are over the *global* batch, so the counts, the loss and the margin updates do not
depend on how many devices or hosts run the step (up to float summation order).

Multi-host (several processes, one per host, e.g. GPU servers or a TPU pod slice):

* :func:`initialize` calls ``jax.distributed.initialize`` with a coordinator address,
  number of processes and process id, or with no arguments, which lets JAX detect them
  (TPU pods, SLURM, Open MPI, Kubernetes ...). It must run before anything touches a
  device; ``tsm.config.train_and_evaluate`` calls it (config section ``distributed``)
  right after checking the config.
* Every process builds the same global index batches (samplers are pure functions of
  ``(seed, epoch)``); each one decodes only its share (:func:`host_batches`, contiguous
  columns ``[i * B / n, (i + 1) * B / n)`` of process ``i``), and :func:`shard_batch` turns
  the shares into global arrays with ``jax.make_array_from_process_local_data``. The mesh
  lists ``jax.devices()`` process by process, so process ``i``'s devices hold exactly its
  share: no data crosses hosts before the step.
* Only process 0 writes files (:func:`is_primary`); orbax checkpoints are written by all
  processes together (orbax's own multi-host protocol), which needs a ``workdir`` that every
  host sees (a shared file system or a bucket).

One host with several devices is the same code with one process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tsm.data import samplers

DATA_AXIS = "data"


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts multi-host JAX (``jax.distributed.initialize``); idempotent.

  Call it on every host before any JAX computation. Arguments left None are detected by
  JAX's cluster auto-detection (TPU pod slices, SLURM, Open MPI, ...). Does nothing when
  JAX's distributed runtime is already up.

  Args:
    coordinator_address: ``"host:port"`` of process 0, or None to detect it.
    num_processes: number of processes (hosts), or None to detect it.
    process_id: this process's index in ``[0, num_processes)``, or None to detect it.

  Raises:
    ValueError: ``jax.distributed.initialize`` refused (e.g. a device was used before it).
  """
  if jax.distributed.is_initialized():
    return
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except (RuntimeError, ValueError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"jax.distributed.initialize failed ({message}); start it before any "
                     "JAX computation and check coordinator_address / num_processes / "
                     "process_id.") from None


def is_primary() -> bool:
  """True on process 0, the one that writes logs, figures and summaries."""
  return jax.process_index() == 0


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh ``("data",)`` over ``devices`` (default: every device of every process).

  ``jax.devices()`` lists devices process by process, so each process's devices hold a
  contiguous block of the batch, which is the block :func:`host_batches` gives it.

  Args:
    devices: the devices; default ``jax.devices()``.

  Returns:
    The mesh.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def use_mesh(data_parallel: bool) -> bool:
  """Whether a run shards its batches: several processes, or ``data_parallel`` and >1 device."""
  return jax.process_count() > 1 or (bool(data_parallel) and jax.device_count() > 1)


def host_batches(index_batches: np.ndarray, mesh: Mesh | None) -> np.ndarray:
  """This process's share of each global index batch (all of it without a mesh).

  Args:
    index_batches: ``[steps, B]`` global index batches.
    mesh: the data mesh or None.

  Returns:
    ``[steps, B / jax.process_count()]``.
  """
  if mesh is None or jax.process_count() == 1:
    return np.asarray(index_batches)
  return samplers.host_share(index_batches, jax.process_index(), jax.process_count())


def shard_batch(local_batch: Any, mesh: Mesh | None) -> Any:
  """Global arrays sharded along ``"data"`` from this process's share of a batch.

  Args:
    local_batch: a pytree of host arrays ``[B / jax.process_count(), ...]`` (this
      process's rows of the global batch, in the order of :func:`host_batches`).
    mesh: the data mesh; None returns ``local_batch`` unchanged.

  Returns:
    The same pytree of global ``jax.Array`` of ``B`` rows, each device holding its rows.
  """
  if mesh is None:
    return local_batch
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
  """Places a pytree replicated on every device of ``mesh`` (no-op without one).

  Works on several hosts: every process must pass the same values (the initial state is
  built from the same seed everywhere). Leaves are copied through host memory, since
  multi-host ``device_put`` only accepts host or uncommitted arrays.

  Args:
    tree: a pytree of arrays.
    mesh: the mesh or None.

  Returns:
    The replicated pytree.
  """
  if mesh is None:
    return tree
  sharding = NamedSharding(mesh, PartitionSpec())
  if jax.process_count() > 1:
    tree = jax.device_get(tree)
  return jax.device_put(tree, sharding)


def local_copy(tree: Any) -> Any:
  """One local device's copy of a replicated pytree, for per-host work (embedding).

  Each process then runs its evaluation programs on its own first device without
  synchronising with the others. Non-array leaves pass through.

  Args:
    tree: a pytree of (replicated) ``jax.Array``.

  Returns:
    The pytree with single-device arrays.
  """
  def one(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      if not x.sharding.is_fully_replicated:
        raise ValueError("local_copy needs replicated arrays; got sharding "
                         f"{x.sharding}; replicate the state first.")
      return x.addressable_data(0)
    return x
  return jax.tree.map(one, tree)


def divides(batch_rows: int, mesh: Mesh | None) -> bool:
  """Whether a batch of ``batch_rows`` rows splits evenly over the mesh's devices."""
  return mesh is None or batch_rows % mesh.devices.size == 0


__all__ = ["DATA_AXIS", "data_mesh", "divides",
           "host_batches", "initialize", "is_primary", "local_copy", "replicate",
           "shard_batch", "use_mesh"]
