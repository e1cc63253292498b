"""The runs of a study: their layout, plan and checks, the grid with its timing.

The loss studies' runs are ``(dataset, loss, seed)`` tasks, each in
``<workdir>/<dataset>/<loss>/seed<seed>`` (:func:`run_dir`); :func:`plan` builds and
validates every run's config before anything trains, :func:`check_tasks` fails before
any training when a run directory holds another run or a run's data do not load, and
:func:`run_tasks` runs the grid where ``study.launcher`` says
(:func:`experiments.common.launch.run_jobs`) and records
the study's timing (:mod:`experiments.common.timing`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

from ml_collections import config_dict

from experiments.common import checks
from experiments.common import grid
from experiments.common import launch
from experiments.common import timing as timing_lib

# build(cfg, dataset, loss, seed) -> the run's tsm config.
Build = Callable[[Any, str, str, int], Any]


def study_fields(*, seeds: int, em_triplets: int) -> dict[str, Any]:
  """The ``study`` fields of a (dataset x loss x seed) study, with their defaults.

  Fields:
    seeds: seeds per (dataset, loss): ``first_seed ... first_seed + seeds - 1``; enough
      by default for the paired tests of the verdicts to have power.
    first_seed: the first seed.
    vary_data: draw the data from the run's seed too (``data.data_seed = seed``: the
      synthetic points, the by-image test split), so that the spread over seeds
      includes the variance of the data. Every loss of a seed sees the same data, so
      claims pair by seed.
    epochs: if set, overrides ``train.epochs`` of every dataset (the margin study has
      the same knob).
    workers: processes running the study in parallel (forked after the data are
      loaded; :func:`experiments.common.grid.run_grid`); ``<= 1`` runs in this process.
    xla_threads: with ``workers > 1``, 1 makes each worker's XLA CPU runtime
      single-threaded; 0 keeps XLA's default (the stability rerun changes it).
    compilation_cache: JAX persistent compilation cache directory; ``"auto"`` =
      ``<workdir>/jax_cache``, ``""`` = off.
    compare_to: a finished run of the same study (another workdir, e.g. the rerun with
      another ``xla_threads``): claims whose verdict differs there are marked unstable.
    freeze_pretrained: when a dataset's ``model.pretrained_path`` is set, freeze the
      trunk (both papers train a head on a frozen ViT-B/32).
    knn_k: k of the k-NN accuracy (paper B: 5).
    decay_fraction: paper B's loss decay: epochs until the loss is at most this share of
      the first epoch's (paper B: 0.1).
    em_triplets: effective margins: every valid training triplet up to this many,
      else a uniform sample of this size.
    gmm_components: components of the Gaussian mixture fitted to effective margins.
    launcher, slurm: where the runs train (:func:`experiments.common.launch.launcher_fields`).

  Args:
    seeds: the default ``seeds``.
    em_triplets: the default ``em_triplets``.

  Returns:
    ``{field: default}``.
  """
  return {
      "seeds": seeds,
      "first_seed": 0,
      "vary_data": True,
      "epochs": config_dict.placeholder(int),
      "workers": 2,
      "xla_threads": 0,
      "compilation_cache": "auto",
      "compare_to": "",
      "freeze_pretrained": True,
      "knn_k": 5,
      "decay_fraction": 0.1,
      "em_triplets": em_triplets,
      "gmm_components": 2,
      **launch.launcher_fields(),
  }


def check_fields(cfg: Any, known: Sequence[str]) -> None:
  """Checks the fields of :func:`study_fields` and ``study.datasets``; every field of
  the section is one of ``known`` (one-line
  :class:`~experiments.common.grid.StudyError`)."""
  s = cfg.study
  checks.check_known(s, known)
  checks.check_datasets(cfg)
  checks.check_integers(s, (("seeds", 1), ("first_seed", 0), ("knn_k", 1),
                            ("em_triplets", 1), ("gmm_components", 1)))
  checks.check_fraction(s, "decay_fraction")
  checks.check_grid(s)


def dataset_run(cfg: Any, dataset: str, loss: str, seed: int) -> Any:
  """A copy of ``dataset``'s section with the study's shared choices set: ``seed``,
  ``loss.name``, ``train.epochs`` from ``study.epochs`` when set, ``data.data_seed =
  seed`` with ``study.vary_data``, a frozen trunk with ``study.freeze_pretrained`` and a
  ``model.pretrained_path``, no progress bar."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  s = cfg.study
  run = ml_collections.ConfigDict(cfg[dataset].to_dict())
  run.seed = int(seed)
  run.loss.name = loss
  if s.epochs is not None:
    run.train.epochs = int(s.epochs)
  if s.vary_data:
    run.data.data_seed = int(seed)
  if run.model.get("pretrained_path") and s.freeze_pretrained:
    run.model.freeze_trunk = True
  run.train.progress = False
  return run


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


