"""Tests of tsm.data.idx on small IDX files written here (struct, not the reader's numpy).

The files are encoded element by element with ``struct`` (big-endian), independently of
the reader's ``np.frombuffer`` / memory-map path, and compared with the arrays they came
from.
"""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest

from tsm.data import idx

# dtype code -> (numpy dtype of the values, struct format character)
CODES = {0x08: (np.uint8, "B"), 0x09: (np.int8, "b"), 0x0B: (np.int16, "h"),
         0x0C: (np.int32, "i"), 0x0D: (np.float32, "f"), 0x0E: (np.float64, "d")}


def _encode(values: np.ndarray, code: int) -> bytes:
  """IDX bytes of ``values``: magic, dims, then every element through struct."""
  fmt = CODES[code][1]
  header = bytes([0, 0, code, values.ndim]) + b"".join(
      struct.pack(">i", s) for s in values.shape)
  return header + b"".join(struct.pack(f">{fmt}", v) for v in values.reshape(-1).tolist())


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
  if path.suffix == ".gz":
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)
  return path


def _values(code: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """Values spanning the dtype, extremes included (NaN and inf for floats)."""
  dtype = CODES[code][0]
  rng = np.random.default_rng(seed)
  n = int(np.prod(shape))
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
    v[:2] = [info.min, info.max][:n]
  else:
    v = rng.standard_normal(n).astype(dtype) * 1e3
    v[:3] = np.array([np.nan, -np.inf, np.finfo(dtype).max], dtype)[:n]
  return v.reshape(shape)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 3, 2), (2, 3, 2, 2)])
@pytest.mark.parametrize("code", sorted(CODES))
def test_round_trip(tmp_path, code, shape, gz):
  values = _values(code, shape, seed=code)
  path = _write(tmp_path / ("x.idx.gz" if gz else "x.idx"), _encode(values, code))
  out = idx.read_idx(path)
  assert out.shape == shape
  assert out.dtype == np.dtype(CODES[code][0]) and out.dtype.isnative
  np.testing.assert_array_equal(out, values)   # NaN == NaN here


def test_plain_bytes_are_a_read_only_map_and_gzip_is_writable(tmp_path):
  values = _values(0x08, (4, 3))
  plain = idx.read_idx(_write(tmp_path / "a", _encode(values, 0x08)))
  packed = idx.read_idx(_write(tmp_path / "a.gz", _encode(values, 0x08)))
  assert not plain.flags.writeable and packed.flags.writeable
  np.testing.assert_array_equal(plain, packed)
  (tmp_path / "a").unlink()   # the map outlives its file name (POSIX)
  np.testing.assert_array_equal(plain, values)


@pytest.mark.parametrize("gz", [False, True])
def test_empty_array(tmp_path, gz):
  path = _write(tmp_path / ("e.gz" if gz else "e"),
                bytes([0, 0, 0x0C, 2]) + struct.pack(">2i", 0, 5))
  out = idx.read_idx(path)
  assert out.shape == (0, 5) and out.dtype == np.int32


def _error(path) -> str:
  with pytest.raises(idx.IdxError) as info:
    idx.read_idx(path)
  message = str(info.value)
  assert "\n" not in message and str(path) in message
  assert isinstance(info.value, ValueError)
  return message


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path, gz):
  data = bytearray(_encode(_values(0x08, (2, 2)), 0x08))
  data[0] = 0x1F
  message = _error(_write(tmp_path / ("m.gz" if gz else "m"), bytes(data)))
  assert "bad magic number 0x1f000802" in message


@pytest.mark.parametrize("gz", [False, True])
def test_unknown_dtype_code(tmp_path, gz):
  data = bytearray(_encode(_values(0x08, (2, 2)), 0x08))
  data[2] = 0x0A
  assert "unknown dtype code 0x0A" in _error(_write(tmp_path / ("c.gz" if gz else "c"),
                                                    bytes(data)))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x0C])
def test_truncated_data(tmp_path, code, gz):
  data = _encode(_values(code, (3, 4)), code)   # header 12 bytes + 12 elements
  expected = 12 + 12 * np.dtype(CODES[code][0]).itemsize
  assert len(data) == expected
  message = _error(_write(tmp_path / ("t.gz" if gz else "t"), data[:-3]))
  assert f"truncated: expected {expected} bytes, got {expected - 3}" in message


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_header(tmp_path, gz):
  assert "truncated" in _error(_write(tmp_path / ("h.gz" if gz else "h"),
                                      bytes([0, 0, 8, 3]) + struct.pack(">i", 60000)))
  assert "truncated" in _error(_write(tmp_path / ("s.gz" if gz else "s"), b"\x00\x00"))


def test_negative_dimension(tmp_path):
  header = bytes([0, 0, 0x08, 2]) + struct.pack(">2i", 3, -1)
  assert "negative dimension in shape (3, -1)" in _error(_write(tmp_path / "neg", header))


@pytest.mark.parametrize("gz", [False, True])
def test_huge_claimed_shape_is_truncated_not_allocated(tmp_path, gz):
  # A corrupt header claiming ~2**124 bytes must not reach an allocation.
  header = bytes([0, 0, 0x0E, 4]) + struct.pack(">4i", *[2**31 - 1] * 4)
  message = _error(_write(tmp_path / ("big.gz" if gz else "big"), header + bytes(64)))
  assert f"truncated: expected {20 + 8 * (2**31 - 1)**4} bytes, got 84" in message


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x0E])
def test_trailing_bytes(tmp_path, code, gz):
  data = _encode(_values(code, (2, 3)), code)
  message = _error(_write(tmp_path / ("x.gz" if gz else "x"), data + b"\x00" * 5))
  assert f"trailing bytes: expected {len(data)} bytes, got {len(data) + 5}" in message


