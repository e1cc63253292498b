"""The runs of a study: their layout, plan and checks, the grid with its timing.

The loss studies' runs are ``(dataset, loss, seed)`` tasks, each in
``<workdir>/<dataset>/<loss>/seed<seed>`` (:func:`run_dir`); :func:`plan` builds and
validates every run's config before anything trains, :func:`check_tasks` fails before
any training when a run directory holds another run or a run's data do not load, and
:func:`run_tasks` runs the grid (:func:`experiments.common.grid.run_grid`) and records
the study's timing (:mod:`experiments.common.timing`).
"""

from __future__ import annotations

import time
import os
from typing import Any, Callable, Mapping, Sequence

from experiments.common import grid
from experiments.common import timing as timing_lib

# build(cfg, dataset, loss, seed) -> the run's tsm config.
Build = Callable[[Any, str, str, int], Any]


def run_dir(workdir: str, dataset: str, loss: str, seed: int) -> str:
  """``<workdir>/<dataset>/<loss>/seed<seed>``."""
  return os.path.join(workdir, dataset, loss, f"seed{seed}")


def seeds_of(cfg: Any) -> list[int]:
  """The study's seeds, ``first_seed ... first_seed + seeds - 1``."""
  return list(range(cfg.study.first_seed, cfg.study.first_seed + cfg.study.seeds))


def plan(cfg: Any, workdir: str, build: Build) -> list[dict[str, Any]]:
  """Every run of a (dataset x loss x seed) study, validated before any training.

  Args:
    cfg: the study config (``study.datasets``, ``study.losses``, the seeds).
    workdir: the study directory.
    build: ``build(cfg, dataset, loss, seed)`` -> the run's tsm config.

  Returns:
    One task per (dataset, loss, seed): ``{"dataset", "loss", "seed", "config",
    "rundir", "keep_embeddings"}`` (the first seed keeps its embeddings).

  Raises:
    StudyError: a run's config fails :func:`tsm.config.check_config` (the message
      names the dataset, the loss and the field).
  """
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  s = cfg.study
  seeds = seeds_of(cfg)
  tasks = []
  for dataset in s.datasets:
    for loss in s.losses:
      for seed in seeds:
        run = build(cfg, dataset, loss, seed)
        try:
          config_lib.check_config(run)
        except config_lib.ConfigError as e:
          raise grid.StudyError(f"{dataset} ({loss}): {e}") from None
        tasks.append({"dataset": dataset, "loss": loss, "seed": seed, "config": run,
                      "rundir": run_dir(workdir, dataset, loss, seed),
                      "keep_embeddings": seed == seeds[0]})
  return tasks


def check_data(tasks: Sequence[dict[str, Any]]) -> None:
  """Loads each run's data once: a missing TFDS set fails here, in one line.

  Reads the data without starting JAX's runtime, so the workers can still be forked;
  the loaded offline sets stay cached in this process and the forks share them.

  Raises:
    StudyError: a dataset is not prepared or does not fit its run's config.
  """
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tsm import data as data_lib  # pylint: disable=import-outside-toplevel
  from tsm.data import spec as spec_lib  # pylint: disable=import-outside-toplevel
  seen = set()
  for task in tasks:
    run = task["config"]
    key = (task["dataset"], int(run.data.data_seed))
    if key in seen:
      continue
    seen.add(key)
    try:
      splits = data_lib.load(config_lib.data_spec(run), seed=int(run.seed))
      config_lib.check_config_with_data(run, splits)
    except (spec_lib.DatasetNotPreparedError, config_lib.ConfigError, ValueError) as e:
      raise grid.StudyError(f"{task['dataset']}: {str(e).strip().splitlines()[0]}"
                            ) from None


def check_tasks(tasks: Sequence[dict[str, Any]]) -> None:
  """Fails before any training when a run directory holds a run of another config, or
  a run's data do not load (one line each, :class:`~experiments.common.grid.StudyError`)."""
  grid.check_runs([(task["rundir"], task["config"]) for task in tasks])
  check_data(tasks)


