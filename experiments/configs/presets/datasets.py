"""Data and model sections of the TFDS image sets the loss studies run on.

Each function sets a dataset's ``data`` section and its trunk's ``model`` section on a
full tsm config and returns it; the study's own preset adds its training settings.
"""

from __future__ import annotations

import ml_collections


def cifar10(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CIFAR-10 (standard split, symmetric normalisation), ResNet-18 (CIFAR stem) + linear
  head to 512-d."""
  cfg.data.name = "cifar10"
  cfg.data.split = "standard"
  cfg.data.normalize = "symmetric"
  cfg.model.name = "resnet18"
  cfg.model.stem = "cifar"
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 512
  return cfg


def fine_grained(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A fine-grained set (``caltech_birds2011``, ``cars196``): class-disjoint split (the
  first half of the classes train, the rest test; Musgrave et al. 2020), 224 px with
  ImageNet normalisation, ResNet-50 (ImageNet stem) + linear head to 512-d."""
  cfg.data.name = name
  cfg.data.split = "class_disjoint"
  cfg.data.image_size = 224
  cfg.data.normalize = "imagenet"
  cfg.model.name = "resnet50"
  cfg.model.stem = "imagenet"
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 512
  return cfg