def test_corrupt_and_cut_gzip_streams(tmp_path):
  not_gzip = tmp_path / "n.gz"
  not_gzip.write_bytes(_encode(_values(0x08, (2, 2)), 0x08))   # plain bytes named .gz
  assert "unreadable" in _error(not_gzip)
  packed = gzip.compress(_encode(_values(0x08, (50, 50)), 0x08))
  cut = tmp_path / "cut.gz"
  cut.write_bytes(packed[:len(packed) // 2])
  _error(cut)
  flipped = bytearray(packed)
  flipped[len(packed) // 2] ^= 0xFF
  bad = tmp_path / "bad.gz"
  bad.write_bytes(bytes(flipped))
  _error(bad)


def test_concatenated_gzip_members(tmp_path):
  # Valid gzip (as `cat a.gz b.gz` makes); the trailer's size is the last member's.
  data = _encode(_values(0x0C, (6, 7)), 0x0C)
  path = tmp_path / "two.gz"
  path.write_bytes(gzip.compress(data[:50]) + gzip.compress(data[50:]))
  np.testing.assert_array_equal(idx.read_idx(path), _values(0x0C, (6, 7)))


def test_missing_file(tmp_path):
  assert "no such file" in _error(tmp_path / "absent")


# --------------------------------------------------------------------------- datasets

def _dataset_dir(root: pathlib.Path, n_train=12, n_test=6, num_classes=3, gz=True,
                 shape=(4, 5)) -> tuple[pathlib.Path, dict]:
  rng = np.random.default_rng(1)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train,) + shape).astype(np.uint8),
      "train_labels": (np.arange(n_train) % num_classes).astype(np.uint8),
      "test_images": rng.integers(0, 256, (n_test,) + shape).astype(np.uint8),
      "test_labels": (np.arange(n_test) % num_classes).astype(np.uint8),
  }
  root.mkdir(parents=True, exist_ok=True)
  for role, values in arrays.items():
    name = idx.IDX_FILE_NAMES[role] + (".gz" if gz else "")
    _write(root / name, _encode(values, 0x08))
  return root, arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset(tmp_path, gz):
  root, arrays = _dataset_dir(tmp_path / "set", gz=gz)
  ds = idx.load_idx_dataset(root)
  for role, values in arrays.items():
    np.testing.assert_array_equal(getattr(ds, role), values)
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.class_names is None   # not the Fashion-MNIST directory
  named = idx.load_idx_dataset(root, class_names=["a", "b", "c"])
  assert named.class_names == ("a", "b", "c")


def test_prefers_uncompressed_files(tmp_path):
  root, _ = _dataset_dir(tmp_path / "set", gz=True)
  _dataset_dir(tmp_path / "set", gz=False)
  files = idx.find_idx_files(root)
  assert set(files) == set(idx.IDX_FILE_NAMES)
  assert all(p.suffix != ".gz" for p in files.values())


def test_count_mismatch(tmp_path):
  root, _ = _dataset_dir(tmp_path / "set", gz=False)
  _write(root / idx.IDX_FILE_NAMES["train_labels"],
         _encode(np.zeros(11, np.uint8), 0x08))
  with pytest.raises(idx.IdxError, match="12 images but 11 labels") as info:
    idx.load_idx_dataset(root)
  assert "train-images-idx3-ubyte" in str(info.value)
  assert "train-labels-idx1-ubyte" in str(info.value)


def test_labels_out_of_range_and_shape_mismatch(tmp_path):
  root, _ = _dataset_dir(tmp_path / "set", gz=False)
  with pytest.raises(idx.IdxError, match=r"labels span \[0, 2\], outside the 2 classes"):
    idx.load_idx_dataset(root, class_names=["a", "b"])
  _write(root / idx.IDX_FILE_NAMES["test_labels"],
         _encode(np.array([0, 1, 2, 3, 0, 1], np.uint8), 0x08))
  with pytest.raises(idx.IdxError, match="t10k-labels-idx1-ubyte: labels span"):
    idx.load_idx_dataset(root)   # 3 is never a training label
  root2, _ = _dataset_dir(tmp_path / "other", gz=False)
  _write(root2 / idx.IDX_FILE_NAMES["test_images"],
         _encode(np.zeros((6, 4, 4), np.uint8), 0x08))
  with pytest.raises(idx.IdxError, match="t10k-images-idx3-ubyte: images of shape"):
    idx.load_idx_dataset(root2)


def test_missing_directory_and_file_messages(tmp_path):
  with pytest.raises(idx.IdxFilesMissing) as info:
    idx.load_idx_dataset(tmp_path / "nowhere")
  message = str(info.value)
  assert isinstance(info.value, ValueError) and "\n" not in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "path=DIR (DataSpec.path)" in message and str(tmp_path / "nowhere") in message
  root, _ = _dataset_dir(tmp_path / "set")
  (root / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(idx.IdxFilesMissing,
                     match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]; install") as info:
    idx.find_idx_files(root)
  assert "\n" not in str(info.value)
