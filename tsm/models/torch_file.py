"""Reading PyTorch ``.pth`` / ``.pt`` state dicts without torch, and without running code.

A torch checkpoint is a pickle whose tensors refer to raw storages kept beside it. A
plain ``pickle.load`` would import and call whatever the file names, so
:func:`read_state_dict` uses a restricted unpickler instead: it resolves only the few
globals a state dict needs (``collections.OrderedDict``, the tensor rebuild functions
and the storage types, which it maps to numpy dtypes) and refuses every other one, so a
file cannot make it execute code. Both of torch's formats are read:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one ``<root>/data/<key>``
  member per storage;
* the legacy format (what ``torch.save(..., _use_new_zipfile_serialization=False)`` and
  torch < 1.6 write): a magic number, the protocol version and system info, the pickle,
  the list of storage keys, then each storage as an int64 element count and its bytes.

Tensors come back as numpy arrays (a copy: the file can be closed), in torch's layouts
(conv ``[out, in, kh, kw]``, linear ``[out, in]``). This module is host-side I/O only.

References:
  torch/serialization.py (``_legacy_load``, ``_load``), torch/_utils.py
  (``_rebuild_tensor_v2``, ``_rebuild_parameter``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's storage classes and the dtype of one element.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# torch dtypes named in newer files (``torch.float32`` pickled as ``torch float32``).
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32,
    "float": np.float32, "float16": np.float16, "half": np.float16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class TorchFileError(ValueError):
  """The file is not a torch state dict this reader can take; the message says why."""


class _StorageType:
  """Stands in for ``torch.<X>Storage``: carries the element dtype."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


class _Dtype:
  """Stands in for a pickled ``torch.<dtype>``."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A storage's bytes, read lazily once the pickle has named them."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel = dtype, int(numel)
    self.data: np.ndarray | None = None


class _Tensor:
  """A tensor view of a storage, materialised once the storages are read."""

  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise TorchFileError("a tensor refers to a storage the file does not hold")
    itemsize = data.dtype.itemsize
    needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.size and min(self.size) == 0:
      return np.zeros(self.size, data.dtype)
    if needed > data.size:
      raise TorchFileError(f"a tensor of shape {self.size} runs past its storage "
                           f"({data.size} elements)")
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=self.size,
        strides=tuple(s * itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only a state dict's globals; storages come from ``storage_for``."""

  def __init__(self, file: BinaryIO, storage_for):
    super().__init__(file)
    self._storage_for = storage_for

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _Dtype(_TORCH_DTYPES[name])
    if module == "torch" and name == "UntypedStorage":
      return _StorageType(np.uint8)
    raise TorchFileError(f"the file names {module}.{name}, which a state dict of tensors "
                         "does not need; it is refused (this reader runs no code from "
                         "files)")

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise TorchFileError(f"unsupported persistent id {pid!r:.60}")
    return self._storage_for(pid[1:])


def _dtype_of(storage_type: Any) -> np.dtype:
  if isinstance(storage_type, (_StorageType, _Dtype)):
    return storage_type.dtype
  raise TorchFileError(f"unsupported storage type {storage_type!r:.60}")


def _to_numpy(obj: Any) -> Any:
  if isinstance(obj, _Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _to_numpy(v)) for k, v in obj.items())
  return obj


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise TorchFileError("the zip holds no data.pkl; it is not a torch checkpoint")
    root = pkl[0][: -len("data.pkl")]
    storages: dict[str, _Storage] = {}

    def storage_for(args):
      storage_type, key, _location, numel = args[:4]
      dtype = _dtype_of(storage_type)
      if key not in storages:
        storage = _Storage(dtype, numel)
        raw = zf.read(f"{root}data/{key}")
        storage.data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(
            dtype, copy=False)
        storages[key] = storage
      return storages[key]

    with zf.open(pkl[0]) as f:
      obj = _Unpickler(io.BytesIO(f.read()), storage_for).load()
  return _to_numpy(obj)


def _read_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    # One unpickler per record, as torch does: an unpickler may read ahead of its record.
    def plain():
      return _HeaderUnpickler(f).load()

    if plain() != LEGACY_MAGIC:
      raise TorchFileError("it is neither a zip nor a legacy torch file (bad magic "
                           "number)")
    if plain() != LEGACY_PROTOCOL:
      raise TorchFileError("its legacy protocol version is not 1001")
    sys_info = plain()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
      raise TorchFileError("it was written on a big-endian machine")
    storages: dict[str, _Storage] = {}

    def storage_for(args):
      storage_type, key, _location, numel, view = args[:5]
      if view is not None:
        raise TorchFileError("storage views are not supported")
      if key not in storages:
        storages[key] = _Storage(_dtype_of(storage_type), numel)
      return storages[key]

    obj = _Unpickler(f, storage_for).load()
    keys = plain()
    for key in keys:
      storage = storages.get(str(key))
      head = f.read(8)
      if storage is None or len(head) != 8:
        raise TorchFileError("its storage list does not match its tensors")
      (numel,) = struct.unpack("<q", head)
      nbytes = numel * storage.dtype.itemsize
      raw = f.read(nbytes)
      if numel != storage.numel or len(raw) != nbytes:
        raise TorchFileError(f"storage {key} is truncated ({len(raw)} of {nbytes} "
                             "bytes)")
      storage.data = np.frombuffer(raw, dtype=storage.dtype)
  return _to_numpy(obj)


class _HeaderUnpickler(pickle.Unpickler):
  """The legacy header and storage-key list hold numbers, strings and dicts only."""

  def find_class(self, module: str, name: str) -> Any:
    raise TorchFileError(f"its header names {module}.{name}; a torch file's header "
                         "holds numbers and strings only")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a torch state dict (``torch.save(model.state_dict(), path)``) as numpy arrays.

  No torch import and no code from the file runs (see the module docstring).

  Args:
    path: a ``.pth`` / ``.pt`` file in torch's zip or legacy format.

  Returns:
    ``{name: np.ndarray}`` in the file's order; tensors keep torch's layouts and dtypes.
    A ``{"state_dict": {...}}`` wrapper is unwrapped.

  Raises:
    TorchFileError: one line saying what is wrong with the file (not found, not a torch
      file, truncated, or it asks for a global that a state dict does not need).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise TorchFileError(f"{path!r} does not exist")
  try:
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except TorchFileError as e:
    raise TorchFileError(f"{path!r}: {e}") from None
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError,
          TypeError, struct.error) as e:
    detail = " ".join(str(e).split())[:80]
    raise TorchFileError(f"{path!r} is not a readable torch state dict, or it is "
                         f"truncated ({type(e).__name__}: {detail})") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise TorchFileError(f"{path!r} holds a {type(obj).__name__}, not a state dict of "
                         "tensors")
  return dict(obj)
