"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` through tsm.data.idx.

Skipped when the package is not installed, except under CI (``CI=true``), which
installs it: there a missing package is a failure.

Independent references:
  * the md5 of each decompressed file as published for the upstream release (the
    md5sum of the gunzipped files whose ``.gz`` md5s are in the upstream README; e.g.
    listed as ``raw_data`` by torchvision-style Fashion-MNIST loaders and in
    MindSpore's Fashion-MNIST tutorial). Debian recompressed the ``.gz`` files, so the
    upstream ``.gz`` md5s do not apply, but the content must be the same bytes;
  * Debian's own md5sums of the ``.gz`` files it installed;
  * the dataset's README / paper: 60,000 / 10,000 images of 28 x 28, ten classes of
    6,000 / 1,000, and the class names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import struct
import sys

import numpy as np
import pytest

from tsm.data import idx

DATA_DIR = pathlib.Path(idx.DEFAULT_FASHION_MNIST_DIR)
DEBIAN_MD5SUMS = pathlib.Path("/var/lib/dpkg/info/dataset-fashion-mnist.md5sums")

# md5 of the decompressed upstream files (see the module docstring).
UPSTREAM_RAW_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _require_files() -> None:
  try:
    idx.find_idx_files(DATA_DIR)
  except idx.IdxFilesMissing as e:
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI installs dataset-fashion-mnist, but: {e}")
    pytest.skip(f"Fashion-MNIST is not installed: {e}")


@pytest.fixture(scope="module")
def dataset() -> idx.IdxDataset:
  _require_files()
  return idx.load_idx_dataset()


def _idx_bytes(array: np.ndarray) -> bytes:
  """The IDX file that holds ``array`` (uint8), rebuilt from the parsed array."""
  assert array.dtype == np.uint8
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
  return header + np.ascontiguousarray(array).tobytes()


def test_counts_shapes_and_classes(dataset):
  assert dataset.train_images.shape == (60000, 28, 28)
  assert dataset.test_images.shape == (10000, 28, 28)
  assert dataset.train_images.dtype == np.uint8 and dataset.test_images.dtype == np.uint8
  assert dataset.train_labels.shape == (60000,) and dataset.test_labels.shape == (10000,)
  assert dataset.train_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)
  assert dataset.class_names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
  for images in (dataset.train_images, dataset.test_images):
    assert images.min() == 0 and images.max() == 255   # both extremes present


def test_content_matches_upstream_md5(dataset):
  # The parsed arrays, written back as IDX, are byte for byte the upstream files.
  for role, md5 in UPSTREAM_RAW_MD5.items():
    array = getattr(dataset, role)
    if "labels" in role:
      array = array.astype(np.uint8)
    assert hashlib.md5(_idx_bytes(array)).hexdigest() == md5, role


def test_first_training_label_read_by_hand(dataset):
  # Byte 8 of the labels file (after magic and count) is the first label: 9, an
  # ankle boot; decoded here with gzip alone, not through the reader.
  path = idx.find_idx_files(DATA_DIR)["train_labels"]
  raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  assert raw[:8] == bytes([0, 0, 8, 1]) + struct.pack(">i", 60000)
  assert raw[8] == 9
  assert dataset.class_names[raw[8]] == "Ankle boot"
  assert dataset.train_labels[0] == raw[8]


def test_compressed_files_match_debian_md5sums():
  _require_files()
  if not DEBIAN_MD5SUMS.is_file():
    pytest.skip("the files were not installed by dpkg (no md5sums to check against).")
  expected = {}
  for line in DEBIAN_MD5SUMS.read_text().splitlines():
    md5, name = line.split(maxsplit=1)
    expected["/" + name] = md5
  files = idx.find_idx_files(DATA_DIR)
  for path in files.values():
    if str(path) in expected:
      assert hashlib.md5(path.read_bytes()).hexdigest() == expected[str(path)], path
  assert sum(str(p) in expected for p in files.values()) == 4


def test_missing_package_skips_locally_and_fails_under_ci(monkeypatch, tmp_path):
  monkeypatch.setattr(sys.modules[__name__], "DATA_DIR", tmp_path / "absent")
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match="apt-get install dataset-fashion-mnist"):
    _require_files()
  monkeypatch.setenv("CI", "false")
  with pytest.raises(pytest.skip.Exception, match="apt-get install dataset-fashion-mnist"):
    _require_files()


def test_dataset_normalization_matches_the_published_statistics(dataset):
  """``normalize="dataset"``: Fashion-MNIST's training pixels have mean 0.2860 and std
  0.3530 (the values commonly published for ``transforms.Normalize``); tsm measures
  them on a 10,000-image sample of its 54,000-image training split."""
  import tsm.data as data  # pylint: disable=g-import-not-at-top
  ds = data.load(data.DataSpec(name="fashion_mnist", split="standard",
                               normalize="dataset"), seed=0)
  full = dataset.train_images.astype(np.float64) / 255.0   # numpy, all 60,000
  assert abs(full.mean() - 0.2860) < 5e-5 and abs(full.std() - 0.3530) < 5e-5
  # Sampling error of a 10,000-image mean: std of the image means (~0.1) / 100.
  np.testing.assert_allclose(ds.input_stats.mean, [full.mean()], atol=3e-3)
  np.testing.assert_allclose(ds.input_stats.std, [full.std()], atol=3e-3)
  x = ds.test.get(np.arange(3))
  raw = dataset.test_images[:3, :, :, None] / 255.0   # standard split: test in order
  np.testing.assert_allclose(x, (raw - ds.input_stats.mean) / ds.input_stats.std,
                             rtol=1e-5, atol=1e-5)
