"""Checkpoints of the training state with orbax: the last k, plus the best one.

Why one module of this length: a checkpoint failure is one line only if the manager,
the causes read out of orbax's and tensorstore's errors and the filters of their
background noise sit together; split, each would need the others' internals.

One ``orbax.checkpoint.CheckpointManager`` under ``<workdir>/checkpoints`` holds every
checkpoint. Each step directory has two items:

* ``state``: the whole ``TrainState`` pytree (params, batch statistics, optimiser state,
  margin state, step, RNG key), saved with ``StandardSave`` and restored into the
  shardings of a template state (so a replicated state on a mesh comes back replicated);
* ``meta``: a small JSON dict written by the fit loop (epoch, position within the epoch,
  byte length of ``metrics.jsonl`` at save time, ...), which is what makes a rerun resume
  at exactly the step it stopped at.

Which checkpoints survive is orbax's own preservation policy:
``AnyPreservationPolicy([LatestN(keep), BestN(n=1)])``. Checkpoints saved with
validation metrics take part in the "best" ranking (by ``best_metric``, ``"min"`` or
``"max"``); mid-epoch checkpoints are saved without metrics and are kept only while they
are among the last ``keep``.

Faults: every error of orbax or of the filesystem (disk full, read-only file system, no
permission, a truncated file) comes out of this module as one :class:`CheckpointError`
with a one-line message, including the errors of a background save, which orbax raises
at the next ``save``, ``wait`` or ``close``. :meth:`Checkpointer.restore_latest` falls
back from an unreadable checkpoint to the next older one, and a failed restore leaves no
unrelated tracebacks behind (orbax abandons the restore's other reads, which would
otherwise end as "Event loop is closed", "exception was never retrieved" and, at exit,
"ImportError: sys.meta_path is None" tracebacks: a program's entry point calls
:func:`quiet_orbax` to keep them out of its output; the commands do). Half-written
``<step>.orbax-checkpoint-tmp*`` directories of a killed save are never listed as steps
and are removed when a ``Checkpointer`` opens the directory (orbax's
``cleanup_tmp_directories``).

References:
  orbax-checkpoint 0.12 ``CheckpointManager``, ``CheckpointManagerOptions``,
  ``checkpoint_managers.{AnyPreservationPolicy, LatestN, BestN}``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import sys
import time
import traceback
from typing import Any, Iterator

import jax
from tsm import _extras

_extras.require(__name__, "orbax")   # else one line naming tsm[train]

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_STATE = "state"
_META = "meta"
_UNREADABLE = ".unreadable-"   # <step>.unreadable-<unix time>: not a step name to orbax

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message is one line.

  Attributes:
    cause: the reason in a few words (the OS's or tensorstore's), also in the message.
  """

  def __init__(self, message: str, cause: str = ""):
    super().__init__(message)
    self.cause = cause


