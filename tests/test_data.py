"""Tests of tsm.data: offline sets, splits, config checks, preprocessing, loader, TFDS."""

from __future__ import annotations

import pathlib
import threading
import time

import numpy as np
import pytest

import tsm.data as data
from tsm.data import loader
from tsm.data import preprocess


def _cfg(**kw):
  return data.DataSpec(**kw)


# ----------------------------------------------------------------------------- offline

@pytest.mark.parametrize("name,shape", [("digits", (8, 8, 1)), ("mnist1d", (40, 1)),
                                        ("synthetic", (128,))])
def test_offline_shapes_and_determinism(name, shape):
  ds = data.load(_cfg(name=name), seed=0)
  assert ds.input_shape == shape and ds.num_classes == 10
  for split in (ds.train, ds.val, ds.test):
    assert split.input_shape == shape
    assert split.labels.dtype == np.int32
    x = split.get(np.arange(min(5, len(split))))
    assert x.dtype == np.float32 and x.shape == (min(5, len(split)),) + shape
  again = data.load(_cfg(name=name), seed=0)
  np.testing.assert_array_equal(ds.train.labels, again.train.labels)
  np.testing.assert_array_equal(ds.train.get([0, 3]), again.train.get([0, 3]))
  other = data.load(_cfg(name=name), seed=1)   # the run seed moves validation only
  np.testing.assert_array_equal(np.sort(np.concatenate([ds.train.labels, ds.val.labels])),
                                np.sort(np.concatenate([other.train.labels,
                                                        other.val.labels])))
  np.testing.assert_array_equal(ds.test.labels, other.test.labels)


@pytest.mark.parametrize("name", ["digits", "mnist1d", "synthetic"])
def test_offline_class_disjoint(name):
  ds = data.load(_cfg(name=name, split="class_disjoint"), seed=0)
  train = set(ds.train.classes) | set(ds.val.classes)
  assert train == {0, 1, 2, 3, 4} and set(ds.test.classes) == {5, 6, 7, 8, 9}
  by_class = data.load(_cfg(name=name, split="class_disjoint", val_split="by_class"),
                       seed=0)
  assert not set(by_class.train.classes) & set(by_class.val.classes)
  assert len(by_class.val.classes) == 1


def test_digits_values_and_raw_pixel_recall():
  ds = data.load(_cfg(name="digits", split="class_disjoint"), seed=0)
  x = ds.test.get(np.arange(len(ds.test))).reshape(len(ds.test), -1)
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  recall_at_1 = (ds.test.labels[d.argmin(1)] == ds.test.labels).mean()
  assert recall_at_1 > 0.97, recall_at_1


def test_mnist1d_standard_split_and_no_global_rng_change():
  np.random.seed(123)
  before = np.random.random()
  np.random.seed(123)
  ds = data.load(_cfg(name="mnist1d", split="standard", val_fraction=0.0), seed=0)
  assert np.random.random() == before
  assert len(ds.train) == 4000 and len(ds.test) == 1000 and len(ds.val) == 0
  assert ds.val.get([]).shape == (0, 40, 1)


def test_synthetic_recipe():
  ds = data.load(_cfg(name="synthetic", split="standard", val_fraction=0.0), seed=0)
  assert len(ds.train) == 2100 and len(ds.test) == 2100
  x = ds.train.get(np.arange(2100))
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
  labels = ds.train.labels
  assert (labels == -1).sum() == 100
  counts = np.bincount(labels[labels >= 0], minlength=10)
  assert counts.sum() == 2000 and counts.min() > 150     # ~200 each after label noise
  other = data.load(_cfg(name="synthetic", split="standard", val_fraction=0.0,
                         data_seed=1), seed=0)
  assert not np.allclose(other.train.get([0]), x[:1])


