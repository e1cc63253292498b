"""The training loop: ``fit(model, loss, schedule, optimizer, data, workdir=...)``.

Why one module of this length: the loop, its resume (checkpoints, history, run identity)
and its stopping rules share one state and one order of events; the periodic work around
it (progress, logs, TensorBoard, figures, summary files) is in :mod:`tsm.hooks`.

``fit`` takes built objects — any Flax module, any loss ``(embeddings, labels, margin)
-> (loss, stats)`` with the common statistics shape (or a ``tsm.losses.ParametricLoss``),
any margin schedule, an optax transform, data as in-memory arrays or
``tsm.data.DatasetSplits``, a sampler and a list of evaluators — and runs the loop only:
steps, epochs, evaluators, checkpoints, resume. How the run is shown and what it leaves
besides its records are hooks the loop calls (:mod:`tsm.hooks`: the progress bar, log
lines, TensorBoard, figures, the summary files). ``tsm.config.train_and_evaluate`` builds
those objects from a config and calls it; so can your own script.

The loop itself writes, in ``workdir``: ``metrics.jsonl`` (a line per step and per epoch,
see :mod:`tsm.history`), ``checkpoints/`` (orbax: the last ``keep`` plus the best by
``best_metric``) and ``run.json`` (what identifies the run, :mod:`tsm.identity`: a rerun
of other data, model, loss or optimiser on the same workdir is refused). The standard hooks (:func:`tsm.hooks.standard`, the default) add
``summary.json`` (the final evaluators on the best state), ``pairs.npz`` (arrays the
evaluators left, e.g. verification pair distances), ``training.png``, ``roc.png`` and
``tensorboard/``. One run per workdir and its ``config.json`` are the caller's:
:func:`run_directory` takes the lock and writes the config.

Resumption: a rerun with the same ``workdir`` restores the latest checkpoint, including
its position within the epoch, cuts ``metrics.jsonl`` back to its length at that
checkpoint and goes on; samplers and augmentation are pure functions of ``(seed, epoch,
step)``, so the resumed run computes exactly what an uninterrupted one does. Under a
command's signal handler (:mod:`tsm.stopping`) SIGTERM, SIGUSR1 and Ctrl-C stop the loop
at the end of the current step with a checkpoint of it.

Scale: pass ``mesh`` (``tsm.train.data_mesh()``) to shard each batch over a ``"data"``
axis with the state replicated; on several hosts each host decodes only its share and
only process 0 writes files (orbax aside). See :mod:`tsm.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
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
from tsm import identity
from tsm import margins as margins_lib
from tsm import stopping
from tsm import train as train_lib
from tsm import workdir as workdir_lib
from tsm.data import datasets as datasets_lib
from tsm.data import loader
from tsm.data import samplers as samplers_lib
from tsm.metrics import neighbors


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
      non-finite loss or gradient) or ``"skip"`` (skip such updates, and those that
      would make the parameters non-finite, and count them: ``num_skipped`` of each
      epoch record, ``skipped_steps`` of the summary).
    max_skipped_steps: under ``"skip"``, raise :class:`tsm.history.NonFiniteError`
      after that many skipped steps in a row (0: never).
    log_every: steps between host transfers of step metrics.
    embed_batch_size: batch size for embedding splits.
    stop_after_steps: stop this process after that many steps, as a kill would (tests;
      0 = never).
  """
  augment: bool = False
  margin_update: str = "epoch"
  nonfinite: str = "stop"
  max_skipped_steps: int = 100
  log_every: int = 20
  embed_batch_size: int = 256
  stop_after_steps: int = 0

  def check(self) -> None:
    """Raises ValueError (one line naming the field) for a value the loop cannot use."""
    if self.nonfinite not in ("stop", "skip"):
      raise ValueError(f"nonfinite={self.nonfinite!r} is unknown; use 'stop' or 'skip'.")
    if int(self.max_skipped_steps) < 0:
      raise ValueError(f"max_skipped_steps={self.max_skipped_steps!r} must be >= 0 "
                       "(0: never stop for skipped steps).")


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


