"""The run directory: creating it with one-line errors, one run at a time, finished runs.

Three pieces, called by the fit loop, the CLI and the study runner:

* :func:`prepare_workdir` creates the directory and checks that it can be written, and
  turns every filesystem fault into one of two exceptions with a one-line message:
  :class:`BadWorkdir` (a path the user should change: a file, no permission, a read-only
  file system; exit status 2) and :class:`WorkdirIOError` (the disk is full or failing;
  exit status 1).
* :class:`WorkdirLock` is an advisory lock on ``<workdir>/.lock`` (the ``filelock``
  package's ``FileLock``, which is ``fcntl.flock`` on Unix): one run per workdir. A
  second process gets :class:`WorkdirBusy`, naming the holder.
* :func:`is_finished` says whether the workdir holds a finished run of the same
  settings (``config.json``), so that a rerun can report it without writing anything;
  :func:`run_difference` names the first setting in which a run there differs.

Stale locks: ``flock`` belongs to the open file, and the kernel drops it when the
holder's process dies, however it dies (``kill -9`` included), so a lock that can be
taken is never held by a live process. The holder writes ``pid host time`` into the
file and empties it on release; a lock taken over a non-empty file therefore means the
previous holder died without releasing it, which is noted (one log line) and
overwritten. The file itself is never deleted: deleting it would let two processes lock
two different files of the same name (``preserve_lock_file``). Where ``flock`` is not
supported (some network and FUSE file systems), the lock falls back to the recorded pid:
busy while that pid is alive on this host, or when it was recorded by another host
(which cannot be checked). filelock turns its own fallback (a soft marker file) off
for a lock file that is kept, so this one is tsm's.

References:
  flock(2), "NOTES" (locks belong to the open file description; released when it is
  closed, including at process exit); errno(3).
"""

from __future__ import annotations

import errno
import fcntl  # pylint: disable=unused-import  # filelock's flock; tests fake its absence
import json
import logging
import os
import socket
import tempfile
import time
from typing import Any, Iterable, Mapping, Sequence

from tsm import _extras

_extras.require(__name__, "filelock")   # else one line naming tsm[train]

import filelock

LOCK_NAME = ".lock"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.json"

log = logging.getLogger(__name__)

# errno values that mean "the path the user gave cannot be used" (exit 2); any other
# OSError is an I/O fault of the machine (exit 1).
_USER_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                          errno.EEXIST, errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP))
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# errno values of a file system without flock (some network and FUSE file systems).
_NO_FLOCK_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class BadWorkdir(ValueError):
  """The workdir cannot be used as given (a file, no permission, read-only); exit 2."""


class WorkdirIOError(OSError):
  """An I/O fault of the machine under the workdir (disk full, EIO); exit 1."""


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock; exit 2."""


class DamagedRun(ValueError):
  """A file of the run in the workdir is damaged (``config.json``, ``metrics.jsonl``);
  the message is one line saying which and what to do; exit 2."""


def _io_error(number: int | None, message: str) -> WorkdirIOError:
  error = WorkdirIOError(message)   # one argument: str() is the message alone
  error.errno = number
  return error


def _fault(path: str, action: str, e: OSError) -> BadWorkdir | WorkdirIOError:
  """The one-line exception for an OSError ``e`` raised while doing ``action``."""
  reason = e.strerror or str(e)
  if e.errno in _USER_ERRNOS:
    return BadWorkdir(
        f"--workdir {path}: cannot {action} ({reason}); pass a "
        "directory you can write, e.g. one under your home or scratch space.")
  if e.errno in _FULL_ERRNOS:
    return _io_error(
        e.errno, f"--workdir {path}: cannot {action} ({reason}); free space on that "
        "file system (or use another --workdir) and rerun.")
  return _io_error(
      e.errno, f"--workdir {path}: cannot {action} ({reason}); check the disk and rerun.")


def prepare_workdir(path: str | os.PathLike[str]) -> None:
  """Creates ``path`` (and its parents) and checks that a file can be written in it.

  Writes and removes a one-byte probe file: permission bits, a read-only mount and a
  full disk all show up here, as one line, before the run writes anything. Call it
  after :func:`is_finished` said no, since a finished run must not be written to.

  Args:
    path: the workdir.

  Raises:
    BadWorkdir: ``path`` is a file, a parent cannot be created, no permission, or a
      read-only file system.
    WorkdirIOError: the disk is full or another I/O fault.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise BadWorkdir(f"--workdir {path} is a file, not a directory; pass a directory "
                     "path (it is created if missing).")
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError as e:   # a dangling symlink, or a race with a file
    raise BadWorkdir(f"--workdir {path} exists and is not a directory; pass a directory "
                     "path (it is created if missing).") from e
  except OSError as e:
    raise _fault(path, "create the directory", e) from e
  probe = None
  try:
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
    with os.fdopen(fd, "wb") as f:
      f.write(b"\0")
      f.flush()
      os.fsync(f.fileno())   # a full disk may only say so when the data goes out
  except OSError as e:
    raise _fault(path, "write in the directory", e) from e
  finally:
    if probe is not None:
      try:
        os.remove(probe)
      except OSError:
        pass


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