def test_num_examples_cap_and_image_options():
  ds = data.load(_cfg(name="digits", split="by_image", num_examples=50, image_size=16,
                      channels=3, normalize="symmetric"), seed=0)
  assert len(ds.train) == 50 and len(ds.test) == 50
  assert ds.input_shape == (16, 16, 3)
  x = ds.train.get(np.arange(4))
  assert x.shape == (4, 16, 16, 3) and x.min() >= -1.0 and x.max() <= 1.0
  np.testing.assert_array_equal(x[..., 0], x[..., 2])


# ------------------------------------------------------------ "dataset" normalisation

def _numpy_channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Reference: numpy's mean / population std over every axis but the last, float64."""
  flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  return flat.mean(axis=0), flat.std(axis=0)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_channel_stats_match_numpy_whatever_the_chunking(chunk):
  rng = np.random.default_rng(0)
  # Far from zero with a small spread: naive sum-of-squares would cancel here.
  x = (1e4 + rng.normal(size=(64, 5, 5, 3)) * [1.0, 0.01, 3.0]).astype(np.float32)
  stats = preprocess.channel_stats(x[i:i + chunk] for i in range(0, len(x), chunk))
  mean, std = _numpy_channel_stats(x)
  assert stats.mean.dtype == np.float32 and stats.std.shape == (3,)
  np.testing.assert_allclose(stats.mean, mean, rtol=1e-7)
  np.testing.assert_allclose(stats.std, std, rtol=1e-5)


def test_channel_stats_constant_channel_nan_and_bad_input():
  x = np.zeros((4, 3, 3, 2), np.float32)
  x[..., 1] = np.arange(4)[:, None, None]
  stats = preprocess.channel_stats([x])
  assert stats.std[0] == 1.0                                 # constant: std 1, not 0
  np.testing.assert_allclose(stats.std[1], np.std(np.arange(4.0)), rtol=1e-7)
  np.testing.assert_array_equal(preprocess.standardize(x, stats)[..., 0], 0.0)
  x[2, 1, 1, 0] = np.nan
  stats = preprocess.channel_stats([x])
  assert np.isnan(stats.mean[0]) and np.isnan(stats.std[0])   # NaN in, NaN out
  assert np.isfinite(stats.mean[1]) and np.isfinite(stats.std[1])
  with pytest.raises(ValueError, match="no pixel"):
    preprocess.channel_stats([np.zeros((0, 2, 2, 1))])
  with pytest.raises(ValueError, match="channels"):
    preprocess.channel_stats([np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 3))])