class _NoMetricsWarningFilter(logging.Filter):
  """Drops orbax's warning for checkpoints saved (on purpose) without metrics."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


class _SurfacedErrorFilter(logging.Filter):
  """Drops orbax's error tracebacks while a ``Checkpointer`` is open.

  Orbax logs a failed background write with its traceback (tens of lines per thread)
  and then raises the same exception at the next ``save`` / ``wait_until_finished``,
  where ``Checkpointer`` turns it into one ``CheckpointError`` line: the log records are
  duplicates. Only records from orbax's own files that carry a traceback are dropped.
  """

  open_checkpointers = 0

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (self.open_checkpointers and from_orbax and record.exc_info
                and record.levelno >= logging.ERROR)


_NO_METRICS = _NoMetricsWarningFilter()
_SURFACED = _SurfacedErrorFilter()


@contextlib.contextmanager
def _filtered(logger: str, record_filter: logging.Filter) -> Iterator[None]:
  """``record_filter`` on ``logger`` while the block runs (then removed)."""
  log_ = logging.getLogger(logger)
  log_.addFilter(record_filter)
  try:
    yield
  finally:
    log_.removeFilter(record_filter)

# The cause of a tensorstore error, from its long message: the OS's own words.
_OS_CAUSES = ("No space left on device", "Read-only file system", "Permission denied",
              "Disk quota exceeded", "Input/output error")


def cause_of(exc: BaseException) -> str:
  """One short line saying why ``exc`` happened (no paths or specs of tensorstore)."""
  seen = {id(exc)}
  while exc.__cause__ is not None and id(exc.__cause__) not in seen:
    exc = exc.__cause__   # orbax wraps tensorstore's error in a generic Exception
    seen.add(id(exc))
  if isinstance(exc, OSError) and exc.strerror:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror}{where}"
  text = str(exc)
  for cause in _OS_CAUSES:
    if cause in text:
      return cause
  line = text.strip().splitlines()[0] if text.strip() else ""
  line = re.sub(r"\s*\[tensorstore_spec.*", "", line)   # a JSON spec of hundreds of chars
  status = re.match(r"([A-Z][A-Z_]{3,}): (.*)", line)
  if status:   # tensorstore: "CODE: context: context: ...: the reason"
    return f"{status.group(1)}: {status.group(2).split(': ')[-1].strip()}"
  if len(line) > 160:
    line = line[:157] + "..."
  return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _without_tracebacks(exc: BaseException) -> BaseException:
  """``exc`` and its chained causes without tracebacks (their frames hold orbax's reads)."""
  seen = set()
  link = exc
  while link is not None and id(link) not in seen:
    seen.add(id(link))
    link.__traceback__ = None
    try:
      link.tsm_failed_restore = True   # for _raised_in_orbax, once the frames are gone
    except AttributeError:   # an exception type without a __dict__
      pass
    link = link.__cause__ or link.__context__
  return exc


_ORBAX_DIR = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"


def _is_orphaned_read(unraisable: Any) -> bool:
  """Whether an unraisable exception comes from a read that a failed restore orphaned."""
  coroutine_code = getattr(unraisable.object, "cr_code", None)
  if coroutine_code is not None and _ORBAX_DIR in coroutine_code.co_filename:
    return True   # one of orbax's read coroutines, finalised after its loop closed
  if (isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"):
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(frame.name == "call_soon_threadsafe" for frame in frames)
  return False


def _raised_in_orbax(exc: BaseException | None) -> bool:
  """Whether ``exc`` (or an exception it was raised from) went through orbax's code."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if getattr(exc, "tsm_failed_restore", False):
      return True
    if any(_ORBAX_DIR in frame.filename for frame in traceback.extract_tb(exc.__traceback__)):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


class _OrphanedReadLogFilter(logging.Filter):
  """Drops asyncio's "exception was never retrieved" for the reads of a failed restore.

  The third kind of noise of :func:`_install_orphaned_read_hook`: the futures of orbax's
  reads (and tensorstore's under them) hold the failure, already raised by ``restore``,
  and asyncio logs it again, with its traceback, when they are collected. Dropped: such
  records whose exception went through orbax's code, and, once a restore or a save has
  failed in this process, those of tensorstore's futures (no Python frames, a "CODE: "
  message).
  """

  failures = 0   # failed restores and saves, counted by Checkpointer

  def filter(self, record: logging.LogRecord) -> bool:
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
      return True
    exc = record.exc_info[1]
    if _raised_in_orbax(exc):
      return False
    # tensorstore's own futures fail with "CODE: message" and no Python frames.
    from_tensorstore = (exc is not None and exc.__traceback__ is None
                        and re.match(r"[A-Z][A-Z_]{3,}: ", str(exc)) is not None)
    return not (self.failures and from_tensorstore)


_ORPHANED_READS = _OrphanedReadLogFilter()


def _drop_orphaned_reads(previous_hook):
  def hook(unraisable):
    if not _is_orphaned_read(unraisable):
      previous_hook(unraisable)
  hook.drops_orphaned_reads = True
  return hook


def _install_orphaned_read_hook() -> None:
  """Installs (once, chained to the previous one) a ``sys.unraisablehook`` that drops
  the noise of the reads a failed restore leaves behind.

  When one array of a restore (or a save) fails, orbax closes its event loop with the
  other reads (writes) still in flight, and they end as "unraisable" exceptions, each a
  traceback unrelated to the cause: tensorstore completes one and schedules its callback
  on the closed loop ("RuntimeError: Event loop is closed"), and the suspended read coroutines raise
  when they are finalised (at interpreter shutdown, "ImportError: sys.meta_path is
  None"). The hook drops exactly those two kinds and passes everything else on.
  """
  if not getattr(sys.unraisablehook, "drops_orphaned_reads", False):
    sys.unraisablehook = _drop_orphaned_reads(sys.unraisablehook)


_QUIETED = []


def quiet_orbax() -> None:
  """Keeps orbax's and asyncio's noise about a failure this module reports in one line
  out of the process's output (once; later calls do nothing).

  A failed background write is logged by orbax with its traceback before
  :class:`Checkpointer` raises it as one :class:`CheckpointError`; a failed restore
  leaves orbax's other reads in flight, which end as "Event loop is closed", "exception
  was never retrieved" and, at exit, "ImportError: sys.meta_path is None" tracebacks.
  This adds filters to the ``absl`` and ``asyncio`` loggers (dropping exactly those
  records while a ``Checkpointer`` is open or after it failed) and chains a
  ``sys.unraisablehook`` that drops exactly those unraisable exceptions. Both are
  process-wide, so a program's entry point calls this, not the library: ``tsm-train``,
  ``tsm-embed`` and the study commands do; a script of one's own may.
  """
  if _QUIETED:
    return
  _QUIETED.append(True)
  logging.getLogger("absl").addFilter(_SURFACED)
  logging.getLogger("asyncio").addFilter(_ORPHANED_READS)
  _install_orphaned_read_hook()


def _collect_orphaned_reads() -> None:
  """Finalises a failed restore's orphaned read coroutines now, not at shutdown, when
  the hook above may already be gone."""
  gc.collect()


def _metric_key(best_metric: str, best_mode: str):
  """Returns orbax's ``best_fn``: the metric as a float, NaN ranked worst."""
  worst = math.inf if best_mode == "min" else -math.inf

  def best_fn(metrics: dict[str, Any]) -> float:
    value = float(metrics.get(best_metric, worst))
    return worst if math.isnan(value) else value

  return best_fn


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs; keeps the last ``keep`` and the best.

  Args:
    directory: where the step directories go (created here if missing).
    keep: how many of the most recent checkpoints to keep (>= 1).
    best_metric: name of the validation metric that ranks checkpoints saved with
      metrics, e.g. ``"val_loss"`` or ``"map@r"``.
    best_mode: ``"min"`` or ``"max"``: whether a lower or a higher ``best_metric`` is
      better.
    async_save: write in a background thread (the device-to-host copy still happens
      before ``save`` returns, so the caller may donate the state right after).
    cleanup_tmp: remove the half-written ``<step>.orbax-checkpoint-tmp*`` directories
      of killed saves. Only for the one process that writes the directory (the fit
      loop, under its caller's :class:`tsm.workdir.WorkdirLock`): it would delete the
      save in progress of a live run. Readers of another run's checkpoints pass False.

  Raises:
    ValueError: a bad ``keep`` or ``best_mode``.
    CheckpointError: the directory cannot be created or read (one line).
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2,
               best_metric: str = "val_loss", best_mode: str = "min",
               async_save: bool = True, cleanup_tmp: bool = True):
    if keep < 1:
      raise ValueError(f"keep={keep} must be >= 1; keep at least one checkpoint.")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
    self._last_saved: int | None = None
    best_fn = _metric_key(best_metric, best_mode)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=best_mode == "min",
                                  n=1, keep_checkpoints_without_metrics=False),
    ])
    # A killed save leaves <step>.orbax-checkpoint-tmp*: orbax never lists it as a step,
    # and with cleanup_tmp_directories removes it here (in the background, awaited by
    # the first save).
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode, preservation_policy=policy,
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=bool(cleanup_tmp))
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, item_names=(_STATE, _META), options=options)
    except Exception as e:   # pylint: disable=broad-except
      cause = cause_of(e)
      raise CheckpointError(
          f"cannot open the checkpoint directory {self.directory}: {cause}.", cause) from e
    _SurfacedErrorFilter.open_checkpointers += 1
    self._closed = False

  def _save_error(self, e: BaseException, step: int | None) -> CheckpointError:
    _OrphanedReadLogFilter.failures += 1
    what = "a checkpoint" if step is None else f"checkpoint {step}"
    cause = cause_of(e)
    return CheckpointError(
        f"could not write {what} in {self.directory}: {cause}; free space or fix "
        "the directory's permissions, then rerun to resume from the last checkpoint.",
        cause)

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves ``state`` and ``meta`` as checkpoint ``step``.

    Args:
      step: the global optimiser step (unique, increasing).
      state: the train state pytree.
      meta: JSON-serialisable dict (python scalars, lists, dicts).
      metrics: validation metrics for the best-checkpoint ranking, or None for a
        checkpoint that only serves resumption.

    Raises:
      CheckpointError: this save, or an earlier background save, failed (one line).
    """
    pending = self._last_saved
    try:
      # Orbax first waits for the previous background save: its error surfaces here.
      self._manager.wait_until_finished()
    except Exception as e:   # pylint: disable=broad-except
      raise self._save_error(e, pending) from e
    self._last_saved = int(step)
    try:
      # Steps saved without metrics on purpose (mid-epoch) make orbax warn each time.
      with _filtered("absl", _NO_METRICS):
        self._manager.save(
            int(step),
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                       _META: ocp.args.JsonSave(meta)}),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True)
    except Exception as e:   # pylint: disable=broad-except
      raise self._save_error(e, step) from e

  def latest_step(self) -> int | None:
    """The most recent saved step, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best ``best_metric`` among those saved with metrics, or None."""
    self.wait()
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    """Every step on disk, ascending."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``template``.

    Args:
      step: a step from ``all_steps()``.
      template: a state pytree (concrete or ``jax.ShapeDtypeStruct`` leaves).

    Returns:
      ``(state, meta)``.

    Raises:
      CheckpointError: the checkpoint cannot be read (one line naming the step).
    """
    self.wait()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      restored = self._manager.restore(
          int(step), args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract),
                                               _META: ocp.args.JsonRestore()}))
      return restored[_STATE], dict(restored[_META])
    except Exception as e:   # pylint: disable=broad-except
      cause = cause_of(e)
      error = CheckpointError(
          f"checkpoint {step} in {self.directory} is unreadable ({cause}).", cause)
      error.__cause__ = _without_tracebacks(e)
      _OrphanedReadLogFilter.failures += 1
    # Outside the handler, with the tracebacks dropped, orbax's orphaned reads are
    # unreachable and can be collected now.
    _collect_orphaned_reads()
    raise error

  def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest readable checkpoint, falling back to older ones.

    Steps are tried newest first. A step that fails to restore, for any reason (a
    truncated or missing file, bad JSON, a shape that does not fit ``template``), is
    skipped; once an older step has restored, each skipped step gets one warning line
    naming it and is renamed to ``<step>.unreadable-<unix time>`` (out of orbax's sight,
    kept for inspection), so that the resumed run can save that step again. Nothing is
    renamed when no step restores.

    Args:
      template: a state pytree (concrete or ``jax.ShapeDtypeStruct`` leaves).

    Returns:
      ``(state, meta, step)``, or None when the directory holds no checkpoint.

    Raises:
      CheckpointError: no checkpoint restores (one line naming the directory to
        remove), or an unreadable one cannot be renamed.
    """
    steps = self.all_steps()
    if not steps:
      return None
    bad = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, template)
      except CheckpointError as e:
        bad.append((step, e.cause))
        continue
      for unreadable, cause in bad:
        kept = self._set_aside(unreadable)
        log.warning("checkpoint %d in %s is unreadable (%s); resuming from checkpoint %d "
                    "(the unreadable one is kept as %s).", unreadable, self.directory,
                    cause, step, os.path.basename(kept))
      return state, meta, step
    newest, cause = bad[0]
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} (steps "
        f"{', '.join(map(str, steps))}) can be restored (step {newest}: {cause}); remove "
        "that directory to train the run again from the start, or use another --workdir.")

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step out of orbax's sight; returns the new path."""
    source = os.path.join(self.directory, str(step))
    target = f"{source}{_UNREADABLE}{int(time.time())}"
    try:
      os.rename(source, target)
    except OSError as e:
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} is unreadable and cannot be moved "
          f"aside ({cause_of(e)}); remove {source} and rerun.") from e
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until background writes are done.

    Raises:
      CheckpointError: a background save failed (one line).
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:   # pylint: disable=broad-except
      raise self._save_error(e, self._last_saved) from e

  def close(self) -> None:
    """Finishes pending writes and releases the manager and its threads.

    The manager is released even when the last background save failed; that failure
    is then raised.

    Raises:
      CheckpointError: the last background save failed (one line).
    """
    if self._closed:
      return
    self._closed = True
    error = None
    try:
      self.wait()
    except CheckpointError as e:
      error = e
    try:
      self._manager.close()
    except Exception as e:   # pylint: disable=broad-except
      error = error or self._save_error(e, self._last_saved)
    finally:
      _SurfacedErrorFilter.open_checkpointers -= 1
    if error is not None:
      raise error

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:   # an exception is on its way: release the manager without hiding it
      self.close()
    except CheckpointError:
      pass
