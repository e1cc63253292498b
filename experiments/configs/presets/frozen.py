"""Fashion-MNIST on a frozen ImageNet-pretrained EfficientNet-Lite0: a head on cached
features (``tsm.data.features``), the frozen-trunk protocol of paper B and the
follow-up with Lite0 standing in for their ViT-B/32 (and for paper A's EfficientNet-B0).

:func:`fashion_mnist_features` sets a run's data and trunk (the official 60,000 / 10,000
split, grey repeated to RGB and resized, the trunk's 1280-d features computed once into
the cache, under ``$TSM_CACHE_DIR`` or ``~/.cache/tsm``); :func:`projection_head` the
follow-up's head and optimiser. ``experiments/configs/fashion_mnist_frozen_lite0.py``
is the single run they come from.
"""

from __future__ import annotations

import ml_collections

DATASET = "fashion_mnist"
TRUNK = "efficientnet_lite0"
# The CPU configs' resolution (the cache of all 70,000 images took 13.8 minutes on 2
# quiet cores at 128 px; about 36 at the weights' 224): see
# experiments/configs/fashion_mnist_frozen_lite0.py.
CPU_IMAGE_SIZE = 128
GPU_IMAGE_SIZE = 224


def fashion_mnist_features(cfg: ml_collections.ConfigDict, *,
                           image_size: int = CPU_IMAGE_SIZE,
                           num_examples: int | None = None) -> ml_collections.ConfigDict:
  """``cfg`` on Fashion-MNIST's cached Lite0 features.

  Args:
    cfg: a full tsm config (a study's preset).
    image_size: the side the images are resized to before the trunk.
    num_examples: cap on the examples of each split (None: all 60,000 / 10,000),
      drawn from ``data.data_seed`` (each seed's own draw in a study with
      ``study.vary_data``).

  Returns:
    ``cfg``, changed.
  """
  cfg.data.name = DATASET
  cfg.data.split = "standard"
  cfg.data.image_size = int(image_size)
  cfg.data.normalize = "unit"   # the trunk takes the uint8 pixels the inputs came from
  cfg.data.augment = False
  cfg.data.num_examples = num_examples
  cfg.model.trunk = TRUNK
  cfg.model.freeze_trunk = True
  cfg.eval.batch_size = 1024
  return cfg


def projection_head(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The follow-up's head: a linear projection to 128-d, L2-normalised, Adam 1e-4
  (its batch of 512 is set by each study: random triplets / pairs or P x K)."""
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 128
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-4
  return cfg