@pytest.mark.parametrize("channels", [None, 3])
def test_dataset_normalization_uses_the_training_splits_statistics(channels):
  plain = data.load(_cfg(name="digits", channels=channels), seed=3)
  ds = data.load(_cfg(name="digits", channels=channels, normalize="dataset"), seed=3)
  assert plain.input_stats is None
  train_x = plain.train.get(np.arange(len(plain.train)))    # fewer than 10,000: all
  mean, std = _numpy_channel_stats(train_x)
  np.testing.assert_allclose(ds.input_stats.mean, mean, rtol=1e-6)
  np.testing.assert_allclose(ds.input_stats.std, std, rtol=1e-6)
  got = ds.train.get(np.arange(len(ds.train)))
  np.testing.assert_allclose(_numpy_channel_stats(got)[0], 0.0, atol=1e-5)
  np.testing.assert_allclose(_numpy_channel_stats(got)[1], 1.0, rtol=1e-5)
  for name in ("val", "test"):   # the other splits use the training statistics
    raw = getattr(plain, name).get(np.arange(10))
    np.testing.assert_allclose(getattr(ds, name).get(np.arange(10)),
                               (raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(getattr(ds, name).labels, getattr(plain, name).labels)
  batch = ds.train.get(np.arange(4))   # augmentation still applies after standardising
  assert ds.train.augment(batch, np.random.default_rng(0)).shape == batch.shape


def test_dataset_normalization_of_features_and_from_a_seeded_sample():
  plain = data.load(_cfg(name="synthetic"), seed=0)
  ds = data.load(_cfg(name="synthetic", normalize="dataset"), seed=0)
  mean, std = _numpy_channel_stats(plain.train.get(np.arange(len(plain.train))))
  assert ds.input_stats.mean.shape == (128,)          # one statistic per feature
  np.testing.assert_allclose(ds.input_stats.std, std, rtol=1e-5)
  from tsm.data import datasets  # pylint: disable=g-import-not-at-top
  n = len(plain.train)
  sample = datasets.training_stats(plain.train, max_examples=50, seed=4)
  chosen = np.sort(np.random.default_rng(4).choice(n, 50, replace=False))
  ref_mean, _ = _numpy_channel_stats(plain.train.get(chosen))
  np.testing.assert_allclose(sample.mean, ref_mean, rtol=1e-5, atol=1e-7)
  other = datasets.training_stats(plain.train, max_examples=50, seed=5)
  assert not np.allclose(other.mean, sample.mean)
  np.testing.assert_allclose(datasets.training_stats(plain.train).mean, mean, rtol=1e-5,
                             atol=1e-7)


# ------------------------------------------------------------------------------ config

@pytest.mark.parametrize("fields,match", [
    ({"name": "imagenet"}, "known dataset.*digits.*lfw"),
    ({"split": "random"}, "^split"),
    ({"name": "lfw", "split": "standard"}, "not available for lfw"),
    ({"name": "digits", "split": "standard"}, "not available for digits"),
    ({"val_fraction": 1.5}, "^val_fraction"),
    ({"name": "mnist1d", "image_size": 32}, "^image_size"),
    ({"name": "synthetic", "augment": True}, "^augment"),
    ({"name": "cars196"}, "image_size must be set for cars196"),
    ({"channels": 2}, "^channels"),
    ({"normalize": "zscore"}, "^normalize.*dataset"),
    ({"val_split": "foo"}, "^val_split"),
    ({"num_examples": 1}, "^num_examples"),
])
def test_data_spec_check(fields, match):
  with pytest.raises(ValueError, match=match) as err:
    _cfg(**fields).check()
  assert "\n" not in str(err.value)
  data.DataSpec().check()


# -------------------------------------------------------------------------- preprocess

def test_prepare_images_resize_and_channels():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (30, 50, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)]
  x = preprocess.prepare_images(images, image_size=24, channels=None, method="unit")
  assert x.shape == (2, 24, 24, 3) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() <= 1.0
  grey = preprocess.prepare_images(images, image_size=24, channels=1, method="imagenet")
  assert grey.shape == (2, 24, 24, 1)
  same = preprocess.prepare_images([images[0][:24, :24]], image_size=24, channels=None)
  np.testing.assert_allclose(same[0] * 255.0, images[0][:24, :24], atol=1e-3)


def test_augment_images_seeded():
  x = np.random.default_rng(0).random((6, 16, 16, 3), dtype=np.float32)
  a = preprocess.augment_images(x, np.random.default_rng(1))
  b = preprocess.augment_images(x, np.random.default_rng(1))
  np.testing.assert_array_equal(a, b)
  assert a.shape == x.shape and not np.array_equal(a, x)
  same = preprocess.augment_images(x, np.random.default_rng(1), flip=False,
                                   crop_padding=0)
  np.testing.assert_array_equal(same, x)


# ------------------------------------------------------------------------------ loader

def test_loader_order_determinism_and_prefetch():
  ds = data.load(_cfg(name="digits", split="by_image"), seed=0)
  index_batches = data.PKSampler(ds.train.labels, 4, 2, seed=0).epoch(0)[:6]
  out = list(data.batches(ds.train, index_batches, augment=True, seed=(0, 1)))
  assert len(out) == 6
  for b, idx in zip(out, index_batches):
    assert b["inputs"].shape == (8, 8, 8, 1) and b["inputs"].dtype == np.float32
    np.testing.assert_array_equal(b["labels"], ds.train.labels[idx])
  again = list(data.batches(ds.train, index_batches, augment=True, seed=(0, 1),
                            prefetch=4, num_workers=3))
  for a, b in zip(out, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  plain = next(data.batches(ds.train, index_batches[:1]))
  np.testing.assert_array_equal(plain["inputs"], ds.train.get(index_batches[0]))


def test_loader_runs_ahead_in_background():
  started = []
  lock = threading.Lock()

  class SlowSplit:
    labels = np.zeros(100, np.int32)

    def get(self, idx):
      with lock:
        started.append(int(idx[0]))
      time.sleep(0.05)
      return np.zeros((len(idx), 2), np.float32)

  index_batches = [np.asarray([i]) for i in range(10)]
  it = loader.batches(SlowSplit(), index_batches, prefetch=3, num_workers=3)
  first = next(it)
  time.sleep(0.2)
  assert first["inputs"].shape == (1, 2)
  assert len(started) == 4            # batch 0 consumed, 3 more in flight, no more
  rest = list(it)
  assert len(rest) == 9 and sorted(started) == list(range(10))


def test_loader_stops_cleanly_on_break():
  ds = data.load(_cfg(name="synthetic"), seed=0)
  index_batches = data.RandomBatchSampler(len(ds.train), 16, seed=0).epoch(0)
  for i, _ in enumerate(data.batches(ds.train, index_batches)):
    if i == 2:
      break
  time.sleep(0.1)
  assert not [t for t in threading.enumerate() if t.name.startswith("tsm-data")]


# -------------------------------------------------------------------------------- TFDS
# tfds.testing.mock_data works with tfds.data_source without TensorFlow as long as no
# `decoders` are passed (the mock then encodes images with tf.image.encode_png);
# tsm's label pass reads the mocked raw layer, which the mock returns decoded.

tfds = pytest.importorskip("tensorflow_datasets")

_TFDS_SIZES = {"caltech_birds2011": 32, "cars196": 32, "lfw": 16}


def _tfds_cfg(tmp_path, name, split, **kw):
  kw.setdefault("image_size", _TFDS_SIZES.get(name))
  if name == "fashion_mnist":   # its default source is Debian's IDX files
    kw.setdefault("source", "tfds")
  return _cfg(name=name, split=split, cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "caltech_birds2011",
                                  "cars196"])
def test_tfds_sources_under_mock_data(tmp_path, name):
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ("class_disjoint", "standard", "by_image"):
      ds = data.load(_tfds_cfg(tmp_path, name, split), seed=0)
      assert len(ds.train) + len(ds.val) + len(ds.test) == 120   # TFDS train + test
      if split == "class_disjoint":
        half = ds.num_classes // 2
        assert set(ds.train.classes) | set(ds.val.classes) <= set(range(half))
        assert set(ds.test.classes) <= set(range(half, ds.num_classes))
      if split == "standard":
        assert len(ds.test) == 60
      x = ds.train.get(np.arange(4))
      assert x.shape == (4,) + ds.input_shape and x.dtype == np.float32
      assert 0.0 <= x.min() and x.max() <= 1.0
      np.testing.assert_array_equal(x, ds.train.get(np.arange(4)))
      batch = next(data.batches(ds.train, [np.arange(4)], augment=True, seed=0))
      assert batch["inputs"].shape == x.shape
  assert ds.num_classes == {"caltech_birds2011": 200, "cars196": 196}.get(name, 10)
  assert list((tmp_path / "cache" / name).glob("*/tsm_labels_train_60.npy"))


def test_tfds_channels_and_label_cache(tmp_path, monkeypatch):
  from tsm.data import tfds_sources
  with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(_tfds_cfg(tmp_path, "mnist", "by_image", channels=3, image_size=32),
                   seed=0)
    assert ds.input_shape == (32, 32, 3) and ds.train.get([0]).shape == (1, 32, 32, 3)

    def fail(source):
      raise AssertionError("labels should come from the cache")

    monkeypatch.setattr(tfds_sources, "_label_pass", fail)
    again = data.load(_tfds_cfg(tmp_path, "mnist", "by_image"), seed=0)
  np.testing.assert_array_equal(ds.train.labels, again.train.labels)


def _fake_lfw(names):
  """An ``as_data_source_fn`` serving LFW-like examples with repeated identities."""

  class Source:

    def __init__(self, info):
      self.dataset_info = info

    def __len__(self):
      return len(names)

    def __getitem__(self, i):
      rng = np.random.default_rng(i)
      return {"image": rng.integers(0, 256, (250, 250, 3), dtype=np.uint8),
              "label": names[i].encode()}

  def as_data_source(self, split=None, **kwargs):
    del kwargs
    if isinstance(split, (list, tuple)):
      return [Source(self.info) for _ in split]
    return Source(self.info)

  return as_data_source


def test_lfw_identity_disjoint(tmp_path):
  names = [f"person_{i % 10:02d}" for i in range(50)] + [f"single_{i}" for i in range(8)]
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=_fake_lfw(names)):
    ds = data.load(_tfds_cfg(tmp_path, "lfw", "class_disjoint", test_fraction=0.3,
                             val_fraction=0.2, val_split="by_class"), seed=0)
    x = ds.test.get(np.arange(3))
  assert ds.num_classes == 18 and ds.input_shape == (16, 16, 3) and x.shape[1:] == (16, 16, 3)
  train, val, test = set(ds.train.classes), set(ds.val.classes), set(ds.test.classes)
  assert not (train & test) and not (train & val) and not (val & test)
  assert len(test) == 3 and len(val) == 1
  # Test and validation identities have >= 2 images; the single-image ones stay in train.
  for split in (ds.val, ds.test):
    assert np.bincount(split.labels).max() >= 5
  single_ids = set(range(10, 18))       # sorted names: person_* then single_*
  assert single_ids <= train
  assert len(ds.train) + len(ds.val) + len(ds.test) == 58


