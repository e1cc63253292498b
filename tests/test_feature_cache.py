"""The frozen-trunk feature cache against features computed directly, on real splits.

The trunk here is a stand-in with a known answer (a fixed random projection of the
pixels), so that every cached row can be checked against numpy; the real trunk's own
contract is tested in test_imagenet_trunk.py.
"""

import json
import os

import numpy as np
import pytest

from tsm.data import DataSpec, load
from tsm.data import features as features_lib


class Projection:
  """``features(images) = pixels @ W`` (float64 then float32), counting the images."""
  name = "projection"
  feature_dim = 5

  def __init__(self, image_size, sha="ab" * 32):
    self.image_size, self.weights_sha256 = image_size, sha
    side = image_size * image_size * 3
    self.w = np.random.default_rng(0).normal(size=(side, self.feature_dim))
    self.seen = 0

  def features(self, images, *, batch_size=64):
    assert images.dtype == np.uint8 and images.shape[1:] == (self.image_size,) * 2 + (3,)
    self.seen += images.shape[0]
    return (images.reshape(len(images), -1).astype(np.float64) @ self.w).astype(np.float32)


def _spec(**kw):
  return DataSpec(name="digits", image_size=12, channels=3, **kw)


def _expected(split, trunk):
  x = np.rint(split.get(np.arange(len(split))) * 255).astype(np.uint8)
  return trunk.features(x)


def test_cached_rows_equal_direct_features_and_are_reused(tmp_path):
  spec, trunk = _spec(), Projection(12)
  splits = load(spec, seed=0)
  cached = features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path),
                                      progress=False)
  total = len(splits.train) + len(splits.val) + len(splits.test)
  assert trunk.seen == total and cached.input_shape == (5,)
  for name in ("train", "val", "test"):
    raw, feat = getattr(splits, name), getattr(cached, name)
    np.testing.assert_array_equal(feat.labels, raw.labels)
    np.testing.assert_array_equal(feat.ids, raw.ids)
    probe = Projection(12)
    np.testing.assert_array_equal(feat.get(np.arange(len(feat))), _expected(raw, probe))
  # A second run (another seed: another validation split) computes nothing more.
  trunk.seen = 0
  other = load(spec, seed=1)
  again = features_lib.cached_splits(other, trunk, spec=spec, root=str(tmp_path),
                                     progress=False)
  assert trunk.seen == 0
  np.testing.assert_array_equal(again.val.get(np.arange(len(again.val))),
                                _expected(other.val, Projection(12)))
  stores = os.listdir(tmp_path / "features")
  assert len(stores) == 1 and stores[0].startswith("digits-12px-projection-abababababab-")
  files = sorted(os.listdir(tmp_path / "features" / stores[0]))
  assert files == ["current.json", "features-0.npy", "ids-0.npy", "labels-0.npy", "lock"]


def test_a_store_grows_by_the_missing_examples_only(tmp_path):
  trunk = Projection(12)
  small = load(_spec(num_examples=40), seed=0)
  features_lib.cached_splits(small, trunk, spec=_spec(num_examples=40),
                             root=str(tmp_path), progress=False)
  first = trunk.seen
  full = load(_spec(), seed=0)
  cached = features_lib.cached_splits(full, trunk, spec=_spec(), root=str(tmp_path),
                                      progress=False)
  total = len(full.train) + len(full.val) + len(full.test)
  have = len(set(small.train.ids) | set(small.val.ids) | set(small.test.ids))
  assert trunk.seen - first == total - have
  np.testing.assert_array_equal(cached.test.get(np.arange(len(cached.test))),
                                _expected(full.test, Projection(12)))
  store = tmp_path / "features" / os.listdir(tmp_path / "features")[0]
  assert json.loads((store / "current.json").read_text())["generation"] == 1
  assert not (store / "features-0.npy").exists()   # the old generation is gone


