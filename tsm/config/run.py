"""The run: check, load, build and train one config in a workdir.

:func:`prepare` checks a config, starts multi-host JAX when asked, loads the data and
checks the workdir (creating nothing); :func:`train_and_evaluate` builds every object the
config describes, once, and trains with ``tsm.fit.fit``; :func:`read_run_config` reads a
run's ``config.json`` back; :func:`check_same_run` refuses a workdir holding a run of
another config.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import ml_collections

from tsm import artifacts, distributed, models, outputs
from tsm import train as train_lib
from tsm.config.builders import (best_metric_key, build_evaluators, build_loss,
                                 build_model, build_optimizer, build_sampler,
                                 build_schedule, load_data, model_label)
from tsm.config.checks import (ConfigError, _section_error, check_config,
                               check_config_with_data)
from tsm.config.defaults import (RESUMABLE_FIELDS, RUN_CONTROL_FIELDS, default_config,
                                 field_values)
from tsm.data import spec as spec_lib


CHANGES_NAME = "changes.jsonl"   # a run's accepted --resume_with_changes, one line each


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (what ``config.json`` holds)."""
  return json.loads(cfg.to_json())


def _optimizer_state_structure(train: dict[str, Any]) -> Any:
  """The structure (and leaf shapes) of the optimiser state of a ``train`` section, on
  a stand-in parameter tree: what a checkpoint's optimiser state must match."""
  tx = train_lib.make_optimizer(
      optimizer=train["optimizer"], learning_rate=train["learning_rate"],
      lr_schedule=train["lr_schedule"], warmup_steps=train["warmup_steps"],
      weight_decay=train["weight_decay"], momentum=train["momentum"],
      grad_clip_norm=train["grad_clip_norm"], total_steps=max(int(train["epochs"]), 1))
  state = jax.eval_shape(tx.init, (jax.ShapeDtypeStruct((2,), "float32"), {}))
  return jax.tree.structure(state), [x.shape for x in jax.tree.leaves(state)]


