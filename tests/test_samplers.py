"""Tests of tsm.data.samplers: shapes, determinism, coverage, small classes, sharding."""

from __future__ import annotations

import numpy as np
import pytest

from tsm.data import samplers


def _labels(counts, seed=0):
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  return np.random.default_rng(seed).permutation(labels)


def _check_pk_batches(batches, labels, p, k):
  for b in batches:
    groups = b.reshape(p, k)
    group_labels = labels[groups]
    assert (group_labels == group_labels[:, :1]).all()          # K of one class
    assert len(np.unique(group_labels[:, 0])) == p              # P distinct classes
    assert (group_labels >= 0).all()


@pytest.mark.parametrize("counts,p,k", [([40] * 10, 4, 4), ([7, 13, 40, 3, 25, 9], 3, 4),
                                         ([530, 2, 2, 3, 5, 60, 2, 2], 4, 2)])
def test_pk_shape_classes_and_coverage(counts, p, k):
  labels = _labels(counts)
  sampler = samplers.PKSampler(labels, p, k, seed=3)
  batches = sampler.epoch(0)
  assert batches.shape == (sampler.steps_per_epoch, p * k)
  assert batches.dtype == np.int64
  _check_pk_batches(batches, labels, p, k)
  seen = np.bincount(batches.ravel(), minlength=labels.size)
  assert (seen >= 1).all()            # every example at least once per epoch
  # No example repeats inside a K-group of a class with >= K examples.
  for b in batches:
    for g in b.reshape(p, k):
      if (labels == labels[g[0]]).sum() >= k:
        assert len(np.unique(g)) == k


def test_pk_exact_coverage_balanced():
  labels = _labels([8] * 8)
  batches = samplers.PKSampler(labels, 4, 2, seed=0).epoch(5)
  assert batches.shape == (8, 8)
  np.testing.assert_array_equal(np.sort(batches.ravel()), np.arange(64))


def test_pk_deterministic_from_seed_and_epoch():
  labels = _labels([20, 30, 11, 9, 17])
  a = samplers.PKSampler(labels, 3, 3, seed=1)
  b = samplers.PKSampler(labels, 3, 3, seed=1)
  np.testing.assert_array_equal(a.epoch(4), b.epoch(4))
  np.testing.assert_array_equal(a.epoch(4), a.epoch(4))
  assert not np.array_equal(a.epoch(4), a.epoch(5))
  assert not np.array_equal(a.epoch(4), samplers.PKSampler(labels, 3, 3, seed=2).epoch(4))


def test_pk_small_classes_and_outliers():
  # Class 0 has 1 example (skipped), class 1 has 3 < K=4 (repeats), -1 never drawn.
  labels = np.asarray([0] + [1] * 3 + [2] * 10 + [3] * 10 + [-1] * 5)
  sampler = samplers.PKSampler(labels, 2, 4, seed=0)
  batches = sampler.epoch(0)
  _check_pk_batches(batches, labels, 2, 4)
  drawn = set(labels[batches.ravel()].tolist())
  assert drawn == {1, 2, 3}
  assert np.isin(np.flatnonzero(labels == 1), batches).all()


def test_pk_explicit_steps():
  labels = _labels([10] * 6)
  for steps in (1, 3, 50):
    batches = samplers.PKSampler(labels, 2, 2, seed=0, steps_per_epoch=steps).epoch(0)
    assert batches.shape == (steps, 4)
    _check_pk_batches(batches, labels, 2, 2)


def test_pk_errors():
  with pytest.raises(ValueError, match="classes_per_batch"):
    samplers.PKSampler(_labels([5, 5]), 3, 2, seed=0)
  with pytest.raises(ValueError, match="samples_per_class"):
    samplers.PKSampler(_labels([5, 5]), 2, 1, seed=0)


def test_random_batches():
  s = samplers.RandomBatchSampler(103, 10, seed=0)
  b = s.epoch(0)
  assert b.shape == (10, 10) and len(np.unique(b)) == 100
  np.testing.assert_array_equal(b, samplers.RandomBatchSampler(103, 10, seed=0).epoch(0))
  assert not np.array_equal(b, s.epoch(1))
  full = samplers.RandomBatchSampler(103, 10, seed=0, drop_last=False).epoch(2)
  assert full.shape == (11, 10) and len(np.unique(full)) == 103


def test_random_triplets():
  labels = np.asarray([0] * 5 + [1] * 7 + [2] + [-1] * 4)
  s = samplers.RandomTripletSampler(labels, 4, seed=0)
  b = s.epoch(0)
  assert b.shape == (3, 12)
  a, p, n = b[:, :4].ravel(), b[:, 4:8].ravel(), b[:, 8:].ravel()
  assert (labels[a] >= 0).all() and (labels[a] != 2).all()   # anchors have positives
  assert (labels[p] == labels[a]).all() and (p != a).all()
  assert (labels[n] != labels[a]).all()
  assert len(np.unique(a)) == a.size
  np.testing.assert_array_equal(b, samplers.RandomTripletSampler(labels, 4, seed=0).epoch(0))
  # Negatives are uniform over the other examples: outliers and class 2 do appear.
  many = samplers.RandomTripletSampler(labels, 12, seed=1)
  negs = np.concatenate([many.epoch(e)[:, 24:].ravel() for e in range(200)])
  assert {-1, 2} <= set(labels[negs].tolist())


def test_random_pairs():
  labels = _labels([6, 6, 6, 6])
  s = samplers.RandomPairSampler(labels, 8, seed=0)
  b = s.epoch(0)
  assert b.shape == (3, 16)
  x1, x2 = b[:, :8], b[:, 8:]
  same = labels[x1] == labels[x2]
  assert (x1 != x2).all()
  assert 0.2 < same.mean() < 0.8
  np.testing.assert_array_equal(b, samplers.RandomPairSampler(labels, 8, seed=0).epoch(0))


def test_host_share():
  batches = np.arange(24).reshape(2, 12)
  shares = [samplers.host_share(batches, i, 3) for i in range(3)]
  assert all(s.shape == (2, 4) for s in shares)
  np.testing.assert_array_equal(np.concatenate(shares, axis=1), batches)
  with pytest.raises(ValueError, match="process_count"):
    samplers.host_share(batches, 0, 5)


def test_verification_pairs():
  from tsm.data import pairs
  labels = np.asarray([0] * 10 + [1] * 10 + [2] + [-1] * 3 + [3] * 6)
  i, j, same = pairs.verification_pairs(labels, 60, seed=0)
  assert i.shape == j.shape == same.shape == (60,) and same.sum() == 30
  np.testing.assert_array_equal(labels[i] == labels[j], same)
  assert (labels[i] >= 0).all() and (labels[j] >= 0).all() and (i != j).all()
  assert len({(min(a, b), max(a, b)) for a, b in zip(i, j)}) == 60     # distinct
  again = pairs.verification_pairs(labels, 60, seed=0)
  for x, y in zip((i, j, same), again):
    np.testing.assert_array_equal(x, y)
  # More same pairs asked than exist (1 possible): repeats allowed, labels still right.
  i, j, same = pairs.verification_pairs(np.asarray([0, 0, 1, 2]), 8, seed=1)
  np.testing.assert_array_equal(np.asarray([0, 0, 1, 2])[i] == np.asarray([0, 0, 1, 2])[j],
                                same)
