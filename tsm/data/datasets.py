"""``load(spec, seed=...)``: a dataset's train / val / test splits; ``from_arrays``."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping

import numpy as np

from tsm.data import offline
from tsm.data import preprocess
from tsm.data import splits as splits_lib
from tsm.data import spec as spec_lib

log = logging.getLogger(__name__)


def _array_splits(name: str, pool: offline.ArrayPool, spec: spec_lib.DataSpec,
                  part: splits_lib.Partition, test_is_all: bool = False
                  ) -> splits_lib.DatasetSplits:
  """Splits of an in-memory pool (offline datasets)."""
  x = pool.inputs
  augment_fn = None
  if name in spec_lib.IMAGE_DATASETS:
    image_size, channels, method = spec.image_size, spec.channels, spec.normalize
    if image_size is not None or channels is not None or method != "unit":
      # Offline images are already in [0, 1]: back to 0..255 for the shared pipeline.
      x = preprocess.prepare_images(preprocess.unit_to_uint8(x),
                                    image_size=image_size, channels=channels,
                                    method=method)
    augment_fn = preprocess.image_augmenter(name)
  input_shape = x.shape[1:]

  def make(indices: np.ndarray, split_name: str) -> splits_lib.Split:
    inputs = x[indices]
    return splits_lib.Split(pool.labels[indices], lambda i: inputs[i], input_shape,
                            name=f"{name}/{split_name}", augment_fn=augment_fn,
                            ids=indices)

  cap, data_seed = spec.num_examples, spec.data_seed
  train = splits_lib.cap(part.train, cap, seed=data_seed)
  val = splits_lib.cap(part.val, cap, seed=data_seed + 1)
  test = splits_lib.cap(np.arange(len(pool.labels)) if test_is_all else part.test, cap,
                        seed=data_seed + 2)
  return splits_lib.DatasetSplits(name, make(train, "train"), make(val, "val"),
                                  make(test, "test"), tuple(input_shape),
                                  pool.num_classes)


def load(spec: spec_lib.DataSpec, *, seed: int) -> splits_lib.DatasetSplits:
  """Loads a dataset's train / validation / test splits.

  Labels are in memory at once; inputs are decoded lazily by ``Split.get`` (TFDS
  images) or sliced from memory (offline sets). With ``spec.normalize="dataset"`` the
  training split's channel statistics are measured first (:func:`training_stats`) and
  every split is standardised by them (``DatasetSplits.input_stats``).

  Args:
    spec: what to load (:class:`tsm.data.DataSpec`).
    seed: the run's seed; it picks the validation split only.

  Returns:
    ``DatasetSplits(name, train, val, test, input_shape, num_classes)``.

  Raises:
    ValueError: a bad spec (one line starting with the field's name).
    tsm.data.DatasetNotPreparedError: a TFDS dataset is not prepared (one line with the
      ``tsm-prepare`` command).
  """
  spec.check()
  if spec.normalize == "dataset":
    return standardized(_load(dataclasses.replace(spec, normalize="unit"), seed=seed),
                        seed=spec.data_seed)
  return _load(spec, seed=seed)


def training_stats(train: splits_lib.Split, *,
                   max_examples: int = spec_lib.STATS_EXAMPLES, seed: int = 0,
                   chunk: int = 512) -> preprocess.ChannelStats:
  """Channel mean / std of a training split's prepared inputs (``"dataset"``
  normalisation).

  Args:
    train: the split (its inputs as the model would see them before standardising).
    max_examples: examples used at most; larger splits give a seeded sample.
    seed: seed of that sample.
    chunk: examples decoded at a time (bounds the memory).

  Returns:
    :class:`tsm.data.preprocess.ChannelStats` over the last axis.
  """
  n = len(train)
  indices = np.arange(n)
  if n > max_examples:
    indices = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
  return preprocess.channel_stats(train.get(indices[i:i + chunk])
                                  for i in range(0, indices.size, chunk))


def standardized(splits: splits_lib.DatasetSplits, *, seed: int = 0
                 ) -> splits_lib.DatasetSplits:
  """Every split standardised by the training split's channel mean / std.

  Args:
    splits: splits whose inputs are not yet standardised.
    seed: seed of the sample the statistics come from (see :func:`training_stats`).

  Returns:
    The splits, each mapped through :func:`tsm.data.preprocess.standardize`, with
    ``input_stats`` set.
  """
  stats = training_stats(splits.train, seed=seed)
  log.info("%s: inputs standardised by the training split's mean %s and std %s",
           splits.name, np.array2string(stats.mean, precision=4, threshold=8),
           np.array2string(stats.std, precision=4, threshold=8))
  fn = functools.partial(preprocess.standardize, stats=stats)
  return splits._replace(train=splits.train.map(fn), val=splits.val.map(fn),
                         test=splits.test.map(fn), input_stats=stats)


def _load(spec: spec_lib.DataSpec, *, seed: int) -> splits_lib.DatasetSplits:
  """``load`` before the ``"dataset"`` normalisation (``spec`` checked)."""
  name, split, data_seed = spec.name, spec.split, spec.data_seed
  if spec.uses_idx():
    return _idx_splits(spec, seed=seed)
  if name in spec_lib.TFDS_DATASETS:
    from tsm.data import tfds_sources  # pylint: disable=g-import-not-at-top  # optional tfds
    return tfds_sources.load_tfds(spec, seed=seed)
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
      pool.labels, split, num_classes=pool.num_classes, val_fraction=spec.val_fraction,
      test_fraction=spec.test_fraction, data_seed=data_seed, seed=seed,
      official_test=official_test, val_split=spec.val_split,
      min_classes_for_class_val=spec_lib.MIN_CLASSES_FOR_CLASS_VAL)
  return _array_splits(name, pool, spec, part, test_is_all=test_is_all)


def _idx_splits(spec: spec_lib.DataSpec, *, seed: int) -> splits_lib.DatasetSplits:
  """Splits of an IDX set (Fashion-MNIST by default): official train / test pooled and
  split as ``spec.split`` says, like the TFDS sets (``splits.partition``)."""
  from tsm.data import idx as idx_lib  # pylint: disable=g-import-not-at-top
  ds = idx_lib.load_idx_dataset(spec.path or idx_lib.DEFAULT_FASHION_MNIST_DIR)
  images = np.concatenate([ds.train_images, ds.test_images])   # uint8 [N, H, W]
  labels = np.concatenate([ds.train_labels, ds.test_labels]).astype(np.int32)
  num_classes = int(labels.max()) + 1
  official_test = np.arange(labels.size) >= ds.train_labels.size
  part = splits_lib.partition(
      labels, spec.split, num_classes=num_classes, val_fraction=spec.val_fraction,
      test_fraction=spec.test_fraction, data_seed=spec.data_seed, seed=seed,
      official_test=official_test, val_split=spec.val_split,
      min_classes_for_class_val=spec_lib.MIN_CLASSES_FOR_CLASS_VAL)
  native_channels = 1 if images.ndim == 3 else images.shape[-1]
  side = spec.image_size or images.shape[1]
  input_shape = (side, side, spec.channels or native_channels)
  augment_fn = preprocess.image_augmenter(spec.name)

  def make(indices: np.ndarray, split_name: str, cap_seed: int) -> splits_lib.Split:
    indices = splits_lib.cap(indices, spec.num_examples, seed=cap_seed)

    def fetch(i):
      return preprocess.prepare_images(images[indices[i]], image_size=spec.image_size,
                                       channels=spec.channels, method=spec.normalize)

    return splits_lib.Split(labels[indices], fetch, input_shape,
                            name=f"{spec.name}/{split_name}", augment_fn=augment_fn,
                            ids=indices)

  return splits_lib.DatasetSplits(
      spec.name, make(part.train, "train", spec.data_seed),
      make(part.val, "val", spec.data_seed + 1), make(part.test, "test", spec.data_seed + 2),
      input_shape, num_classes)


def from_arrays(train: tuple[Any, Any], test: tuple[Any, Any] | None = None,
                val: tuple[Any, Any] | None = None, *, name: str = "arrays",
                num_classes: int | None = None) -> splits_lib.DatasetSplits:
  """Splits of in-memory arrays, for training on your own data with ``tsm.fit.fit``.

  Args:
    train: ``(inputs [N, ...], labels [N])`` of the training split; labels are integer
      class ids (negative = unlabelled, never drawn as an anchor or a class).
    test: optional ``(inputs, labels)`` of the test split (same per-example shape).
    val: optional ``(inputs, labels)`` of the validation split.
    name: a name shown in logs and summaries.
    num_classes: number of classes (default: 1 + the largest label seen).

  Returns:
    A :class:`tsm.data.DatasetSplits`; missing splits are empty.

  Raises:
    ValueError: one line naming the split whose arrays disagree or are not arrays of the
      same per-example shape.
  """
  parts = {"train": train, "val": val, "test": test}
  arrays = {}
  for split_name, pair in parts.items():
    if pair is None:
      continue
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise ValueError(f"{split_name} must be a pair (inputs, labels); got "
                       f"{type(pair).__name__}.")
    inputs, labels = np.asarray(pair[0]), np.asarray(pair[1])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{split_name} labels must be a 1-D integer array; got shape "
                       f"{labels.shape} and dtype {labels.dtype} (cast with "
                       ".astype(np.int32)).")
    if inputs.ndim < 2 or inputs.shape[0] != labels.shape[0]:
      raise ValueError(f"{split_name} inputs of shape {inputs.shape} do not match its "
                       f"{labels.shape[0]} labels; give one row per label.")
    arrays[split_name] = (inputs.astype(np.float32, copy=False), labels.astype(np.int32))
  input_shape = arrays["train"][0].shape[1:]
  for split_name, (inputs, _) in arrays.items():
    if inputs.shape[1:] != input_shape:
      raise ValueError(f"{split_name} examples have shape {inputs.shape[1:]}, the train "
                       f"examples {input_shape}; give every split the same shape.")
  if num_classes is None:
    num_classes = 1 + max(int(labels.max(initial=-1)) for _, labels in arrays.values())

  def make(split_name: str) -> splits_lib.Split:
    inputs, labels = arrays.get(split_name, (np.zeros((0,) + input_shape, np.float32),
                                             np.zeros((0,), np.int32)))
    return splits_lib.Split(labels, lambda i: inputs[i], tuple(input_shape),
                            name=f"{name}/{split_name}")

  return splits_lib.DatasetSplits(name, make("train"), make("val"), make("test"),
                                  tuple(input_shape), int(num_classes))


def as_splits(data: Any) -> splits_lib.DatasetSplits:
  """``data`` as ``DatasetSplits``: given as such, or a mapping of ``(inputs, labels)``."""
  if isinstance(data, splits_lib.DatasetSplits):
    return data
  if isinstance(data, Mapping) and "train" in data:
    return from_arrays(**{k: data[k] for k in ("train", "val", "test")
                                       if data.get(k) is not None})
  raise ValueError("data must be tsm.data.DatasetSplits or a dict with 'train' (and "
                   "optionally 'val', 'test') pairs (inputs, labels).")
