"""The seeds of one arm trained together: a study's run path for heads on cached features.

A head on the cached features of a frozen trunk is small, so one compiled step trains
every seed of an arm at once (:func:`tsm.seeds.train_seeds`). :func:`fit_runs` takes the
runs' configs (the same but for ``seed`` and ``data.data_seed``) and writes each run's
directory as :func:`tsm.config.train_and_evaluate` does: ``config.json``,
``metrics.jsonl`` (the step and epoch records, with every epoch evaluator's results),
``summary.json`` and ``pairs.npz`` (the final evaluators on the state the selection
rule keeps), so that a study reads them alike. What differs: no checkpoints (each seed's
best state is kept in memory, chosen as :class:`tsm.checkpoint.Checkpointer` chooses it:
among the epochs a checkpoint would be saved at, the first best ``train.best_metric``,
NaN worst), so a stopped arm trains its unfinished seeds again; the figures, TensorBoard
files and progress bar of a separate run are not written; and the float32 round-off of
batched products (``tests/test_seeds.py``).

Each seed keeps its own data: with ``study.vary_data`` the seeds' splits differ, so the
training inputs are the union of the seeds' training examples (by dataset id, each read
once) and each seed's sampler indexes its own rows of it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any, Sequence

import numpy as np

# The fields in which the runs of one arm may differ.
PER_SEED_FIELDS = (("seed",), ("data", "data_seed"))


def _shared(run: Any) -> dict[str, Any]:
  """A run's config without its per-seed fields."""
  out = json.loads(run.to_json())
  for path in PER_SEED_FIELDS:
    section = out
    for key in path[:-1]:
      section = section.get(key, {})
    section.pop(path[-1], None)
  return out


def reason(configs: Sequence[Any]) -> str | None:
  """Why these runs cannot train together, in words, or None when they can.

  They can when they differ only in ``seed`` and ``data.data_seed`` and each trains
  without augmentation, data parallelism or a step cap (the loop of
  :func:`tsm.seeds.train_seeds` has none of them).
  """
  # pylint: disable=import-outside-toplevel
  from tsm import config as config_lib
  if not configs:
    return "no runs"
  first = configs[0]
  if any(_shared(c) != _shared(first) for c in configs[1:]):
    return "the runs differ in more than seed and data.data_seed"
  if first.data.augment:
    return "data.augment is on"
  if first.train.stop_after_steps:
    return "train.stop_after_steps is set"
  if first.train.data_parallel:
    import jax
    if jax.device_count() > 1:
      return "train.data_parallel over several devices"
  if first.model.trunk != "none" and not config_lib.uses_feature_cache(first):
    return "the pretrained trunk trains (model.freeze_trunk is off)"
  return None


class _Rows:
  """A sampler whose index batches are mapped to rows of the shared input array."""

  def __init__(self, sampler: Any, rows: np.ndarray):
    self.sampler = sampler
    self.rows = rows
    self.steps_per_epoch = int(sampler.steps_per_epoch)

  def epoch(self, epoch: int) -> np.ndarray:
    return self.rows[np.asarray(self.sampler.epoch(epoch))]


def _union_inputs(splits: Sequence[Any]) -> tuple[np.ndarray, np.ndarray,
                                                  list[np.ndarray]]:
  """``(inputs, labels, rows)``: the union of the seeds' training examples (by dataset
  id) and, per seed, the row of each of its training examples."""
  trains = [s.train for s in splits]
  if any(t.ids is None for t in trains):
    raise ValueError("a training split has no example ids; the seeds cannot share "
                     "their inputs.")
  ids = np.unique(np.concatenate([np.asarray(t.ids) for t in trains]))
  x = np.zeros((ids.size,) + tuple(trains[0].input_shape), np.float32)
  y = np.full(ids.size, -2, np.int64)
  rows = []
  for t in trains:
    r = np.searchsorted(ids, np.asarray(t.ids))
    missing = np.flatnonzero(y[r] == -2)
    if missing.size:
      x[r[missing]] = t.get(missing.astype(np.int64))
      y[r[missing]] = np.asarray(t.labels)[missing]
    if not np.array_equal(y[r], np.asarray(t.labels)):
      raise ValueError("two seeds label the same example differently; the seeds cannot "
                       "share their inputs.")
    rows.append(r.astype(np.int64))
  return x, y, rows


def _better(value: Any, best: Any, mode: str) -> bool:
  """Whether ``value`` beats ``best`` (None: nothing yet), NaN worst, ties to the
  first."""
  if value is None:
    return False
  value = float(value)
  worst = np.inf if mode == "min" else -np.inf
  value = worst if np.isnan(value) else value
  if best is None:
    return True
  return value < best if mode == "min" else value > best


