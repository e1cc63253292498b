"""The runs of a study: their layout, plan and checks, the grid, ``study.json``.

Every study's config has one shape: a ``study`` section (:func:`grid_fields`, the fields
every study has, plus the study's own: its arms and measurements) and one full tsm
config section per dataset named in ``study.datasets`` (``cfg.<dataset>``; overrides
read ``--config.<dataset>.train.epochs=5``). A study varies an ARM (a loss of the loss
studies, a margin schedule under a reduction and a mining of the margin study) over
datasets and seeds; its runs are ``(dataset, arm, seed)`` tasks (:func:`plan`), each in
``<workdir>/<dataset>/<arm>/seed<seed>`` (:func:`run_dir`). :func:`plan` builds and
validates every run's config before anything trains, :func:`check_tasks` fails before
any training when a run directory holds another run or a run's data do not load,
:func:`run_tasks` runs the grid where ``study.launcher`` says
(:func:`experiments.common.launch.run_jobs`) and records the study's timing
(:mod:`experiments.common.timing`), and :func:`run_study` does all of it and writes
``study.json`` (:func:`write_study_json`), then from it each claim's summary sentence
(``summary.md``) and paired dot plot (``claims/``, linked from ``claims.md`` and
``report.md``; :func:`experiments.common.docs.write_evidence`).

Why one module of this length: a run's directory, its planned config, its checks and
its record in ``study.json`` must agree, so they change together; the grid and the
launchers that execute the plan live in their own modules.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from ml_collections import config_dict

from experiments.common import checks
from experiments.common import docs
from experiments.common import grid
from experiments.common import launch
from experiments.common import timing as timing_lib
from experiments.common import verdicts

# build(cfg, dataset, arm, seed) -> the run's tsm config.
Build = Callable[[Any, str, Any, int], Any]


def grid_fields(*, seeds: int) -> dict[str, Any]:
  """The ``study`` fields every study has, with their defaults.

  Fields:
    datasets: the datasets run, each with its own full tsm config section
      (``cfg.<dataset>``).
    seeds: seeds per (dataset, arm): ``first_seed ... first_seed + seeds - 1``; enough
      by default for the paired tests of the verdicts to have power.
    first_seed: the first seed.
    vary_data: draw the data from the run's seed too (``data.data_seed = seed``: the
      synthetic points, the by-image test split, the test verification pairs), so that
      the spread over seeds includes the variance of the data. Every arm of a seed sees
      the same data, so claims pair by seed.
    epochs: if set, overrides ``train.epochs`` of every dataset.
    workers: processes running the study in parallel (forked after the data are
      loaded; :func:`experiments.common.grid.run_grid`; one per CPU core on a CPU
      machine, 1 on a single accelerator, and only as many as fit in memory: each
      holds one run, see BUILD_NOTES.md, "How many workers"); ``<= 1`` runs in this
      process.
    xla_threads: with ``workers > 1``, 1 makes each worker's XLA CPU runtime
      single-threaded (``--xla_cpu_multi_thread_eigen=false``); 0 keeps XLA's default
      (the stability rerun changes it).
    compilation_cache: JAX persistent compilation cache directory; ``"auto"`` =
      ``<workdir>/jax_cache``, ``""`` = off. Every run of a study compiles the same
      train / eval / embed programs (margins and seeds are traced values), so all but
      the first run of each process load them from the cache.
    compare_to: a finished run of the same study (another workdir, e.g. the rerun with
      another ``xla_threads``): claims whose verdict differs there are marked unstable.
    launcher, slurm: where the runs train: this machine's worker pool or SLURM job
      arrays (:func:`experiments.common.launch.launcher_fields`).

  Args:
    seeds: the default ``seeds``.

  Returns:
    ``{field: default}`` (without ``datasets``, which each study puts first).
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
      **launch.launcher_fields(),
  }


