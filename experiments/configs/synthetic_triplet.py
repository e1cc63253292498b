r"""Paper B's synthetic experiment: random triplets, triplet loss, margin 1.0.

  tsm-train --config=experiments/configs/synthetic_triplet.py --workdir=runs/synthetic_triplet

10 classes x 200 points in 128-D with 10% label noise and 5% outliers (labelled -1),
L2-normalised (``data.name=synthetic``); MLP 128 -> 64 -> ReLU -> 32, L2-normalised;
Adam 1e-3; 64 random (anchor, positive, negative) triplets per batch, every anchor once
per epoch; 100 epochs; constant margin 1.0. As in the authors' code the model is trained
and evaluated on the same points (``data.split=standard``). For the contrastive side of
the comparison:

  tsm-train --config=experiments/configs/synthetic_triplet.py --workdir=runs/synthetic_contrastive \
      --config.loss.name=contrastive --config.train.sampling=pairs

References: Zeng, "Comparing Contrastive and Triplet Loss: Variance Analysis and
Optimization Behavior", arXiv:2510.02161.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "synthetic"
  cfg.data.split = "standard"
  cfg.data.val_fraction = 0.1
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.loss.name = "triplet"
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = "mean"
  cfg.margin.schedule = "constant"
  cfg.margin.initial_margin = 1.0
  cfg.train.epochs = 100
  cfg.train.sampling = "triplets"
  cfg.train.batch_size = 64
  cfg.train.learning_rate = 1e-3
  cfg.train.best_metric = "val_loss"
  cfg.eval.every_epochs = 10
  cfg.eval.val_margin = 1.0
  return cfg
