"""The follow-up's study (arXiv 2601.21450): nine losses, variance and greediness.

The same file roles as :mod:`experiments.loss_comparison`:

* :mod:`~experiments.loss_zoo.study`: the study's config, its arms (dataset x loss x
  seed) and one run (trained with ``tsm.config.train_and_evaluate``, measured with
  :mod:`experiments.loss_comparison.analysis`);
* :mod:`~experiments.loss_zoo.report`: the loss x metric tables, the verdicts of claims
  D1-D4, the deviations and the figures;
* :mod:`~experiments.loss_zoo.run`: the command (the grid on
  :func:`experiments.runner.run_grid`, then the report).
"""
