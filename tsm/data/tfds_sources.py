"""TFDS datasets read through ``tfds.data_source`` (ArrayRecord, no TensorFlow).

The data must be prepared once (``tsm-prepare NAME``, which needs TensorFlow through
the ``data`` extra); reading needs only ``tensorflow_datasets``, ``array_record`` and
PIL. A dataset that is not prepared raises ``DatasetNotPreparedError`` with one line
naming the command that prepares it.

Labels are read once with a cheap pass (records are parsed but images are not
decoded) and cached as ``.npy`` next to the prepared data (or in ``cache_dir``), so
P x K sampling starts at once on later runs; images are decoded lazily in
``Split.get``.

Pools and splits:
  * mnist, fashion_mnist, cifar10, caltech_birds2011, cars196: TFDS ``train`` and
    ``test`` joined. ``class_disjoint``: first half of the classes train, second half
    test (CUB classes 1-100 / 101-200, Cars196 1-98 / 99-196, digits 0-4 / 5-9);
    ``standard``: TFDS's own (image-level) train / test; ``by_image``: random.
  * lfw: TFDS has only ``train``, with ``label`` the person's name; names are mapped
    to ids ``0..C-1`` in sorted order. ``class_disjoint`` (identity-disjoint): the
    identities with at least two images are shuffled (``data_seed``) and
    ``test_fraction`` of them form the test split; the rest, and all identities with a
    single image (4,069 of LFW's 5,749), stay in train, where the single-image ones
    serve as negatives only (the P x K sampler skips them, the random triplet / pair
    samplers may draw them as negatives). Validation identities are drawn from the
    training identities with at least two images.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any, Sequence

from tsm import _extras

_extras.require(__name__, "absl")   # else one line naming tsm[train]

from absl import logging as absl_logging
import numpy as np

from tsm.data import spec as spec_lib
from tsm.data import preprocess
from tsm.data import splits as splits_lib

TFDS_SPLITS = {"lfw": ("train",)}
_DEFAULT_SPLITS = ("train", "test")
_CHUNK = 1024


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def prepare_command(name: str, data_dir: str | None, overwrite: bool = False) -> str:
  cmd = f"tsm-prepare {name}"
  if data_dir:
    cmd += f" --data_dir {data_dir}"
  if overwrite:
    cmd += " --overwrite"
  return cmd


@contextlib.contextmanager
def _quiet_absl():
  """Holds absl's log output at ERROR, so a missing dataset reads as one line."""
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def _not_prepared(name: str, data_dir: str | None, error: Exception) -> Exception:
  """Turns a tfds failure into a one-line DatasetNotPreparedError when it is one."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
    where = str(builder.data_dir)
    file_format = builder.info.file_format if prepared else None
    file_format = getattr(file_format, "value", file_format)
  except Exception:  # pylint: disable=broad-except
    return error
  extra = 'needs TensorFlow: pip install -e ".[data]"'
  if not prepared:
    return spec_lib.DatasetNotPreparedError(
        f"dataset {name} is not prepared in {where}; prepare it once with "
        f"`{prepare_command(name, data_dir)}` ({extra}).")
  if file_format is not None and "array_record" not in str(file_format).lower():
    return spec_lib.DatasetNotPreparedError(
        f"dataset {name} in {where} is prepared as {file_format}, but tsm reads "
        f"ArrayRecord; re-prepare it with `{prepare_command(name, data_dir, True)}` "
        f"({extra}).")
  return error


def open_sources(name: str, data_dir: str | None) -> dict[str, Any]:
  """``tfds.data_source`` of each TFDS split of ``name`` (images decoded on access)."""
  tfds = _tfds()
  split_names = TFDS_SPLITS.get(name, _DEFAULT_SPLITS)
  try:
    with _quiet_absl():   # tfds warns about an empty data dir before failing
      sources = tfds.data_source(name, split=list(split_names), data_dir=data_dir,
                                 download=False)
  except Exception as e:  # pylint: disable=broad-except
    with _quiet_absl():
      raise _not_prepared(name, data_dir, e) from None
  return dict(zip(split_names, sources))


def _label_pass(source) -> np.ndarray:
  """All labels of a data source, without decoding images.

  Reads the raw records of the underlying ArrayRecord source and parses them with the
  images' decoding skipped. Sources without a raw layer (custom mocks, lists) are
  read the ordinary way.
  """
  tfds = _tfds()
  n = len(source)
  raw = getattr(source, "data_source", None)
  info = getattr(source, "dataset_info", None)
  labels = []
  if raw is not None and info is not None:
    features = info.features
    skip = {key: tfds.decode.SkipDecoding() for key, feature in features.items()
            if isinstance(feature, tfds.features.Image)}
    for start in range(0, n, _CHUNK):
      keys = list(range(start, min(n, start + _CHUNK)))
      records = [raw[k] for k in keys]
      labels.extend(features.deserialize_example_np(r, decoders=skip)["label"]
                    for r in records)
  else:
    for start in range(0, n, _CHUNK):
      keys = list(range(start, min(n, start + _CHUNK)))
      labels.extend(ex["label"] for ex in _get_examples(source, keys))
  if labels and isinstance(labels[0], (bytes, np.bytes_)):
    return np.asarray([l.decode("utf-8") for l in labels])
  return np.asarray(labels)


def _get_examples(source, keys: Sequence[int]) -> list[dict]:
  """``source.__getitems__(keys)`` (batched ArrayRecord reads), else one by one.

  ``tfds.testing.mock_data`` (tfds 4.9.10) sets ``__getitems__`` on a MagicMock
  instance without binding it, so the batched call raises TypeError there; the
  one-by-one path reads the same examples.
  """
  getitems = getattr(source, "__getitems__", None)
  if getitems is not None:
    try:
      return list(getitems(list(keys)))
    except TypeError:
      pass
  return [source[k] for k in keys]


def _writable(path: pathlib.Path) -> bool:
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".tsm_write_test_{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return True
  except OSError:
    return False


def _cache_dir(source, name: str, cache_dir: str | None) -> pathlib.Path:
  info = getattr(source, "dataset_info", None)
  version = str(getattr(info, "version", "unknown"))
  if cache_dir:
    return pathlib.Path(cache_dir) / name / version
  if info is not None and getattr(info, "data_dir", None):
    next_to_data = pathlib.Path(str(info.data_dir))
    if next_to_data.exists() and _writable(next_to_data):
      return next_to_data
  return pathlib.Path.home() / ".cache" / "tsm" / "labels" / name / version


def read_labels(source, name: str, split: str, cache_dir: str | None) -> np.ndarray:
  """Labels of a TFDS split, cached as ``tsm_labels_<split>_<n>.npy``."""
  n = len(source)
  path = _cache_dir(source, name, cache_dir) / f"tsm_labels_{split}_{n}.npy"
  if path.exists():
    labels = np.load(path, allow_pickle=False)
    if labels.shape == (n,):
      return labels
  labels = _label_pass(source)
  if _writable(path.parent):
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, labels, allow_pickle=False)
    os.replace(tmp, path)
  return labels


class _Pool:
  """The examples of several TFDS splits joined; decodes images on demand."""

  def __init__(self, sources: dict[str, Any], image_size: int | None,
               channels: int | None, method: str):
    self.sources = list(sources.values())
    sizes = [len(s) for s in self.sources]
    self.part = np.repeat(np.arange(len(sizes)), sizes)
    self.key = np.concatenate([np.arange(n) for n in sizes]).astype(np.int64)
    self.image_size, self.channels, self.method = image_size, channels, method

  def fetch(self, indices: np.ndarray) -> np.ndarray:
    images: list[Any] = [None] * len(indices)
    parts = self.part[indices]
    for p in np.unique(parts):
      where = np.flatnonzero(parts == p)
      examples = _get_examples(self.sources[p], self.key[indices[where]].tolist())
      for i, ex in zip(where, examples):
        images[i] = ex["image"]
    return preprocess.prepare_images(images, image_size=self.image_size,
                                     channels=self.channels, method=self.method)


def _input_shape(source, image_size: int | None, channels: int | None) -> tuple:
  h, w, c = source.dataset_info.features["image"].shape
  if image_size is not None:
    h = w = image_size
  return (h, w, channels or c)


def _lfw_test_identities(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  classes, counts = np.unique(labels, return_counts=True)
  multi = classes[counts >= 2]
  if multi.size < 2:
    raise ValueError("lfw has fewer than two identities with two images; check the "
                     "prepared data (data_dir).")
  num_test = max(1, int(round(fraction * multi.size)))
  return np.random.default_rng(seed).permutation(multi)[:num_test]


def load_tfds(spec: spec_lib.DataSpec, *, seed: int) -> splits_lib.DatasetSplits:
  """``tsm.data.load`` for the TFDS datasets (``spec`` already checked)."""
  get = lambda f: getattr(spec, f)  # noqa: E731
  name, split = get("name"), get("split")
  data_dir, cache_dir = get("data_dir"), get("cache_dir")
  image_size, channels = get("image_size"), get("channels")
  data_seed = get("data_seed")
  sources = open_sources(name, data_dir)
  raw_labels = [read_labels(src, name, s, cache_dir) for s, src in sources.items()]
  labels = np.concatenate(raw_labels)
  official_test = np.concatenate([np.full(len(l), s == "test")
                                  for s, l in zip(sources, raw_labels)])
  first = next(iter(sources.values()))
  train_classes = None
  if labels.dtype.kind in "US":   # lfw: names -> ids in sorted order
    names, labels = np.unique(labels, return_inverse=True)
    num_classes = int(names.size)
  else:
    num_classes = int(first.dataset_info.features["label"].num_classes)
  labels = labels.astype(np.int32)
  if name == "lfw" and split == "class_disjoint":
    test_ids = _lfw_test_identities(labels, get("test_fraction"), data_seed)
    train_classes = np.setdiff1d(np.arange(num_classes), test_ids)
  part = splits_lib.partition(
      labels, split, num_classes=num_classes, val_fraction=get("val_fraction"),
      test_fraction=get("test_fraction"), data_seed=data_seed, seed=seed,
      official_test=official_test if len(sources) > 1 else None,
      train_classes=train_classes, val_split=get("val_split"),
      min_classes_for_class_val=spec_lib.MIN_CLASSES_FOR_CLASS_VAL)
  pool = _Pool(sources, image_size, channels, get("normalize"))
  input_shape = _input_shape(first, image_size, channels)
  augment_fn = preprocess.image_augmenter(name)
  cap = get("num_examples")

  def make(indices: np.ndarray, split_name: str, cap_seed: int) -> splits_lib.Split:
    indices = splits_lib.cap(indices, cap, seed=cap_seed)
    return splits_lib.Split(labels[indices], lambda i: pool.fetch(indices[i]),
                            input_shape, name=f"{name}/{split_name}",
                            augment_fn=augment_fn, ids=indices)

  return splits_lib.DatasetSplits(
      name, make(part.train, "train", data_seed), make(part.val, "val", data_seed + 1),
      make(part.test, "test", data_seed + 2), input_shape, num_classes)