def check_inputs(data: Any, nonfinite: str = "stop") -> None:
  """Refuses in-memory inputs with NaN or inf rows (one line naming the split, the count
  and the first row), before anything is compiled: a train step that draws one would be
  reported as a divergence, an evaluated split cannot be ranked. Under
  ``nonfinite="skip"`` train rows only get a warning (the steps that draw them are
  skipped and counted). ``DatasetSplits`` (read lazily) are not checked here.

  Raises:
    ValueError: a split's inputs hold NaN or inf.
  """
  if not isinstance(data, Mapping):
    return
  for name in ("train", "val", "test"):
    pair = data.get(name)
    if pair is None:
      continue
    x = np.asarray(pair[0])
    if x.dtype.kind not in "fc" or x.ndim < 1 or not len(x):
      continue
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if not bad.size:
      continue
    where = (f"data: the {name} inputs hold NaN or inf in {bad.size} row(s) (first: row "
             f"{bad[0]})")
    if name == "train" and nonfinite == "skip":
      print(f"warning: {where}; the steps that draw them are skipped and counted.",
            file=sys.stderr, flush=True)
      continue
    raise ValueError(f"{where}; remove or fix those rows" + (
        " (or pass nonfinite='skip' to skip the steps that draw them)."
        if name == "train" else "."))


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
  path = run.log.path
  fix = ("restore it from a copy, or train the run again (remove the workdir's "
         "checkpoints/ and metrics.jsonl, or use another workdir)")
  if restored is not None:
    state, saved, step = restored
    epoch, pos = int(saved["epoch"]), int(saved["step_in_epoch"])
    wanted, found = int(saved["metrics_bytes"]), run.log.size()
    if found < wanted:
      raise workdir_lib.DamagedRun(
          f"{path} is damaged: {found} bytes where checkpoint {step} recorded {wanted} "
          f"(cut short or deleted); {fix}.")
    run.log.truncate(wanted)
  else:
    run.log.truncate(0)   # lines of a run killed before its first checkpoint
  try:
    records = run.log.read()
  except ValueError as e:
    raise workdir_lib.DamagedRun(f"{path} is damaged (a line is not JSON: {e}); "
                                 f"{fix}.") from None
  logged = sum(r.get("kind") == "epoch" for r in records)
  if restored is not None and logged != epoch:
    raise workdir_lib.DamagedRun(
        f"{path} is damaged: {logged} epoch records where checkpoint {step} has trained "
        f"{epoch} epochs; {fix}.")
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
      "skipped_steps": int(sum(r.get("num_skipped", 0) for r in epoch_records)),
  })
  summary.update(history.selection(epoch_records, best_metric, best_mode,
                                   summary["best_epoch"]))
  return summary


