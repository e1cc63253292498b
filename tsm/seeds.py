"""Several seeds of one arm trained together: one compiled step over a seed axis.

A head on cached features is small, so one compiled step can train all ``S`` seeds of an
arm at once: :func:`make_seeds_step` is :func:`tsm.train.train_step_fn` under
``jax.vmap`` over a leading seed axis of the whole :class:`tsm.train.TrainState`
(parameters, BatchNorm statistics, the loss's parameters and state, optimiser state,
the margin schedule's state, PRNG key) and of the batch (``[S, B, ...]``: each seed its
own batches). Nothing is shared between seeds: each seed's margin schedule moves on its
own counts (DAMS raises one seed's margin and not another's), dropout draws from each
seed's own key, BatchNorm normalises over each seed's own batch and keeps each seed's
running statistics.

Each seed's result is its separate run's: :func:`init_seeds` builds seed ``s``'s state as
:func:`tsm.train.initial_state` does for a run with ``seed=s`` (what :func:`tsm.fit.fit`
starts from), and the step is the same function. What can differ is the float32
round-off of batched matrix products (XLA may tile a batched product differently from
the single one); ``tests/test_seeds.py`` states the tolerance::

  seeds = [0, 1, 2]
  samplers = [tsm.data.PKSampler(y, 4, 4, seed=s) for s in seeds]
  result = tsm.seeds.train_seeds(model, loss, schedule, tx, x, y, samplers, seeds=seeds,
                                 epochs=5)
  result.margins            # [epochs + 1, S]: each seed's margin trajectory
  embed = tsm.seeds.make_seeds_embed(model)
  embed(result.state, x_test)   # [S, N, D]: each seed's test embeddings

Limits. The seeds of one call share the model, the loss, the schedule, the optimiser, the
number of steps per epoch and the batch shape (fixed shapes under ``vmap``); memory and
compute grow ``S``-fold (``S`` states, ``S`` batches in flight). The loop here takes
in-memory arrays (cached features): no augmentation, checkpoints, resume or evaluators;
run a study's evaluation on the embeddings of :func:`make_seeds_embed`. No ``mesh``: the
seeds run on one device. A non-finite loss or gradient is counted in the ``nonfinite``
metric (or skipped with ``skip_nonfinite``), not raised.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from tsm import _extras

_extras.require(__name__, "flax", "optax")   # else one line naming tsm[train]

import flax
import jax
import jax.numpy as jnp
import optax

from tsm import history
from tsm import margins as margins_lib
from tsm import train as train_lib
from tsm.data import samplers as samplers_lib

__all__ = ["SeedsResult", "epoch_record", "init_seeds", "make_seeds_embed",
           "make_seeds_end_of_epoch", "make_seeds_step", "stack", "step_records", "take",
           "train_seeds"]


def stack(trees: Sequence[Any]) -> Any:
  """Pytrees of the same structure stacked along a new leading (seed) axis."""
  if not trees:
    raise ValueError("stack needs at least one pytree; pass one state per seed.")
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def take(tree: Any, index: int) -> Any:
  """Seed ``index``'s slice of a stacked pytree (e.g. one seed's :class:`TrainState`)."""
  return jax.tree_util.tree_map(lambda x: x[index], tree)


def init_seeds(model: flax.linen.Module, loss: Any, schedule: margins_lib.MarginSchedule,
               tx: optax.GradientTransformation, input_shape: Sequence[int],
               seeds: Sequence[int], init_fn: Callable[..., Any] | None = None
               ) -> train_lib.TrainState:
  """The initial states of ``seeds``, stacked along a leading seed axis.

  Args:
    model: the embedding model (a head, for cached features).
    loss: the loss (see :func:`tsm.train.make_train_step`).
    schedule: the margin schedule.
    tx: the optimiser.
    input_shape: one example's shape (no batch axis).
    seeds: the seeds; entry ``i`` of the result is :func:`tsm.train.initial_state` with
      ``seed=seeds[i]``.
    init_fn: ``(rng, input_shape) -> variables``; default ``model.init``.

  Returns:
    A :class:`tsm.train.TrainState` whose every leaf has a leading axis of ``len(seeds)``.
  """
  seeds = _check_seeds(seeds)
  return stack([train_lib.initial_state(model, loss, schedule, tx, input_shape, s,
                                        init_fn=init_fn) for s in seeds])


def make_seeds_step(model: flax.linen.Module, loss: Any,
                    schedule: margins_lib.MarginSchedule, tx: optax.GradientTransformation,
                    *, margin_update: str = "epoch", skip_nonfinite: bool = False
                    ) -> Callable[[train_lib.TrainState, dict[str, jax.Array]],
                                  tuple[train_lib.TrainState, dict[str, jax.Array]]]:
  """The jitted ``step(states, batches) -> (states, metrics)`` of ``S`` seeds at once.

  ``states`` is stacked (:func:`init_seeds`) and donated; ``batches`` is
  ``{"inputs": float32 [S, B, ...], "labels": int32 [S, B]}``, seed ``i``'s batch at
  index ``i``; every metric is ``[S]``. Arguments as in :func:`tsm.train.make_train_step`.

  Returns:
    The compiled step, ``jax.vmap`` of :func:`tsm.train.train_step_fn` over the seed axis.
  """
  step = train_lib.train_step_fn(model, loss, schedule, tx, margin_update=margin_update,
                                 skip_nonfinite=skip_nonfinite)
  return jax.jit(jax.vmap(step), donate_argnums=0)


def make_seeds_end_of_epoch(schedule: margins_lib.MarginSchedule
                            ) -> Callable[[train_lib.TrainState], train_lib.TrainState]:
  """The jitted ``end_of_epoch(states) -> states``: each seed's ``schedule.update`` on its
  own counts (:func:`tsm.train.make_end_of_epoch` per seed). Donates ``states``."""

  def end_of_epoch(state: train_lib.TrainState) -> train_lib.TrainState:
    return state.replace(margin_state=schedule.update(state.margin_state))

  return jax.jit(jax.vmap(end_of_epoch), donate_argnums=0)


def make_seeds_embed(model: flax.linen.Module, batch_size: int = 1024
                     ) -> Callable[[train_lib.TrainState, Any], np.ndarray]:
  """``embed(states, inputs) -> float32 [S, N, D]``: every seed's embeddings of the same
  inputs (inference mode), ``batch_size`` rows at a time, one compiled program."""
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size!r} must be >= 1.")
  batch_size = int(batch_size)

  def one(params: Any, batch_stats: Any, x: jax.Array) -> jax.Array:
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return model.apply(variables, x, train=False)

  apply = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))

  def embed(state: train_lib.TrainState, inputs: Any) -> np.ndarray:
    x = np.asarray(inputs, np.float32)
    parts = []
    for start in range(0, x.shape[0], batch_size):
      chunk = x[start:start + batch_size]
      rows = chunk.shape[0]
      if rows < batch_size and start:   # pad the last chunk: one input shape, one program
        chunk = np.concatenate([chunk, np.zeros((batch_size - rows,) + x.shape[1:],
                                                np.float32)])
      parts.append(np.asarray(apply(state.params, state.batch_stats, chunk))[:, :rows])
    return np.concatenate(parts, axis=1)

  return embed


@dataclasses.dataclass(frozen=True)
class SeedsResult:
  """What :func:`train_seeds` returns.

  Attributes:
    seeds: the seeds, in the order of the seed axis.
    state: the final states, stacked (:func:`take` gives one seed's).
    step_metrics: every step's metrics, ``{name: float32 [epochs, steps_per_epoch, S]}``.
    margins: float32 ``[epochs + 1, S]``: the margin each epoch trained at, then the
      margin the schedule gives after the last epoch.
  """
  seeds: tuple[int, ...]
  state: train_lib.TrainState
  step_metrics: dict[str, np.ndarray]
  margins: np.ndarray

  def epoch_records(self, index: int) -> list[dict[str, Any]]:
    """Seed ``index``'s epoch records, as :func:`tsm.history.epoch_record` makes them
    for a run of :func:`tsm.fit.fit` (plus ``margin_next``)."""
    epochs = next(iter(self.step_metrics.values())).shape[0]
    out = []
    for e in range(epochs):
      record = epoch_record({k: v[e] for k, v in self.step_metrics.items()}, index, e)
      record["margin_next"] = float(self.margins[e + 1, index])
      out.append(record)
    return out


def step_records(metrics: dict[str, np.ndarray], index: int, epoch: int
                 ) -> list[dict[str, Any]]:
  """Seed ``index``'s step records of ``epoch`` from the epoch's stacked step metrics
  (``{name: [steps, S]}``), as :class:`tsm.history.StepLog` logs them for a run of
  :func:`tsm.fit.fit`."""
  steps = next(iter(metrics.values())).shape[0]
  return [dict({k: float(v[j, index]) for k, v in metrics.items()}, kind="step",
               epoch=epoch, step=epoch * steps + j + 1) for j in range(steps)]


def epoch_record(metrics: dict[str, np.ndarray], index: int, epoch: int
                 ) -> dict[str, Any]:
  """Seed ``index``'s record of ``epoch`` (:func:`tsm.history.epoch_record`) from the
  epoch's stacked step metrics ``{name: [steps, S]}`` (without ``margin_next``)."""
  steps = next(iter(metrics.values())).shape[0]
  return history.epoch_record(epoch, (epoch + 1) * steps,
                              step_records(metrics, index, epoch))


def _check_seeds(seeds: Sequence[int]) -> list[int]:
  seeds = list(seeds)
  if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                      for s in seeds):
    raise ValueError(f"seeds={seeds!r} must be a non-empty list of integers, e.g. "
                     "[0, 1, 2].")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds={seeds!r} repeat a seed; give each seed once.")
  return [int(s) for s in seeds]


