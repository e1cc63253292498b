"""The training loop: ``fit(model, loss, schedule, optimizer, data, workdir=...)``.

``fit`` takes built objects — any Flax module, any loss ``(embeddings, labels, margin)
-> (loss, stats)`` with the common statistics shape (or a ``tsm.losses.ParametricLoss``),
any margin schedule, an optax transform, data as in-memory arrays or
``tsm.data.DatasetSplits``, a sampler and a list of evaluators — and runs the loop only:
steps, epochs, evaluators, checkpoints, resume. How the run is shown and what it leaves
besides its records are hooks the loop calls (:mod:`tsm.hooks`: the progress bar, log
lines, TensorBoard, figures, the summary files). ``tsm.config.train_and_evaluate`` builds
those objects from a config and calls it; so can your own script.

The loop itself writes, in ``workdir``: ``metrics.jsonl`` (a line per step and per epoch,
see :mod:`tsm.history`) and ``checkpoints/`` (orbax: the last ``keep`` plus the best by
``best_metric``). The standard hooks (:func:`tsm.hooks.standard`, the default) add
``summary.json`` (the final evaluators on the best state), ``pairs.npz`` (arrays the
evaluators left, e.g. verification pair distances), ``training.png``, ``roc.png`` and
``tensorboard/``. One run per workdir and its ``config.json`` are the caller's:
:func:`run_directory` takes the lock and writes the config.

Resumption: a rerun with the same ``workdir`` restores the latest checkpoint, including
its position within the epoch, cuts ``metrics.jsonl`` back to its length at that
checkpoint and goes on; samplers and augmentation are pure functions of ``(seed, epoch,
step)``, so the resumed run computes exactly what an uninterrupted one does.

Scale: pass ``mesh`` (``tsm.train.data_mesh()``) to shard each batch over a ``"data"``
axis with the state replicated; on several hosts each host decodes only its share and
only process 0 writes files (orbax aside). See :mod:`tsm.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from tsm import _extras

_extras.require(__name__, "flax", "optax", "orbax", "tqdm")   # else one line naming tsm[train]

import optax
from flax import linen as nn

from tsm import artifacts
from tsm import checkpoint as checkpoint_lib
from tsm import distributed
from tsm import evaluation
from tsm import history
from tsm import hooks as hooks_lib
from tsm import losses as losses_lib
from tsm import margins as margins_lib
from tsm import train as train_lib
from tsm import workdir as workdir_lib
from tsm.data import datasets as datasets_lib
from tsm.data import loader
from tsm.data import samplers as samplers_lib


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  """When checkpoints are written and how many are kept.

  Attributes:
    every_steps: also checkpoint every that many steps within epochs (0 = epoch ends only).
    every_epochs: checkpoint every that many epochs and after the last (0 = last only).
    keep: most recent checkpoints kept (the best one is kept besides).
    async_save: write checkpoints in a background thread.
  """
  every_steps: int = 0
  every_epochs: int = 1
  keep: int = 2
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How the loop trains, beyond the model, the data and the optimiser.

  Attributes:
    augment: augment training batches (the splits' augmentation).
    margin_update: ``"epoch"`` (the schedule updates at the end of each epoch) or
      ``"step"``.
    nonfinite: ``"stop"`` (raise :class:`tsm.history.NonFiniteError` at the first
      non-finite loss or gradient) or ``"skip"`` (skip such updates and count them).
    log_every: steps between host transfers of step metrics.
    embed_batch_size: batch size for embedding splits.
    stop_after_steps: stop this process after that many steps, as a kill would (tests;
      0 = never).
  """
  augment: bool = False
  margin_update: str = "epoch"
  nonfinite: str = "stop"
  log_every: int = 20
  embed_batch_size: int = 256
  stop_after_steps: int = 0

  def check(self) -> None:
    """Raises ValueError (one line naming the field) for a value the loop cannot use."""
    if self.nonfinite not in ("stop", "skip"):
      raise ValueError(f"nonfinite={self.nonfinite!r} is unknown; use 'stop' or 'skip'.")


