r"""CIFAR-10 (TFDS) with paper B's random triplets and a ResNet-18 (CIFAR stem).

  tsm-prepare cifar10
  tsm-train --config=experiments/configs/cifar10_triplet.py --workdir=runs/cifar10_triplet

TFDS's own train / test split (``standard``: same classes; k-NN accuracy with k = 5 and
Recall@K on the test split, as paper B reports). Paper B trains a linear head on a frozen
ViT-B/32; tsm has no ViT, so this config trains a ResNet-18 end to end (set
``model.pretrained_path`` and ``model.freeze_trunk=True`` to follow the frozen-trunk
protocol with converted weights). 128 random triplets per batch, margin 1.0, Adam 1e-3
with cosine decay, random crop + flip augmentation. Contrastive counterpart:
``--config.loss.name=contrastive --config.train.sampling=pairs``. Wants a GPU.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "cifar10"
  cfg.data.split = "standard"
  cfg.data.val_fraction = 0.1
  cfg.data.augment = True
  cfg.data.normalize = "symmetric"
  cfg.model.name = "resnet18"
  cfg.model.stem = "cifar"
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 128
  cfg.loss.name = "triplet"
  cfg.margin.schedule = "constant"
  cfg.margin.initial_margin = 1.0
  cfg.train.epochs = 30
  cfg.train.sampling = "triplets"
  cfg.train.batch_size = 128
  cfg.train.learning_rate = 1e-3
  cfg.train.lr_schedule = "cosine"
  cfg.train.best_metric = "map@r"
  cfg.eval.every_epochs = 5
  cfg.eval.val_batches = 20
  cfg.eval.knn_k = 5
  cfg.checkpoint.every_steps = 1000
  return cfg