KeyPath = Sequence[str]


def _without(obj: Mapping[str, Any], ignore: Iterable[KeyPath]) -> dict:
  obj = json.loads(json.dumps(obj))   # a deep copy of plain JSON values
  for keys in ignore:
    *parents, last = keys
    node: Any = obj
    for key in parents:
      node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(last, None)
  return obj


def first_difference(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                     ignore: Iterable[KeyPath] = ()) -> str | None:
  """Where two JSON objects first differ, in sorted key order, or None where they agree.

  A key missing on one side reads as None there, so an object saved before a key with
  the value None existed agrees with one that has it.

  Args:
    saved: the object found (e.g. a run's ``config.json``).
    current: the object now.
    ignore: key paths left out of the comparison, e.g. ``("train", "progress")``.

  Returns:
    ``"a.b (<saved value> there, <current value> now)"`` naming the dotted key path, or
    None.
  """
  ignore = tuple(ignore)

  def walk(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        diff = walk(a.get(key), b.get(key), f"{prefix}{key}.")
        if diff:
          return diff
      return None
    return None if a == b else f"{prefix[:-1]} ({a!r} there, {b!r} now)"

  return walk(_without(saved, ignore), _without(current, ignore), "")


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                ignore: Iterable[KeyPath] = ()) -> list[tuple[str, Any, Any]]:
  """Every place two JSON objects differ, in sorted key order (see
  :func:`first_difference`, which formats the first).

  Returns:
    ``[(dotted key path, saved value, current value), ...]``; empty where they agree.
  """
  found: list[tuple[str, Any, Any]] = []

  def walk(a: Any, b: Any, prefix: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        walk(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
      found.append((prefix[:-1], a, b))

  walk(_without(saved, ignore), _without(current, ignore), "")
  return found


def read_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The ``config.json`` of the run in ``path``, or None where there is none.

  Raises:
    DamagedRun: it is not a JSON object (one line naming the file and what to do).
    OSError: it cannot be read.
  """
  saved = os.path.join(os.fspath(path), CONFIG_NAME)
  if not os.path.exists(saved):
    return None
  try:
    config = _read_json(saved)
  except ValueError as e:
    raise DamagedRun(
        f"{saved} is damaged (not JSON: {e}); restore it, or remove it to let the same "
        "command write it again (the run there is then taken to be this config's).") from None
  if not isinstance(config, dict):
    raise DamagedRun(
        f"{saved} is damaged (a JSON {type(config).__name__}, not an object); restore "
        "it, or remove it to let the same command write it again.")
  return config


def run_difference(path: str | os.PathLike[str], config: Mapping[str, Any], *,
                   ignore: Iterable[KeyPath] = ()) -> str | None:
  """How the run in ``path`` differs from ``config`` (:func:`first_difference` of its
  ``config.json``); None when they agree or ``path`` holds no ``config.json``.

  Raises:
    DamagedRun: ``config.json`` is not a JSON object.
    OSError: it cannot be read.
  """
  saved = read_config(path)
  if saved is None:
    return None
  return first_difference(saved, config, ignore=ignore)


def is_finished(path: str | os.PathLike[str], config: Mapping[str, Any], *,
                ignore: Iterable[KeyPath] = ()) -> bool:
  """Whether ``path`` holds a finished run of ``config`` (reads, writes nothing).

  Finished means: ``summary.json`` is there and readable, and ``config.json`` agrees
  with ``config`` (:func:`first_difference`) outside the key paths in ``ignore``
  (settings that only control how a run is executed, such as a progress bar).

  Args:
    path: the workdir (need not exist).
    config: the run's settings as JSON values (what ``config.json`` holds).
    ignore: key paths left out of the comparison, e.g. ``[("train", "progress")]``.

  Returns:
    True when a rerun has nothing to train or write.

  Raises:
    BadWorkdir: ``path`` cannot be read (no permission).
    WorkdirIOError: another I/O fault while reading.
  """
  path = os.path.abspath(os.fspath(path))
  summary, saved = os.path.join(path, SUMMARY_NAME), os.path.join(path, CONFIG_NAME)
  if not (os.path.isfile(summary) and os.path.isfile(saved)):
    return False
  try:
    _read_json(summary)
    saved_config = _read_json(saved)
  except ValueError:   # a torn JSON file: the run has to finish again
    return False
  except OSError as e:
    raise _fault(path, "read the finished run", e) from e
  if not isinstance(saved_config, dict):
    return False
  return first_difference(saved_config, config, ignore=ignore) is None


def _holder(text: str) -> tuple[int | None, str, str]:
  """``(pid, host, time)`` from the lock file's ``pid host time`` line."""
  parts = text.split()
  try:
    pid = int(parts[0])
  except (IndexError, ValueError):
    return None, "?", "?"
  host = parts[1] if len(parts) > 1 else "?"
  when = " ".join(parts[2:]) or "?"
  return pid, host, when


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, owned by someone else
    return True
  return True


class WorkdirLock:
  """One run per workdir: a non-blocking ``filelock.FileLock`` on ``<workdir>/.lock``.

  Use as a context manager around everything a run writes::

      prepare_workdir(workdir)
      with WorkdirLock(workdir):
        ...   # train, checkpoint, write metrics and the summary

  Args:
    path: the workdir; it must exist (see :func:`prepare_workdir`).

  Attributes:
    took_over: ``"pid host time"`` of a holder that died without releasing the lock
      (noted in the log), or None.

  Raises:
    WorkdirBusy: (on enter) a live process holds the lock; the message names its pid
      and host.
    BadWorkdir, WorkdirIOError: (on enter) the lock file cannot be created or written.
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = os.path.abspath(os.fspath(path))
    self.lock_path = os.path.join(self.path, LOCK_NAME)
    self.took_over: str | None = None
    self._lock: filelock.BaseFileLock | None = None
    self._fd: int | None = None   # the lock file, where the file system has no flock

  def _busy(self, text: str) -> WorkdirBusy:
    pid, host, when = _holder(text)
    who = f"process {pid} on {host}" if pid is not None else "another process"
    return WorkdirBusy(
        f"--workdir {self.path} is in use by {who} (since {when}); wait for it to "
        "finish or use another --workdir.")

  def _record(self, fd: int) -> None:
    """Notes a previous holder's record (one that died holding the lock), writes ours."""
    previous = _read_fd(fd)
    if previous.strip():
      self.took_over = previous.strip()
      pid, host, when = _holder(previous)
      log.warning("--workdir %s: taking over the lock of process %s on %s (since %s), "
                  "which is no longer running.", self.path, pid, host, when)
    record = f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    os.fsync(fd)

  def acquire(self) -> WorkdirLock:
    """Takes the lock (see the class); returns self."""
    if self._lock is not None or self._fd is not None:
      raise RuntimeError(f"the lock on {self.path} is already held by this object.")
    if not os.path.isdir(self.path):   # filelock would create it: that is prepare_workdir's
      e = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
      raise _fault(self.path, "create the lock file", e)
    # preserve_lock_file: the file is never deleted (deleting it would let two
    # processes lock two different files of the same name); on_acquired writes our
    # record while the lock is held.
    lock = filelock.FileLock(self.lock_path, timeout=0, thread_local=False,
                             preserve_lock_file=True, on_acquired=self._record)
    try:
      lock.acquire()
    except filelock.Timeout:
      raise self._busy(_read_path(self.lock_path)) from None
    except OSError as e:
      if e.errno not in _NO_FLOCK_ERRNOS:
        raise _fault(self.path, "take the lock file", e) from e
      self._acquire_without_flock()
      return self
    self._lock = lock
    return self

  def _acquire_without_flock(self) -> None:
    """Where ``flock`` is not supported: trust the recorded pid instead."""
    try:
      # O_CLOEXEC: a program this run starts must not keep the file open after it.
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise _fault(self.path, "create the lock file", e) from e
    try:
      text = _read_fd(fd)
      pid, host, _ = _holder(text)
      if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
        raise self._busy(text)
      self._record(fd)
    except OSError as e:
      os.close(fd)
      raise _fault(self.path, "write the lock file", e) from e
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd

  def release(self) -> None:
    """Empties the lock file (a clean release) and releases the lock."""
    lock, self._lock = self._lock, None
    fd, self._fd = self._fd, None
    try:
      if lock is not None or fd is not None:
        os.truncate(self.lock_path, 0) if fd is None else os.ftruncate(fd, 0)
    except OSError:   # the record then reads as a dead holder: taken over next time
      pass
    finally:
      if lock is not None:
        lock.release()
      if fd is not None:
        os.close(fd)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_path(path: str) -> str:
  try:
    with open(path, "rb") as f:
      return f.read(4096).decode(errors="replace")
  except OSError:
    return ""


def _read_fd(fd: int) -> str:
  return os.pread(fd, 4096, 0).decode(errors="replace")
