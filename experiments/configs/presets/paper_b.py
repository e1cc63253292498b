"""Paper B's setup (arXiv 2510.02161 and its code) and its dataset sections.

Shared settings: margin m = 1.0 (constant), plain Euclidean distance on L2-normalised
embeddings, mean reduction, Adam 1e-3, batches of 64 random triplets (triplet loss) or 64
random pairs (contrastive loss; each anchor with a random positive or a random negative),
no validation split: the model after the last epoch is analysed, as in the paper. Splits
keep the test classes equal to the training classes where k-NN accuracy is reported
(``standard`` / ``by_image``).

A loss-study config (:func:`study_config`) is a ``study`` section
(:func:`experiments.loss_comparison.study.study_section`) and one full tsm config per
dataset named in ``study.datasets``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.presets import datasets as dataset_presets
from experiments.configs.presets import last_model
from experiments.loss_comparison import study

OFFLINE_DATASETS = ("synthetic", "digits", "mnist1d")
TFDS_DATASETS = ("mnist", "cifar10", "caltech_birds2011", "cars196")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS


def base() -> ml_collections.ConfigDict:
  """Settings every dataset shares (module docstring)."""
  cfg = last_model.base()
  cfg.loss.name = "triplet"
  cfg.margin.initial_margin = 1.0
  cfg.train.sampling = "triplets"
  cfg.train.batch_size = 64
  return cfg


def synthetic() -> ml_collections.ConfigDict:
  """Paper B's synthetic set and MLP 128 -> 64 -> ReLU -> 32, 100 epochs.

  Variances are measured on the training embeddings, as in the paper.
  """
  cfg = dataset_presets.synthetic(base())
  cfg.train.epochs = 100
  return cfg


def digits() -> ml_collections.ConfigDict:
  """scikit-learn digits (8x8), an MLP 64 -> 128 -> ReLU -> 32, 100 epochs, by-image split."""
  cfg = base()
  cfg.data.name = "digits"
  cfg.data.split = "by_image"
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 100
  return cfg


def mnist1d() -> ml_collections.ConfigDict:
  """MNIST-1D (4,000 / 1,000 official split), a wider conv1d, 32-d, 80 epochs."""
  cfg = dataset_presets.mnist1d(base())
  cfg.train.epochs = 80
  return cfg


def mnist() -> ml_collections.ConfigDict:
  """Paper B's MNIST: ConvNet conv32-conv64-FC128-64, batch 256, 20 epochs."""
  cfg = base()
  cfg.data.name = "mnist"
  cfg.data.split = "standard"
  cfg.model.name = "convnet"
  cfg.model.conv_features = (32, 64)
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 64
  cfg.train.batch_size = 256
  cfg.train.epochs = 20
  cfg.eval.batch_size = 1024
  return cfg


def cifar10() -> ml_collections.ConfigDict:
  """CIFAR-10: ResNet-18 (CIFAR stem) + linear head to 512-d, 20 epochs.

  Paper B trains a linear head 768 -> 512 on a frozen ViT-B/32. tsm has no ViT: the
  trunk is a ResNet-18, trained end to end unless ``model.pretrained_path`` names a
  local ``.npz`` of trunk weights (then frozen, ``study.freeze_pretrained``).
  """
  cfg = dataset_presets.cifar10(base())
  cfg.train.epochs = 20
  cfg.eval.batch_size = 1024
  return cfg


def _fine_grained(name: str) -> ml_collections.ConfigDict:
  cfg = dataset_presets.fine_grained(base(), name)
  cfg.train.epochs = 30
  return cfg


def caltech_birds2011() -> ml_collections.ConfigDict:
  """CUB-200-2011: ResNet-50 (ImageNet stem, 224 px) + linear head to 512-d, 30 epochs.

  Class-disjoint split (classes 1-100 train, 101-200 test; the field's protocol,
  Musgrave et al. 2020), so k-NN accuracy is not reported (test classes are unseen).
  Paper B's frozen ViT-B/32 is replaced by a ResNet-50 trunk: pass ImageNet weights as
  ``model.pretrained_path`` (a local ``.npz``, see ``tsm.models``) to freeze it.
  """
  return _fine_grained("caltech_birds2011")


def cars196() -> ml_collections.ConfigDict:
  """Cars196: as :func:`caltech_birds2011` (classes 1-98 train, 99-196 test)."""
  return _fine_grained("cars196")


BUILDERS = {
    "synthetic": synthetic, "digits": digits, "mnist1d": mnist1d, "mnist": mnist,
    "cifar10": cifar10, "caltech_birds2011": caltech_birds2011, "cars196": cars196,
}


def study_config(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A study config over ``datasets``: the ``study`` section and one section each.

  Args:
    datasets: names from :data:`DATASETS`.

  Returns:
    A ConfigDict.
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
