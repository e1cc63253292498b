"""IDX files (the MNIST family's format) and Fashion-MNIST from Debian's package.

``read_idx`` reads one IDX file, plain or gzip-compressed; ``load_idx_dataset`` reads
the four standard files of a directory (Fashion-MNIST by default, or MNIST, KMNIST
or any set that ships them under the same names). Splitting the arrays into train /
validation / test is ``tsm.data.splits``' job (``tsm.data.load`` does it for every
source). Nothing here downloads, and nothing needs TensorFlow or a config: the
arguments are paths, arrays and numbers.

The IDX layout (LeCun et al., the MNIST page): a 4-byte magic number, two zero bytes,
a dtype code and the number of dimensions ``d``; then ``d`` big-endian int32 sizes;
then the data, big-endian, row-major, and nothing after it.

Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` puts the original
``*-idx?-ubyte.gz`` files in ``DEFAULT_FASHION_MNIST_DIR``: 60,000 training and
10,000 test images, 28 x 28 uint8, ten classes of 6,000 / 1,000 images.

References:
  LeCun, Cortes, Burges, *The MNIST database of handwritten digits* (the IDX format),
  http://yann.lecun.com/exdb/mnist/
  Xiao, Rasul, Vollgraf, *Fashion-MNIST: a Novel Image Dataset for Benchmarking
  Machine Learning Algorithms*, 2017, https://arxiv.org/abs/1708.07747
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib
from typing import NamedTuple, Sequence, Union

import numpy as np


PathLike = Union[str, "os.PathLike[str]"]

# Where Debian's ``dataset-fashion-mnist`` installs the IDX files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Fashion-MNIST's labels 0..9 (the dataset's README, "Labels").
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# The four standard files, by role (each may also end in ``.gz``).
IDX_FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX dtype codes (third magic byte); the data are big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_INSTALL_HINT = ("install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                 "or pass path=DIR (DataSpec.path), a directory holding "
                 + ", ".join(f"{n}[.gz]" for n in IDX_FILE_NAMES.values()))
_CHUNK = 1 << 20


class IdxError(ValueError):
  """A corrupt, truncated or inconsistent IDX file; one line naming the file."""


class IdxFilesMissing(ValueError):
  """The IDX directory or one of its files is missing; one line saying how to fix it."""


class IdxDataset(NamedTuple):
  """The four arrays of an IDX dataset.

  Attributes:
    train_images: ``[N_train, H, W]`` as stored (uint8 for the MNIST family).
    train_labels: ``[N_train]`` int32.
    test_images: ``[N_test, H, W]``.
    test_labels: ``[N_test]`` int32.
    class_names: names of labels ``0..C-1``, or None where unknown.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...] | None


# ----------------------------------------------------------------------------- reading

def _read_exact(f, n: int) -> bytes:
  """Up to ``n`` bytes (fewer only at the end of the stream)."""
  parts, got = [], 0
  while got < n:
    part = f.read(n - got)
    if not part:
      break
    parts.append(part)
    got += len(part)
  return b"".join(parts)


def _parse_header(f, path: PathLike) -> tuple[np.dtype, tuple[int, ...], int]:
  """Reads the header: (big-endian dtype, shape, header length in bytes)."""
  start = _read_exact(f, 4)
  if len(start) < 4:
    raise IdxError(f"IDX file {path}: truncated: expected a 4-byte header, got "
                   f"{len(start)} bytes.")
  if start[:2] != b"\x00\x00":
    raise IdxError(f"IDX file {path}: bad magic number 0x{start.hex()} (an IDX file "
                   "starts with two zero bytes); not an IDX file.")
  code, ndim = start[2], start[3]
  if code not in IDX_DTYPES:
    raise IdxError(f"IDX file {path}: unknown dtype code 0x{code:02X}; IDX knows "
                   + ", ".join(f"0x{c:02X}" for c in IDX_DTYPES) + ".")
  dims = _read_exact(f, 4 * ndim)
  if len(dims) < 4 * ndim:
    raise IdxError(f"IDX file {path}: truncated: expected {4 + 4 * ndim} header bytes "
                   f"for {ndim} dimensions, got {4 + len(dims)}.")
  shape = struct.unpack(f">{ndim}i", dims)
  if any(s < 0 for s in shape):
    raise IdxError(f"IDX file {path}: negative dimension in shape {shape}.")
  return IDX_DTYPES[code], tuple(shape), 4 + 4 * ndim


