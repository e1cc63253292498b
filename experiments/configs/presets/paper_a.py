"""Paper A's setup (Tomchak et al., arXiv 2603.26389), the margin study's starting point.

A margin-study config (:func:`study_config`) has every study's shape: a ``study`` section
(:func:`experiments.margin_scheduler.study.study_section`) and one full tsm config
section for its dataset (``cfg.<dataset>``). :func:`base` is paper A's training setup,
:func:`images` the same on paper A's 224 px image protocol.
"""

from __future__ import annotations

import ml_collections

from experiments.margin_scheduler import study
from tsm import config as config_lib


def base() -> ml_collections.ConfigDict:
  """Paper A's setup, the starting point of every study config file's dataset section.

  L2-normalised 128-d embeddings (paper A's head: Dense 512, ReLU, Dropout 0.5, Dense 256,
  ReLU, Dropout 0.3, Dense 128), plain Euclidean distance, the triplet loss averaged over
  the violating triplets of P x K = 32 x 2 batches (``mean_nonzero``, as the authors'
  code), Adam 1e-4, the model of the lowest validation loss
  (at the fixed margin 1.0 of the authors' code), 1,000 verification pairs per split. The
  margins: mu0 = 0.2, mu_last = 1.0, DAMS tau = 0.95, delta = 0.05; the controller holds
  the easy share at 0.9 with its floor at mu0
  (:func:`experiments.margin_scheduler.study.schedule_margin`).

  Returns:
    A full tsm config.
  """
  cfg = config_lib.default_config()
  cfg.model.head = "paper_a"
  cfg.model.embedding_dim = 128
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = study.DEFAULT_REDUCTION
  cfg.margin.schedule = "constant"
  cfg.margin.initial_margin = 0.2
  cfg.margin.final_margin = 1.0
  cfg.margin.threshold = 0.95
  cfg.margin.increment = 0.05
  cfg.margin.target = 0.9
  cfg.margin.gain = 0.5
  cfg.margin.min_margin = 0.2
  cfg.train.epochs = 50
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 32
  cfg.train.samples_per_class = 2
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-4
  cfg.train.best_metric = "val_loss"
  cfg.eval.val_margin = 1.0
  cfg.eval.num_pairs = 1000
  cfg.eval.every_epochs = 5
  return cfg


def images(name: str) -> ml_collections.ConfigDict:
  """:func:`base` on paper A's image setup, identity- (class-) disjoint.

  ``name``'s classes split into training and test classes, 10 % of the training classes
  held out for validation; 224 px RGB, resized, no crop / flip augmentation (as the
  authors' code), standardised by the training split's own channel mean and std (as
  the authors' code; ``data.normalize="dataset"``); an EfficientNet-B0 trunk (ImageNet
  weights via ``--config.<name>.model.pretrained_path``) under paper A's head.

  Args:
    name: the dataset (``lfw``, ``caltech_birds2011``).

  Returns:
    A full tsm config.
  """
  cfg = base()
  cfg.data.name = name
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.1
  cfg.data.image_size = 224
  cfg.data.channels = 3
  cfg.data.normalize = "dataset"
  cfg.data.augment = False
  cfg.model.name = "efficientnet_b0"
  cfg.eval.batch_size = 128
  return cfg


def study_config(section: ml_collections.ConfigDict, *,
                 workers: int = 1) -> ml_collections.ConfigDict:
  """A margin-study config: the ``study`` section over ``section``'s dataset and the
  section itself, named for its ``data.name``.

  Args:
    section: a full tsm config (from :func:`base` or :func:`images`).
    workers: ``study.workers`` (1: a GPU study; one per core on a CPU).

  Returns:
    A ConfigDict with ``study`` and ``<data.name>``.
  """
  cfg = ml_collections.ConfigDict()
  cfg.study = study.study_section((section.data.name,))
  cfg.study.workers = int(workers)
  cfg[section.data.name] = section
  return cfg