def fit_runs(configs: Sequence[Any], rundirs: Sequence[str],
             evaluators: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
  """Trains the runs of one arm together and writes each one's run directory.

  Args:
    configs: the runs' full tsm configs (:func:`reason` must be None for them).
    rundirs: each run's directory (created; a run of another config there is refused).
    evaluators: each run's extra epoch evaluators (a study's measurements), run after
      the built-in ones as :func:`tsm.config.train_and_evaluate` runs them.

  Returns:
    Each run's summary (what its ``summary.json`` holds).

  Raises:
    tsm.config.ConfigError: a bad config or workdir (before anything is written).
    tsm.history.NonFiniteError: a non-finite loss or gradient under
      ``train.nonfinite=stop``.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  from tsm import artifacts, evaluation, history, hooks as hooks_lib, models, seeds
  from tsm import config as config_lib
  from tsm import fit as fit_lib
  from tsm import train as train_lib

  why = reason(configs)
  if why is not None:
    raise ValueError(f"these runs cannot train together: {why}.")
  first = configs[0]
  splits = [config_lib.prepare(c, d) for c, d in zip(configs, rundirs)]
  samplers = [config_lib.build_sampler(c, s.train.labels, int(c.seed))
              for c, s in zip(configs, splits)]
  x, y, rows = _union_inputs(splits)
  samplers = [_Rows(s, r) for s, r in zip(samplers, rows)]
  steps = samplers[0].steps_per_epoch
  if any(s.steps_per_epoch != steps for s in samplers):
    raise ValueError(f"the seeds' samplers give {sorted({s.steps_per_epoch for s in samplers})} "
                     "steps per epoch; set train.steps_per_epoch so that they agree.")
  t, e = first.train, first.eval
  epochs = int(t.epochs)
  model = config_lib.build_model(first, splits[0].input_shape)
  loss = config_lib.build_loss(first, splits[0].num_classes)
  loss_of = loss.for_epoch if hasattr(loss, "for_epoch") else (lambda epoch: loss)
  schedule = config_lib.build_schedule(first, steps)
  tx = config_lib.build_optimizer(first, epochs * steps)
  best_key, best_mode = config_lib.best_metric_key(t.best_metric)
  embed_fn = evaluation.make_embed_fn(model, e.batch_size)
  built = [config_lib.build_evaluators(c, s) for c, s in zip(configs, splits)]
  per_seed = [{"epoch": b[0] + list(extra), "final": b[1],
               "loss_fn": train_lib.make_loss_on_batches(model, loss_of, s),
               "log": artifacts.MetricsLog(os.path.join(d, "metrics.jsonl")),
               "records": [], "best": None, "best_state": None, "best_step": None}
              for b, extra, s, d in zip(built, evaluators, splits, rundirs)]
  every = int(first.checkpoint.every_epochs)
  clock = [time.time()]

  def on_epoch(epoch: int, states: Any, metrics: dict[str, np.ndarray]) -> None:
    last = epoch + 1 == epochs
    for i, (run, s) in enumerate(zip(per_seed, splits)):
      state = seeds.take(states, i)
      steps_i = seeds.step_records(metrics, i, epoch)
      if t.nonfinite == "stop":
        bad = next((r for r in steps_i if r.get("nonfinite", 0.0) > 0), None)
        if bad is not None:
          raise history.NonFiniteError(
              bad["step"], "loss" if not np.isfinite(bad["loss"]) else "gradient")
      record = history.epoch_record(epoch, (epoch + 1) * steps, steps_i)
      record["margin_next"] = float(jax.device_get(state.margin_state.margin))
      due = [ev for ev in run["epoch"] if ev.every_epochs and
             ((epoch + 1) % ev.every_epochs == 0 or last)]
      ctx = evaluation.EvalContext(state=state, splits=s, embed_fn=embed_fn, epoch=epoch,
                                   record=record, loss_fn=run["loss_fn"])
      record.update(evaluation.flatten(evaluation.run_evaluators(due, ctx)))
      record["time_s"] = round(time.time() - clock[0], 3)
      run["log"].append(steps_i + [record])
      run["records"].append(record)
      saved = last or (every and (epoch + 1) % every == 0)
      if saved and best_key in record and _better(record[best_key], run["best"],
                                                  best_mode):
        value = float(record[best_key])
        run["best"] = value if not np.isnan(value) else (
            np.inf if best_mode == "min" else -np.inf)
        run["best_state"] = jax.device_get(state)   # a host copy: states are donated
        run["best_step"] = record["step"]
    clock[0] = time.time()

  summaries: list[dict[str, Any]] = []
  with contextlib.ExitStack() as stack:
    for c, d, run in zip(configs, rundirs, per_seed):
      stack.enter_context(fit_lib.run_directory(d, config=config_lib.to_json(c)))
      run["log"].truncate(0)   # an unfinished run's records: it trains again
    result = seeds.train_seeds(
        model, loss, schedule, tx, x, y, samplers, seeds=[int(c.seed) for c in configs],
        epochs=epochs, margin_update=first.margin.update_every,
        skip_nonfinite=t.nonfinite == "skip",
        init_fn=functools.partial(models.init_variables, model), on_epoch=on_epoch)
    for i, (c, d, s, run) in enumerate(zip(configs, rundirs, splits, per_seed)):
      final_state = seeds.take(result.state, i)
      state = final_state if run["best_state"] is None else run["best_state"]
      labels = fit_lib.RunLabels(dataset=c.data.name, split=c.data.split,
                                 loss=c.loss.name, margin_schedule=c.margin.schedule,
                                 model=config_lib.model_label(c))
      ctx = evaluation.EvalContext(state=state, splits=s, embed_fn=embed_fn,
                                   loss_fn=run["loss_fn"])
      summary = fit_lib.summarize_run(labels, run["records"], best_key, best_mode,
                                      run["best_step"])
      summary.update(evaluation.run_evaluators(run["final"], ctx))
      files = hooks_lib.SummaryFiles(write=lambda line: None)   # as fit writes them
      files.on_start(hooks_lib.RunStart(workdir=d, epochs=epochs, steps_per_epoch=steps,
                                        initial_step=0, primary=True,
                                        labels=labels.entries()))
      files.on_end(hooks_lib.RunEnd(summary, run["records"], ctx))
      with open(os.path.join(d, "fit.log"), "a") as log:
        log.write("".join(history.epoch_line(r, epochs) + "\n" for r in run["records"]))
        log.write(history.selection_line(summary) + "\n")
      summaries.append(summary)
  return summaries