def _native(array: np.ndarray) -> np.ndarray:
  """Big-endian multi-byte data to native order, in place (no second copy)."""
  if array.dtype.itemsize == 1 or array.dtype.isnative:
    return array
  return array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))


def _bytes_view(array: np.ndarray) -> memoryview:
  """A writable byte view of a C-contiguous array (memoryview cannot cast '>i4')."""
  return memoryview(array.reshape(-1).view(np.uint8))


def _read_plain(path: PathLike) -> np.ndarray:
  with open(path, "rb") as f:
    dtype, shape, offset = _parse_header(f, path)
    size = os.fstat(f.fileno()).st_size
    expected = offset + math.prod(shape) * dtype.itemsize
    _check_length(path, expected, size)
    if expected == offset:
      return np.zeros(shape, dtype.newbyteorder("="))
    if dtype.itemsize == 1:
      # A read-only memory map: pages are read from disk only when touched.
      return np.asarray(np.memmap(f, dtype=dtype, mode="r", offset=offset,
                                  shape=shape))
    out = np.empty(shape, dtype)
    f.readinto(_bytes_view(out))
    return _native(out)


def _drain(f) -> int:
  """Bytes left in a stream, read in chunks (nothing kept)."""
  n = 0
  while chunk := f.read(_CHUNK):
    n += len(chunk)
  return n


def _gzip_isize(path: PathLike) -> int | None:
  """The gzip trailer's ISIZE: the (last member's) uncompressed size mod 2**32."""
  with open(path, "rb") as raw:
    if raw.seek(0, os.SEEK_END) < 18:   # shorter than an empty gzip member
      return None
    raw.seek(-4, os.SEEK_END)
    return struct.unpack("<I", raw.read(4))[0]


def _read_gzip(path: PathLike) -> np.ndarray:
  isize = _gzip_isize(path)
  with gzip.open(path, "rb") as f:
    dtype, shape, offset = _parse_header(f, path)
    expected = offset + math.prod(shape) * dtype.itemsize
    if isize != expected % 2**32:
      # Header and trailer disagree: measure the stream instead of allocating what a
      # corrupt header may claim. (Concatenated gzip members can disagree and still
      # be whole; then read on.)
      _check_length(path, expected, offset + _drain(f))
  with gzip.open(path, "rb") as f:
    _parse_header(f, path)
    # Decompress straight into the result: one buffer, the size the header promises.
    out = np.empty(shape, dtype)
    view = _bytes_view(out)
    got = 0
    while got < view.nbytes:
      n = f.readinto(view[got:])
      if not n:
        break
      got += n
    _check_length(path, expected, offset + got + _drain(f))
    return _native(out)


def _check_length(path: PathLike, expected: int, actual: int) -> None:
  if actual < expected:
    raise IdxError(f"IDX file {path}: truncated: expected {expected} bytes, got "
                   f"{actual}.")
  if actual > expected:
    raise IdxError(f"IDX file {path}: trailing bytes: expected {expected} bytes, got "
                   f"{actual}.")