def costliest_first(tasks: Sequence[dict[str, Any]], cost: Mapping[str, float],
                    default: float) -> list[dict[str, Any]]:
  """The tasks, costliest first (``cost[dataset] x epochs``), so that parallel workers
  end together."""
  return sorted(tasks, key=lambda t: -cost.get(t["dataset"], default)
                * t["config"].train.epochs)


def run_tasks(label: str, section: Any, jobs: Sequence[Any], workdir: str, *,
              run_one: Callable[[Any], Any], progress: Callable[[Any], str],
              start: float, shape: str | None = None
              ) -> tuple[list[Any], dict[str, Any]]:
  """Runs a study's grid and records its timing.

  Args:
    label: the study's name in the log line.
    section: the config's ``study`` section (``workers``, ``xla_threads``,
      ``compilation_cache``; ``datasets``, ``losses``, ``seeds`` for the default shape).
    jobs: the jobs, in the order they start.
    workdir: the study directory.
    run_one: ``run_one(job)`` -> the run's record (a dict with ``"reused"``).
    progress: formats a record for its progress line.
    start: the study's start time (``time.time()``), for its wall time.
    shape: the grid in words for the log line (default: datasets x losses x seeds).

  Returns:
    ``(records, timing)``: the records in ``jobs``' order and
    :func:`experiments.common.timing.study_timing`'s result.
  """
  s = section
  workers = max(1, min(int(s.workers), len(jobs)))
  if shape is None:
    shape = f"{len(s.datasets)} dataset(s) x {len(s.losses)} losses x {s.seeds} seeds"
  grid.log(f"{label}: {shape} = {len(jobs)} runs, {workers} process(es), workdir "
           f"{workdir}")
  records = grid.run_grid(
      jobs, run_one, workers=workers, xla_threads=int(s.xla_threads),
      compilation_cache=grid.cache_directory(s.compilation_cache, workdir),
      log=grid.log, progress=progress)
  timing = timing_lib.study_timing(
      workdir, seconds=time.time() - start, runs=len(records),
      trained=sum(not r["reused"] for r in records), workers=workers,
      xla_threads=int(s.xla_threads))
  return records, timing


def describe(run: Any) -> str:
  """A run's model, epochs, batch, learning rate and split in words (a report line)."""
  m, t = run.model, run.train
  parts = [f"model {m.name}" + (f" + {m.head} head" if m.head != "none" else "")
           + f", {m.embedding_dim}-d",
           f"{t.epochs} epochs", f"batch {t.batch_size}" if t.sampling != "pk" else
           f"batch {t.classes_per_batch} x {t.samples_per_class}",
           f"lr {t.learning_rate:g}", f"split {run.data.split}"]
  if m.get("pretrained_path"):
    parts.append(f"pretrained trunk {m.pretrained_path}"
                 + (" (frozen)" if m.freeze_trunk else ""))
  return ", ".join(parts)


def per_dataset_lines(cfg: Any, build: Build) -> str:
  """One Markdown bullet per dataset: :func:`describe` of its first run."""
  s = cfg.study
  first_seed = seeds_of(cfg)[0]
  return "".join(f"* {d}: {describe(build(cfg, d, s.losses[0], first_seed))}\n"
                 for d in s.datasets)


def write_study_json(workdir: str, cfg: Any, records: list[dict[str, Any]],
                     timing: dict[str, Any], *, wall_seconds: float) -> None:
  """``<workdir>/study.json`` (atomic): the config, the runs (sorted by dataset, loss,
  seed), this invocation's wall time and the study's timing over its invocations."""
  import json  # pylint: disable=import-outside-toplevel
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  records.sort(key=lambda r: (r["dataset"], r["loss"], r["seed"]))
  artifacts.write_json_atomic(os.path.join(workdir, "study.json"), {
      "config": json.loads(cfg.to_json()), "runs": records,
      "wall_seconds": round(wall_seconds, 1), "timing": timing})