@dataclasses.dataclass(frozen=True)
class RunLabels:
  """What the run is, in words: entries of its summary (and of the console's lines).

  Each field that is not None becomes a summary entry of that name.

  Attributes:
    dataset: the dataset's name (also the progress bar's label).
    split: how the data was split.
    loss: the loss's name.
    margin_schedule: the margin schedule's name.
    model: the model's name.
  """
  dataset: str | None = None
  split: str | None = None
  loss: str | None = None
  margin_schedule: str | None = None
  model: str | None = None

  def entries(self) -> dict[str, Any]:
    """The fields that are set, as summary entries."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class FitResult:
  """What ``fit`` returns.

  Attributes:
    state: the final ``tsm.train.TrainState``.
    best_state: the state of the best checkpoint (the final state without one).
    summary: the summary dict (also in ``summary.json``).
    history: the epoch records.
    embed: ``inputs [N, ...] -> [N, D]`` numpy embeddings with the best state's model.
  """
  state: Any
  best_state: Any
  summary: dict[str, Any]
  history: list[dict[str, Any]]
  embed: Callable[[Any], np.ndarray]

  def __repr__(self) -> str:
    """One line: the epochs, the kept epoch and its rule, the headline test metrics."""
    s = self.summary or {}
    test = s.get("test", {})
    shown = ", ".join(f"{k} {test[k]:.4f}" for k in ("map@r", "recall@1", "auc")
                      if isinstance(test.get(k), (int, float)))
    step = None if self.state is None else int(jax.device_get(self.state.step))
    return (f"FitResult(epochs={s.get('epochs')}, selected epoch {s.get('best_epoch')} "
            f"({history.summary_rule(s)})" + (f", test {shown}" if shown else "")
            + f", step={step})")


@contextlib.contextmanager
def run_directory(workdir: str, config: Mapping[str, Any] | None = None) -> Iterator[str]:
  """One run at a time in ``workdir``, with its ``config.json``: wrap ``fit`` in it.

  On process 0: creates ``workdir`` (one-line errors, :func:`tsm.workdir.prepare_workdir`),
  holds its lock (:class:`tsm.workdir.WorkdirLock`) while the block runs, and first writes
  ``config`` to ``config.json`` when given. The other processes of a multi-host run do
  nothing here. ``fit`` itself takes no lock and writes no config::

    with tsm.fit.run_directory(workdir, config={"lr": 1e-3}):
      result = tsm.fit.fit(..., workdir=workdir)

  Args:
    workdir: the run directory.
    config: a JSON-able description of the run, written to ``config.json``; None writes
      none.

  Yields:
    ``workdir``.

  Raises:
    tsm.workdir.BadWorkdir, tsm.workdir.WorkdirIOError: ``workdir`` cannot be used.
    tsm.workdir.WorkdirBusy: another live process holds the lock.
  """
  if not distributed.is_primary():   # only process 0 writes files
    yield workdir
    return
  workdir_lib.prepare_workdir(workdir)   # checked and locked before anything is written
  with workdir_lib.WorkdirLock(workdir):
    if config is not None:
      artifacts.write_json_atomic(os.path.join(workdir, workdir_lib.CONFIG_NAME),
                                  dict(config))
    yield workdir


def default_sampler(labels: np.ndarray, seed: int) -> samplers_lib.Sampler:
  """``fit``'s sampler when given none: P x K with P = min(8, classes), K = 4."""
  classes = np.unique(labels[labels >= 0]).size
  return samplers_lib.PKSampler(labels, min(8, classes), 4, seed)


def _skip_to(index_batches: np.ndarray, start: int) -> list[np.ndarray]:
  """Index batches with the first ``start`` emptied (the loader still counts them, so the
  remaining batches keep their positions and hence their augmentation draws)."""
  empty = np.zeros((0,), np.int64)
  return [empty] * start + list(index_batches[start:])


def _initial_state(model: nn.Module, loss: Any, schedule: margins_lib.MarginSchedule,
                   optimizer: optax.GradientTransformation, input_shape: Sequence[int],
                   seed: int, init_fn: Callable[..., Any] | None, mesh: Any) -> Any:
  """:func:`tsm.train.initial_state`, replicated on ``mesh``."""
  state = train_lib.initial_state(model, loss, schedule, optimizer, input_shape, seed,
                                  init_fn=init_fn)
  return train_lib.replicate(state, mesh)