def load_results(workdir: str, dataset: str, loss: str, seeds: Sequence[int],
                 result_file: str) -> list[dict[str, Any]]:
  """The result records of one (dataset, loss), in seed order (missing runs skipped)."""
  from experiments.common import tables  # pylint: disable=import-outside-toplevel
  return tables.load_json_runs([os.path.join(run_dir(workdir, dataset, loss, seed),
                                             result_file) for seed in seeds])


def load_arrays(workdir: str, dataset: str, loss: str, records: Sequence[dict[str, Any]],
                arrays_file: str) -> list[dict[str, Any]]:
  """The measured arrays of each run in ``records`` (those whose file exists)."""
  from experiments.common import tables  # pylint: disable=import-outside-toplevel
  return tables.load_npz_runs([os.path.join(run_dir(workdir, dataset, loss, r["seed"]),
                                            arrays_file) for r in records])


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
  a run's data do not load (one line each,
  :class:`~experiments.common.grid.StudyError`)."""
  grid.check_runs([(task["rundir"], task["config"]) for task in tasks])
  check_data(tasks)


def run_record(task: dict[str, Any], result_file: str,
               train: Callable[[], dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
  """Trains (or reuses) one task's run with ``train()``; returns its short record.

  Returns:
    ``{"dataset", "loss", "seed", "seconds", "reused"}`` and each of ``keys`` from the
    run's result (``reused``: its ``result_file`` existed before).
  """
  t0 = time.time()
  done = os.path.exists(os.path.join(task["rundir"], result_file))
  result = train()
  return {"dataset": task["dataset"], "loss": task["loss"], "seed": task["seed"],
          "seconds": round(time.time() - t0, 2), "reused": done,
          **{key: result.get(key) for key in keys}}


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
      ``compilation_cache``, ``launcher``, ``slurm``; ``datasets``, ``losses``,
      ``seeds`` for the default shape).
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
  grid.log(f"{label}: {shape} = {len(jobs)} runs, {launch.describe(s, workers)}, workdir "
           f"{workdir}")
  records = launch.run_jobs(s, jobs, run_one, workdir, workers=workers, log=grid.log,
                            progress=progress)
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


def progress_line(record: dict[str, Any], last: str) -> str:
  """A finished run's progress line: dataset, loss, seed, seconds (or reused), Recall@1,
  intra-class variance, then the study's ``last`` item."""
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  r = record
  return (f"{r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  {last}")


def run_study(cfg: Any, workdir: str, *, study: Any, label: str,
              progress: Callable[[Any], str], cost: Mapping[str, float],
              default_cost: float, settings: Callable[[], str],
              write_report: Callable[[str], Any]) -> dict[str, Any]:
  """Runs (or resumes) a (dataset x loss x seed) study and writes its report.

  Validates the config and every run (before anything is created), checks the run
  directories and the data, then, holding the study lock, runs the grid (costliest runs
  first), writes the report and ``study.json``.

  Args:
    cfg: the study config.
    workdir: the study directory.
    study: the study's module: ``check_study(cfg)``, ``plan(cfg, workdir)``,
      ``run_one(task, section)``, ``run_config(cfg, dataset, loss, seed)``.
    label: the study's name in the log line.
    progress: formats a run's record for its progress line.
    cost: relative cost of one epoch per dataset (:func:`costliest_first`).
    default_cost: the cost of a dataset not in ``cost``.
    settings: ``settings()`` -> the study's settings in words (the report's first
      sentence; called after the config is validated).
    write_report: ``write_report(preamble)`` -> the report's dict (``"verdicts"``: its
      Markdown).

  Returns:
    ``{"runs": [per-run records], "wall_seconds": float, "report": report dict}``.

  Raises:
    StudyError: a bad setting (before anything runs).
  """
  t0 = time.time()
  study.check_study(cfg)
  tasks = study.plan(cfg, workdir)
  check_tasks(tasks)
  s = cfg.study
  with grid.study_lock(workdir):   # one study per workdir, after validation
    records, timing = run_tasks(
        label, s, costliest_first(tasks, cost, default_cost), workdir,
        run_one=grid.BoundRunOne(study.run_one, s), progress=progress, start=t0)
    preamble = (f"Settings: {settings()}; {timing_lib.timing_line(timing)}. Per "
                "dataset:\n\n" + per_dataset_lines(cfg, study.run_config))
    rep = write_report(preamble)
    wall = time.time() - t0
    write_study_json(workdir, cfg, records, timing, wall_seconds=wall)
    return {"runs": records, "wall_seconds": wall, "report": rep}


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