def test_tfds_not_prepared_is_one_line(tmp_path):
  empty = tmp_path / "empty"
  with pytest.raises(data.DatasetNotPreparedError) as err:
    data.load(_cfg(name="mnist", data_dir=str(empty)), seed=0)
  message = str(err.value)
  assert "\n" not in message
  assert f"tsm-prepare mnist --data_dir {empty}" in message
  assert err.value.__cause__ is None and err.value.__suppress_context__


# ----------------------------------------------------------------------------- prepare

def test_prepare_without_tensorflow_or_bad_name_is_one_line(capsys):
  from tsm.data import prepare
  with pytest.raises(SystemExit) as err:
    prepare.main(["digits"])
  assert "not a TFDS dataset" in str(err.value) and "\n" not in str(err.value)
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(SystemExit) as err:
      prepare.main(["mnist", "--data_dir", "/nonexistent"])
    assert 'pip install -e ".[data]"' in str(err.value) and "\n" not in str(err.value)


def test_prepare_local_mirror(tmp_path):
  from tsm.data import prepare
  (tmp_path / "cars_train.tgz").write_bytes(b"x")

  class FakeManager:

    def download(self, urls):
      return f"net:{urls}"

    def download_and_extract(self, urls):
      return f"net+x:{urls}"

    def extract(self, path):
      return f"extracted:{pathlib.Path(path).name}"

  urls = {"train": "http://host/car196/cars_train.tgz", "test": "http://host/cars_test.tgz"}
  with prepare.local_mirror(FakeManager, tmp_path):
    got = FakeManager().download_and_extract(urls)
    plain = FakeManager().download("http://host/a/cars_train.tgz?dl=1")
  assert got == {"train": "extracted:cars_train.tgz",
                 "test": "net+x:http://host/cars_test.tgz"}
  assert plain == tmp_path / "cars_train.tgz"
  assert FakeManager().download("u") == "net:u"     # restored on exit
