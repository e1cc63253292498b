"""Splits: lazily decoded subsets of a dataset, and the rules that make them.

A ``Split`` holds the labels of its examples in memory and decodes inputs only when
asked (``get``). Labels are dataset-level class ids ``0..C-1`` (so the class ids of a
class-disjoint test split are the upper half, e.g. 100..199 for CUB); negative labels
mark unlabelled points (the synthetic set's outliers, label -1).

Split rules (``partition``):
  * ``class_disjoint``: classes ``0..C/2-1`` train, ``C/2..C-1`` test (CUB 1-100 /
    101-200, Cars196 1-98 / 99-196 in the datasets' 1-based numbering, digit classes
    0-4 / 5-9); LFW identities are split at random instead (see ``tfds_sources``).
  * ``standard``: the dataset's own train / test split (image-level).
  * ``by_image``: all examples pooled and split at random (``test_fraction``).
  Validation is carved from the training part, seeded by the run's seed: by class
  for class-disjoint splits with many classes (CUB, Cars196, LFW), by image otherwise
  (the ``val_split`` argument overrides this).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

Fetch = Callable[[np.ndarray], np.ndarray]
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _no_augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  del rng
  return batch


class Split:
  """A subset of a dataset: labels in memory, inputs decoded on demand.

  Attributes:
    labels: ``[N]`` int32 class ids (negative = unlabelled).
    input_shape: shape of one preprocessed input.
    name: e.g. ``"mnist/train"``.
    ids: ``[N]`` int64 ids of the examples in their dataset (the index in the pool the
      splits are drawn from: the same example has the same id in every split of every
      seed), or None when the split does not come from a pool; feature caches
      (:mod:`tsm.data.features`) are keyed by them.
  """

  def __init__(self, labels: np.ndarray, fetch: Fetch, input_shape: tuple[int, ...], *,
               name: str = "", augment_fn: Augment | None = None,
               ids: np.ndarray | None = None):
    """Builds a split.

    Args:
      labels: ``[N]`` integer labels.
      fetch: maps an int64 array of split-local indices to a float32 array
        ``[n, *input_shape]`` (decoded and preprocessed, deterministic).
      input_shape: shape of one input.
      name: a name for messages.
      augment_fn: ``(batch, rng) -> batch`` random augmentation (default: identity).
      ids: ``[N]`` example ids in the dataset (see the class docstring), or None.
    """
    self.labels = np.asarray(labels, dtype=np.int32)
    self.ids = None if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if self.ids is not None and self.ids.shape != self.labels.shape:
      raise ValueError(f"ids has shape {self.ids.shape} but labels {self.labels.shape}; "
                       "give one id per example.")
    self.input_shape = tuple(int(s) for s in input_shape)
    self.name = name
    self._fetch = fetch
    self._augment_fn = augment_fn or _no_augment

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def __repr__(self) -> str:
    return (f"Split({self.name!r}, n={len(self)}, classes={len(self.classes)}, "
            f"input_shape={self.input_shape})")

  @property
  def classes(self) -> np.ndarray:
    """Sorted class ids present (negative labels excluded)."""
    labels = np.unique(self.labels)
    return labels[labels >= 0]

  def get(self, indices) -> np.ndarray:
    """Decodes and preprocesses examples.

    Args:
      indices: int array ``[n]`` of split-local indices (repeats allowed).

    Returns:
      float32 ``[n, *input_shape]``.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise ValueError(f"indices must be in [0, {len(self)}) for split {self.name!r}, "
                       f"got range [{indices.min()}, {indices.max()}].")
    if not indices.size:
      return np.zeros((0,) + self.input_shape, np.float32)
    out = np.asarray(self._fetch(indices), dtype=np.float32)
    if out.shape != (indices.size,) + self.input_shape:
      raise RuntimeError(f"split {self.name!r} produced shape {out.shape}, expected "
                         f"{(indices.size,) + self.input_shape}.")
    return out

  def augment(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random augmentation of a batch from ``get`` (identity for non-image data)."""
    return self._augment_fn(batch, rng)

  def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Split":
    """The split with ``fn`` applied to every decoded batch (before augmentation).

    Args:
      fn: ``float32 [n, *input_shape] -> float32 [n, *input_shape]``, deterministic.

    Returns:
      A new ``Split`` with the same labels, name and augmentation.
    """
    fetch = self._fetch
    return Split(self.labels, lambda i: fn(fetch(i)), self.input_shape, name=self.name,
                 augment_fn=self._augment_fn, ids=self.ids)

  def subset(self, indices, name: str | None = None) -> "Split":
    """The split restricted to ``indices`` (split-local), in that order."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    fetch = self._fetch
    return Split(self.labels[indices], lambda i: fetch(indices[i]), self.input_shape,
                 name=self.name if name is None else name, augment_fn=self._augment_fn,
                 ids=None if self.ids is None else self.ids[indices])


class DatasetSplits(NamedTuple):
  """Train / validation / test splits of one dataset."""
  name: str
  train: Split
  val: Split
  test: Split
  input_shape: tuple
  num_classes: int
  # ``tsm.data.preprocess.ChannelStats`` the inputs were standardised with
  # (``normalize="dataset"``), for preparing new raw inputs the same way; else None.
  input_stats: Any = None


class Partition(NamedTuple):
  """Indices into a pool of examples for each split."""
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


def class_disjoint_indices(labels: np.ndarray, train_classes, *,
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits by class; unlabelled rows (label < 0) are divided at random.

  Args:
    labels: ``[N]`` labels of the pool.
    train_classes: the classes that go to train; all other classes go to test.
    seed: seed for dividing unlabelled rows (same proportion as labelled rows).

  Returns:
    (train_indices, test_indices), sorted.
  """
  labels = np.asarray(labels)
  labelled = labels >= 0
  in_train = np.isin(labels, np.asarray(list(train_classes))) & labelled
  unlabelled = np.flatnonzero(~labelled)
  if unlabelled.size:
    share = in_train.sum() / max(labelled.sum(), 1)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(unlabelled)[:int(round(share * unlabelled.size))]
    in_train[chosen] = True
  return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def random_indices(n: int, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(n)`` at random: (kept, held_out) with ``round(fraction*n)`` held out."""
  perm = np.random.default_rng(seed).permutation(n)
  num_out = int(round(fraction * n))
  return np.sort(perm[num_out:]), np.sort(perm[:num_out])


def carve_validation(labels: np.ndarray, train: np.ndarray, fraction: float, *,
                     by_class: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Holds out part of the training indices for validation.

  Args:
    labels: ``[N]`` labels of the pool.
    train: pool indices of the training part.
    fraction: share of training classes (``by_class``) or examples held out.
    by_class: hold out whole classes (for class-disjoint splits). Only classes with
      at least two examples are candidates (a validation class needs positive pairs),
      and at least one class is held out when ``fraction > 0``.
    seed: the run's seed.

  Returns:
    (train_indices, val_indices), sorted pool indices.
  """
  train = np.asarray(train, dtype=np.int64)
  if fraction <= 0:
    return train, np.zeros((0,), np.int64)
  if not by_class:
    keep, out = random_indices(train.size, fraction, seed=seed)
    return train[keep], train[out]
  classes, counts = np.unique(labels[train], return_counts=True)
  candidates = classes[(classes >= 0) & (counts >= 2)]
  num_val = max(1, int(round(fraction * candidates.size)))
  if candidates.size - num_val < 2:
    raise ValueError(f"val_fraction={fraction} leaves {candidates.size - num_val} "
                     "training classes; lower val_fraction (or set it to 0).")
  val_classes = np.random.default_rng(seed).choice(candidates, num_val, replace=False)
  is_val = np.isin(labels[train], val_classes)
  return train[~is_val], train[is_val]


def cap(indices: np.ndarray, num_examples: int | None, *, seed: int) -> np.ndarray:
  """A seeded random subset of at most ``num_examples`` indices (sorted)."""
  indices = np.asarray(indices, dtype=np.int64)
  if num_examples is None or indices.size <= num_examples:
    return indices
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(indices, num_examples, replace=False))


def partition(labels: np.ndarray, split: str, *, num_classes: int, val_fraction: float,
              test_fraction: float, data_seed: int, seed: int,
              official_test: np.ndarray | None = None,
              train_classes=None, val_split: str = "auto",
              min_classes_for_class_val: int = 20) -> Partition:
  """Index sets of train / val / test in a pool of examples.

  Args:
    labels: ``[N]`` pool labels.
    split: ``"class_disjoint"``, ``"standard"`` or ``"by_image"``.
    num_classes: number of classes ``C`` of the dataset.
    val_fraction: validation share of the training part.
    test_fraction: test share for ``"by_image"``.
    data_seed: seed of the test split (fixed across runs).
    seed: the run's seed (validation split).
    official_test: ``[N]`` bool, True for rows in the dataset's own test split (needed
      for ``"standard"``).
    train_classes: classes of the class-disjoint train part (default ``0..C/2-1``).
    val_split: ``"by_class"``, ``"by_image"`` or ``"auto"`` (by class for
      class-disjoint splits whose training part has at least
      ``min_classes_for_class_val`` classes, by image otherwise).
    min_classes_for_class_val: threshold of ``"auto"``.

  Returns:
    A ``Partition`` of sorted pool indices.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if split == "class_disjoint":
    if train_classes is None:
      train_classes = np.arange(num_classes // 2)
    train, test = class_disjoint_indices(labels, train_classes, seed=data_seed)
  elif split == "standard":
    if official_test is None:
      raise ValueError("split='standard' needs the dataset's own test split; use "
                       "class_disjoint or by_image.")
    official_test = np.asarray(official_test, bool)
    train, test = np.flatnonzero(~official_test), np.flatnonzero(official_test)
  elif split == "by_image":
    train, test = random_indices(n, test_fraction, seed=data_seed)
  else:
    raise ValueError(f"split={split!r} is unknown; use class_disjoint, standard or "
                     "by_image.")
  if val_split == "auto":
    train_classes_found = np.unique(labels[train])
    by_class = (split == "class_disjoint" and
                int((train_classes_found >= 0).sum()) >= min_classes_for_class_val)
  else:
    by_class = val_split == "by_class"
  train, val = carve_validation(labels, train, val_fraction, by_class=by_class,
                                seed=seed)
  return Partition(train, val, test)