def _check_data(inputs: np.ndarray, labels: np.ndarray,
                samplers: Sequence[samplers_lib.Sampler], seeds: list[int]) -> int:
  """Steps per epoch shared by ``samplers``; a one-line ValueError for anything the
  vmapped step cannot take."""
  if labels.ndim != 1 or inputs.shape[0] != labels.shape[0]:
    raise ValueError(f"inputs {inputs.shape} and labels {labels.shape} must hold one row "
                     "per example (labels 1-D, same length as inputs).")
  if len(samplers) != len(seeds):
    raise ValueError(f"{len(samplers)} samplers for {len(seeds)} seeds; pass one sampler "
                     "per seed (each seeded with its seed).")
  steps = {int(s.steps_per_epoch) for s in samplers}
  if len(steps) != 1:
    raise ValueError(f"the samplers give {sorted(steps)} steps per epoch; the seeds of one "
                     "call need the same number (same sampler settings).")
  return steps.pop()


def _epoch_indices(samplers: Sequence[samplers_lib.Sampler], epoch: int,
                   steps: int) -> np.ndarray:
  """int32 ``[steps, S, B]``: each seed's index batches of ``epoch``."""
  per_seed = [np.asarray(s.epoch(epoch)) for s in samplers]
  shapes = {b.shape for b in per_seed}
  if len(shapes) != 1 or next(iter(shapes))[0] != steps:
    raise ValueError(f"the samplers' epoch {epoch} batches have shapes {sorted(shapes)}; "
                     f"the seeds of one call need the same [{steps}, rows] shape.")
  return np.stack(per_seed, axis=1).astype(np.int32)


