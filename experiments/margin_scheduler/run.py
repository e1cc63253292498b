r"""Paper A's margin-scheduler study by one command.

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study \
      [--config.study.seeds=3 --config.study.epochs=5 \
       --config.study.schedules=constant_0.2,dams --config.study.reductions=mean_nonzero,mean \
       --config.mnist1d.train.learning_rate=1e-3]

Trains the config's model for every arm of the study (a margin schedule: constant
margins, linear, exponential and stepwise increase, DAMS, tsm's controller; under each
loss reduction of ``study.reductions`` and mining of ``study.minings``; see
:mod:`experiments.margin_scheduler.study`) and every seed of ``study.seeds``, each run in
``<workdir>/<dataset>/<arm>/seed<k>/`` (a full ``tsm.fit`` run directory plus
``effective_margins/`` and ``fit.log``), then writes the tables, verdicts and figures
(:mod:`experiments.margin_scheduler.report`), ``study.json`` (the study config, the runs'
summaries, wall times) and prints the report. One progress line per finished run.

Any config field can be overridden: the study's (``--config.study.seeds=3``) and the
dataset section's (``--config.<dataset>.train.epochs=5``, the dataset named in
``study.datasets``).
The grid runs on :func:`experiments.common.runs.run_study`: ``study.workers`` processes
forked after the data are loaded, ``study.xla_threads`` (1: single-threaded XLA), the JAX
persistent compilation cache (``study.compilation_cache``). A rerun with the same
workdir reuses finished runs of the same config and trains the missing ones, so an
interrupted study (Ctrl-C: exit status 130) resumes; a changed config needs a new
workdir. ``--config.study.compare_to=<other workdir>`` marks the claims whose verdict
differs there as unstable (the stability check: rerun with another
``study.xla_threads``).

A bad config value prints one line naming the field and exits with status 2.
"""

from __future__ import annotations

import shlex
from typing import Any, Sequence

from experiments.common import command as command_lib
from experiments.common import runs
from experiments.margin_scheduler import report
from experiments.margin_scheduler import study

EXAMPLE_CONFIG = "experiments/configs/margin_study_mnist1d.py"


def _progress(result: dict[str, Any]) -> str:
  test = result["summary"].get("test", {})
  nan = float("nan")
  took = "reused" if result["reused"] else f"{result['seconds']:.1f} s"
  return (f"{result['arm']:<14} seed {result['seed']}  auc "
          f"{test.get('auc', nan):.4f}  eer {test.get('eer', nan):.4f}  acc "
          f"{test.get('accuracy', nan):.4f}  {took}")


STUDY = runs.Study(label="margin study", noun="arms", check=study.check_study,
                   build=study.run_config, run_one=study.run_one, progress=_progress,
                   run_seeds=study.run_seeds)


def run_study(cfg: Any, workdir: str, *, command: str | None = None) -> str:
  """Runs (or resumes) the whole study and writes its report
  (:func:`experiments.common.runs.run_study`).

  Args:
    cfg: the study config (the ``study`` section and the dataset's section).
    workdir: the study directory.
    command: the command line, shown in the report.

  Returns:
    The report's Markdown.

  Raises:
    experiments.common.grid.StudyError: a bad config value (before anything is created
      or run).
  """
  def write_report(arms, records, timing):
    del records   # the report reads the run directories
    return report.write_report(workdir, cfg, arms, timing=timing, command=command)

  return runs.run_study(cfg, workdir, STUDY, write_report)["report"]


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
