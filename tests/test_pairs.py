"""tsm.data.pairs.verification_pairs: balanced, seeded, no self or repeated pairs."""

from __future__ import annotations

import numpy as np
import pytest

from tsm.data.pairs import verification_pairs


def _check(labels, i, j, same, num_pairs, num_same):
  assert i.shape == j.shape == same.shape == (num_pairs,)
  assert same.dtype == bool
  assert np.all(i != j)  # no self-pairs
  np.testing.assert_array_equal(same, labels[i] == labels[j])
  assert int(same.sum()) == num_same
  keys = np.minimum(i, j) * len(labels) + np.maximum(i, j)
  assert np.unique(keys).size == num_pairs  # no pair twice, in either orientation


@pytest.mark.parametrize("num_pairs, fraction", [(1000, 0.5), (101, 0.5), (60, 0.25),
                                                 (40, 0.0), (40, 1.0)])
def test_balanced_valid_distinct(num_pairs, fraction):
  labels = np.random.default_rng(0).integers(0, 20, 500)
  i, j, same = verification_pairs(labels, num_pairs, seed=3, same_fraction=fraction)
  _check(labels, i, j, same, num_pairs, int(round(num_pairs * fraction)))


def test_seeded():
  labels = np.random.default_rng(1).integers(0, 10, 200)
  a = verification_pairs(labels, 100, seed=7)
  b = verification_pairs(labels, 100, seed=7)
  c = verification_pairs(labels, 100, seed=8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_all_available_pairs_without_repeats():
  # 3 classes of 3: 9 same pairs and 27 different pairs in all; ask for every one.
  labels = np.repeat(np.arange(3), 3)
  i, j, same = verification_pairs(labels, 18, seed=0)
  _check(labels, i, j, same, 18, 9)
  i, j, same = verification_pairs(labels, 36, seed=0, same_fraction=0.25)
  _check(labels, i, j, same, 36, 9)


def test_singletons_and_unlabelled_points_never_in_same_pairs():
  labels = np.array([0, 0, 0, 1, 2, 3, -1, -1, 4, 4])
  i, j, same = verification_pairs(labels, 8, seed=2)
  assert np.all(labels[i[same]] >= 0)
  assert set(labels[np.r_[i[same], j[same]]]) <= {0, 4}


def test_error_when_no_class_has_two_members():
  with pytest.raises(ValueError, match="no class with two"):
    verification_pairs(np.arange(10), 10, seed=0)


def test_error_when_only_one_class():
  with pytest.raises(ValueError, match="fewer than two classes"):
    verification_pairs(np.zeros(10, int), 10, seed=0)
