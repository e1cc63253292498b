"""The training loop: ``fit(model, loss, schedule, optimizer, data, workdir=...)``.

``fit`` takes built objects — any Flax module, any loss ``(embeddings, labels, margin)
-> (loss, stats)`` with the common statistics shape (or a ``tsm.losses.ParametricLoss``),
any margin schedule, an optax transform, data as in-memory arrays or
``tsm.data.DatasetSplits``, a sampler and a list of evaluators — and runs the loop only:
steps, epochs, evaluators, checkpoints, resume, logs. ``tsm.config.train_and_evaluate``
builds those objects from a config and calls it; so can your own script.

It leaves in ``workdir``: ``metrics.jsonl`` (a line per step and per epoch, see
:mod:`tsm.history`), ``checkpoints/`` (orbax: the last ``keep`` plus the best by
``best_metric``), ``summary.json`` (the final evaluators on the best state),
``pairs.npz`` (arrays the evaluators left, e.g. verification pair distances),
``training.png``, and ``config.json`` when a ``run_config`` is given.

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
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import optax
from flax import linen as nn
from tqdm import tqdm

from tsm import artifacts
from tsm import checkpoint as checkpoint_lib
from tsm import distributed
from tsm import evaluation
from tsm import history
from tsm import losses as losses_lib
from tsm import margins as margins_lib
from tsm import plotting
from tsm import tensorboard as tensorboard_lib
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


def _skip_to(index_batches: np.ndarray, start: int) -> list[np.ndarray]:
  """Index batches with the first ``start`` emptied (the loader still counts them, so the
  remaining batches keep their positions and hence their augmentation draws)."""
  empty = np.zeros((0,), np.int64)
  return [empty] * start + list(index_batches[start:])


def fit(model: nn.Module, loss: Any, schedule: margins_lib.MarginSchedule,
        optimizer: optax.GradientTransformation, data: Any, *, workdir: str,
        epochs: int, sampler: samplers_lib.Sampler | None = None, seed: int = 0,
        evaluators: Sequence[evaluation.Evaluator] = (),
        final_evaluators: Sequence[evaluation.Evaluator] = (),
        best_metric: str = "val_loss", best_mode: str = "min",
        checkpoint: CheckpointOptions = CheckpointOptions(), augment: bool = False,
        margin_update: str = "epoch", mesh: Any = None, log_every: int = 20,
        progress: bool = True, print_every_steps: int = 0, stop_after_steps: int = 0,
        nonfinite: str = "stop", embed_batch_size: int = 256,
        init_fn: Callable[[Any, tuple[int, ...]], Any] | None = None,
        run_config: dict[str, Any] | None = None, summary_extra: dict[str, Any] | None = None,
        figure: dict[str, Any] | None = None, tensorboard: bool = True
        ) -> FitResult | None:
  """Trains ``model`` with ``loss`` and ``schedule``, evaluating and checkpointing.

  Args:
    model: a Flax module; ``model.apply(variables, x, train=...)`` gives ``[B, D]``.
    loss: ``(embeddings, labels, margin) -> (loss, stats)`` or a ParametricLoss.
      The model must take a ``train`` keyword (dropout / BatchNorm mode).
    schedule: a margin schedule (``tsm.margins``).
    optimizer: an optax transform; it updates the model's and the loss's parameters.
    data: ``tsm.data.DatasetSplits``, or ``{"train": (x, y), "val": ..., "test": ...}``.
    workdir: run directory (created; resumed when it holds a checkpoint).
    epochs: number of epochs.
    sampler: index batches of the train split; default P x K with P = min(8, classes),
      K = 4.
    seed: seed of the model initialisation, dropout and augmentation.
    evaluators: run after epochs (each by its ``every_epochs``); results go into the epoch
      records as ``<split>_<metric>``.
    final_evaluators: run once on the best state; results go into the summary.
    best_metric: the epoch-record key that picks the best checkpoint.
    best_mode: ``"min"`` or ``"max"``.
    checkpoint: :class:`CheckpointOptions`.
    augment: augment training batches (the splits' augmentation).
    margin_update: ``"epoch"`` or ``"step"``.
    mesh: optional ``"data"`` mesh for data parallelism.
    log_every: steps between host transfers of step metrics.
    progress: show a progress bar (only when stderr is a terminal).
    print_every_steps: also print a plain line every that many steps (0 = off).
    stop_after_steps: stop this process after that many steps, as a kill would (tests).
    nonfinite: ``"stop"`` (raise :class:`tsm.history.NonFiniteError` at the first
      non-finite loss or gradient) or ``"skip"`` (skip such updates and count them).
    embed_batch_size: batch size for embedding splits.
    init_fn: ``(rng, input_shape) -> variables``; default ``model.init`` on a zero batch
      (``tsm.models.init_variables`` also loads pretrained trunks).
    run_config: JSON-able description of the run, written to ``config.json``.
    summary_extra: entries added to the summary (dataset, loss, ... names).
    figure: keyword arguments of ``tsm.plotting.plot_training`` (None: defaults; a key
      ``"skip": True`` draws nothing).
    tensorboard: also write TensorBoard event files (scalars per step and epoch, the
      figures, the test embeddings for the projector) to ``workdir/tensorboard``.

  Returns:
    A :class:`FitResult`, or None when ``stop_after_steps`` stopped the process early.
  """
  if nonfinite not in ("stop", "skip"):
    raise ValueError(f"nonfinite={nonfinite!r} is unknown; use 'stop' or 'skip'.")
  splits = datasets_lib.as_splits(data)
  # A loss that changes with the epoch (paper A's mining curriculum) has ``for_epoch``;
  # each distinct loss it returns gets its own compiled step, built when first needed.
  loss_of = loss.for_epoch if hasattr(loss, "for_epoch") else (lambda epoch: loss)
  loss = losses_lib.as_parametric(loss_of(0))
  if sampler is None:
    classes = np.unique(splits.train.labels[splits.train.labels >= 0]).size
    sampler = samplers_lib.PKSampler(splits.train.labels, min(8, classes), 4, seed)
  primary = distributed.is_primary()   # only process 0 writes files (orbax aside)
  if primary:   # one run per workdir: checked and locked before anything is written
    workdir_lib.prepare_workdir(workdir)
  lock = workdir_lib.WorkdirLock(workdir) if primary else contextlib.nullcontext()
  with lock:
    if primary and run_config is not None:
      artifacts.write_json_atomic(os.path.join(workdir, "config.json"), run_config)

    steps_per_epoch = int(sampler.steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    init_rng, state_rng = jax.random.split(jax.random.key(seed))
    loss_rng = jax.random.fold_in(jax.random.key(seed), 1)
    shape = tuple(splits.input_shape)
    if init_fn is None:
      variables = model.init({"params": init_rng}, np.zeros((1,) + shape, np.float32),
                             train=False)
    else:
      variables = init_fn(init_rng, shape)
    probe = jax.eval_shape(lambda v: model.apply(v, np.zeros((1,) + shape, np.float32),
                                                 train=False), variables)
    loss_variables = loss.init(loss_rng, int(probe.shape[-1]))
    state = train_lib.create_train_state(variables, optimizer, schedule,
                                         jax.random.key_data(state_rng), loss_variables)
    state = train_lib.replicate(state, mesh)
    del variables

    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=checkpoint.keep, best_metric=best_metric,
        best_mode=best_mode, async_save=checkpoint.async_save)
    board = tensorboard_lib.make_writer(os.path.join(workdir, "tensorboard"),
                                       enabled=tensorboard and primary)
    run = history.StepLog(artifacts.MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                                               write=primary),
                          stop_on_nonfinite=nonfinite == "stop")
    start_epoch, start_pos = 0, 0
    restored = ckpt.restore_latest(state)   # newest readable checkpoint, if any
    if restored is not None:
      state, meta, _ = restored
      start_epoch, start_pos = int(meta["epoch"]), int(meta["step_in_epoch"])
      run.log.truncate(int(meta["metrics_bytes"]))
    else:
      run.log.truncate(0)   # lines of a run killed before its first checkpoint
    records = run.log.read()
    epoch_records = [r for r in records if r["kind"] == "epoch"]
    run.epoch_steps = [r for r in records if r["kind"] == "step" and r["epoch"] == start_epoch]

    train_steps: dict[int, Any] = {}

    def train_step_of(epoch: int) -> Any:
      epoch_loss = loss_of(epoch)
      if id(epoch_loss) not in train_steps:
        train_steps[id(epoch_loss)] = train_lib.make_train_step(
            model, epoch_loss, schedule, optimizer, mesh=mesh, margin_update=margin_update,
            skip_nonfinite=nonfinite == "skip")
      return train_steps[id(epoch_loss)]

    end_of_epoch = (None if margin_update == "step"
                    else train_lib.make_end_of_epoch(schedule, mesh))
    embed_fn = evaluation.make_embed_fn(model, embed_batch_size)
    loss_fn = train_lib.make_loss_on_batches(model, loss_of, splits, mesh)

    def meta(epoch: int, pos: int, step: int) -> dict[str, Any]:
      return {"epoch": epoch, "step_in_epoch": pos, "global_step": step,
              "metrics_bytes": run.log.size(), "steps_per_epoch": steps_per_epoch}

    bar = progress and primary and sys.stderr.isatty()
    progress_bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch + start_pos,
                        disable=not bar, dynamic_ncols=True, unit="step",
                        desc=str((summary_extra or {}).get("dataset", "train")))

    def show(fetched: list[dict[str, Any]]) -> None:
      for r in fetched:
        board.scalars(r["step"], r, prefix="train/")
      if fetched and bar:
        progress_bar.set_postfix(loss=f"{fetched[-1]['loss']:.4f}",
                                 mu=f"{fetched[-1]['margin']:.3f}", refresh=False)
      if primary and print_every_steps:
        for r in fetched:
          if r["step"] % print_every_steps == 0:
            print(f"step {r['step']}/{total_steps}  loss {r['loss']:.4f}  "
                  f"mu {r['margin']:.3f}  easy {r['easy_share']:.3f}", flush=True)

    steps_this_run = 0

    last_step = [start_epoch * steps_per_epoch + start_pos]   # the last step applied
    try:
      for epoch in range(start_epoch, epochs):
        t0 = time.time()
        pos0 = start_pos if epoch == start_epoch else 0
        if pos0 == 0:
          run.epoch_steps = []
        # This host's share of the epoch's global batches (all of them on one host).
        indices = distributed.host_batches(sampler.epoch(epoch), mesh)
        hosts = jax.process_count()
        stream: Iterator[dict[str, np.ndarray]] = loader.batches(
            splits.train, _skip_to(indices, pos0), augment=augment,
            seed=(seed, epoch) if hosts == 1 else (seed, epoch, jax.process_index()))
        train_step = train_step_of(epoch)
        for pos, batch in enumerate(stream):
          if pos < pos0:
            continue
          state, step_metrics = train_step(state, distributed.shard_batch(batch, mesh))
          step = epoch * steps_per_epoch + pos + 1
          run.pending.append((epoch, step, step_metrics))
          progress_bar.update(1)
          steps_this_run += 1
          last_step[0] = step
          if len(run.pending) >= log_every:
            show(run.flush())
          if (checkpoint.every_steps and step % checkpoint.every_steps == 0
              and pos + 1 < steps_per_epoch):
            show(run.flush())
            ckpt.save(step, state, meta(epoch, pos + 1, step))
          if stop_after_steps and steps_this_run >= stop_after_steps:
            show(run.flush())
            return None
        show(run.flush())

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
        board.scalars(record["step"], record, prefix="epoch/")
        epoch_records.append(record)
        run.epoch_steps = []
        if last or (checkpoint.every_epochs and (epoch + 1) % checkpoint.every_epochs == 0):
          ckpt.save(step, state, meta(epoch + 1, 0, step),
                    metrics={best_metric: record[best_metric]} if best_metric in record
                    else None)
        if primary:
          line = history.epoch_line(record, epochs)
          progress_bar.write(line) if bar else print(line, flush=True)
      progress_bar.close()

      best_step = ckpt.best_step()
      best_state = state
      if best_step is not None:
        try:
          best_state = ckpt.restore(best_step, state)[0]
        except checkpoint_lib.CheckpointError as e:   # summarise the final state instead
          best_step = None
          print(f"warning: {e}; summarising the final state instead.", file=sys.stderr)
      best_record = next((r for r in epoch_records if r["step"] == best_step),
                         epoch_records[-1] if epoch_records else None)
      ctx = evaluation.EvalContext(state=best_state, splits=splits, embed_fn=embed_fn,
                                   loss_fn=loss_fn)
      summary: dict[str, Any] = dict(summary_extra or {})
      summary.update({
          "epochs": len(epoch_records), "best_metric": best_metric,
          "best_epoch": None if best_record is None else best_record["epoch"] + 1,
          "best_value": None if best_record is None else best_record.get(best_metric),
          # The margin the last epoch trained at, and the one the schedule would use next.
          "final_margin": epoch_records[-1]["margin"] if epoch_records else None,
          "next_margin": epoch_records[-1]["margin_next"] if epoch_records else None,
      })
      summary.update(evaluation.run_evaluators(final_evaluators, ctx))
      if primary:
        _write_outputs(workdir, summary, epoch_records, ctx, board, dict(figure or {}))
    except KeyboardInterrupt:
      _quiet_background_threads()   # the process is stopping; the checkpoints stay intact
      raise history.Interrupted(last_step[0]) from None
    finally:
      progress_bar.close()
      board.close()
      ckpt.close()
    if primary:
      print(history.format_summary(summary), flush=True)
    return FitResult(state=state, best_state=best_state, summary=summary,
                     history=epoch_records,
                     embed=lambda inputs: embed_fn(best_state, inputs))


def _write_outputs(workdir: str, summary: dict[str, Any], epoch_records: list[Any],
                   ctx: Any, board: Any, figure: dict[str, Any]) -> None:
  """A finished run's files: summary.json, pairs.npz (the arrays the evaluators left in
  ``ctx.artifacts``), training.png, roc.png, and their TensorBoard copies (``board``)."""
  artifacts.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  with artifacts.atomic_path(os.path.join(workdir, "pairs.npz")) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **ctx.artifacts)
  step = epoch_records[-1]["step"] if epoch_records else 0
  if not figure.pop("skip", False) and epoch_records:
    path = os.path.join(workdir, "training.png")
    plotting.plot_training(epoch_records, path, **figure)
    board.image("training", path, step)
    if "test_distances" in ctx.artifacts:
      path = os.path.join(workdir, "roc.png")
      plotting.plot_roc(ctx.artifacts["test_distances"], ctx.artifacts["test_same"], path,
                        title=figure.get("title", ""))
      board.image("roc", path, step)
  if len(ctx.splits.test):
    board.embeddings(ctx.embeddings("test"), ctx.labels("test"), tag="test", step=step)


def _quiet_background_threads() -> None:
  """After Ctrl-C: orbax's background save threads may fail as the process winds down;
  their log lines and thread tracebacks would bury the one line the CLI prints."""
  import logging  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  for name in ("absl", "orbax", "jax", "asyncio"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  threading.excepthook = lambda args: None

