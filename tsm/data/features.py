"""Frozen-trunk feature caches: a trunk's features of a dataset's images, computed once.

A frozen pretrained trunk gives every image the same features in every run, so a study
that trains only a head (paper B's frozen-trunk protocol) computes them once and then
trains on them in seconds. :func:`cached_splits` turns a dataset's splits into splits of
features, read from a cache on disk:

* **One store per (dataset, resolution, trunk weights).** Its directory,
  ``<root>/features/<dataset>-<size>px-<trunk>-<weights sha[:12]>-<source hash>/``, is
  named by :func:`store_name` from the dataset's identity (:func:`dataset_identity`: the
  name, where its files are read from, the image side and channels) and the SHA-256 of
  the trunk's weights. It holds the features of the examples (by their dataset id,
  :attr:`tsm.data.Split.ids`) that some run has asked for: every split of every seed of a
  study reads the same store, and a run that needs examples the store lacks adds them.
* **Written atomically.** A store is a generation of files (``ids-<g>.npy``,
  ``labels-<g>.npy``, ``features-<g>.npy``) named by ``current.json``, which is replaced
  atomically after the new generation is complete; a crash leaves the previous
  generation in use and nothing half-written visible. A file lock serialises writers
  (two runs of a study extending one store compute each example once).
* **Memory-mapped.** Runs read ``features-<g>.npy`` with ``np.load(mmap_mode="r")``; the
  page cache is shared between the processes of a study.
* **Checked.** The store keeps each example's label; a store whose labels disagree with
  the dataset's (the data changed under the same name and path) is refused with one
  line saying which directory to delete.

Building shows a progress bar with an ETA (tqdm) on a terminal, and plain lines with the
rate and the ETA elsewhere, and logs the throughput. Images are
taken from the splits as prepared with ``normalize="unit"`` (``x / 255``) and given to
the trunk as the uint8 pixels they were made from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Iterator, Protocol

import numpy as np

from tsm.data import spec as spec_lib
from tsm.data import splits as splits_lib

log = logging.getLogger(__name__)

# Examples decoded and handed to the trunk at a time while a store is built.
BUILD_CHUNK = 256


class FeatureExtractor(Protocol):
  """What the cache needs of a trunk (:class:`tsm.models.PretrainedTrunk` is one).

  Attributes:
    name: the trunk's name.
    image_size: the side of the images it sees.
    weights_sha256: SHA-256 of its weights (part of the store's name).
    feature_dim: the size of one feature vector.
  """
  name: str
  image_size: int
  weights_sha256: str
  feature_dim: int

  def features(self, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """uint8 ``[n, H, W, C]`` images -> float32 ``[n, feature_dim]``."""


class FeatureCacheError(ValueError):
  """A store cannot serve a split (stale or damaged); the message says what to do."""


def dataset_identity(spec: spec_lib.DataSpec) -> dict[str, Any]:
  """What decides a dataset's pixels (not its split): the store is shared across
  split rules, seeds, validation fractions and example caps.

  Args:
    spec: the dataset's :class:`tsm.data.DataSpec`.

  Returns:
    A JSON-able dict: name, source (``idx`` / ``tfds`` / ``offline``), the directory
    read (absolute), image side and channels.
  """
  if spec.uses_idx():
    from tsm.data import idx as idx_lib  # pylint: disable=import-outside-toplevel
    source, where = "idx", spec.path or idx_lib.DEFAULT_FASHION_MNIST_DIR
  elif spec.name in spec_lib.TFDS_DATASETS:
    source, where = "tfds", spec.data_dir or "~/tensorflow_datasets"
  else:
    source, where = "offline", None
  if where is not None:
    where = os.path.realpath(os.path.expanduser(where))
  return {"name": spec.name, "source": source, "dir": where,
          "image_size": spec.image_size, "channels": spec.channels}


def store_name(identity: dict[str, Any], extractor: FeatureExtractor) -> str:
  """The store's directory name: readable parts plus a hash of the whole identity."""
  blob = json.dumps({"dataset": identity, "trunk": extractor.name,
                     "image_size": int(extractor.image_size),
                     "weights": extractor.weights_sha256}, sort_keys=True)
  digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
  return (f"{identity['name']}-{int(extractor.image_size)}px-{extractor.name}-"
          f"{extractor.weights_sha256[:12]}-{digest}")


class _Generation:
  """One complete generation of a store: sorted ids, their labels and features."""

  def __init__(self, directory: str, number: int, ids: np.ndarray, labels: np.ndarray,
               features: np.ndarray):
    self.directory, self.number = directory, number
    self.ids, self.labels, self.features = ids, labels, features

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """Row of each id (all must be present)."""
    return np.searchsorted(self.ids, ids)

  def has(self, ids: np.ndarray) -> np.ndarray:
    """Whether each id is in the store."""
    if not self.ids.size:
      return np.zeros(ids.shape, bool)
    pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
    return self.ids[pos] == ids


def _files(directory: str, number: int) -> dict[str, str]:
  return {k: os.path.join(directory, f"{k}-{number}.npy")
          for k in ("ids", "labels", "features")}


def _read(directory: str, attempts: int = 2) -> _Generation | None:
  """The current generation of a store, memory-mapped; None when there is none.

  A writer removes the previous generation right after naming the new one, so a reader
  that read ``current.json`` just before may find its files gone: it reads again.
  """
  current = os.path.join(directory, "current.json")
  if not os.path.isfile(current):
    return None
  try:
    with open(current) as f:
      number = int(json.load(f)["generation"])
    files = _files(directory, number)
    ids = np.load(files["ids"])
    labels = np.load(files["labels"])
    features = np.load(files["features"], mmap_mode="r")
  except FileNotFoundError:
    if attempts > 1:
      return _read(directory, attempts - 1)
    raise FeatureCacheError(f"the feature cache {directory} is damaged (a file named by "
                            "current.json is missing); delete that directory and "
                            "rerun") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FeatureCacheError(
        f"the feature cache {directory} is damaged ({type(e).__name__}); delete that "
        "directory and rerun: it is rebuilt") from None
  if not (ids.ndim == 1 and labels.shape == ids.shape and features.shape[0] == ids.size):
    raise FeatureCacheError(f"the feature cache {directory} is damaged (its files "
                            "disagree in length); delete that directory and rerun")
  return _Generation(directory, number, ids, labels, features)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
  from filelock import FileLock  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  with FileLock(os.path.join(directory, "lock")):
    yield


def _pixels(split: splits_lib.Split, indices: np.ndarray) -> np.ndarray:
  """uint8 pixels of split-local examples prepared with ``normalize="unit"``."""
  from tsm.data import preprocess  # pylint: disable=import-outside-toplevel  # PIL
  return preprocess.unit_to_uint8(split.get(indices))


def _extract(split: splits_lib.Split, local: np.ndarray, extractor: FeatureExtractor,
             *, batch_size: int, progress: bool, out: np.ndarray) -> None:
  """Features of split-local examples ``local`` into ``out`` (rows in that order).

  Progress: a tqdm bar with an ETA on a terminal; elsewhere (a log file, a scheduler's
  output) one plain line at every tenth of the work with the rate and the ETA.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  desc = f"{extractor.name} features of {split.name} ({extractor.image_size}px)"
  terminal = progress and sys.stderr.isatty()
  start = time.perf_counter()
  next_report = 0.1
  with tqdm(total=local.size, unit="img", disable=not terminal, dynamic_ncols=True,
            desc=desc) as bar:
    for begin in range(0, local.size, BUILD_CHUNK):
      chunk = local[begin:begin + BUILD_CHUNK]
      out[begin:begin + chunk.size] = extractor.features(_pixels(split, chunk),
                                                         batch_size=batch_size)
      bar.update(chunk.size)
      done = begin + chunk.size
      if progress and not terminal and done >= next_report * local.size:
        seconds = time.perf_counter() - start
        rate = done / max(seconds, 1e-9)
        print(f"{desc}: {done}/{local.size} ({100 * done // local.size}%), "
              f"{rate:.1f} images/s, ETA {(local.size - done) / rate / 60:.1f} min",
              file=sys.stderr, flush=True)
        next_report = (int(10 * done / local.size) + 1) / 10
  seconds = time.perf_counter() - start
  log.info("%s: %d images through %s at %d px in %.1f s (%.1f images/s)", split.name,
           local.size, extractor.name, extractor.image_size, seconds,
           local.size / max(seconds, 1e-9))


def _extend(directory: str, splits: list[splits_lib.Split], extractor: FeatureExtractor,
            *, batch_size: int, progress: bool) -> _Generation:
  """The store with every example of ``splits``; computes only the missing ones, and
  writes one new generation."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel  # host I/O
  with _locked(directory):
    old = _read(directory)
    todo, seen = [], np.zeros((0,), np.int64)
    for split in splits:
      want = ~old.has(split.ids) if old is not None else np.ones(len(split), bool)
      want &= ~np.isin(split.ids, seen)
      ids, first = np.unique(split.ids[want], return_index=True)
      if ids.size:
        todo.append((split, np.flatnonzero(want)[first], ids))
        seen = np.concatenate([seen, ids])
    if not todo:
      return old
    count = sum(ids.size for _, _, ids in todo)
    log.info("feature cache %s: computing %d examples (%s)", directory, count,
             ", ".join(f"{ids.size} of {split.name}" for split, _, ids in todo))
    new = np.zeros((count, extractor.feature_dim), np.float32)
    offset, start = 0, time.perf_counter()
    for split, local, ids in todo:
      _extract(split, local, extractor, batch_size=batch_size, progress=progress,
               out=new[offset:offset + ids.size])
      offset += ids.size
    if progress:
      seconds = time.perf_counter() - start
      print(f"feature cache: {count} images through {extractor.name} at "
            f"{extractor.image_size} px in {seconds / 60:.1f} min "
            f"({count / max(seconds, 1e-9):.1f} images/s), into {directory}",
            file=sys.stderr, flush=True)
    old_n = 0 if old is None else old.ids.size
    parts_ids = ([old.ids] if old is not None else []) + [ids for _, _, ids in todo]
    parts_labels = ([old.labels] if old is not None else []) + [
        split.labels[local] for split, local, _ in todo]
    all_ids, all_labels = np.concatenate(parts_ids), np.concatenate(parts_labels)
    order = np.argsort(all_ids, kind="stable")
    number = 0 if old is None else old.number + 1
    files = _files(directory, number)
    with artifacts.atomic_path(files["features"]) as tmp:
      merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                         shape=(all_ids.size, extractor.feature_dim))
      for begin in range(0, all_ids.size, 8192):   # bounded memory for large stores
        rows = order[begin:begin + 8192]
        from_old = rows < old_n
        block = np.empty((rows.size, extractor.feature_dim), np.float32)
        if from_old.any():
          block[from_old] = old.features[rows[from_old]]
        block[~from_old] = new[rows[~from_old] - old_n]
        merged[begin:begin + rows.size] = block
      merged.flush()
      del merged
    for key, value in (("ids", all_ids[order]), ("labels", all_labels[order])):
      with artifacts.atomic_path(files[key]) as tmp:
        np.save(tmp, value)
    artifacts.write_json_atomic(os.path.join(directory, "current.json"),
                                {"generation": number, "examples": int(all_ids.size),
                                 "trunk": extractor.name,
                                 "image_size": int(extractor.image_size),
                                 "weights_sha256": extractor.weights_sha256})
    if old is not None:
      for path in _files(directory, old.number).values():
        with contextlib.suppress(OSError):
          os.remove(path)   # readers that mapped it keep their pages
    return _read(directory)


