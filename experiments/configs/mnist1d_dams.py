r"""mnist1d (offline, 1-D signals of length 40) with triplet loss and DAMS.

  tsm-train --config=experiments/configs/mnist1d_dams.py --workdir=runs/mnist1d_dams

Class-disjoint split (classes 0-4 train, 5-9 test), the small 1-D ConvNet, P x K batches
of 5 classes x 16 signals, all valid triplets, DAMS from mu = 0.2. A few minutes on CPU.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "mnist1d"
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.2
  cfg.model.name = "conv1d"
  cfg.model.embedding_dim = 32
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.margin.schedule = "dams"
  cfg.train.epochs = 20
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 5
  cfg.train.samples_per_class = 16
  cfg.train.learning_rate = 1e-3
  cfg.train.best_metric = "val_loss"
  cfg.eval.every_epochs = 5
  return cfg