def test_a_crash_while_building_leaves_nothing_half_written(tmp_path):
  class Failing(Projection):
    def features(self, images, *, batch_size=64):
      if self.seen > 100:
        raise KeyboardInterrupt
      return super().features(images, batch_size=batch_size)

  spec = _spec()
  with pytest.raises(KeyboardInterrupt):
    features_lib.cached_splits(load(spec, seed=0), Failing(12), spec=spec,
                               root=str(tmp_path), progress=False)
  store = tmp_path / "features" / os.listdir(tmp_path / "features")[0]
  assert sorted(os.listdir(store)) == ["lock"]
  trunk = Projection(12)
  splits = load(spec, seed=0)
  cached = features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path),
                                      progress=False)
  np.testing.assert_array_equal(cached.train.get(np.arange(5)),
                                _expected(splits.train, Projection(12))[:5])


def test_stale_or_damaged_stores_are_refused_with_one_line(tmp_path):
  spec, trunk = _spec(), Projection(12)
  splits = load(spec, seed=0)
  features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path), progress=False)
  store = tmp_path / "features" / os.listdir(tmp_path / "features")[0]
  labels = np.load(store / "labels-0.npy")
  np.save(store / "labels-0.npy", (labels + 1) % 10)
  with pytest.raises(features_lib.FeatureCacheError, match="holds other labels") as e:
    features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path),
                               progress=False)
  assert "\n" not in str(e.value) and str(store) in str(e.value)
  (store / "features-0.npy").write_bytes(b"junk")
  with pytest.raises(features_lib.FeatureCacheError, match="is damaged.*delete"):
    features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path),
                               progress=False)


def test_the_store_is_named_by_dataset_resolution_and_weights(tmp_path):
  a = features_lib.store_name(features_lib.dataset_identity(_spec()), Projection(12))
  b = features_lib.store_name(features_lib.dataset_identity(_spec(split="by_image",
                                                                  data_seed=3)),
                              Projection(12))
  c = features_lib.store_name(features_lib.dataset_identity(_spec()),
                              Projection(12, sha="cd" * 32))
  d = features_lib.store_name(features_lib.dataset_identity(
      DataSpec(name="digits", image_size=16, channels=3)), Projection(16))
  assert a == b and len({a, c, d}) == 3


def test_bad_inputs(tmp_path):
  spec = _spec(normalize="symmetric")
  with pytest.raises(ValueError, match="normalize='symmetric'.*use normalize='unit'"):
    features_lib.cached_splits(load(spec, seed=0), Projection(12), spec=spec,
                               root=str(tmp_path))
  from tsm.data import from_arrays
  arrays = from_arrays((np.zeros((4, 12, 12, 3), np.float32), np.arange(4) % 2))
  with pytest.raises(features_lib.FeatureCacheError, match="has no example ids"):
    features_lib.cached_features([arrays.train], Projection(12), str(tmp_path))


def test_plain_progress_lines_with_rate_eta_and_a_closing_line(tmp_path, capsys):
  spec, trunk = _spec(), Projection(12)
  splits = load(spec, seed=0)
  features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path), progress=True)
  err = capsys.readouterr().err.splitlines()   # not a terminal: plain lines, no bar
  train = [l for l in err if l.startswith("projection features of digits/train (12px): ")]
  assert train and train[-1].startswith(
      f"projection features of digits/train (12px): {len(splits.train)}/"
      f"{len(splits.train)} (100%)")
  assert all("images/s, ETA " in l and l.endswith(" min") for l in train)
  total = len(splits.train) + len(splits.val) + len(splits.test)
  assert err[-1].startswith(f"feature cache: {total} images through projection at 12 px in ")
  assert err[-1].endswith(str(tmp_path / "features" / os.listdir(tmp_path / "features")[0]))
  assert not any("\r" in l for l in err)
  features_lib.cached_splits(splits, trunk, spec=spec, root=str(tmp_path), progress=True)
  assert capsys.readouterr().err == ""   # nothing to compute, nothing printed
