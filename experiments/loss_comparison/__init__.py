"""Paper B's study: contrastive vs triplet loss, variance and greediness.

The file roles every study has (on :mod:`experiments.common`):

* :mod:`~experiments.loss_comparison.study`: the study section, its arms (dataset x loss
  x seed), its checks and what one run measures;
* :mod:`~experiments.loss_comparison.report`: tables, claims and verdicts, deviations
  and figures;
* :mod:`~experiments.loss_comparison.run`: the command (the grid, then the report).

Its dataset sections are :mod:`experiments.configs.presets.paper_b`.
"""