def study_fields(*, seeds: int, em_triplets: int) -> dict[str, Any]:
  """The ``study`` fields of the loss studies: :func:`grid_fields` and

  Fields:
    freeze_pretrained: when a dataset's ``model.pretrained_path`` is set, freeze the
      trunk (both papers train a head on a frozen ViT-B/32).
    knn_k: k of the k-NN accuracy (paper B: 5).
    decay_fraction: paper B's loss decay: epochs until the loss is at most this share of
      the first epoch's (paper B: 0.1).
    em_triplets: effective margins: every valid training triplet up to this many,
      else a uniform sample of this size.
    gmm_components: components of the Gaussian mixture fitted to effective margins.

  Args:
    seeds: the default ``seeds``.
    em_triplets: the default ``em_triplets``.

  Returns:
    ``{field: default}``.
  """
  return {
      **grid_fields(seeds=seeds),
      "freeze_pretrained": True,
      "knn_k": 5,
      "decay_fraction": 0.1,
      "em_triplets": em_triplets,
      "gmm_components": 2,
  }


def check_grid_fields(cfg: Any, known: Sequence[str]) -> None:
  """Checks the fields of :func:`grid_fields` and ``study.datasets``; every field of
  the section is one of ``known`` (one-line
  :class:`~experiments.common.grid.StudyError`)."""
  s = cfg.study
  checks.check_known(s, known)
  checks.check_datasets(cfg)
  checks.check_integers(s, (("seeds", 1), ("first_seed", 0)))
  if not isinstance(s.vary_data, bool):
    raise grid.StudyError(f"study.vary_data={s.vary_data!r} must be True or False.")
  checks.check_grid(s)


def check_fields(cfg: Any, known: Sequence[str]) -> None:
  """Checks the fields of :func:`study_fields` (:func:`check_grid_fields` and the
  measurement fields)."""
  s = cfg.study
  check_grid_fields(cfg, known)
  checks.check_integers(s, (("knn_k", 1), ("em_triplets", 1), ("gmm_components", 1)))
  checks.check_fraction(s, "decay_fraction")


def run_epochs(cfg: Any, dataset: str) -> int:
  """Epochs of ``dataset``'s runs: ``study.epochs`` when set, else its
  ``train.epochs``."""
  epochs = cfg.study.epochs
  return int(cfg[dataset].train.epochs if epochs is None else epochs)


def dataset_run(cfg: Any, dataset: str, seed: int) -> Any:
  """A copy of ``dataset``'s section with the choices every study shares set: ``seed``,
  ``train.epochs`` (:func:`run_epochs`), ``data.data_seed = seed`` with
  ``study.vary_data``, no progress bar."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  run = ml_collections.ConfigDict(cfg[dataset].to_dict())
  run.seed = int(seed)
  run.train.epochs = run_epochs(cfg, dataset)
  if cfg.study.vary_data:
    run.data.data_seed = int(seed)
  run.train.progress = False
  return run


def loss_run(cfg: Any, dataset: str, loss: str, seed: int) -> Any:
  """:func:`dataset_run` with the loss studies' shared choices: ``loss.name``, a frozen
  trunk with ``study.freeze_pretrained`` and a ``model.pretrained_path``."""
  run = dataset_run(cfg, dataset, seed)
  run.loss.name = loss
  if run.model.get("pretrained_path") and cfg.study.freeze_pretrained:
    run.model.freeze_trunk = True
  return run


def arm_name(arm: Any) -> str:
  """An arm's name: the arm itself when it is a string (a loss), else its ``name``."""
  return arm if isinstance(arm, str) else arm.name


def run_dir(workdir: str, dataset: str, arm: Any, seed: int) -> str:
  """``<workdir>/<dataset>/<arm name>/seed<seed>``."""
  return os.path.join(workdir, dataset, arm_name(arm), f"seed{seed}")


def seeds_of(cfg: Any) -> list[int]:
  """The study's seeds, ``first_seed ... first_seed + seeds - 1``."""
  return list(range(cfg.study.first_seed, cfg.study.first_seed + cfg.study.seeds))


