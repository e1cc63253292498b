"""The exit statuses of tsm's commands, and the one map from a fault to its status.

``tsm-train``, ``tsm-embed`` and the study scripts under ``experiments/`` end with:

====  ======================================================================
0     done
1     an I/O fault of the machine: a full disk, a failing mount, an unreadable
      checkpoint; a study's worker process killed (the out-of-memory killer) or its
      SLURM job failed, the same command resuming the rest (:data:`IO_ERROR`)
2     a bad config value, flag or path, or a workdir in use: nothing was created
      (:data:`USAGE_ERROR`)
3     the loss or the gradient became non-finite; the last good checkpoint stays the
      resume point (:data:`NONFINITE_ERROR`)
130   interrupted (Ctrl-C); the same command resumes (:data:`INTERRUPTED`)
143   terminated (SIGTERM, or SIGUSR1: a scheduler's stop or preemption notice); the
      same command resumes (:data:`TERMINATED`, :mod:`tsm.stopping`)
====  ======================================================================

:func:`exit_code_map` says which exception types mean which status; :func:`exit_code`
looks one exception up. Only the standard library is imported here: the map imports
tsm's exception types when first asked, so a command can import this module before
JAX starts.
"""

from __future__ import annotations

import functools

OK = 0
IO_ERROR = 1
USAGE_ERROR = 2
NONFINITE_ERROR = 3
INTERRUPTED = 130
TERMINATED = 143


@functools.cache
def exit_code_map() -> tuple[tuple[tuple[type[BaseException], ...], int], ...]:
  """``((exception types, status), ...)``: the first row whose types match wins.

  The order matters where one type is a subclass of another: ``WorkdirIOError`` is an
  ``OSError``, ``history.Interrupted`` a ``KeyboardInterrupt``.
  """
  # pylint: disable=import-outside-toplevel
  from tsm import checkpoint, config, history, identity, workdir
  return (
      ((config.ConfigError, workdir.BadWorkdir, workdir.WorkdirBusy, workdir.DamagedRun,
        identity.OtherRun), USAGE_ERROR),
      ((workdir.WorkdirIOError, checkpoint.CheckpointError), IO_ERROR),
      ((history.NonFiniteError,), NONFINITE_ERROR),
      ((KeyboardInterrupt,), INTERRUPTED),   # history.Interrupted included
      ((OSError,), IO_ERROR),   # a write outside the checkpointer (a lost mount)
  )


def exit_code(error: BaseException) -> int | None:
  """The exit status for ``error`` (:func:`exit_code_map`), or None for an unforeseen
  error (which should end with its traceback)."""
  for types, status in exit_code_map():
    if isinstance(error, types):
      if status == INTERRUPTED and getattr(error, "signum", None) is not None:
        from tsm import stopping  # pylint: disable=import-outside-toplevel
        return stopping.exit_status(error.signum)   # 143 for SIGTERM / SIGUSR1
      return status
  return None
