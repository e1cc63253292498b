r"""The loss zoo: nine losses under identical settings, over seeds, with D1-D4 verdicts.

  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_offline.py --workdir=runs/loss_zoo \
      [--config.study.seeds=2 --config.study.epochs=5 \
       --config.study.losses='("triplet","supcon")' ...]

Trains every (dataset, loss, seed) of the config's ``study`` section with
``tsm.config.train_and_evaluate`` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``,
the loss's parameters and state in the checkpointed train state), measures the final
model (:func:`experiments.common.loss_studies.train_and_measure`) and writes
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

from typing import Any

import ml_collections

from experiments.common import loss_studies
from experiments.loss_zoo import report
from experiments.loss_zoo import study

EXAMPLE_CONFIG = "experiments/configs/loss_zoo_offline.py"


def _active(r: dict[str, Any]) -> str:
  active = "n/a" if r["mean_active_ratio"] is None else f"{r['mean_active_ratio']:.4f}"
  return f"active {active}"


def _settings(cfg: ml_collections.ConfigDict) -> str:
  s = cfg.study
  losses, seeds = loss_studies.losses_and_seeds(cfg)
  return (f"{losses}; {seeds}; P x K batches, Adam, constant rate, identical for every "
          f"loss; triplet margin {s.triplet_margin:g}, contrastive margin "
          f"{s.contrastive_margin:g}, other losses at pytorch-metric-learning's defaults")


SPEC = loss_studies.LossStudy(
    label="loss zoo", study=study, write_report=report.write_study_report,
    progress=_active, settings=_settings,
    # Relative cost of one epoch per dataset (measured on 2 CPU cores), to start the
    # costliest runs first so that parallel workers end together.
    cost={"synthetic": 1.0, "mnist1d": 3.0, "fashion_mnist": 8.0}, default_cost=20.0,
    example_config=EXAMPLE_CONFIG,
    default_workdir="runs/loss_zoo", usage=__doc__)

# run_study(cfg, workdir) -> {"runs", "wall_seconds", "report"}; main(argv=None).
run_study = SPEC.run_study
main = SPEC.main


if __name__ == "__main__":
  main()