@jax.jit
def _gather(inputs: jax.Array, labels: jax.Array, index: jax.Array) -> dict[str, jax.Array]:
  return {"inputs": inputs[index], "labels": labels[index]}


def train_seeds(model: flax.linen.Module, loss: Any, schedule: margins_lib.MarginSchedule,
                tx: optax.GradientTransformation, inputs: Any, labels: Any,
                samplers: Sequence[samplers_lib.Sampler], *, seeds: Sequence[int],
                epochs: int, margin_update: str = "epoch", skip_nonfinite: bool = False,
                init_fn: Callable[..., Any] | None = None,
                state: train_lib.TrainState | None = None,
                on_epoch: Callable[[int, train_lib.TrainState, dict[str, np.ndarray]],
                                   None] | None = None) -> SeedsResult:
  """Trains ``len(seeds)`` seeds of one arm on in-memory arrays, all in one step.

  Each epoch, seed ``i`` takes the batches ``samplers[i].epoch(epoch)`` (so each seed its
  own order); the step is :func:`make_seeds_step`; after the epoch's last step each
  seed's margin schedule updates on its own counts (unless ``margin_update="step"``).
  The features stay on the device; step metrics are fetched once per epoch.

  Args:
    model: the embedding model (a head on cached features).
    loss: ``(embeddings, labels, margin) -> (loss, stats)`` or a ParametricLoss; one with
      ``for_epoch(epoch)`` gets a compiled step per distinct loss it returns.
    schedule: the margin schedule.
    tx: the optimiser.
    inputs: float32 ``[N, ...]`` training inputs (e.g. cached features).
    labels: int ``[N]`` labels.
    samplers: one sampler per seed, each seeded with its seed (same settings).
    seeds: the seeds (:func:`init_seeds`).
    epochs: number of epochs, ``>= 1``.
    margin_update: ``"epoch"`` or ``"step"`` (as in :func:`tsm.train.make_train_step`).
    skip_nonfinite: skip updates with a non-finite loss or gradient (else applied and
      counted in the ``nonfinite`` metric).
    init_fn: passed to :func:`init_seeds`.
    state: stacked states to start from instead of :func:`init_seeds` (e.g. to go on).
    on_epoch: ``on_epoch(epoch, states, metrics)`` after each epoch's margin update, with
      the stacked states and the epoch's step metrics (``{name: [steps, S]}``): a
      study's per-seed evaluation (:func:`take` gives a seed's state). It must be done
      with ``states`` when it returns (the next step donates them): copy what it keeps.

  Returns:
    A :class:`SeedsResult`.
  """
  seeds = _check_seeds(seeds)
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
    raise ValueError(f"epochs={epochs!r} must be an integer >= 1.")
  if margin_update not in ("epoch", "step"):
    raise ValueError(f"margin_update={margin_update!r} is unknown; use 'epoch' or 'step'.")
  x = np.asarray(inputs, np.float32)
  y = np.asarray(labels)
  steps = _check_data(x, y, samplers, seeds)
  loss_of = loss.for_epoch if hasattr(loss, "for_epoch") else (lambda epoch: loss)
  if state is None:
    state = init_seeds(model, loss_of(0), schedule, tx, x.shape[1:], seeds, init_fn)
  elif np.shape(state.step) != (len(seeds),):
    raise ValueError(f"state holds {np.shape(state.step)[:1]} seeds, not {len(seeds)}; "
                     "pass the stacked states of these seeds (init_seeds).")
  compiled: dict[int, Any] = {}
  end_of_epoch = (None if margin_update == "step" else make_seeds_end_of_epoch(schedule))
  x_dev, y_dev = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
  metrics: list[dict[str, np.ndarray]] = []
  margins = [np.asarray(state.margin_state.margin)]
  for epoch in range(epochs):
    epoch_loss = loss_of(epoch)
    if id(epoch_loss) not in compiled:
      compiled[id(epoch_loss)] = make_seeds_step(model, epoch_loss, schedule, tx,
                                                 margin_update=margin_update,
                                                 skip_nonfinite=skip_nonfinite)
    step = compiled[id(epoch_loss)]
    index = _epoch_indices(samplers, epoch, steps)
    outputs = []
    for j in range(steps):
      state, out = step(state, _gather(x_dev, y_dev, index[j]))
      outputs.append(out)
    if end_of_epoch is not None:
      state = end_of_epoch(state)
    fetched = jax.device_get(outputs)
    metrics.append({k: np.stack([o[k] for o in fetched]) for k in fetched[0]})
    margins.append(np.asarray(state.margin_state.margin))
    if on_epoch is not None:
      on_epoch(epoch, state, metrics[-1])
  step_metrics = {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}
  return SeedsResult(seeds=tuple(seeds), state=state, step_metrics=step_metrics,
                     margins=np.stack(margins).astype(np.float32))
