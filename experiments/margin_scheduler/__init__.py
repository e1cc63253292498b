"""Paper A's margin-scheduler study (Tomchak et al., arXiv 2603.26389), by one command.

  python -m experiments.margin_scheduler.run \\
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study

The file roles every study has (on :mod:`experiments.common`):

* :mod:`~experiments.margin_scheduler.study`: the study section, its arms (schedule x
  reduction x mining), its checks, one run and the effective-margin evaluator;
* :mod:`~experiments.margin_scheduler.report`: tables, claims and verdicts, deviations
  and figures from the run directories;
* :mod:`~experiments.margin_scheduler.run`: the command (the grid, then the report).

Paper A's setup is :mod:`experiments.configs.presets.paper_a`.
"""
