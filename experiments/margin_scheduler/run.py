r"""Paper A's margin-scheduler study by one command.

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study \
      [--config.study.seeds=3 --config.study.epochs=5 \
       --config.study.schedules=constant_0.2,dams --config.study.reductions=mean_nonzero,mean]

Trains the config's model for every arm of the study (a margin schedule: constant
margins, linear, exponential and stepwise increase, DAMS, tsm's controller; under each
loss reduction of ``study.reductions`` and mining of ``study.minings``; see
:mod:`experiments.margin_scheduler.study`) and every seed of ``study.seeds``, each run in
``<workdir>/runs/<arm>/seed<k>/`` (a full ``tsm.fit`` run directory plus
``effective_margins/`` and ``fit.log``), then writes the tables, verdicts and figures
(:mod:`experiments.margin_scheduler.report`) and prints the report. One progress line
per finished run.

The grid runs on :func:`experiments.common.grid.run_grid`: ``study.workers`` processes forked
after the data are loaded, ``study.xla_threads`` (1: single-threaded XLA), the JAX
persistent compilation cache (``study.compilation_cache``). A rerun with the same
workdir reuses finished runs of the same config and trains the missing ones, so an
interrupted study (Ctrl-C: exit status 130) resumes; a changed config needs a new
workdir. ``--config.study.compare_to=<other workdir>`` marks the claims whose verdict
differs there as unstable (the stability check: rerun with another
``study.xla_threads``).

A bad config value prints one line naming the field and exits with status 2.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any, Sequence

from experiments.common import command as command_lib
from experiments.common import grid
from experiments.common import runs
from experiments.margin_scheduler import report
from experiments.margin_scheduler import study
from tsm import artifacts

EXAMPLE_CONFIG = "experiments/configs/margin_study_mnist1d.py"


def _progress(result: dict[str, Any]) -> str:
  test = result["summary"].get("test", {})
  nan = float("nan")
  took = "reused" if result["reused"] else f"{result['seconds']:.1f} s"
  return (f"{result['schedule']:<14} seed {result['seed']}  auc "
          f"{test.get('auc', nan):.4f}  eer {test.get('eer', nan):.4f}  acc "
          f"{test.get('accuracy', nan):.4f}  {took}")


def _preload(cfg: Any, first: study.Arm) -> None:
  """Loads the dataset once (offline sets are cached per process; forks share it)."""
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tsm import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    data_lib.load(config_lib.data_spec(study.run_config(cfg, first, 0)), seed=0)
  except Exception:  # pylint: disable=broad-except  # fit reports data errors itself
    pass


def run_study(cfg: Any, workdir: str, *, command: str | None = None) -> str:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: the study config (a tsm config plus the ``study`` section).
    workdir: the study directory.
    command: the command line, shown in the report.

  Returns:
    The report's Markdown.

  Raises:
    experiments.common.grid.StudyError: a bad config value (before anything is created
      or run).
  """
  arms = study.check_study(cfg)
  tasks = study.plan(cfg, workdir, arms)
  grid.check_runs([(task["rundir"], task["config"]) for task in tasks])
  with grid.study_lock(workdir):   # one study per workdir, after validation
    artifacts.write_atomic(os.path.join(workdir, "study_config.json"),
                           cfg.to_json(indent=1))
    start = time.time()
    _preload(cfg, arms[0])
    results, timing = runs.run_tasks(
        "margin study", cfg.study, tasks, workdir,
        run_one=grid.BoundRunOne(study.run_one, cfg), progress=_progress, start=start,
        shape=f"{len(arms)} arms x {cfg.study.seeds} seeds")
    grid.log(f"all runs done in {time.time() - start:.0f} s; writing the report")
    text = report.write_report(workdir, cfg, arms, timing=timing, command=command)
    grid.log(f"report: {os.path.join(workdir, 'report.md')}")
    return text


def _run(cfg: Any, workdir: str, argv: Sequence[str]) -> str:
  command = "python -m experiments.margin_scheduler.run " + " ".join(
      shlex.quote(a) for a in argv[1:])
  return run_study(cfg, workdir, command=command)


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  command_lib.main(argv, program="margin study", usage=__doc__,
                   example_config=EXAMPLE_CONFIG, default_workdir="runs/margin_study",
                   run_study=_run, show=lambda text, _: print(text))


if __name__ == "__main__":
  main()
