"""Offline built-in datasets: no download, generated or shipped with a package.

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes),
  scaled to [0, 1], shape ``(8, 8, 1)``.
* ``mnist1d``: the MNIST-1D procedural generator (Greydanus 2020, package
  ``mnist1d``), 5,000 signals of 40 samples, 10 classes, shape ``(40, 1)``; its own
  4,000 / 1,000 train/test split is the ``standard`` split. Generated with the
  package's defaults (seed 42), no download.
* ``synthetic``: paper B's toy set (Zeng 2025, authors' ``toydata.py``): 10 classes
  x 200 points in 128-D, centres ~ N(0, 25 I), per-class covariance A A^T (+1e-3 I),
  points = centre + 1.4 L eps, each label replaced by a random class (possibly the
  same) with probability 0.1, plus 100 outliers ~ N(0, 225 I) labelled -1; N = 2,100,
  all L2-normalised. Seeded by ``data_seed``. Its ``standard`` split follows paper B
  (train on all points, evaluate on the same points): train = all points minus the
  validation share, test = all points.

Outliers (label -1) are unlabelled points: the samplers never use them as anchors or
positives (and the P x K sampler never picks them), but the random triplet / pair
samplers may draw them as negatives; evaluation should drop them from the queries.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

import numpy as np


class ArrayPool(NamedTuple):
  """All examples of an offline dataset, in memory."""
  inputs: np.ndarray          # float32 [N, *shape]
  labels: np.ndarray          # int32 [N]
  official_test: np.ndarray | None   # bool [N] or None (no official split)
  num_classes: int


@functools.lru_cache(maxsize=2)
def digits() -> ArrayPool:
  """scikit-learn's digits, 8x8 grey in [0, 1], shape ``(8, 8, 1)``."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  data = datasets.load_digits()
  x = (data.images.astype(np.float32) / 16.0)[..., None]
  return ArrayPool(x, data.target.astype(np.int32), None, 10)


@functools.lru_cache(maxsize=2)
def mnist1d(num_samples: int = 5000) -> ArrayPool:
  """MNIST-1D from the package's generator (its default arguments, seed 42)."""
  from mnist1d import data as m1d  # pylint: disable=g-import-not-at-top
  args = m1d.get_dataset_args()
  args.num_samples = num_samples
  # make_dataset seeds Python's and numpy's global generators; restore them.
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    ds = m1d.make_dataset(args)
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  x = np.concatenate([ds["x"], ds["x_test"]]).astype(np.float32)[..., None]
  y = np.concatenate([ds["y"], ds["y_test"]]).astype(np.int32)
  official_test = np.arange(len(y)) >= len(ds["y"])
  return ArrayPool(x, y, official_test, 10)


@functools.lru_cache(maxsize=4)
def synthetic(seed: int = 0, *, num_classes: int = 10, samples_per_class: int = 200,
              dim: int = 128, spread: float = 1.4, label_noise: float = 0.1,
              outlier_fraction: float = 0.05) -> ArrayPool:
  """Paper B's synthetic set (see the module docstring), L2-normalised, seeded."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_classes, dim)) * 5.0
  points, labels = [], []
  for c in range(num_classes):
    a = rng.standard_normal((dim, dim))
    chol = np.linalg.cholesky(a @ a.T + 1e-3 * np.eye(dim))
    eps = rng.standard_normal((samples_per_class, dim))
    points.append(centres[c] + spread * eps @ chol.T)
    noisy = rng.random(samples_per_class) < label_noise
    label = np.full(samples_per_class, c)
    label[noisy] = rng.integers(0, num_classes, size=int(noisy.sum()))
    labels.append(label)
  num_outliers = int(num_classes * samples_per_class * outlier_fraction)
  points.append(rng.standard_normal((num_outliers, dim)) * 15.0)
  labels.append(np.full(num_outliers, -1))
  x = np.concatenate(points)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  y = np.concatenate(labels).astype(np.int32)
  # Paper B evaluates on the training points: the standard "test" split is all points.
  return ArrayPool(x.astype(np.float32), y, None, num_classes)
