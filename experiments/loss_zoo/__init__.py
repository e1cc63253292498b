"""The follow-up's study (arXiv 2601.21450): nine losses, variance and greediness.

The file roles every study has (on :mod:`experiments.common`):

* :mod:`~experiments.loss_zoo.study`: the study section, its arms (dataset x loss x
  seed), its checks and what one run measures;
* :mod:`~experiments.loss_zoo.report`: the loss x metric tables, the verdicts of claims
  D1-D4, the deviations and the figures;
* :mod:`~experiments.loss_zoo.run`: the command (the grid, then the report).

Its dataset sections are :mod:`experiments.configs.presets.loss_zoo`.
"""