def plan(cfg: Any, workdir: str, build: Build,
         arms: Sequence[Any]) -> list[dict[str, Any]]:
  """Every run of a (dataset x arm x seed) study, validated before any training.

  Within a dataset the seeds are outermost, so that a stopped study has every arm of
  its first seeds (the verdicts pair arms by seed).

  Args:
    cfg: the study config (``study.datasets``, the seeds).
    workdir: the study directory.
    build: ``build(cfg, dataset, arm, seed)`` -> the run's tsm config.
    arms: the study's arms (loss names, or objects with a ``name``).

  Returns:
    One task per (dataset, arm, seed): ``{"dataset", "arm", "seed", "config",
    "rundir", "keep_embeddings"}`` (``arm``: the arm as given; the first seed keeps its
    embeddings).

  Raises:
    StudyError: a run's config fails :func:`tsm.config.check_config` (the message
      names the dataset, the arm and the field).
  """
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  seeds = seeds_of(cfg)
  tasks = []
  for dataset in cfg.study.datasets:
    for seed in seeds:
      for arm in arms:
        try:
          run = build(cfg, dataset, arm, seed)
          config_lib.check_config(run)
        except config_lib.ConfigError as e:
          raise grid.StudyError(f"{dataset} ({arm_name(arm)}): {e}") from None
        tasks.append({"dataset": dataset, "arm": arm, "seed": seed, "config": run,
                      "rundir": run_dir(workdir, dataset, arm, seed),
                      "keep_embeddings": seed == seeds[0]})
  return tasks


def load_results(workdir: str, dataset: str, arm: Any, seeds: Sequence[int],
                 result_file: str) -> list[dict[str, Any]]:
  """The result records of one (dataset, arm), in seed order (missing runs skipped)."""
  from experiments.common import tables  # pylint: disable=import-outside-toplevel
  return tables.load_json_runs([os.path.join(run_dir(workdir, dataset, arm, seed),
                                             result_file) for seed in seeds])


