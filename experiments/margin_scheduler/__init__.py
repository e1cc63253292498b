"""Paper A's margin-scheduler study (Tomchak et al., arXiv 2603.26389), by one command.

  python -m experiments.margin_scheduler.run \\
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study

Modules:

* :mod:`~experiments.margin_scheduler.study`: the study's config section, its arms
  (schedule x reduction x mining), one run and the effective-margin evaluator.
* :mod:`~experiments.margin_scheduler.report`: tables, verdicts and figures from the run
  directories.
* :mod:`~experiments.margin_scheduler.run`: the command (the grid on
  :func:`experiments.runner.run_grid`, then the report).
"""
