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

from tsm import distributed, models
from tsm import train as train_lib
from tsm.config.builders import (best_metric_key, build_evaluators, build_loss,
                                 build_model, build_optimizer, build_sampler,
                                 build_schedule, load_data, model_label)
from tsm.config.checks import (ConfigError, _section_error, check_config,
                               check_config_with_data)
from tsm.config.defaults import RUN_CONTROL_FIELDS, default_config, field_values
from tsm.data import spec as spec_lib


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (what ``config.json`` holds)."""
  return json.loads(cfg.to_json())


def check_same_run(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when ``workdir`` holds a run whose config differs in a training
  field (the :data:`RUN_CONTROL_FIELDS` may differ)."""
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  diff = workdir_lib.run_difference(workdir, to_json(cfg), ignore=RUN_CONTROL_FIELDS)
  if diff:
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({diff}); "
                      "use a new --workdir, or the same config to resume it.")


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
  splits, _ = _load_checked(cfg, workdir)
  return splits


def _load_checked(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
  """:func:`prepare` for a config that passed :func:`check_config`.

  Returns:
    ``(splits, sampler)``: the ``tsm.data.DatasetSplits`` and the run's train sampler
    (built here once: the data-parallel check needs its batch shape).
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
  if distributed.use_mesh(cfg.train.data_parallel):
    rows = sampler.epoch(0).shape[1]
    if rows % jax.device_count():
      raise ConfigError(
          f"a train batch of {rows} rows does not split over {jax.device_count()} "
          "devices; make it a multiple of the device count (train.classes_per_batch x "
          "train.samples_per_class or train.batch_size) or set train.data_parallel=False.")
  check_same_run(workdir, cfg)
  return splits, sampler


def hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's training fields as TensorBoard hyper-parameters: ``{"section.field":
  value}`` of every documented field but the :data:`RUN_CONTROL_FIELDS`."""
  control = {".".join(f) for f in RUN_CONTROL_FIELDS}
  return {k: v for k, v in field_values(cfg).items() if k not in control}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *,
                       evaluators: Sequence[Any] = ()) -> Any:
  """Builds every object ``cfg`` describes and trains with ``tsm.fit.fit``.

  Args:
    cfg: a full config (see :func:`default_config`).
    workdir: the run directory (resumed when it holds a run of the same config).
    evaluators: extra epoch evaluators (a study's analyses), run after the built-in ones.

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
  check_config(cfg)
  if workdir_lib.is_finished(workdir, to_json(cfg), ignore=RUN_CONTROL_FIELDS):
    # A finished run: report it again and write nothing (a read-only workdir is fine).
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    print(history.format_summary(summary), flush=True)
    return fit_lib.FitResult(state=None, best_state=None, summary=summary, history=[],
                             embed=None)
  splits, sampler = _load_checked(cfg, workdir)
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
  with fit_lib.run_directory(workdir, config=to_json(cfg)):
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
            nonfinite=t.nonfinite, log_every=t.log_every,
            embed_batch_size=cfg.eval.batch_size, stop_after_steps=t.stop_after_steps),
        mesh=train_lib.data_mesh() if distributed.use_mesh(t.data_parallel) else None,
        init_fn=functools.partial(models.init_variables, model),
        labels=fit_lib.RunLabels(dataset=cfg.data.name, split=cfg.data.split,
                                 loss=cfg.loss.name, margin_schedule=cfg.margin.schedule,
                                 model=model_label(cfg)),
        hooks=hooks_lib.standard(progress=t.progress, print_every_steps=t.print_every_steps,
                                 tensorboard=t.tensorboard, figures=figures,
                                 hparams=hparams(cfg)))