def load_arrays(workdir: str, dataset: str, arm: Any, records: Sequence[dict[str, Any]],
                arrays_file: str) -> list[dict[str, Any]]:
  """The measured arrays of each run in ``records`` (those whose file exists)."""
  from experiments.common import tables  # pylint: disable=import-outside-toplevel
  return tables.load_npz_runs([os.path.join(run_dir(workdir, dataset, arm, r["seed"]),
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


def run_record(task: dict[str, Any], required: Sequence[str],
               train: Callable[[], dict[str, Any]], keys: Sequence[str], *,
               arm_key: str = "arm") -> dict[str, Any]:
  """Trains (or reuses) one task's run with ``train()``; returns its short record.

  Args:
    task: a task of :func:`plan`.
    required: the files a finished run has written (it is reused when they exist:
      :func:`experiments.common.grid.finished`).
    train: trains or reuses the run; returns its result dict.
    keys: the result's items the record keeps.
    arm_key: the record's name for the arm (the loss studies: ``"loss"``).

  Returns:
    ``{"dataset", arm_key, "seed", "seconds", "reused"}`` and each of ``keys`` from the
    run's result (``reused``: the run had finished before).
  """
  t0 = time.time()
  done = grid.finished(task["rundir"], task["config"], required)
  result = train()
  return {"dataset": task["dataset"], arm_key: arm_name(task["arm"]),
          "seed": task["seed"], "seconds": round(time.time() - t0, 2), "reused": done,
          **{key: result.get(key) for key in keys}}


def costliest_first(tasks: Sequence[dict[str, Any]], cost: Mapping[str, float],
                    default: float) -> list[dict[str, Any]]:
  """The tasks, costliest first (``cost[dataset] x epochs``), so that parallel workers
  end together."""
  return sorted(tasks, key=lambda t: -cost.get(t["dataset"], default)
                * t["config"].train.epochs)


def run_tasks(label: str, section: Any, jobs: Sequence[Any], workdir: str, *,
              run_one: Callable[[Any], Any], progress: Callable[[Any], str],
              start: float, shape: str) -> tuple[list[Any], dict[str, Any]]:
  """Runs a study's grid and records its timing.

  Args:
    label: the study's name in the log line.
    section: the config's ``study`` section (``workers``, ``xla_threads``,
      ``compilation_cache``, ``launcher``, ``slurm``).
    jobs: the jobs, in the order they start.
    workdir: the study directory.
    run_one: ``run_one(job)`` -> the run's record (a dict with ``"reused"``).
    progress: formats a record for its progress line.
    start: the study's start time (``time.time()``), for its wall time.
    shape: the grid in words for the log line (:func:`shape_line`).

  Returns:
    ``(records, timing)``: the records in ``jobs``' order and
    :func:`experiments.common.timing.study_timing`'s result.
  """
  s = section
  workers = max(1, min(int(s.workers), len(jobs)))
  total = sum(len(job) if isinstance(job, list) else 1 for job in jobs)
  if total != len(jobs) and s.launcher != "local":
    raise grid.StudyError(f"study.launcher={s.launcher!r} runs one run a job; the seeds "
                          "of an arm trained together (study.seeds_together) run on "
                          "study.launcher='local'.")
  grouped = f" in {len(jobs)} jobs" if total != len(jobs) else ""
  grid.log(f"{label}: {shape} = {total} runs{grouped}, {launch.describe(s, workers)}, "
           f"workdir {workdir}")
  records = launch.run_jobs(s, jobs, run_one, workdir, workers=workers, log=grid.log,
                            progress=progress)
  # A job of several runs (the seeds of an arm trained together) gives a list.
  records = [r for job in records for r in (job if isinstance(job, list) else [job])]
  timing = timing_lib.study_timing(
      workdir, seconds=time.time() - start, runs=len(records),
      trained=sum(not r["reused"] for r in records), workers=workers,
      xla_threads=int(s.xla_threads))
  return records, timing


def shape_line(cfg: Any, arms: Sequence[Any], noun: str) -> str:
  """The grid in words: ``"1 dataset(s) x 2 losses x 10 seeds"``."""
  return (f"{len(cfg.study.datasets)} dataset(s) x {len(arms)} {noun} x "
          f"{cfg.study.seeds} seeds")


def describe(run: Any) -> str:
  """A run's model, epochs, batch, learning rate and split in words (a report line)."""
  m, t = run.model, run.train
  trunk = m.get("trunk", "none")
  if trunk != "none":   # model.name is then unused: the trunk feeds the head
    model = (f"ImageNet {trunk}" + (" (frozen: a head on its cached features)"
                                    if m.freeze_trunk else ""))
  else:
    model = f"model {m.name}"
  parts = [model + (f" + {m.head} head" if m.head != "none" else "")
           + f", {m.embedding_dim}-d",
           f"{t.epochs} epochs", f"batch {t.batch_size}" if t.sampling != "pk" else
           f"batch {t.classes_per_batch} x {t.samples_per_class}",
           f"lr {t.learning_rate:g}", f"split {run.data.split}"]
  if m.get("pretrained_path"):
    parts.append(f"pretrained trunk {m.pretrained_path}"
                 + (" (frozen)" if m.freeze_trunk else ""))
  return ", ".join(parts)


def per_dataset_lines(cfg: Any, build: Build, arm: Any) -> str:
  """One Markdown bullet per dataset: :func:`describe` of its run of ``arm`` at the
  first seed."""
  first_seed = seeds_of(cfg)[0]
  return "".join(f"* {d}: {describe(build(cfg, d, arm, first_seed))}\n"
                 for d in cfg.study.datasets)


def progress_line(record: dict[str, Any], last: str) -> str:
  """A loss study's progress line: dataset, loss, seed, seconds (or reused), Recall@1,
  intra-class variance, then the study's ``last`` item."""
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  r = record
  return (f"{r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  {last}")


class Study(NamedTuple):
  """What :func:`run_study` needs of a study.

  Attributes:
    label: the study's name in the log lines (``"loss study"``).
    noun: what its arms are, plural, in the log line (``"losses"``, ``"arms"``).
    check: ``check(cfg)`` -> the arms (one-line StudyError for a bad setting).
    build: ``build(cfg, dataset, arm, seed)`` -> a run's tsm config.
    run_one: ``run_one(task, study section)`` -> the run's record (trains or reuses
      it; a dict with ``"reused"``).
    progress: formats a record for its progress line.
    cost: relative cost of one epoch per dataset (:func:`costliest_first`); None runs
      the tasks in :func:`plan`'s order.
    default_cost: the cost of a dataset not in ``cost``.
    run_seeds: ``run_seeds(tasks, study section)`` -> their records: trains (or reuses)
      every seed of one (dataset, arm) together; used with ``study.seeds_together``
      (one job per arm, :func:`by_arm`).
  """
  label: str
  noun: str
  check: Callable[[Any], Sequence[Any]]
  build: Build
  run_one: Callable[[Any, Any], dict[str, Any]]
  progress: Callable[[Any], str]
  cost: Mapping[str, float] | None = None
  default_cost: float = 1.0
  run_seeds: Callable[[list[dict[str, Any]], Any], list[dict[str, Any]]] | None = None


def by_arm(tasks: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  """The tasks grouped by (dataset, arm), in the order of each group's first task; each
  group in seed order."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for task in tasks:
    groups.setdefault((task["dataset"], arm_name(task["arm"])), []).append(task)
  return [sorted(g, key=lambda t: t["seed"]) for g in groups.values()]


class _GroupProgress:
  """A progress line per record of a group's records (picklable)."""

  def __init__(self, progress: Callable[[Any], str]):
    self.progress = progress

  def __call__(self, records: list[dict[str, Any]]) -> str:
    return "\n  ".join(self.progress(r) for r in records)


def run_study(cfg: Any, workdir: str, study: Study,
              write_report: Callable[[Sequence[Any], list[dict[str, Any]],
                                      dict[str, Any]], tuple[Any, Any]]
              ) -> dict[str, Any]:
  """Runs (or resumes) a (dataset x arm x seed) study and writes its report.

  Validates the config and every run (before anything is created), checks the run
  directories and the data, then, holding the study lock, runs the grid, writes the
  report and ``study.json``.

  Args:
    cfg: the study config.
    workdir: the study directory.
    study: the study (:class:`Study`).
    write_report: ``write_report(arms, records, timing)`` -> ``(report, runs)``:
      writes the report; ``runs`` is what ``study.json`` records of the runs.

  Returns:
    ``{"runs": [per-run records], "wall_seconds": float, "report": report}``.

  Raises:
    StudyError: a bad setting (before anything runs).
  """
  t0 = time.time()
  arms = list(study.check(cfg))
  tasks = plan(cfg, workdir, study.build, arms)
  check_tasks(tasks)
  jobs = (tasks if study.cost is None else
          costliest_first(tasks, study.cost, study.default_cost))
  run_one, progress = grid.BoundRunOne(study.run_one, cfg.study), study.progress
  if study.run_seeds is not None and cfg.study.get("seeds_together", False):
    jobs = by_arm(jobs)
    run_one = grid.BoundRunOne(study.run_seeds, cfg.study)
    progress = _GroupProgress(study.progress)
  with grid.study_lock(workdir):   # one study per workdir, after validation
    records, timing = run_tasks(
        study.label, cfg.study, jobs, workdir, run_one=run_one, progress=progress,
        start=t0, shape=shape_line(cfg, arms, study.noun))
    grid.log(f"all runs done in {time.time() - t0:.0f} s; writing the report")
    report, runs = write_report(arms, records, timing)
    wall = time.time() - t0
    record = write_study_json(workdir, cfg, runs, timing, wall_seconds=wall)
    if record.get("claims"):
      docs.write_evidence(workdir, record)
    grid.log(f"report: {os.path.join(workdir, 'report.md')}")
    return {"runs": records, "wall_seconds": wall, "report": report}


def write_study_json(workdir: str, cfg: Any, runs: Any, timing: dict[str, Any], *,
                     wall_seconds: float) -> dict[str, Any]:
  """``<workdir>/study.json`` (atomic): the study config, the runs (as the study
  records them), this invocation's wall time, the study's timing over its invocations
  and the claims its report tested (``claims.json``, with their per-seed values:
  :func:`experiments.common.verdicts.write_claims`); returns what it wrote."""
  import json  # pylint: disable=import-outside-toplevel
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  record = {"config": json.loads(cfg.to_json()), "runs": runs,
            "wall_seconds": round(wall_seconds, 1), "timing": timing,
            "claims": docs.read_json(os.path.join(workdir, verdicts.CLAIMS_FILE))}
  artifacts.write_json_atomic(os.path.join(workdir, "study.json"), record)
  return record


def sorted_records(records: Sequence[dict[str, Any]], arm_key: str = "loss"
                   ) -> list[dict[str, Any]]:
  """The records sorted by dataset, arm and seed (``study.json``'s order)."""
  return sorted(records, key=lambda r: (r["dataset"], r[arm_key], r["seed"]))
