"""tsm.data.pairs.verification_pairs: balanced, seeded, no self or repeated pairs."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import stats

from tsm.data import pairs
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


# ----------------------------------------------------------------------------- evaluation_pairs


def _brute_force(labels):
  """Every unordered labelled pair (i < j), split into same- and different-class sets."""
  pos, neg = set(), set()
  for i in range(len(labels)):
    for j in range(i + 1, len(labels)):
      if labels[i] >= 0 and labels[j] >= 0:
        (pos if labels[i] == labels[j] else neg).add((i, j))
  return pos, neg


def _as_set(i, j):
  return set(zip(i.tolist(), j.tolist()))


LABELS = np.array([3, 0, 1, 0, -1, 3, 3, 2, 1, 0, -1, 5, 3, 1, 0, 7])


def test_pair_counts_match_brute_force():
  for labels in (LABELS, np.random.default_rng(0).integers(-1, 6, 60)):
    pos, neg = _brute_force(labels)
    assert pairs.pair_counts(labels) == (len(pos), len(neg))


@pytest.mark.parametrize("seed", [0, 1])
def test_all_pairs_when_few(seed):
  labels = np.random.default_rng(seed).permutation(np.r_[LABELS, LABELS])
  pos, neg = _brute_force(labels)
  i, j, same = pairs.evaluation_pairs(labels, num_negatives=10_000, seed=seed)
  assert i.dtype == j.dtype == np.int32 and same.dtype == bool
  assert np.all(i < j)
  np.testing.assert_array_equal(same, labels[i] == labels[j])
  assert _as_set(i[same], j[same]) == pos and int(same.sum()) == len(pos)
  assert _as_set(i[~same], j[~same]) == neg and int((~same).sum()) == len(neg)


@pytest.mark.parametrize("num_negatives", [7, 300])   # both sampling branches of _draw
def test_sampled_negatives_and_capped_positives_are_distinct_and_valid(num_negatives):
  labels = np.random.default_rng(3).integers(-1, 8, 60)
  pos, neg = _brute_force(labels)
  assert num_negatives < len(neg) < 4 * 300
  i, j, same = pairs.evaluation_pairs(labels, num_negatives=num_negatives,
                                      max_positives=25, seed=5)
  got_pos, got_neg = _as_set(i[same], j[same]), _as_set(i[~same], j[~same])
  assert int(same.sum()) == len(got_pos) == 25 and got_pos <= pos
  assert int((~same).sum()) == len(got_neg) == num_negatives and got_neg <= neg


def test_seeded_and_independent_streams():
  labels = np.random.default_rng(4).integers(0, 6, 80)
  a = pairs.evaluation_pairs(labels, num_negatives=50, max_positives=40, seed=1)
  b = pairs.evaluation_pairs(labels, num_negatives=50, max_positives=40, seed=1)
  c = pairs.evaluation_pairs(labels, num_negatives=50, max_positives=40, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  # Capping the positives differently leaves the negatives unchanged.
  d = pairs.evaluation_pairs(labels, num_negatives=50, max_positives=None, seed=1)
  np.testing.assert_array_equal(a[0][~a[2]], d[0][~d[2]])
  np.testing.assert_array_equal(a[1][~a[2]], d[1][~d[2]])


@pytest.mark.parametrize("num_negatives", [4, 16])   # unique-draw and permutation branches
def test_negatives_uniform_over_pairs(num_negatives):
  # Every negative pair equally likely: chi-square of inclusion counts over seeds.
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])   # 24 negative pairs
  _, neg = _brute_force(labels)
  keys = {p: k for k, p in enumerate(sorted(neg))}
  counts = np.zeros(len(neg))
  trials = 1500
  for seed in range(trials):
    i, j, same = pairs.evaluation_pairs(labels, num_negatives=num_negatives, seed=seed)
    for p in zip(i[~same].tolist(), j[~same].tolist()):
      counts[keys[p]] += 1
  assert counts.sum() == trials * num_negatives
  # Inclusion counts of a uniform k-subset: expected k/24 per pair, and with fixed total
  # the chi-square over-disperses by at most a factor 1 - k/24 < 1 (conservative).
  assert stats.chisquare(counts).pvalue > 1e-3


def test_large_split_is_memory_bounded():
  # 70,000 examples: 245M positive and 2.2G negative pairs, never materialised.
  labels = np.random.default_rng(0).permutation(np.arange(70_000) % 10)
  num_pos, num_neg = pairs.pair_counts(labels)
  assert num_pos == 10 * 7000 * 6999 // 2 and num_neg == 70_000 * 69_999 // 2 - num_pos
  i, j, same = pairs.evaluation_pairs(labels, num_negatives=5000, max_positives=3000)
  assert int(same.sum()) == 3000 and int((~same).sum()) == 5000
  assert np.all(i < j) and np.all((labels[i] == labels[j]) == same)
  assert np.unique(i.astype(np.int64) * 70_000 + j).size == 8000


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=np.arange(5)), "no class with two"),
    (dict(labels=np.zeros(5, int)), "fewer than two classes"),
    (dict(labels=np.zeros((2, 3), int)), "1-D integer"),
    (dict(labels=np.array([0.5, 1.0])), "1-D integer"),
    (dict(labels=np.array([0, 0, 1]), num_negatives=0), "num_negatives"),
    (dict(labels=np.array([0, 0, 1]), max_positives=0), "max_positives"),
])
def test_evaluation_pairs_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pairs.evaluation_pairs(**kwargs)
