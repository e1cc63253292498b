r"""Paper B's study: contrastive vs triplet loss under identical settings, over seeds.

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_offline.py --workdir=runs/loss_study \
      [--config.study.seeds=2 --config.study.epochs=10 --config.study.sampling=pk ...]

Trains every (dataset, loss, seed) of the config's ``study`` section with
:func:`tsm.fit.fit` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``), measures the
final model (:func:`experiments.common.loss_studies.train_and_measure`) and writes the
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

import ml_collections

from experiments.common import loss_studies
from experiments.loss_comparison import report
from experiments.loss_comparison import study

EXAMPLE_CONFIG = "experiments/configs/loss_study_offline.py"


def _settings(cfg: ml_collections.ConfigDict) -> str:
  s = cfg.study
  sampling = "paper B random triplets / pairs" if s.sampling == "paper" else s.sampling
  losses, seeds = loss_studies.losses_and_seeds(cfg)
  return (f"{losses}; sampling {sampling}; {seeds}; margin 1.0, Euclidean distance on "
          "L2-normalised embeddings, Adam")


SPEC = loss_studies.LossStudy(
    label="loss study", study=study, write_report=report.write_study_report,
    progress=lambda r: f"loss-decay {r['loss_decay_epochs']}", settings=_settings,
    # Relative cost of one epoch per dataset, to start the costliest runs first.
    cost={"mnist1d": 4.0, "synthetic": 1.0, "digits": 0.7}, default_cost=10.0,
    example_config=EXAMPLE_CONFIG,
    default_workdir="runs/loss_study", usage=__doc__)

# run_study(cfg, workdir) -> {"runs", "wall_seconds", "report"}; main(argv=None).
run_study = SPEC.run_study
main = SPEC.main


if __name__ == "__main__":
  main()
