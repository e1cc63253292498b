"""``load(data_config, seed=...)``: a dataset's train / val / test splits."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tsm.data import config as config_lib
from tsm.data import offline
from tsm.data import preprocess
from tsm.data import splits as splits_lib

# Natural images are flipped by augmentation; digits are not (a mirrored 2 is no 2).
FLIP_DATASETS = ("cifar10", "caltech_birds2011", "cars196", "lfw", "fashion_mnist")


def image_augmenter(name: str):
  """The augmentation of an image dataset: random shift, and flip for natural images."""
  return functools.partial(preprocess.augment_images, flip=name in FLIP_DATASETS)


def _array_splits(name: str, pool: offline.ArrayPool, cfg: Any,
                  part: splits_lib.Partition, test_is_all: bool = False
                  ) -> splits_lib.DatasetSplits:
  """Splits of an in-memory pool (offline datasets)."""
  x = pool.inputs
  augment_fn = None
  if name in config_lib.IMAGE_DATASETS:
    image_size = config_lib.field(cfg, "image_size")
    channels = config_lib.field(cfg, "channels")
    method = config_lib.field(cfg, "normalize")
    if image_size is not None or channels is not None or method != "unit":
      # Offline images are already in [0, 1]: back to 0..255 for the shared pipeline.
      x = preprocess.prepare_images(np.round(x * 255.0).astype(np.uint8),
                                    image_size=image_size, channels=channels,
                                    method=method)
    augment_fn = image_augmenter(name)
  input_shape = x.shape[1:]

  def make(indices: np.ndarray, split_name: str) -> splits_lib.Split:
    inputs = x[indices]
    return splits_lib.Split(pool.labels[indices], lambda i: inputs[i], input_shape,
                            name=f"{name}/{split_name}", augment_fn=augment_fn)

  cap = config_lib.field(cfg, "num_examples")
  data_seed = config_lib.field(cfg, "data_seed")
  train = splits_lib.cap(part.train, cap, seed=data_seed)
  val = splits_lib.cap(part.val, cap, seed=data_seed + 1)
  test = splits_lib.cap(np.arange(len(pool.labels)) if test_is_all else part.test, cap,
                        seed=data_seed + 2)
  return splits_lib.DatasetSplits(name, make(train, "train"), make(val, "val"),
                                  make(test, "test"), tuple(input_shape),
                                  pool.num_classes)


def load(data_config: Any, *, seed: int) -> splits_lib.DatasetSplits:
  """Loads a dataset's train / validation / test splits.

  Labels are in memory at once; inputs are decoded lazily by ``Split.get`` (TFDS
  images) or sliced from memory (offline sets).

  Args:
    data_config: the ``data`` config section (see ``tsm.data.default_config``).
    seed: the run's seed; it picks the validation split only.

  Returns:
    ``DatasetSplits(name, train, val, test, input_shape, num_classes)``.

  Raises:
    ValueError: bad config (one line).
    tsm.data.DatasetNotPreparedError: a TFDS dataset is not prepared (one line with the
      ``tsm-prepare`` command).
  """
  config_lib.check_data_config(data_config)
  name = config_lib.field(data_config, "name")
  split = config_lib.field(data_config, "split")
  if name in config_lib.TFDS_DATASETS:
    from tsm.data import tfds_sources  # pylint: disable=g-import-not-at-top
    return tfds_sources.load_tfds(data_config, seed=seed)
  data_seed = config_lib.field(data_config, "data_seed")
  if name == "digits":
    pool = offline.digits()
  elif name == "mnist1d":
    pool = offline.mnist1d()
  else:
    pool = offline.synthetic(data_seed)
  test_is_all = name == "synthetic" and split == "standard"
  official_test = pool.official_test
  if test_is_all:   # paper B: train on all points, evaluate on the same points
    official_test = np.zeros(len(pool.labels), bool)
  part = splits_lib.partition(
      pool.labels, split, num_classes=pool.num_classes,
      val_fraction=config_lib.field(data_config, "val_fraction"),
      test_fraction=config_lib.field(data_config, "test_fraction"), data_seed=data_seed,
      seed=seed,
      official_test=official_test, val_split=config_lib.field(data_config, "val_split"),
      min_classes_for_class_val=config_lib.MIN_CLASSES_FOR_CLASS_VAL)
  return _array_splits(name, pool, data_config, part, test_is_all=test_is_all)