def read_idx(path: PathLike) -> np.ndarray:
  """Reads one IDX file, plain or gzip-compressed (by its ``.gz`` suffix).

  Validates the magic number, the dtype code and the exact byte length (for a
  ``.gz`` file, of the decompressed data) before returning anything.

  Args:
    path: the file, e.g. ``".../train-images-idx3-ubyte.gz"``.

  Returns:
    The array, shape as in the header, in native byte order (uint8, int8, int16,
    int32, float32 or float64). Uncompressed single-byte files come back as a
    read-only memory map (read from disk when touched; ``.copy()`` to write);
    everything else is a fresh array, decompressed straight into place.

  Raises:
    IdxError: one line naming the file and the fault (no such file, bad magic,
      unknown dtype code, truncated: expected N bytes got M, trailing bytes, a corrupt
      gzip stream).

  References:
    LeCun, Cortes, Burges, *The MNIST database of handwritten digits*,
    http://yann.lecun.com/exdb/mnist/ (section "The IDX file format").
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise IdxError(f"IDX file {path}: no such file.")
  try:
    if path.endswith(".gz"):
      return _read_gzip(path)
    return _read_plain(path)
  except IdxError:
    raise
  except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
    raise IdxError(f"IDX file {path}: unreadable ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else 'corrupt data'}).") from None


# --------------------------------------------------------------------------- datasets

def find_idx_files(directory: PathLike) -> dict[str, pathlib.Path]:
  """Locates the four standard IDX files of a directory.

  Args:
    directory: e.g. ``DEFAULT_FASHION_MNIST_DIR`` or a directory of MNIST / KMNIST
      files.

  Returns:
    ``{"train_images", "train_labels", "test_images", "test_labels"}`` -> path; an
    uncompressed file is preferred to its ``.gz`` (it can be memory-mapped).

  Raises:
    IdxFilesMissing: the directory or a file is missing (one line naming
      ``apt-get install dataset-fashion-mnist`` and ``path=DIR``).
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise IdxFilesMissing(f"IDX directory {directory} does not exist; {_INSTALL_HINT}.")
  found, missing = {}, []
  for role, name in IDX_FILE_NAMES.items():
    for candidate in (directory / name, directory / f"{name}.gz"):
      if candidate.is_file():
        found[role] = candidate
        break
    else:
      missing.append(f"{name}[.gz]")
  if missing:
    raise IdxFilesMissing(f"IDX directory {directory} lacks {', '.join(missing)}; "
                          f"{_INSTALL_HINT}.")
  return found


def _is_default_dir(directory: pathlib.Path) -> bool:
  try:
    return directory.resolve() == pathlib.Path(DEFAULT_FASHION_MNIST_DIR).resolve()
  except OSError:
    return False


def load_idx_dataset(directory: PathLike = DEFAULT_FASHION_MNIST_DIR, *,
                     class_names: Sequence[str] | None = None) -> IdxDataset:
  """Reads an IDX dataset's four files and checks that they agree.

  Args:
    directory: the directory of the four standard files (``find_idx_files``);
      Fashion-MNIST from Debian's package by default.
    class_names: names of labels ``0..C-1``; every label must be below ``C``. None:
      ``FASHION_MNIST_CLASS_NAMES`` for the default directory, otherwise unknown (then
      the test labels must lie among the training labels' range ``0..max``).

  Returns:
    ``IdxDataset(train_images, train_labels, test_images, test_labels,
    class_names)``, labels int32; the images as ``read_idx`` returns them.

  Raises:
    IdxFilesMissing: the directory or a file is missing.
    IdxError: a corrupt file, or files that disagree (image and label counts, image
      shapes, labels out of range), naming the file.
  """
  directory = pathlib.Path(directory)
  files = find_idx_files(directory)
  if class_names is None and _is_default_dir(directory):
    class_names = FASHION_MNIST_CLASS_NAMES
  arrays = {role: read_idx(path) for role, path in files.items()}
  for part in ("train", "test"):
    images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
    if images.ndim < 2:
      raise IdxError(f"IDX file {files[f'{part}_images']}: images have shape "
                     f"{images.shape}; expected [N, H, W].")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
      raise IdxError(f"IDX file {files[f'{part}_labels']}: labels have shape "
                     f"{labels.shape} and dtype {labels.dtype}; expected [N] integers.")
    if images.shape[0] != labels.shape[0]:
      raise IdxError(f"IDX files {files[f'{part}_images']} and "
                     f"{files[f'{part}_labels']} disagree: {images.shape[0]} images but "
                     f"{labels.shape[0]} labels.")
  if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
    raise IdxError(f"IDX file {files['test_images']}: images of shape "
                   f"{arrays['test_images'].shape[1:]}, but the training images are "
                   f"{arrays['train_images'].shape[1:]}.")
  if class_names is not None:
    class_names = tuple(class_names)
    num_classes = len(class_names)
  else:
    train = arrays["train_labels"]
    num_classes = int(train.max()) + 1 if train.size else 0
  for part in ("train", "test"):
    labels = arrays[f"{part}_labels"]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise IdxError(f"IDX file {files[f'{part}_labels']}: labels span "
                     f"[{labels.min()}, {labels.max()}], outside the {num_classes} "
                     "classes 0..C-1" + (" of class_names." if class_names else
                                         " seen in training."))
  return IdxDataset(arrays["train_images"], arrays["train_labels"].astype(np.int32),
                    arrays["test_images"], arrays["test_labels"].astype(np.int32),
                    class_names)
