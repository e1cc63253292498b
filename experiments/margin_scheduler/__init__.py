"""Paper A's margin-scheduler study (Tomchak et al., arXiv 2603.26389), by one command.

  python -m experiments.margin_scheduler.run \\
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study

Modules:

* :mod:`~experiments.margin_scheduler.study`: the study's config section, the schedules
  compared, the per-run config and the effective-margin evaluator.
* :mod:`~experiments.margin_scheduler.report`: tables, verdicts and figures from the run
  directories.
* :mod:`~experiments.margin_scheduler.run`: the command (runs in parallel processes, then
  the report).
"""
