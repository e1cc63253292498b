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
from experiments.configs.presets import last_model
from experiments.loss_zoo import study

OFFLINE_DATASETS = ("synthetic", "mnist1d", "fashion_mnist")
TFDS_DATASETS = ("cifar10", "cars196", "caltech_birds2011")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS


def base() -> ml_collections.ConfigDict:
  """Settings every dataset and every loss share (module docstring)."""
  cfg = last_model.base()
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 8
  cfg.train.samples_per_class = 8
  cfg.train.tensorboard = False
  return cfg


def synthetic() -> ml_collections.ConfigDict:
  """Paper B's synthetic set (10 classes, 128-d), MLP 128 -> 64 -> 32, 30 epochs."""
  cfg = dataset_presets.synthetic(base())
  cfg.train.epochs = 30
  return cfg


def mnist1d() -> ml_collections.ConfigDict:
  """MNIST-1D (4,000 / 1,000), paper B's study's wider conv1d, 32-d, 20 epochs."""
  cfg = dataset_presets.mnist1d(base())
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
