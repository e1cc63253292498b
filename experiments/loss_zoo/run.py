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

The grid runs on :func:`experiments.common.grid.run_grid` (``study.workers`` forked processes,
``study.xla_threads``, ``study.compilation_cache``). A rerun with the same workdir reuses
the finished runs of the same config (their ``zoo.json`` exists) and redoes the report,
so an interrupted study (Ctrl-C: exit status 130) resumes.

Bad settings print one line naming the field and exit with status 2 before anything runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections

from experiments.common import command
from experiments.common import grid
from experiments.common import runs
from experiments.common import timing as timing_lib
from experiments.loss_zoo import report
from experiments.loss_zoo import study

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


def run_study(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: a study config (``experiments/configs/loss_zoo_*.py``).
    workdir: output directory.

  Returns:
    ``{"runs": [per-run records], "wall_seconds": float, "report": report dict}``.

  Raises:
    experiments.common.grid.StudyError: a bad setting (before anything runs).
  """
  t0 = time.time()
  study.check_study(cfg)
  tasks = study.plan(cfg, workdir)
  runs.check_tasks(tasks)
  s = cfg.study
  with grid.study_lock(workdir):   # one study per workdir, after validation
    records, timing = runs.run_tasks(
        "loss zoo", s, runs.costliest_first(tasks, _COST, 20.0), workdir,
        run_one=grid.SectionRunOne(study.run_one, s), progress=_line, start=t0)
    seeds = runs.seeds_of(cfg)
    preamble = (f"Settings: losses {', '.join(s.losses)}; seeds {seeds}"
                + (", each drawing its data (data.data_seed = seed)" if s.vary_data else "")
                + f"; P x K batches, Adam, constant rate, identical for every loss; triplet "
                f"margin {s.triplet_margin:g}, contrastive margin {s.contrastive_margin:g}, "
                "other losses at pytorch-metric-learning's defaults; "
                f"{timing_lib.timing_line(timing)}. Per dataset:\n\n"
                + runs.per_dataset_lines(cfg, study.run_config))
    rep = report.write_report(workdir, list(s.datasets), list(s.losses), seeds,
                              preamble=preamble, cfg=cfg)
    wall = time.time() - t0
    runs.write_study_json(workdir, cfg, records, timing, wall_seconds=wall)
    return {"runs": records, "wall_seconds": wall, "report": rep}


def _show(out: dict[str, Any], workdir: str) -> None:
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(workdir, 'report.md')} in {out['wall_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  command.main(argv, program="loss zoo", usage=__doc__, example_config=EXAMPLE_CONFIG,
               default_workdir="runs/loss_zoo",
               run_study=lambda cfg, workdir, _: run_study(cfg, workdir), show=_show)


if __name__ == "__main__":
  main()
