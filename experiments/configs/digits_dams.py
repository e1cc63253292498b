r"""Digits (scikit-learn, offline) with triplet loss and the DAMS margin scheduler.

The README's default run: no download.

  tsm-train --config=experiments/configs/digits_dams.py --workdir=runs/digits_dams

Paper A's verification protocol for a few-class set: the split is by image within the
same 10 digits (train / validation / test images disjoint), as for MNIST in paper A; add
``--config.data.split=class_disjoint`` to train on digits 0-4 and test on the unseen 5-9
(the metric-learning standard, hard with only five training classes). A small MLP on the
8x8 images, P x K batches (5 classes x 8 images), all valid triplets, DAMS from mu = 0.2
(threshold 0.95, step 0.05, paper A's defaults); the kept model has the lowest validation
loss (paper A). About 10-20 s on two CPU cores.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.seed = 0
  cfg.data.name = "digits"
  cfg.data.split = "by_image"
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
