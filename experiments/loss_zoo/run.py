r"""The loss zoo: nine losses under identical settings, over seeds, with D1-D4 verdicts.

  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_offline.py --workdir=runs/loss_zoo \
      [--config.study.seeds=2 --config.study.epochs=5 \
       --config.study.losses='("triplet","supcon")' ...]

Trains every (dataset, loss, seed) of the config's ``study`` section with
``tsm.config.train_and_evaluate`` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``,
the loss's parameters and state in the checkpointed train state), measures the final
model (:func:`experiments.loss_zoo.study.train_and_measure`) and writes
(:mod:`experiments.loss_zoo.report`):

* ``<workdir>/report.md``: everything, for reading;
* ``<workdir>/verdicts.md`` / ``.csv``: claims D1-D4 of arXiv 2601.21450 per dataset;
* ``<workdir>/deviations.md``: the paper vs this study;
* ``<workdir>/<dataset>/table.md`` / ``.csv`` (loss x metric, mean ± std [95 % CI]),
  ``curves.png``, ``intra_class_variance.png``, ``centroid_distances.png``;
* ``<workdir>/study.json``: settings, per-run records, wall times.

The grid runs on :func:`experiments.runner.run_grid` (``study.workers`` forked processes,
``study.xla_threads``, ``study.compilation_cache``). A rerun with the same workdir reuses
the finished runs of the same config (their ``zoo.json`` exists) and redoes the report,
so an interrupted study (Ctrl-C: exit status 130) resumes.

Bad settings print one line naming the field and exit with status 2 before anything runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from absl import logging
import ml_collections

from experiments import runner
from experiments.loss_comparison import run as pair_run
from experiments.loss_zoo import report
from experiments.loss_zoo import study
from tsm import cli as cli_lib
from tsm import hugepages

StudyError = study.StudyError
describe = pair_run.describe   # (model, epochs, batch)
EXAMPLE_CONFIG = "experiments/configs/loss_zoo_offline.py"
# Relative cost of one epoch per dataset (measured on 2 CPU cores), to start the
# costliest runs first so that parallel workers end together.
_COST = {"synthetic": 1.0, "mnist1d": 3.0, "fashion_mnist": 8.0}


def _line(r: dict[str, Any]) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  return (f"{r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  "
          f"active {fmt(r['mean_active_ratio'])}")


def _order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return sorted(tasks, key=lambda t: -_COST.get(t["dataset"], 20.0)
                * t["config"].train.epochs)


def run_study(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: a study config (``experiments/configs/loss_zoo_*.py``).
    workdir: output directory.

  Returns:
    ``{"runs": [per-run records], "wall_seconds": float, "report": report dict}``.

  Raises:
    StudyError: a bad setting (before anything runs).
  """
  t0 = time.time()
  study.check_study(cfg)
  tasks = study.plan(cfg, workdir)
  pair_run.check_tasks(tasks)
  s = cfg.study
  with runner.study_lock(workdir):   # one study per workdir, after validation
    records, timing = pair_run.run_tasks("loss zoo", s, _order(tasks), workdir,
                                         run_one=study.run_one, progress=_line,
                                         start=t0)
    seeds = study.seeds_of(cfg)
    preamble = (f"Settings: losses {', '.join(s.losses)}; seeds {seeds}"
                + (", each drawing its data (data.data_seed = seed)" if s.vary_data else "")
                + f"; P x K batches, Adam, constant rate, identical for every loss; triplet "
                f"margin {s.triplet_margin:g}, contrastive margin {s.contrastive_margin:g}, "
                "other losses at pytorch-metric-learning's defaults; "
                f"{runner.timing_line(timing)}. Per dataset:\n\n" + "".join(
                    f"* {d}: {describe(study.run_config(cfg, d, s.losses[0], seeds[0]))}\n"
                    for d in s.datasets))
    rep = report.write_report(workdir, list(s.datasets), list(s.losses), seeds,
                              preamble=preamble, cfg=cfg)
    wall = time.time() - t0
    pair_run.write_study_json(workdir, cfg, records, timing, wall_seconds=wall)
    return {"runs": records, "wall_seconds": wall, "report": rep}


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  if argv is None:
    hugepages.reexec()  # Before anything is allocated (see tsm.hugepages).
  argv = list(sys.argv if argv is None else argv)
  cli = cli_lib.ConfigCommand(
      "loss zoo", EXAMPLE_CONFIG, "runs/loss_zoo",
      config_help=f"Study config file (experiments/configs/loss_zoo_*.py), e.g. "
      f"{EXAMPLE_CONFIG}.",
      workdir_help="Study directory (created; finished runs in it are reused).")
  runner.parse_command(cli, argv, __doc__)
  logging.set_verbosity(logging.WARNING)
  try:
    out = runner.cli_main(lambda: run_study(cli.config, cli.workdir))
  except StudyError as e:
    cli.fail(str(e))
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(cli.workdir, 'report.md')} in {out['wall_seconds']:.1f} s")


if __name__ == "__main__":
  main()
