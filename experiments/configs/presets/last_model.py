"""The run both loss studies make: train with Adam, then measure the last model.

No validation split (20 % of the data held out for test), so the model after the last
epoch is the one measured; no validation metrics; one checkpoint, after the last epoch;
Euclidean distance, mean reduction, a constant margin and learning rate, no progress bar.
"""

from __future__ import annotations

import ml_collections

from tsm import config as config_lib


def base() -> ml_collections.ConfigDict:
  """A full tsm config with the settings above (the study's preset adds its own)."""
  cfg = config_lib.default_config()
  cfg.data.val_fraction = 0.0
  cfg.data.test_fraction = 0.2
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = "mean"
  cfg.margin.schedule = "constant"
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-3
  cfg.train.lr_schedule = "constant"
  cfg.train.best_metric = "val_loss"   # no validation split: the last model is used
  cfg.train.progress = False
  cfg.train.log_every = 100
  cfg.eval.knn_k = 5
  cfg.eval.every_epochs = 1_000_000   # no validation metrics (there is no split)
  cfg.checkpoint.keep = 1
  cfg.checkpoint.every_epochs = 0   # only after the last epoch (orbax saves cost ~0.1 s)
  return cfg