def _train_steps(model: nn.Module, loss_of: Callable[[int], Any],
                 schedule: margins_lib.MarginSchedule,
                 optimizer: optax.GradientTransformation, mesh: Any,
                 options: LoopOptions) -> Callable[[int], Any]:
  """``epoch -> train step``: one compiled step per distinct loss ``loss_of`` returns,
  built when first needed."""
  steps: dict[int, Any] = {}

  def train_step_of(epoch: int) -> Any:
    epoch_loss = loss_of(epoch)
    if id(epoch_loss) not in steps:
      steps[id(epoch_loss)] = train_lib.make_train_step(
          model, epoch_loss, schedule, optimizer, mesh=mesh,
          margin_update=options.margin_update, skip_nonfinite=options.nonfinite == "skip")
    return steps[id(epoch_loss)]

  return train_step_of


def _resume(ckpt: checkpoint_lib.Checkpointer, state: Any, run: history.StepLog
            ) -> tuple[Any, int, int, list[dict[str, Any]]]:
  """Restores the newest readable checkpoint, if any, and cuts the log back to it.

  Returns:
    ``(state, epoch, position in the epoch, epoch records so far)``; ``run`` holds the
    step records of that epoch logged so far.
  """
  epoch, pos = 0, 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, saved, _ = restored
    epoch, pos = int(saved["epoch"]), int(saved["step_in_epoch"])
    run.log.truncate(int(saved["metrics_bytes"]))
  else:
    run.log.truncate(0)   # lines of a run killed before its first checkpoint
  records = run.log.read()
  run.start_epoch([r for r in records if r["kind"] == "step" and r["epoch"] == epoch])
  return state, epoch, pos, [r for r in records if r["kind"] == "epoch"]


def _batches(splits: Any, sampler: samplers_lib.Sampler, epoch: int, start: int,
             seed: int, mesh: Any, augment: bool) -> Iterator[dict[str, np.ndarray]]:
  """This host's share of the epoch's global batches (all of them on one host), the
  first ``start`` empty (see :func:`_skip_to`)."""
  indices = distributed.host_batches(sampler.epoch(epoch), mesh)
  one_host = jax.process_count() == 1
  return loader.batches(
      splits.train, _skip_to(indices, start), augment=augment,
      seed=(seed, epoch) if one_host else (seed, epoch, jax.process_index()))


def _best_state(ckpt: checkpoint_lib.Checkpointer, state: Any) -> tuple[Any, int | None]:
  """The best checkpoint's state and step; the final state (and None) without one, or
  when it cannot be read (with a warning on stderr)."""
  best_step = ckpt.best_step()
  if best_step is None:
    return state, None
  try:
    return ckpt.restore(best_step, state)[0], best_step
  except checkpoint_lib.CheckpointError as e:   # summarise the final state instead
    print(f"warning: {e}; summarising the final state instead.", file=sys.stderr)
    return state, None


def summarize_run(labels: RunLabels, epoch_records: list[dict[str, Any]], best_metric: str,
             best_mode: str, best_step: int | None) -> dict[str, Any]:
  """The summary's entries that come from the epoch records (the labels first); the
  final evaluators' results complete it (also used by the seeds-together path of the
  studies, ``experiments/common/together.py``)."""
  best = next((r for r in epoch_records if r["step"] == best_step),
              epoch_records[-1] if epoch_records else None)
  summary = labels.entries()
  summary.update({
      "epochs": len(epoch_records), "best_metric": best_metric,
      "best_epoch": None if best is None else best["epoch"] + 1,
      "best_value": None if best is None else best.get(best_metric),
      # The margin the last epoch trained at, and the one the schedule would use next.
      "final_margin": epoch_records[-1]["margin"] if epoch_records else None,
      "next_margin": epoch_records[-1]["margin_next"] if epoch_records else None,
  })
  summary.update(history.selection(epoch_records, best_metric, best_mode,
                                   summary["best_epoch"]))
  return summary