def _feature_split(split: splits_lib.Split, store: _Generation, directory: str,
                   dim: int) -> splits_lib.Split:
  """``split``'s rows of a store that holds all of them, as a split of features."""
  if not len(split):
    return splits_lib.Split(split.labels, lambda i: np.zeros((0, dim), np.float32),
                            (dim,), name=split.name, ids=split.ids)
  rows = store.rows(split.ids)
  if not np.array_equal(store.labels[rows], split.labels):
    raise FeatureCacheError(
        f"the feature cache {directory} holds other labels for the examples of "
        f"{split.name} (the dataset changed); delete that directory and rerun")
  features = store.features

  def fetch(i: np.ndarray) -> np.ndarray:
    return np.asarray(features[rows[i]], np.float32)

  return splits_lib.Split(split.labels, fetch, (dim,), name=split.name, ids=split.ids)


def cached_features(splits: list[splits_lib.Split], extractor: FeatureExtractor,
                    directory: str, *, batch_size: int = 64, progress: bool = True
                    ) -> list[splits_lib.Split]:
  """Splits of the trunk's features of ``splits``' images, from the store ``directory``.

  Args:
    splits: splits of images prepared with ``normalize="unit"``, each with ``ids``.
    extractor: the frozen trunk.
    directory: the store (see :func:`store_name`); created or extended (once, for all
      the splits) as needed.
    batch_size: images per trunk call.
    progress: show a progress bar while features are computed.

  Returns:
    One ``Split`` per input split, with the same labels, ids and name, whose inputs are
    float32 ``[feature_dim]`` rows read from the memory-mapped store (no augmentation).

  Raises:
    FeatureCacheError: a split has no ids, or the store is stale or damaged.
  """
  for split in splits:
    if split.ids is None:
      raise FeatureCacheError(f"split {split.name!r} has no example ids; the feature "
                              "cache serves splits from tsm.data.load (pass features as "
                              "arrays to tsm.data.from_arrays instead)")
  store = _read(directory)
  if store is None or not all(store.has(s.ids).all() for s in splits if len(s)):
    store = _extend(directory, [s for s in splits if len(s)], extractor,
                    batch_size=batch_size, progress=progress)
  dim = int(extractor.feature_dim)
  return [_feature_split(split, store, directory, dim) for split in splits]