def _epochs_done(workdir: str) -> int:
  """Epoch records in the run's ``metrics.jsonl`` (0 without one)."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  try:
    records = artifacts.MetricsLog(os.path.join(workdir, "metrics.jsonl")).read()
  except (OSError, ValueError):
    return 0
  return sum(r.get("kind") == "epoch" for r in records)


def _newer_field_at_default(saved: dict[str, Any], path: str, now: Any) -> bool:
  """Whether ``path`` is a field the saved config predates (its key is absent there)
  whose value now is tsm's default: a field added to tsm keeps the old behaviour at its
  default, so the run is the same run."""
  node: Any = saved
  for key in path.split("."):
    if not isinstance(node, dict):
      return False
    if key not in node:
      default: Any = to_json(default_config())
      for k in path.split("."):
        if not isinstance(default, dict) or k not in default:
          return False
        default = default[k]
      return default == now
    node = node[key]
  return False


def check_same_run(workdir: str, cfg: ml_collections.ConfigDict, *,
                   resume_with_changes: bool = False) -> dict[str, list[Any]]:
  """Refuses a ``workdir`` that holds a run of another config.

  The :data:`RUN_CONTROL_FIELDS` may always differ. With ``resume_with_changes`` the
  :data:`RESUMABLE_FIELDS` (the optimiser's settings, the epochs) may differ too, as
  long as the optimiser's state keeps its structure and the epochs do not fall below
  those already trained.

  Returns:
    The changed resumable fields, ``{"train.learning_rate": [there, now], ...}``
    (empty when nothing changed).

  Raises:
    ConfigError: one line naming the first field that may not differ (and, where it
      may with ``--resume_with_changes``, saying so).
    tsm.workdir.DamagedRun: the saved ``config.json`` is not a JSON object.
  """
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  saved = workdir_lib.read_config(workdir)
  if saved is None:
    return {}
  current = to_json(cfg)
  found = [d for d in workdir_lib.differences(saved, current, ignore=RUN_CONTROL_FIELDS)
           if not _newer_field_at_default(saved, d[0], d[2])]
  resumable = {".".join(k) for k in RESUMABLE_FIELDS}

  def shown(path: str, there: Any, now: Any) -> str:
    return f"{path} ({there!r} there, {now!r} now)"

  fixed = [d for d in found if d[0] not in resumable]
  if fixed:
    raise ConfigError(f"workdir {workdir} holds a run with a different config "
                      f"({shown(*fixed[0])}); that field cannot change in a run: use a new "
                      "--workdir, or the same config to resume it.")
  if found and not resume_with_changes:
    raise ConfigError(f"workdir {workdir} holds a run with a different config "
                      f"({shown(*found[0])}); rerun with --resume_with_changes to continue "
                      "it with the new value, use a new --workdir, or the same config to "
                      "resume it.")
  if not found:
    return {}
  saved_train = dict(default_config().train.to_dict(), **saved.get("train", {}))
  if _optimizer_state_structure(saved_train) != _optimizer_state_structure(current["train"]):
    names = ", ".join(shown(*d) for d in found if d[0] != "train.epochs")
    raise ConfigError(f"workdir {workdir}: {names} would change the structure of the "
                      "optimiser's state in its checkpoints, so the run cannot continue "
                      "with it; use a new --workdir.")
  done = _epochs_done(workdir)
  if int(cfg.train.epochs) < done:
    raise ConfigError(f"train.epochs={cfg.train.epochs} is below the {done} epochs the run "
                      f"in {workdir} has trained; pass train.epochs >= {done}.")
  return {path: [there, now] for path, there, now in found}


def record_changes(workdir: str, changes: dict[str, list[Any]]) -> None:
  """Appends a continuation's changes to the run's ``changes.jsonl`` (one line each:
  the time and ``{"field": [there, now]}``), before ``config.json`` is rewritten."""
  if not changes:
    return
  import time  # pylint: disable=import-outside-toplevel
  line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changes},
                    sort_keys=True)
  with open(os.path.join(workdir, CHANGES_NAME), "a", encoding="utf-8") as f:
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's ``config.json`` over the defaults (a run written before a field existed
  still loads); one-line ValueError for a workdir without a readable one."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    what = "does not exist" if not os.path.isdir(workdir) else "holds no config.json"
    raise ValueError(f"workdir {workdir} {what}; pass the --workdir of a tsm-train run.")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"workdir {workdir}: config.json is unreadable ({e}); pass the "
                     "--workdir of a finished tsm-train run.") from None
  # The saved config over the defaults: a run written before a field existed still loads.
  cfg = default_config()
  cfg.unlock()
  cfg.update(ml_collections.ConfigDict(saved))
  return cfg


def prepare(cfg: ml_collections.ConfigDict, workdir: str) -> Any:
  """Validates ``cfg``, starts multi-host JAX if asked, loads the data and checks
  ``workdir``; creates nothing.

  Returns:
    The ``tsm.data.DatasetSplits``.

  Raises:
    ConfigError: one line naming the bad field (or the missing dataset) and the fix.
  """
  check_config(cfg)
  splits, _, _ = _load_checked(cfg, os.path.expanduser(os.fspath(workdir)))
  return splits


def _load_checked(cfg: ml_collections.ConfigDict, workdir: str, *,
                  resume_with_changes: bool = False) -> tuple[Any, Any, dict[str, Any]]:
  """:func:`prepare` for a config that passed :func:`check_config`.

  Returns:
    ``(splits, sampler, changes)``: the ``tsm.data.DatasetSplits``, the run's train
    sampler (built here once: the data-parallel check needs its batch shape) and the
    resumable fields changed since the run in ``workdir`` (:func:`check_same_run`).
  """
  d = cfg.distributed
  if d.initialize:   # multi-host start-up, before anything touches a device
    try:
      distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=d.num_processes, process_id=d.process_id)
    except ValueError as e:
      raise _section_error("distributed", e) from None
  try:
    splits = load_data(cfg)
  except spec_lib.DatasetNotPreparedError as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from None
  except ValueError as e:   # the spec passed check_config: a fault of the files
    raise ConfigError(f"data: {str(e).strip().splitlines()[0]}") from None
  check_config_with_data(cfg, splits)
  sampler = build_sampler(cfg, splits.train.labels, int(cfg.seed))
  _check_against_the_run(cfg, splits, sampler)
  if distributed.use_mesh(cfg.train.data_parallel):
    rows = sampler.epoch(0).shape[1]
    if rows % jax.device_count():
      raise ConfigError(
          f"a train batch of {rows} rows does not split over {jax.device_count()} "
          "devices; make it a multiple of the device count (train.classes_per_batch x "
          "train.samples_per_class or train.batch_size) or set train.data_parallel=False.")
  changes = check_same_run(workdir, cfg, resume_with_changes=resume_with_changes)
  return splits, sampler, changes


def check_shape(cfg: Any) -> None:
  """Refuses a config that is not a full run config (a dict, or a ConfigDict lacking
  sections or fields), one line naming what is missing, before any field is read.

  Raises:
    ConfigError: the config is not an ``ml_collections.ConfigDict`` with every section
      and field of :func:`default_config`.
  """
  fix = ("have get_config() start from tsm.config.default_config() and set the fields "
         "it changes.")
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"the config is a {type(cfg).__name__}, not an "
                      f"ml_collections.ConfigDict; {fix}")
  defaults = default_config()
  missing = [k for k in defaults.keys() if k not in cfg]
  if not missing:
    missing = [f"{k}.{f}" for k in defaults.keys()
               if isinstance(defaults[k], ml_collections.ConfigDict)
               and isinstance(cfg[k], ml_collections.ConfigDict)
               for f in defaults[k].keys() if f not in cfg[k]]
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                      else "")
    raise ConfigError(f"the config lacks {shown}; {fix}")


def _check_against_the_run(cfg: ml_collections.ConfigDict, splits: Any,
                           sampler: Any) -> None:
  """Settings that only the data and the run's length show to be wrong: an error where
  the numbers would be meaningless, a warning line where the run is still useful."""
  import sys  # pylint: disable=import-outside-toplevel
  e, t = cfg.eval, cfg.train
  references = len(splits.train.labels)
  if e.knn_k and cfg.data.split != "class_disjoint" and e.knn_k > references - 1:
    raise ConfigError(f"eval.knn_k={e.knn_k} exceeds the {references} train examples the "
                      f"k-NN vote searches; set eval.knn_k<={max(references - 1, 1)} (0 "
                      "turns k-NN off).")
  total = int(t.epochs) * int(sampler.steps_per_epoch)
  if int(t.warmup_steps) > total:
    print(f"warning: train.warmup_steps={t.warmup_steps} exceeds the run's {total} steps: "
          f"the learning rate never reaches train.learning_rate={t.learning_rate:g}.",
          file=sys.stderr, flush=True)


def hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's training fields as TensorBoard hyper-parameters: ``{"section.field":
  value}`` of every documented field but the :data:`RUN_CONTROL_FIELDS`."""
  control = {".".join(f) for f in RUN_CONTROL_FIELDS}
  return {k: v for k, v in field_values(cfg).items() if k not in control}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *,
                       evaluators: Sequence[Any] = (), resume_with_changes: bool = False,
                       rebuild_outputs: bool = False) -> Any:
  """Builds every object ``cfg`` describes and trains with ``tsm.fit.fit``.

  Args:
    cfg: a full config (see :func:`default_config`).
    workdir: the run directory (resumed when it holds a run of the same config).
    evaluators: extra epoch evaluators (a study's analyses), run after the built-in ones.
    resume_with_changes: continue the run in ``workdir`` with the
      :data:`RESUMABLE_FIELDS` changed (:func:`check_same_run`; recorded in its
      ``changes.jsonl`` and ``metrics.jsonl``).
    rebuild_outputs: write a finished run's final files again (summary, figures,
      TensorBoard) from its checkpoint and ``metrics.jsonl``.

  Returns:
    The ``tsm.fit.FitResult`` (None when ``train.stop_after_steps`` stopped it early). For
    a run that had already finished, nothing is trained or written: the result holds the
    saved summary only (no state).

  Raises:
    ConfigError: a bad config value, before anything is created.
  """
  from tsm import fit as fit_lib  # pylint: disable=import-outside-toplevel
  from tsm import history  # pylint: disable=import-outside-toplevel
  from tsm import hooks as hooks_lib  # pylint: disable=import-outside-toplevel
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  workdir = os.path.expanduser(os.fspath(workdir))   # a quoted or "--workdir=~/..." ~
  check_shape(cfg)
  check_config(cfg)
  rebuild = []   # final files of a finished run to write again
  if workdir_lib.is_finished(workdir, to_json(cfg), ignore=RUN_CONTROL_FIELDS):
    rebuild = (["its final files"] if rebuild_outputs else [
        f"{name} (missing or damaged)"
        for name in outputs.damaged(workdir, tensorboard=bool(cfg.train.tensorboard))])
    if not rebuild:
      # A finished run: report it again and write nothing (a read-only workdir is fine).
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      print(history.format_summary(summary), flush=True)
      return fit_lib.FitResult(state=None, best_state=None, summary=summary, history=[],
                               embed=None)
  splits, sampler, changes = _load_checked(cfg, workdir,
                                           resume_with_changes=resume_with_changes)
  seed = int(cfg.seed)
  model = build_model(cfg, splits.input_shape)
  schedule = build_schedule(cfg, sampler.steps_per_epoch)
  optimizer = build_optimizer(cfg, int(cfg.train.epochs) * sampler.steps_per_epoch)
  epoch_evaluators, final_evaluators = build_evaluators(cfg, splits)
  best_key, best_mode = best_metric_key(cfg.train.best_metric)
  t, c = cfg.train, cfg.checkpoint
  val_margin = cfg.eval.val_margin
  figures = hooks_lib.Figures(
      f"{cfg.data.name}: {cfg.loss.name} loss, {cfg.margin.schedule} margin, "
      f"{model_label(cfg)}",
      val_label="validation loss" + ("" if val_margin is None else
                                     f" (at margin {val_margin:g})"),
      easy_threshold=cfg.margin.threshold if cfg.margin.schedule == "dams" else None)
  with fit_lib.run_directory(workdir):
    if distributed.is_primary():
      record_changes(workdir, changes)   # the run's history, then its new config
      artifacts.write_json_atomic(os.path.join(workdir, workdir_lib.CONFIG_NAME),
                                  to_json(cfg))
      if rebuild:
        print(f"the run in {workdir} is finished; writing {', '.join(rebuild)} again "
              "from its checkpoint and metrics.jsonl", flush=True)
        if cfg.train.tensorboard:
          outputs.clear_projector(workdir)
      if changes:
        print(f"continuing the run in {workdir} with " + ", ".join(
            f"{k} {there!r} -> {now!r}" for k, (there, now) in changes.items()), flush=True)
    return fit_lib.fit(
        model, build_loss(cfg, splits.num_classes), schedule, optimizer, splits,
        workdir=workdir,
        epochs=int(t.epochs), sampler=sampler, seed=seed,
        evaluators=epoch_evaluators + list(evaluators), final_evaluators=final_evaluators,
        best_metric=best_key, best_mode=best_mode,
        checkpoint=fit_lib.CheckpointOptions(c.every_steps, c.every_epochs, c.keep,
                                             c.async_save),
        options=fit_lib.LoopOptions(
            augment=bool(cfg.data.augment), margin_update=cfg.margin.update_every,
            nonfinite=t.nonfinite, max_skipped_steps=t.max_skipped_steps,
            log_every=t.log_every,
            embed_batch_size=cfg.eval.batch_size, stop_after_steps=t.stop_after_steps),
        mesh=train_lib.data_mesh() if distributed.use_mesh(t.data_parallel) else None,
        init_fn=functools.partial(models.init_variables, model),
        labels=fit_lib.RunLabels(dataset=cfg.data.name, split=cfg.data.split,
                                 loss=cfg.loss.name, margin_schedule=cfg.margin.schedule,
                                 model=model_label(cfg)),
        hooks=hooks_lib.standard(progress=t.progress, print_every_steps=t.print_every_steps,
                                 tensorboard=t.tensorboard, figures=figures,
                                 hparams=hparams(cfg)),
        changes=changes, resume_with_changes=bool(changes))
