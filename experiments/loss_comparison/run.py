r"""Paper B's study: contrastive vs triplet loss under identical settings, over seeds.

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_offline.py --workdir=runs/loss_study \
      [--config.study.seeds=2 --config.study.epochs=10 --config.study.sampling=pk ...]

Trains every (dataset, loss, seed) of the config's ``study`` section with
:func:`tsm.fit.fit` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``), measures the
final model (:mod:`experiments.loss_comparison.analysis`) and writes the tables, the
verdicts of paper B's claims and the figures (:mod:`experiments.loss_comparison.report`):

* ``<workdir>/report.md``: everything, for reading;
* ``<workdir>/verdicts.md`` / ``.csv``: each claim per dataset: mean ± std per loss,
  paired difference with its 95 % interval, raw and Holm p, MDE, verdict (held /
  contradicted / inconclusive, or unstable against ``study.compare_to``);
* ``<workdir>/deviations.md``: paper B vs its authors' code vs this study;
* ``<workdir>/<dataset>/table.md`` / ``.csv`` and ``curves.png``,
  ``intra_class_variance.png``, ``pca.png``, ``effective_margins.png``;
* ``<workdir>/study.json``: settings, wall times.

Any config field can be overridden: ``--config.study.seeds=2``, ``--config.study.epochs=5``
(every dataset's epochs), ``--config.study.sampling=pk`` (in-batch losses over P x K
batches instead of paper B's random triplets / pairs),
``--config.synthetic.train.epochs=50``.
The grid runs on :func:`experiments.runner.run_grid` (``study.workers`` forked processes,
``study.xla_threads``, the compilation cache ``study.compilation_cache``). A rerun with
the same workdir reuses the finished runs of the same config (their ``analysis.json``
exists) and redoes the report, so an interrupted study (Ctrl-C: exit status 130)
resumes.

Bad settings print one line naming the field and exit with status 2 before anything runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import logging
import ml_collections

from experiments import runner
from experiments.loss_comparison import report
from experiments.loss_comparison import study
from tsm import cli as cli_lib
from tsm import hugepages

USAGE_ERROR = cli_lib.USAGE_ERROR
StudyError = study.StudyError
EXAMPLE_CONFIG = "experiments/configs/loss_study_offline.py"
# Kept importable under their old names.
check_study = study.check_study
run_config = study.run_config
plan = study.plan


def check_data(tasks: list[dict[str, Any]]) -> None:
  """Loads each run's data once: a missing TFDS set fails here, in one line.

  Reads the data without starting JAX's runtime, so the workers can still be forked;
  the loaded offline sets stay cached in this process and the forks share them.
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
    except spec_lib.DatasetNotPreparedError as e:
      raise StudyError(f"{task['dataset']}: {str(e).strip().splitlines()[0]}") from None
    except (config_lib.ConfigError, ValueError) as e:
      raise StudyError(f"{task['dataset']}: {str(e).strip().splitlines()[0]}") from None


def _line(r: dict[str, Any]) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  return (f"{r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  "
          f"loss-decay {r['loss_decay_epochs']}")


def describe(run: ml_collections.ConfigDict) -> str:
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


def _order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Costliest first (epochs x batch rows as a proxy), so parallel workers end together."""
  def cost(task):
    t = task["config"].train
    size = {"mnist1d": 4.0, "synthetic": 1.0, "digits": 0.7}.get(task["dataset"], 10.0)
    return -size * t.epochs
  return sorted(tasks, key=cost)


def check_tasks(tasks: list[dict[str, Any]]) -> None:
  """Fails before any training when a run directory holds a run of another config, or
  a run's data do not load (one line each)."""
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  for task in tasks:
    try:
      runner.finished(task["rundir"], task["config"])
    except config_lib.ConfigError as e:
      raise StudyError(str(e)) from None
  check_data(tasks)


