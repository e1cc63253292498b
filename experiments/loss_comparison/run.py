r"""Paper B's study: contrastive vs triplet loss under identical settings, over seeds.

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_offline.py --workdir=runs/loss_study \
      [--config.study.seeds=2 --config.study.epochs=10 --config.study.sampling=pk ...]

Trains every (dataset, loss, seed) of the config's ``study`` section with
:func:`tsm.fit.fit` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``), measures the
final model (:func:`experiments.loss_comparison.study.train_and_measure`) and writes the
tables, the verdicts of paper B's claims and the figures
(:mod:`experiments.loss_comparison.report`):

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
The grid runs on :func:`experiments.common.grid.run_grid` (``study.workers`` forked processes,
``study.xla_threads``, the compilation cache ``study.compilation_cache``). A rerun with
the same workdir reuses the finished runs of the same config (their ``analysis.json``
exists) and redoes the report, so an interrupted study (Ctrl-C: exit status 130)
resumes.

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
from experiments.loss_comparison import report
from experiments.loss_comparison import study

EXAMPLE_CONFIG = "experiments/configs/loss_study_offline.py"
# Relative cost of one epoch per dataset, to start the costliest runs first.
_COST = {"mnist1d": 4.0, "synthetic": 1.0, "digits": 0.7}


def _line(r: dict[str, Any]) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  return (f"{r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  "
          f"loss-decay {r['loss_decay_epochs']}")


def run_study(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: a study config (``experiments/configs/loss_study_*.py``).
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
        "loss study", s, runs.costliest_first(tasks, _COST, 10.0), workdir,
        run_one=grid.SectionRunOne(study.run_one, s), progress=_line, start=t0)
    seeds = runs.seeds_of(cfg)
    preamble = (f"Settings: losses {', '.join(s.losses)}; sampling "
                f"{'paper B random triplets / pairs' if s.sampling == 'paper' else s.sampling}"
                f"; seeds {seeds}"
                + (", each drawing its data (data.data_seed = seed)" if s.vary_data else "")
                + "; margin 1.0, Euclidean distance on L2-normalised embeddings, Adam; "
                f"{timing_lib.timing_line(timing)}. Per dataset:\n\n"
                + runs.per_dataset_lines(cfg, study.run_config))
    rep = report.write_report(workdir, list(s.datasets), list(s.losses), seeds,
                              gmm_components=int(s.gmm_components), preamble=preamble,
                              cfg=cfg)
    wall = time.time() - t0
    runs.write_study_json(workdir, cfg, records, timing, wall_seconds=wall)
    return {"runs": records, "wall_seconds": wall, "report": rep}


def _show(out: dict[str, Any], workdir: str) -> None:
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(workdir, 'report.md')} in {out['wall_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  command.main(argv, program="loss study", usage=__doc__, example_config=EXAMPLE_CONFIG,
               default_workdir="runs/loss_study",
               run_study=lambda cfg, workdir, _: run_study(cfg, workdir), show=_show)


if __name__ == "__main__":
  main()
