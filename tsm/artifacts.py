"""Files a training run writes: the metrics log and atomic writes.

Every JSON file is strict JSON: a NaN or infinite number is written as ``null``
(:func:`dumps`).

* ``metrics.jsonl``: one JSON object a line, ``{"kind": "step" | "epoch", ...}``,
  appended in blocks (one host transfer per block, never inside the jitted step). On
  resume the file is cut back to its length at the restored checkpoint, so a resumed run
  writes exactly the lines an uninterrupted run writes.
* ``summary.json``, ``config.json``, figures, indexes: written to a temporary file and
  renamed, so a reader never sees half a file (:func:`write_atomic`,
  :func:`write_json_atomic`, and :func:`atomic_path` for writers that want a file name).
  The temporary file is created with mode ``0o666`` minus the umask, like ``open``, so
  every file of a run is as readable as the user's other files (0644 under umask 022);
  ``tempfile.mkstemp`` would make them 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from typing import Any, Iterable, Iterator


def _create_temporary(path: str) -> str:
  """Creates an empty file beside ``path`` (mode 0o666 minus the umask); returns its name.

  ``os.open`` applies the umask like ``open`` does; ``O_EXCL`` makes the name ours alone.
  """
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  while True:
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{name}")
    try:
      os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return tmp
    except FileExistsError:
      continue


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary file name beside ``path``; renames it to ``path`` on success.

  For writers that take a file name (``fig.savefig``, ``np.savez``): what they write
  appears at ``path`` all at once, with the umask's permissions, and on any error the
  temporary file is removed and ``path`` is left as it was. The directory of ``path`` is
  created if missing.

  Args:
    path: the final file.

  Yields:
    The temporary file's name (it exists, empty; write over it).
  """
  tmp = _create_temporary(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see atomic_path).

  Args:
    path: the final file.
    data: its whole content.
  """
  if not isinstance(data, (str, bytes)):
    raise ValueError(f"data must be str or bytes, got {type(data).__name__}; encode it "
                     "first (write_json_atomic for objects).")
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())  # the rename must not land before the data on a crash


def strict_json(obj: Any) -> Any:
  """``obj`` with every NaN or infinite float (numpy's too) replaced by None, so that it
  is strict JSON (``null``; Python's ``json`` would write the non-standard ``NaN``)."""
  if isinstance(obj, dict):
    return {k: strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0
                                and obj.dtype.kind == "f"):
    return float(obj) if math.isfinite(float(obj)) else None
  return obj


def dumps(obj: Any, **kwargs: Any) -> str:
  """``json.dumps`` of :func:`strict_json` ``(obj)``, refusing anything else non-standard."""
  return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented, key-sorted strict JSON (:func:`dumps`) to ``path``
  atomically."""
  write_atomic(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_npz(path: str) -> dict[str, Any]:
  """Every array of the ``.npz`` file ``path``, read now (numpy reads an ``.npz`` lazily,
  so a damaged member would fail at first use, far from here).

  Raises:
    ValueError: ``path`` is not a whole ``.npz`` file (one line with the cause).
  """
  import zipfile  # pylint: disable=import-outside-toplevel
  import zlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  try:
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError) as e:
    # numpy takes a file that is neither a zip nor an .npy for a pickle.
    cause = ("not a zip archive" if "pickled" in str(e) else
             str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    raise ValueError(f"{path} is not a readable .npz file ({cause}); write it again or "
                     "pass another file.") from None


class MetricsLog:
  """Append-only JSON-lines log that can be cut back to a saved length.

  Args:
    path: the ``.jsonl`` file (created on the first append).
    write: False for the other processes of a multi-host run: nothing is written, the
      length the file would have is tracked in memory (``size``, ``truncate``,
      ``append``), and ``read`` returns the records within that length of the file that
      process 0 writes (the workdir is shared).
  """

  def __init__(self, path: str, *, write: bool = True):
    self.path = path
    self.write = write
    self._size = self._file_size()

  def _file_size(self) -> int:
    return os.path.getsize(self.path) if os.path.exists(self.path) else 0

  def size(self) -> int:
    """Current length of the file in bytes (0 when it does not exist)."""
    return self._file_size() if self.write else self._size

  def truncate(self, size: int) -> None:
    """Cuts the file back to ``size`` bytes (a length :meth:`size` returned earlier)."""
    self._size = int(size)
    if self.write and os.path.exists(self.path):
      with open(self.path, "r+b") as f:
        f.truncate(size)

  def append(self, records: Iterable[dict[str, Any]]) -> None:
    """Appends one line per record and flushes."""
    lines = "".join(dumps(r, sort_keys=True) + "\n" for r in records)
    self._size += len(lines.encode())
    if lines and self.write:
      with open(self.path, "a") as f:
        f.write(lines)
        f.flush()

  def read(self) -> list[dict[str, Any]]:
    """Every record, in order.

    Raises:
      ValueError: a line is not JSON (the message names it).
    """
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read() if self.write else f.read(self._size)
    records = []
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except ValueError as e:
          raise ValueError(f"line {number}: {e}") from None
    return records