def run_tasks(label: str, section: ml_collections.ConfigDict,
              ordered: list[dict[str, Any]], workdir: str, *, run_one: Any,
              progress: Any, start: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Runs a pair study's grid (this study's or the loss zoo's) and records its timing.

  Args:
    label: the study's name in the log line.
    section: the config's ``study`` section (workers, XLA threads, cache, datasets).
    ordered: the tasks, costliest first.
    workdir: the study directory.
    run_one: ``run_one(task, section)`` -> the run's record (with ``"reused"``).
    progress: formats a record for its progress line.
    start: the study's start time (``time.time()``), for its wall time.

  Returns:
    ``(records, timing)``: the records in ``ordered``'s order and
    :func:`experiments.runner.study_timing`'s result.
  """
  s = section
  workers = max(1, min(int(s.workers), len(ordered)))
  study.log(f"{label}: {len(s.datasets)} dataset(s) x {len(s.losses)} losses x "
            f"{s.seeds} seeds = {len(ordered)} runs, {workers} process(es), workdir "
            f"{workdir}")
  records = runner.run_grid(
      ordered, runner.SectionRunOne(run_one, s), workers=workers,
      xla_threads=int(s.xla_threads),
      compilation_cache=runner.cache_directory(s.compilation_cache, workdir),
      log=study.log, progress=progress)
  timing = runner.study_timing(
      workdir, seconds=time.time() - start, runs=len(records),
      trained=sum(not r["reused"] for r in records), workers=workers,
      xla_threads=int(s.xla_threads))
  return records, timing


def write_study_json(workdir: str, cfg: ml_collections.ConfigDict,
                     records: list[dict[str, Any]], timing: dict[str, Any], *,
                     wall_seconds: float) -> None:
  """``<workdir>/study.json``: the config, the runs (sorted), this invocation's wall time
  and the study's timing over its invocations."""
  records.sort(key=lambda r: (r["dataset"], r["loss"], r["seed"]))
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump({"config": json.loads(cfg.to_json()), "runs": records,
               "wall_seconds": round(wall_seconds, 1), "timing": timing}, f, indent=2)


def run_study(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: a study config (``experiments/configs/loss_study_*.py``).
    workdir: output directory.

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
  with runner.study_lock(workdir):   # one study per workdir, after validation
    records, timing = run_tasks("loss study", s, _order(tasks), workdir,
                                run_one=study.run_one, progress=_line, start=t0)
    seeds = study.seeds_of(cfg)
    preamble = (f"Settings: losses {', '.join(s.losses)}; sampling "
                f"{'paper B random triplets / pairs' if s.sampling == 'paper' else s.sampling}"
                f"; seeds {seeds}"
                + (", each drawing its data (data.data_seed = seed)" if s.vary_data else "")
                + "; margin 1.0, Euclidean distance on L2-normalised embeddings, Adam; "
                f"{runner.timing_line(timing)}. Per dataset:\n\n" + "".join(
                    f"* {d}: {describe(study.run_config(cfg, d, s.losses[0], seeds[0]))}\n"
                    for d in s.datasets))
    rep = report.write_report(workdir, list(s.datasets), list(s.losses), seeds,
                              gmm_components=int(s.gmm_components), preamble=preamble,
                              cfg=cfg)
    wall = time.time() - t0
    write_study_json(workdir, cfg, records, timing, wall_seconds=wall)
    return {"runs": records, "wall_seconds": wall, "report": rep}


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  if argv is None:
    hugepages.reexec()  # Before anything is allocated (see tsm.hugepages).
  argv = list(sys.argv if argv is None else argv)
  cli = cli_lib.ConfigCommand(
      "loss study", EXAMPLE_CONFIG, "runs/loss_study",
      config_help=f"Study config file (experiments/configs/loss_study_*.py), e.g. "
      f"{EXAMPLE_CONFIG}.",
      workdir_help="Study directory (created; finished runs in it are reused).")
  runner.parse_command(cli, argv, __doc__)
  logging.set_verbosity(logging.WARNING)
  try:
    out = runner.cli_main(lambda: run_study(cli.config, cli.workdir), "loss study")
  except StudyError as e:
    cli.fail(str(e))
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(cli.workdir, 'report.md')} in {out['wall_seconds']:.1f} s")


if __name__ == "__main__":
  main()
