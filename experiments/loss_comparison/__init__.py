"""Paper B's study: contrastive vs triplet loss, variance and greediness.

The same file roles as :mod:`experiments.margin_scheduler`:

* :mod:`~experiments.loss_comparison.study`: the study's config, its arms (dataset x
  loss x seed) and one run;
* :mod:`~experiments.loss_comparison.analysis`: paper B's measurements of a final model;
* :mod:`~experiments.loss_comparison.report`: tables, verdicts, deviations and figures;
* :mod:`~experiments.loss_comparison.run`: the command (the grid on
  :func:`experiments.runner.run_grid`, then the report).
"""
