r"""Digits (scikit-learn, offline) with triplet loss and the DAMS margin scheduler.

The README's default run: no download, about a minute on two CPU cores.

  tsm-train --config=experiments/configs/digits_dams.py --workdir=runs/digits_dams

Class-disjoint split: digits 0-4 for training (a share of their images held out for
validation), digits 5-9 for the test summary. A small MLP on the 8x8 images, P x K
batches (5 classes x 8 images), all valid triplets, DAMS from mu = 0.2 (threshold 0.95,
step 0.05, paper A's defaults); the kept model has the lowest validation loss (paper A).
"""

from tsm import config as tsm_config


def get_config():
  cfg = tsm_config.default_config()
  cfg.seed = 0
  cfg.data.name = "digits"
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.2
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.margin.schedule = "dams"
  cfg.margin.initial_margin = 0.2
  cfg.margin.threshold = 0.95
  cfg.margin.increment = 0.05
  cfg.train.epochs = 30
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 5
  cfg.train.samples_per_class = 8
  cfg.train.learning_rate = 1e-3
  cfg.train.best_metric = "val_loss"
  cfg.eval.every_epochs = 5
  return cfg