def _warn_of_meaningless_results(epoch_records: list[dict[str, Any]], best_metric: str,
                                 splits: Any, ctx: Any) -> None:
  """One warning line each (stderr) for a finished run whose numbers mislead: no epoch
  record holds ``best_metric`` (the summary is of the last epoch), or the test
  embeddings collapsed to one point (the metrics are chance's)."""
  if epoch_records and not any(best_metric in r for r in epoch_records):
    held = sorted(k for k in epoch_records[-1] if k.startswith("val_"))
    print(f"warning: no epoch record holds best_metric={best_metric!r} ("
          + (f"the records hold {', '.join(held)}" if held else "no validation split or "
             "no epoch evaluator") + "); the summary is of the last epoch's state.",
          file=sys.stderr, flush=True)
  if len(splits.test) > 1:
    embeddings = np.asarray(ctx.embeddings("test"), np.float64)
    spread = float(np.max(np.ptp(embeddings, axis=0))) if embeddings.size else 0.0
    if np.isfinite(spread) and spread <= 1e-5 * max(float(np.max(np.abs(embeddings))), 1e-12):
      print("warning: the test embeddings are all the same point (the model collapsed, "
            "e.g. a learning rate too high); the test metrics are those of chance.",
            file=sys.stderr, flush=True)


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
        hooks: Sequence[hooks_lib.Hook] | None = None,
        changes: Mapping[str, Any] | None = None,
        resume_with_changes: bool = False) -> FitResult | None:
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
    sampler: index batches of the train split; default :func:`default_sampler`
      (``tsm.data.MultiViewSampler`` for two-view losses: each input twice, augmented
      on its own with ``options.augment``).
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
    changes: what the caller changed in the run since its last checkpoint (e.g.
      ``{"train.learning_rate": [1e-2, 1e-3]}``): logged in ``metrics.jsonl`` as a
      ``{"kind": "change", "step", "epoch", "changes"}`` record at the resume point.
    resume_with_changes: continue the run in ``workdir`` with another optimiser or
      more epochs (:mod:`tsm.identity`); without it a rerun on the same workdir must be
      the same run: same data, model, loss, optimiser, seed and epochs.

  Returns:
    A :class:`FitResult`, or None when ``options.stop_after_steps`` stopped the process
    early.

  Raises:
    tsm.history.NonFiniteError: a non-finite loss or gradient under ``nonfinite="stop"``.
    tsm.history.Interrupted: Ctrl-C, SIGTERM or SIGUSR1. Under a command's handler
      (:func:`tsm.stopping.handle_signals`) the loop stops at the end of the current
      step and checkpoints it; otherwise the last checkpoint is the resume point.
  """
  options.check()
  check_inputs(data, options.nonfinite)
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
                        stop_on_nonfinite=options.nonfinite == "stop",
                        max_skipped=options.max_skipped_steps)
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

  record = identity.describe(
      model=model, loss=loss, optimizer=optimizer, splits=splits, params=state.params,
      epochs=epochs, seed=seed, steps_per_epoch=steps_per_epoch)
  changed = identity.check(workdir, record, resume_with_changes=resume_with_changes)
  changes = dict(changes) if changes else changed   # the caller's names, else fit's
  state, start_epoch, start_pos, epoch_records = _resume(ckpt, state, run)
  if start_epoch > epochs:
    raise ValueError(f"epochs={epochs} is below the {start_epoch} epochs the run in "
                     f"{workdir} has trained; pass epochs >= {start_epoch}.")
  if primary:
    identity.save(workdir, record)
  last_step = start_epoch * steps_per_epoch + start_pos   # the last step applied
  saved_step = last_step   # the step of the newest checkpoint (the resume point)
  if changes:
    run.log.append([{"kind": "change", "step": last_step, "epoch": start_epoch,
                     "changes": dict(changes)}])

  def stop_if_asked(epoch: int, pos: int, metrics: dict[str, float] | None = None) -> None:
    """After a stop signal (tsm.stopping): a checkpoint of this step, then Interrupted."""
    nonlocal saved_step
    signum = stopping.requested()
    if signum is None:
      return
    stopping.clear()
    flush()
    if saved_step != last_step:
      ckpt.save(last_step, state, meta(epoch, pos, last_step), metrics=metrics)
      saved_step = last_step
    raise history.Interrupted(last_step, signum)

  deferring = contextlib.ExitStack()
  try:
    hooks_lib.call(hooks, "on_start", hooks_lib.RunStart(
        workdir=workdir, epochs=epochs, steps_per_epoch=steps_per_epoch,
        initial_step=last_step, primary=primary, labels=labels.entries()))
    steps_this_run = 0
    deferring.enter_context(stopping.deferred())   # a signal stops at a step's end
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
          saved_step = last_step
        if options.stop_after_steps and steps_this_run >= options.stop_after_steps:
          flush()
          return None
        if pos + 1 < steps_per_epoch:   # at an epoch's last step: after its record
          stop_if_asked(epoch, pos + 1)
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
      try:
        record.update(evaluation.flatten(evaluation.run_evaluators(due, ctx)))
      except neighbors.NonFiniteEmbeddings:   # finite steps, but the model diverged
        raise history.NonFiniteError(last_step, "embedding of the evaluated splits"
                                     ) from None
      record["time_s"] = round(time.time() - t0, 3)
      run.log.append([record])
      epoch_records.append(record)
      run.start_epoch()
      ranked = ({best_metric: record[best_metric]} if best_metric in record else None)
      if last or (checkpoint.every_epochs and (epoch + 1) % checkpoint.every_epochs == 0):
        ckpt.save(step, state, meta(epoch + 1, 0, step), metrics=ranked)
        saved_step = step
      hooks_lib.call(hooks, "on_epoch_end", record)
      stop_if_asked(epoch + 1, 0, ranked)
    deferring.close()
    stop_if_asked(epochs, 0)   # a signal in the last moments of the deferred block

    best_state, best_step = _best_state(ckpt, state)
    hooks_lib.call(hooks, "on_final_evaluation", best_step)
    ctx = evaluation.EvalContext(state=best_state, splits=splits, embed_fn=embed_fn,
                                 loss_fn=loss_fn)
    summary = summarize_run(labels, epoch_records, best_metric, best_mode, best_step)
    summary.update(evaluation.run_evaluators(final_evaluators, ctx))
    if primary:
      _warn_of_meaningless_results(epoch_records, best_metric, splits, ctx)
    hooks_lib.call(hooks, "on_end", hooks_lib.RunEnd(summary, epoch_records, ctx))
  except history.Interrupted:
    raise
  except KeyboardInterrupt as e:   # outside the steps (tsm.stopping.Stop), or no handler
    raise history.Interrupted(last_step, getattr(e, "signum", signal.SIGINT),
                              saved=saved_step == last_step) from None
  finally:
    deferring.close()
    stopping.clear()
    try:
      hooks_lib.close(hooks)
    finally:
      ckpt.close()
  return FitResult(state=state, best_state=best_state, summary=summary,
                   history=epoch_records, embed=lambda inputs: embed_fn(best_state, inputs))
