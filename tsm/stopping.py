"""Stopping a run on a signal: Ctrl-C, a scheduler's SIGTERM, a preemption notice.

A batch scheduler stops a job with SIGTERM and kills it a grace period later (SLURM's
``KillWait``, Kubernetes' ``terminationGracePeriodSeconds``); SLURM's ``--signal=USR1@T``
sends SIGUSR1 ``T`` seconds before the time limit; a user presses Ctrl-C (SIGINT). A
command calls :func:`handle_signals` around its work; then each of the three signals
is handled the same way:

* inside a :func:`deferred` block (the fit loop's steps and epochs), the signal is only
  recorded; the loop asks :func:`requested` after every step, writes a checkpoint of that
  step and raises ``tsm.history.Interrupted`` (one line ``interrupted at step N; ...``
  or ``terminated at step N; ...``), so the same command resumes from exactly that step;
* anywhere else (loading data, compiling, the final evaluation) it raises
  :class:`Stop`, a ``KeyboardInterrupt``, at once: the last checkpoint is the resume
  point.

A second Ctrl-C while a stop is pending stops at once (a user who does not want to wait
for the step); a repeated SIGTERM or SIGUSR1 is ignored (SLURM signals every process of a
job step, and a study's parent signals its workers too: the first one already asked for
the checkpoint). The command's exit status is 130 after SIGINT and 143 after SIGTERM or
SIGUSR1 (:data:`tsm.exit_codes.TERMINATED`).

Only the standard library is imported here. A signal handler is process-wide state, so
the library never installs one: ``tsm-train``, ``tsm-embed`` and the study commands do;
a script of one's own may (``with tsm.stopping.handle_signals(): tsm.fit.fit(...)``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

# The signals that stop a run: Ctrl-C, a scheduler's stop, a preemption notice.
SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                            getattr(signal, "SIGUSR1", None)) if s is not None)


class Stop(KeyboardInterrupt):
  """Raised by the handler outside a :func:`deferred` block.

  Attributes:
    signum: the signal received.
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


class _State:
  deferring = 0               # open deferred() blocks
  pending: int | None = None  # the signal recorded inside one


def requested() -> int | None:
  """The signal recorded inside a :func:`deferred` block and not yet acted on, or None."""
  return _State.pending


def clear() -> None:
  """Forgets a recorded signal (the loop calls it once it has acted on it)."""
  _State.pending = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """While the block runs, a handled signal is recorded (see :func:`requested`) instead
  of raising; the block polls it where stopping is safe. Nestable."""
  _State.deferring += 1
  try:
    yield
  finally:
    _State.deferring -= 1


def is_handled() -> bool:
  """Whether the stop handler of :func:`handle_signals` is installed for SIGTERM."""
  return getattr(signal.getsignal(signal.SIGTERM), "tsm_stop_handler", False)


def _handler(on_first: Callable[[], None] | None,
             outside: Callable[[int], None] | None = None) -> Callable[[int, Any], None]:
  def handle(signum: int, frame: Any) -> None:
    del frame
    if _State.pending is None and on_first is not None:
      on_first()
    if _State.pending is not None:
      if signum == signal.SIGINT:   # Ctrl-C again: the user does not want to wait
        raise Stop(signum)
      return                        # a repeated scheduler signal: already asked for
    if _State.deferring:
      _State.pending = signum
      return
    if outside is not None:
      outside(signum)
    raise Stop(signum)

  handle.tsm_stop_handler = True
  return handle


@contextlib.contextmanager
def handle_signals(on_first: Callable[[], None] | None = None) -> Iterator[None]:
  """Installs the stop handler for SIGINT, SIGTERM and SIGUSR1 while the block runs.

  Only signals whose handler is the default one are taken (an ignored SIGINT, e.g. of a
  shell's background job, stays ignored); the previous handlers are put back at the end.
  Outside the main thread it does nothing (Python delivers signals to the main thread).

  Args:
    on_first: called at the first signal, before anything else (a command silences its
      libraries' background threads there, which fail noisily while the process stops).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = install(on_first)
  _State.pending = None
  try:
    yield
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)
    _State.pending = None


def install(on_first: Callable[[], None] | None = None,
            outside: Callable[[int], None] | None = None) -> dict[int, Any]:
  """Installs the stop handler for those of SIGINT, SIGTERM and SIGUSR1 that have their
  default handler (for a process's whole life, e.g. a study's worker); returns the
  replaced handlers ``{signum: handler}``. Call it from the main thread.

  Args:
    on_first: see :func:`handle_signals`.
    outside: called with the signal instead of raising :class:`Stop` outside a deferred
      block (a worker process raises ``SystemExit`` there, which ends it quietly).
  """
  handler = _handler(on_first, outside)
  previous = {}
  for signum in SIGNALS:
    current = signal.getsignal(signum)
    default = (signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    if current is default or getattr(current, "tsm_stop_handler", False):
      previous[signum] = signal.signal(signum, handler)
  return previous


def exit_status(signum: int) -> int:
  """128 + 2 (130) for SIGINT; 143 (SIGTERM's) for SIGTERM and SIGUSR1, which both mean
  "the scheduler is stopping this job"."""
  return 130 if signum == signal.SIGINT else 128 + int(signal.SIGTERM)
