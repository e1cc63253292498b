"""The loss zoo's shared settings and dataset sections (the follow-up, arXiv 2601.21450).

Shared settings: P x K batches (every loss is in-batch; P = 8 classes x K = 8 samples),
L2-normalised 32-d embeddings, Adam 1e-3, constant learning rate, no validation split
(the model after the last epoch is measured). The TFDS sets take the follow-up's head
(128-d linear projection, Adam 1e-4) on the trunks of :mod:`.datasets`.

A loss-zoo config (:func:`study_config`) is a ``study`` section
(:func:`experiments.loss_zoo.study.study_section`) and one full tsm config per dataset
named in ``study.datasets``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.presets import datasets as dataset_presets
from experiments.loss_zoo import study
from tsm import config as config_lib

OFFLINE_DATASETS = ("synthetic", "mnist1d", "fashion_mnist")
TFDS_DATASETS = ("cifar10", "cars196", "caltech_birds2011")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS


def base() -> ml_collections.ConfigDict:
  """Settings every dataset and every loss share (module docstring)."""
  cfg = config_lib.default_config()
  cfg.data.val_fraction = 0.0
  cfg.data.test_fraction = 0.2
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = "mean"
  cfg.margin.schedule = "constant"
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 8
  cfg.train.samples_per_class = 8
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-3
  cfg.train.lr_schedule = "constant"
  cfg.train.best_metric = "val_loss"   # no validation split: the last model is used
  cfg.train.progress = False
  cfg.train.tensorboard = False
  cfg.train.log_every = 100
  cfg.eval.knn_k = 5
  cfg.eval.every_epochs = 1_000_000   # no validation metrics (there is no split)
  cfg.checkpoint.keep = 1
  cfg.checkpoint.every_epochs = 0   # only after the last epoch
  return cfg


def synthetic() -> ml_collections.ConfigDict:
  """Paper B's synthetic set (10 classes, 128-d), MLP 128 -> 64 -> 32, 30 epochs."""
  cfg = base()
  cfg.data.name = "synthetic"
  cfg.data.split = "by_image"
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 30
  return cfg


def mnist1d() -> ml_collections.ConfigDict:
  """MNIST-1D (4,000 / 1,000), paper B's study's wider conv1d, 32-d, 20 epochs."""
  cfg = base()
  cfg.data.name = "mnist1d"
  cfg.data.split = "standard"
  cfg.model.name = "conv1d"
  cfg.model.conv_features = (64, 64, 64)
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 20
  return cfg


def fashion_mnist() -> ml_collections.ConfigDict:
  """Fashion-MNIST (Debian's IDX files), 6,000 / 2,000 examples, small ConvNet, 10 epochs.

  One of the follow-up's five sets. Subsampled (``data.num_examples`` caps each split)
  so that the offline study fits its CPU budget; the full set: ``--config.fashion_mnist.
  data.num_examples=None``.
  """
  cfg = base()
  cfg.data.name = "fashion_mnist"
  cfg.data.split = "standard"
  cfg.data.num_examples = 6_000
  cfg.model.name = "convnet"
  cfg.model.conv_features = (16, 32)
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 10
  cfg.eval.batch_size = 1024
  return cfg


def _with_head(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The follow-up's head: 128-d L2-normalised projection, Adam 1e-4, batch 32 x 4."""
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 128
  cfg.train.learning_rate = 1e-4
  cfg.train.classes_per_batch = 32
  cfg.train.samples_per_class = 4
  cfg.eval.batch_size = 512
  return cfg


def cifar10() -> ml_collections.ConfigDict:
  """CIFAR-10: ResNet-18 (CIFAR stem) + 128-d linear head, 20 epochs.

  P = 10 classes per batch (CIFAR-10 has ten) x K = 16.
  """
  cfg = _with_head(dataset_presets.cifar10(base()))
  cfg.train.classes_per_batch = 10
  cfg.train.samples_per_class = 16
  cfg.train.epochs = 20
  return cfg


def cars196() -> ml_collections.ConfigDict:
  """Cars196: ResNet-50 (224 px) + 128-d head, class-disjoint split, 30 epochs."""
  return _fine_grained("cars196")


def caltech_birds2011() -> ml_collections.ConfigDict:
  """CUB-200-2011: ResNet-50 (224 px) + 128-d head, class-disjoint split, 30 epochs."""
  return _fine_grained("caltech_birds2011")


def _fine_grained(name: str) -> ml_collections.ConfigDict:
  cfg = _with_head(dataset_presets.fine_grained(base(), name))
  cfg.train.epochs = 30
  return cfg


BUILDERS = {"synthetic": synthetic, "mnist1d": mnist1d, "fashion_mnist": fashion_mnist,
            "cifar10": cifar10, "cars196": cars196, "caltech_birds2011": caltech_birds2011}


def study_config(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A study config over ``datasets``: the ``study`` section and one section each.

  Args:
    datasets: names from :data:`DATASETS`.

  Returns:
    A ConfigDict.

  Raises:
    experiments.common.grid.StudyError: an unknown dataset.
  """
  unknown = [d for d in datasets if d not in BUILDERS]
  if unknown:
    raise study.StudyError(f"unknown datasets {unknown}; use names from "
                           f"{', '.join(DATASETS)}.")
  cfg = ml_collections.ConfigDict()
  cfg.study = study.study_section(datasets)
  for name in datasets:
    cfg[name] = BUILDERS[name]()
  return cfg