def cached_splits(splits: splits_lib.DatasetSplits, extractor: FeatureExtractor, *,
                  spec: spec_lib.DataSpec, root: str, batch_size: int = 64,
                  progress: bool = True) -> splits_lib.DatasetSplits:
  """Every split of ``splits`` as the trunk's features, from one shared store.

  Args:
    splits: the dataset's splits (``tsm.data.load(spec, ...)`` with
      ``normalize="unit"``).
    extractor: the frozen trunk.
    spec: the spec the splits were loaded with (names the store).
    root: the cache root; stores go under ``<root>/features/``.
    batch_size: images per trunk call.
    progress: progress bars while features are computed.

  Returns:
    The splits with ``input_shape == (feature_dim,)`` and no input statistics.

  Raises:
    FeatureCacheError: see :func:`cached_features`.
    ValueError: the spec's normalisation is not ``"unit"``.
  """
  if spec.normalize != "unit":
    raise ValueError(f"normalize={spec.normalize!r}: a pretrained trunk scales its "
                     "inputs itself; use normalize='unit'.")
  directory = os.path.join(root, "features", store_name(dataset_identity(spec),
                                                        extractor))
  train, val, test = cached_features([splits.train, splits.val, splits.test], extractor,
                                     directory, batch_size=batch_size, progress=progress)
  return splits._replace(train=train, val=val, test=test,
                         input_shape=(int(extractor.feature_dim),), input_stats=None)