def fit(model: nn.Module, loss: Any, schedule: margins_lib.MarginSchedule,
        optimizer: optax.GradientTransformation, data: Any, *, workdir: str,
        epochs: int, sampler: samplers_lib.Sampler | None = None, seed: int = 0,
        evaluators: Sequence[evaluation.Evaluator] = (),
        final_evaluators: Sequence[evaluation.Evaluator] = (),
        best_metric: str = "val_loss", best_mode: str = "min",
        checkpoint: CheckpointOptions = CheckpointOptions(),
        options: LoopOptions = LoopOptions(), mesh: Any = None,
        init_fn: Callable[[Any, tuple[int, ...]], Any] | None = None,
        labels: RunLabels = RunLabels(),
        hooks: Sequence[hooks_lib.Hook] | None = None) -> FitResult | None:
  """Trains ``model`` with ``loss`` and ``schedule``, evaluating and checkpointing.

  Args:
    model: a Flax module; ``model.apply(variables, x, train=...)`` gives ``[B, D]``.
      The model must take a ``train`` keyword (dropout / BatchNorm mode).
    loss: ``(embeddings, labels, margin) -> (loss, stats)`` or a ParametricLoss; a loss
      that changes with the epoch has ``for_epoch(epoch) -> loss`` (each distinct loss
      it returns gets its own compiled step, built when first needed).
    schedule: a margin schedule (``tsm.margins``).
    optimizer: an optax transform; it updates the model's and the loss's parameters.
    data: ``tsm.data.DatasetSplits``, or ``{"train": (x, y), "val": ..., "test": ...}``.
    workdir: run directory (created; resumed when it holds a checkpoint).
    epochs: number of epochs.
    sampler: index batches of the train split; default :func:`default_sampler`.
    seed: seed of the model initialisation, dropout and augmentation.
    evaluators: run after epochs (each by its ``every_epochs``); results go into the epoch
      records as ``<split>_<metric>``.
    final_evaluators: run once on the best state; results go into the summary.
    best_metric: the epoch-record key that picks the best checkpoint.
    best_mode: ``"min"`` or ``"max"``.
    checkpoint: :class:`CheckpointOptions`.
    options: :class:`LoopOptions`.
    mesh: optional ``"data"`` mesh for data parallelism.
    init_fn: ``(rng, input_shape) -> variables``; default ``model.init`` on a zero batch
      (``tsm.models.init_variables`` also loads pretrained trunks).
    labels: :class:`RunLabels`, the summary's description entries.
    hooks: what the loop calls as it runs (:mod:`tsm.hooks`); None for
      :func:`tsm.hooks.standard` (progress bar, log lines, TensorBoard, figures,
      summary files), ``[]`` for none.

  Returns:
    A :class:`FitResult`, or None when ``options.stop_after_steps`` stopped the process
    early.

  Raises:
    tsm.history.NonFiniteError: a non-finite loss or gradient under ``nonfinite="stop"``.
    tsm.history.Interrupted: Ctrl-C (the checkpoints stay a valid resume point).
  """
  options.check()
  splits = datasets_lib.as_splits(data)
  loss_of = loss.for_epoch if hasattr(loss, "for_epoch") else (lambda epoch: loss)
  if sampler is None:
    sampler = default_sampler(splits.train.labels, seed)
  hooks = hooks_lib.standard() if hooks is None else list(hooks)
  primary = distributed.is_primary()   # only process 0 writes files (orbax aside)
  if primary:
    os.makedirs(workdir, exist_ok=True)
  steps_per_epoch = int(sampler.steps_per_epoch)
  state = _initial_state(model, loss_of(0), schedule, optimizer, splits.input_shape, seed,
                         init_fn, mesh)
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=checkpoint.keep, best_metric=best_metric,
      best_mode=best_mode, async_save=checkpoint.async_save)
  run = history.StepLog(artifacts.MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                                             write=primary),
                        stop_on_nonfinite=options.nonfinite == "stop")
  train_step_of = _train_steps(model, loss_of, schedule, optimizer, mesh, options)
  end_of_epoch = (None if options.margin_update == "step"
                  else train_lib.make_end_of_epoch(schedule, mesh))
  embed_fn = evaluation.make_embed_fn(model, options.embed_batch_size)
  loss_fn = train_lib.make_loss_on_batches(model, loss_of, splits, mesh)

  def meta(epoch: int, pos: int, step: int) -> dict[str, Any]:
    return {"epoch": epoch, "step_in_epoch": pos, "global_step": step,
            "metrics_bytes": run.log.size(), "steps_per_epoch": steps_per_epoch}

  def flush() -> None:
    records = run.flush()
    if records:
      hooks_lib.call(hooks, "on_steps", records)

  state, start_epoch, start_pos, epoch_records = _resume(ckpt, state, run)
  last_step = start_epoch * steps_per_epoch + start_pos   # the last step applied
  try:
    hooks_lib.call(hooks, "on_start", hooks_lib.RunStart(
        workdir=workdir, epochs=epochs, steps_per_epoch=steps_per_epoch,
        initial_step=last_step, primary=primary, labels=labels.entries()))
    steps_this_run = 0
    for epoch in range(start_epoch, epochs):
      t0 = time.time()
      pos0 = start_pos if epoch == start_epoch else 0
      if pos0 == 0:
        run.start_epoch()
      train_step = train_step_of(epoch)
      for pos, batch in enumerate(_batches(splits, sampler, epoch, pos0, seed, mesh,
                                           options.augment)):
        if pos < pos0:
          continue
        state, step_metrics = train_step(state, distributed.shard_batch(batch, mesh))
        last_step = epoch * steps_per_epoch + pos + 1
        waiting = run.add(epoch, last_step, step_metrics)
        hooks_lib.call(hooks, "on_step", last_step)
        steps_this_run += 1
        if waiting >= options.log_every:
          flush()
        if (checkpoint.every_steps and last_step % checkpoint.every_steps == 0
            and pos + 1 < steps_per_epoch):
          flush()
          ckpt.save(last_step, state, meta(epoch, pos + 1, last_step))
        if options.stop_after_steps and steps_this_run >= options.stop_after_steps:
          flush()
          return None
      flush()

      step = (epoch + 1) * steps_per_epoch
      record = history.epoch_record(epoch, step, run.epoch_steps)
      if end_of_epoch is not None:
        state = end_of_epoch(state)
      record["margin_next"] = float(jax.device_get(state.margin_state.margin))
      last = epoch + 1 == epochs
      due = [e for e in evaluators if e.every_epochs and
             ((epoch + 1) % e.every_epochs == 0 or last)]
      ctx = evaluation.EvalContext(state=state, splits=splits, embed_fn=embed_fn,
                                   epoch=epoch, record=record, loss_fn=loss_fn)
      record.update(evaluation.flatten(evaluation.run_evaluators(due, ctx)))
      record["time_s"] = round(time.time() - t0, 3)
      run.log.append([record])
      epoch_records.append(record)
      run.start_epoch()
      if last or (checkpoint.every_epochs and (epoch + 1) % checkpoint.every_epochs == 0):
        ckpt.save(step, state, meta(epoch + 1, 0, step),
                  metrics={best_metric: record[best_metric]} if best_metric in record
                  else None)
      hooks_lib.call(hooks, "on_epoch_end", record)

    best_state, best_step = _best_state(ckpt, state)
    hooks_lib.call(hooks, "on_final_evaluation", best_step)
    ctx = evaluation.EvalContext(state=best_state, splits=splits, embed_fn=embed_fn,
                                 loss_fn=loss_fn)
    summary = summarize_run(labels, epoch_records, best_metric, best_mode, best_step)
    summary.update(evaluation.run_evaluators(final_evaluators, ctx))
    hooks_lib.call(hooks, "on_end", hooks_lib.RunEnd(summary, epoch_records, ctx))
  except KeyboardInterrupt:
    raise history.Interrupted(last_step) from None
  finally:
    try:
      hooks_lib.close(hooks)
    finally:
      ckpt.close()
  return FitResult(state=state, best_state=best_state, summary=summary,
                   history=epoch_records, embed=lambda inputs: embed_fn(best_state, inputs))
