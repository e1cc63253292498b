"""The grid every study runs on: jobs in worker processes, resumable, one error type.

A study is a list of jobs (one per arm and seed) and a function that trains (or reuses)
one job's run and returns a small, picklable record. :func:`run_grid` runs them:

* in ``workers`` processes forked after the caller has loaded the data (the children
  share it and the imported modules); ``workers <= 1`` runs them in this process;
* with JAX's persistent compilation cache (:func:`use_compilation_cache`): every run of
  a study compiles the same train / eval / embed programs (margins and seeds are traced
  values), so all but the first run of each process load them;
* with ``xla_threads=1`` each worker's XLA CPU runtime is single-threaded (the knob the
  stability check of the studies turns: see BUILD_NOTES.md);
* printing one progress line per finished job;
* on Ctrl-C, SIGTERM or SIGUSR1 (:mod:`tsm.stopping`): the workers are terminated, each
  checkpointing its current step before it ends (no orphan workers), one line
  ``interrupted; the same command resumes`` (``terminated; ...`` after SIGTERM or
  SIGUSR1) is printed, and the process exits with status 130 (143);
* when a worker dies (killed by the out-of-memory killer, a crash): the other workers
  are terminated the same way, one line ``error: a study worker was killed by signal 9
  (SIGKILL, ...) while running job k of n (...); the finished runs are kept and the same
  command resumes the rest`` is printed, and the process exits with status 1
  (:data:`WORKER_DIED_STATUS`, :data:`tsm.exit_codes.IO_ERROR`: a fault of the machine).

Finished runs are kept: :func:`finished` tells a study's ``run_one`` to reuse a run
directory whose ``config.json`` is the same run (:func:`tsm.config.check_same_run`) and
whose result files exist; :func:`check_runs` fails before any training when a run
directory holds another run.

The workers are this module's own small pool (:func:`_serve`): one pipe per worker, one
job at a time, each worker's end watched. ``multiprocessing.Pool`` silently replaces a
worker that dies and loses its job, so the study waits forever (CPython gh-66587), and
its ``terminate`` can block after such a death (a worker killed while it waited for a job
holds the task queue's lock); ``concurrent.futures.ProcessPoolExecutor`` reports a death
but does not say which worker died or how, and its worker loop catches the
``SystemExit`` of a worker stopped by SIGTERM and starts the next queued job.

Every bad study setting raises :class:`StudyError` (one line naming the field and the
fix). Everything here takes plain arguments; the studies' ``run.py`` read them from
their ``study`` sections (``study.workers``, ``study.xla_threads``,
``study.compilation_cache``).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import sys
import time
import warnings
from multiprocessing import connection as mp_connection
from multiprocessing import pool as mp_pool
from typing import Any, Callable, Iterator, Sequence

from tsm import cli as cli_lib

INTERRUPTED = "interrupted; the same command resumes"
INTERRUPTED_STATUS = cli_lib.INTERRUPTED
WORKER_DIED_STATUS = cli_lib.IO_ERROR
RESUMES_THE_REST = "the finished runs are kept and the same command resumes the rest"
CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")
_SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


class StudyError(ValueError):
  """A bad study setting; the message is one line naming the field and the fix."""


class WorkerDied(RuntimeError):
  """A grid worker process ended before the grid was done; the message is one line
  saying how, in which job, and what to do."""


def log(message: str) -> None:
  """A progress line on stdout (flushed: the studies' only console output)."""
  print(message, file=sys.stdout, flush=True)


def use_compilation_cache(directory: str | None) -> dict[str, Any]:
  """Points JAX's persistent compilation cache at ``directory``, caching every program.

  Args:
    directory: the cache directory; None or ``""`` leaves JAX's settings alone.

  Returns:
    The previous values of :data:`CACHE_OPTIONS` (for :func:`restore_compilation_cache`).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  saved = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()   # re-read the settings at the next compile
  return saved


def restore_compilation_cache(saved: dict[str, Any]) -> None:
  """Undoes :func:`use_compilation_cache`."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def cache_directory(setting: str | None, workdir: str) -> str | None:
  """The cache directory of a ``study.compilation_cache`` value.

  ``"auto"`` is ``<workdir>/jax_cache``, ``""`` / None is off, anything else a path.
  """
  setting = "" if setting is None else str(setting)
  if setting == "auto":
    return os.path.join(workdir, "jax_cache")
  return setting or None


def finished(run_dir: str, config: Any, required: Sequence[str] = ("summary.json",)
             ) -> bool:
  """Whether ``run_dir`` holds a finished run of ``config`` (reuse it).

  Args:
    run_dir: a run directory (may not exist).
    config: the run's tsm config.
    required: files a finished run has written.

  Returns:
    True when every ``required`` file exists (and the saved config is the same run).

  Raises:
    tsm.config.ConfigError: the directory holds a run of another config (one line
      naming the first differing field).
  """
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  config_lib.check_same_run(run_dir, config)
  return all(os.path.exists(os.path.join(run_dir, name)) for name in required)


def check_runs(runs: Sequence[tuple[str, Any]]) -> None:
  """Fails before any training when a run directory holds a run of another config.

  Args:
    runs: ``(run directory, run config)`` of every run of the study.

  Raises:
    StudyError: one line naming the directory and the first differing field.
  """
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  for run_dir, config in runs:
    try:
      config_lib.check_same_run(run_dir, config)
    except config_lib.ConfigError as e:
      raise StudyError(str(e)) from None


def stopped(error: BaseException, log: Callable[[str], None] = log  # pylint: disable=redefined-outer-name
            ) -> SystemExit:
  """Logs a study's one stop line for a signal's ``KeyboardInterrupt`` (``interrupted;
  the same command resumes``, or ``terminated; ...`` after SIGTERM / SIGUSR1) and
  returns the ``SystemExit`` of its status (130, or 143)."""
  from tsm import exit_codes  # pylint: disable=import-outside-toplevel
  log(f"{cli_lib.stopped_word(error)}; the same command resumes")
  return SystemExit(exit_codes.exit_code(error) or INTERRUPTED_STATUS)


# The forked workers' job function (set in the parent just before the fork).
_RUN_ONE: Callable[[Any], Any] | None = None


def _exit_worker(signum: int) -> None:
  """A worker's stop outside the fit loop's steps: a quiet exit (the parent reports)."""
  from tsm import stopping  # pylint: disable=import-outside-toplevel
  raise SystemExit(stopping.exit_status(signum))


def _init_worker(cache_dir: str | None, xla_threads: int) -> None:
  """A worker's set-up (:func:`_serve`; a SLURM job's too): Ctrl-C goes to the parent
  only; SIGTERM (the parent's, or a scheduler's) and SIGUSR1 checkpoint the current step
  (:mod:`tsm.stopping`) and end the worker quietly; XLA threads; the cache."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent terminates the workers
  from tsm import stopping  # pylint: disable=import-outside-toplevel
  stopping.install(on_first=cli_lib.silence_background_threads, outside=_exit_worker)
  if xla_threads == 1:
    current = os.environ.get("XLA_FLAGS", "")
    if _SINGLE_THREAD_FLAG not in current:
      os.environ["XLA_FLAGS"] = f"{current} {_SINGLE_THREAD_FLAG}".strip()
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)   # a worker of the study command: orbax's INFO off
  from tsm import checkpoint  # pylint: disable=import-outside-toplevel
  checkpoint.quiet_orbax()   # a worker of the study command: failures are one line each
  if cache_dir:
    use_compilation_cache(cache_dir)


def _jax_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  return xla_bridge.backends_are_initialized()


def run_grid(jobs: Sequence[Any], run_one: Callable[[Any], Any], *, workers: int = 1,
             xla_threads: int = 0, compilation_cache: str | None = None,
             log: Callable[[str], None] = log,  # pylint: disable=redefined-outer-name
             progress: Callable[[Any], str] | None = None) -> list[Any]:
  """Runs ``run_one(job)`` for every job; returns the results in the jobs' order.

  Args:
    jobs: picklable job descriptions (e.g. ``(arm, seed)``).
    run_one: trains or reuses one job's run (see :func:`finished`) and returns a
      picklable record. With ``workers > 1`` it runs in forked children, so the caller
      should load the data before calling (the children share it).
    workers: processes; ``<= 1`` (or a caller whose JAX runtime has started: forking
      it is unsafe) runs every job in this process.
    xla_threads: ``1`` makes each worker's XLA CPU runtime single-threaded; ``0``
      keeps XLA's default. Only applies to forked workers (a started runtime keeps its
      threads).
    compilation_cache: JAX persistent compilation cache directory (None: unchanged).
    log: where progress lines go.
    progress: formats a finished job's record for its progress line (default
      ``str``).

  Returns:
    ``[run_one(job) for job in jobs]``.

  Raises:
    SystemExit: status 130 after Ctrl-C, 143 after SIGTERM or SIGUSR1 (the workers
      terminated, :func:`stopped`'s line logged); status 1 (:data:`WORKER_DIED_STATUS`)
      when a worker died (the other workers terminated, the :class:`WorkerDied` line
      logged with ``error: `` before it).
    Exception: whatever ``run_one`` raised (the workers terminated).
  """
  if xla_threads not in (0, 1):
    raise ValueError(f"xla_threads={xla_threads!r} must be 0 (XLA's default threads) or "
                     "1 (single-threaded XLA CPU runtime).")
  jobs = list(jobs)
  fmt = progress or str
  width = len(str(len(jobs)))
  start = time.time()
  workers = min(int(workers), len(jobs))
  if workers > 1 and _jax_started():
    log("JAX is already initialised in this process: running the runs here")
    workers = 1

  def report(done: int, result: Any) -> None:
    log(f"[{done:>{width}}/{len(jobs)}] {fmt(result)}  (elapsed "
        f"{time.time() - start:.0f} s)")

  from tsm import stopping  # pylint: disable=import-outside-toplevel
  try:
    with stopping.handle_signals(on_first=cli_lib.silence_background_threads):
      if workers <= 1:
        return _run_here(jobs, run_one, compilation_cache, report)
      return _run_forked(jobs, run_one, workers, xla_threads, compilation_cache, report)
  except KeyboardInterrupt as e:
    raise stopped(e, log) from None
  except WorkerDied as e:
    log(f"error: {e}")
    raise SystemExit(WORKER_DIED_STATUS) from None


def _run_here(jobs: list[Any], run_one: Callable[[Any], Any], compilation_cache: str | None,
              report: Callable[[int, Any], None]) -> list[Any]:
  """:func:`run_grid`'s work in this process."""
  results: list[Any] = []
  saved = use_compilation_cache(compilation_cache)
  try:
    for job in jobs:
      results.append(run_one(job))
      report(len(results), results[-1])
  finally:
    restore_compilation_cache(saved)
  return results


def _run_forked(jobs: list[Any], run_one: Callable[[Any], Any], workers: int,
                xla_threads: int, compilation_cache: str | None,
                report: Callable[[int, Any], None]) -> list[Any]:
  """:func:`run_grid`'s work in ``workers`` forked processes (:func:`_serve`), one job
  at a time each, in the jobs' order. On a stop signal, an error of a job or a dead
  worker, the living workers are terminated (SIGTERM: each checkpoints its step and
  ends, :mod:`tsm.stopping`) and joined before the exception goes on.

  Raises:
    WorkerDied: a worker ended before the grid was done.
  """
  global _RUN_ONE
  ctx = multiprocessing.get_context("fork")
  results: list[Any] = [None] * len(jobs)
  todo = collections.deque(range(len(jobs)))
  running: dict[int, int] = {}   # worker -> the job it runs
  procs: list[multiprocessing.process.BaseProcess] = []
  conns: list[mp_connection.Connection] = []

  def give(w: int) -> None:
    if todo:
      running[w] = todo.popleft()
      try:
        conns[w].send((running[w], jobs[running[w]]))
      except (BrokenPipeError, ConnectionResetError):
        pass   # it has just died: its sentinel says how

  _RUN_ONE = run_one
  try:
    for _ in range(workers):
      conn, child_end = ctx.Pipe()
      # The child closes the parent's ends it inherits: it sees EOF if the parent dies.
      proc = ctx.Process(target=_serve, daemon=True, args=(
          child_end, [*conns, conn], compilation_cache, int(xla_threads)))
      proc.start()
      child_end.close()
      procs.append(proc)
      conns.append(conn)
    for w in range(workers):
      give(w)
    done = 0
    while done < len(jobs):
      ready = mp_connection.wait([conns[w] for w in running]
                                 + [proc.sentinel for proc in procs])
      dead = [w for w, proc in enumerate(procs) if proc.sentinel in ready]
      for w in [w for w in running if conns[w] in ready]:
        try:
          i, ok, value = conns[w].recv()
        except EOFError:   # it died (its process may not have ended yet)
          dead.append(w)
          continue
        del running[w]
        if not ok:
          raise value   # run_one's error, its worker's traceback as its cause
        results[i] = value
        done += 1
        report(done, value)
        give(w)
      if dead and done < len(jobs):
        w = dead[0]
        procs[w].join()
        raise WorkerDied(_died_line(procs[w].exitcode, running.get(w), jobs))
    for conn in conns:
      with contextlib.suppress(OSError):   # a worker that died after its last job
        conn.send(None)
    for proc in procs:
      proc.join()
  finally:
    for proc in procs:   # a stop signal, an error or a dead worker: each living worker
      if proc.exitcode is None:   # checkpoints its step and ends (SIGTERM,
        proc.terminate()          # tsm.stopping); no orphans
    for proc in procs:
      proc.join()
    for conn in conns:
      conn.close()
    _RUN_ONE = None
  return results


def _serve(conn: mp_connection.Connection, inherited: list[mp_connection.Connection],
           cache_dir: str | None, xla_threads: int) -> None:
  """A forked worker's life: :func:`_init_worker`, then each ``(index, job)`` the parent
  sends answered with ``(index, True, record)`` or ``(index, False, exception)``,
  until ``None`` (or the parent's end closes). A stop signal ends it with
  ``SystemExit`` (quietly; a running job checkpoints its step first)."""
  for other in inherited:   # the parent's ends of the pipes: only the parent keeps them
    other.close()
  _init_worker(cache_dir, xla_threads)
  while True:
    try:
      item = conn.recv()
    except EOFError:   # the parent is gone
      return
    if item is None:
      return
    i, job = item
    try:
      answer = (i, True, _RUN_ONE(job))
    except KeyboardInterrupt as e:   # stopped by a signal, its step checkpointed
      _exit_worker(getattr(e, "signum", signal.SIGTERM))
    except Exception as e:  # pylint: disable=broad-except  # raised again in the parent
      answer = (i, False, mp_pool.ExceptionWithTraceback(e, e.__traceback__))
    try:
      conn.send(answer)
    except BrokenPipeError:   # the parent is gone
      return
    except Exception as e:  # pylint: disable=broad-except  # a record pickle cannot send
      conn.send((i, False, mp_pool.MaybeEncodingError(e, answer[2])))


def _died_line(exitcode: int, job: int | None, jobs: Sequence[Any]) -> str:
  """:class:`WorkerDied`'s line: how a worker ended (its process's exit code), in which
  job (and run directory, for a study's task dicts), and what to do."""
  if exitcode < 0:
    signum = -exitcode
    hint = ", often the out-of-memory killer: lower study.workers"
    how = (f"was killed by signal {signum} ({signal.Signals(signum).name}"
           f"{hint if signum == signal.SIGKILL else ''})")
  else:
    how = f"exited with status {exitcode}"
  if job is None:
    return f"a study worker {how} between jobs; {RESUMES_THE_REST}"
  tasks = jobs[job] if isinstance(jobs[job], list) else [jobs[job]]
  rundirs = [t["rundir"] for t in tasks if isinstance(t, dict) and "rundir" in t]
  where = f"job {job + 1} of {len(jobs)}"
  if rundirs:
    more = f" and {len(rundirs) - 1} more" if len(rundirs) > 1 else ""
    where += f" ({rundirs[0]}{more})"
  return f"a study worker {how} while running {where}; {RESUMES_THE_REST}"


@contextlib.contextmanager
def study_lock(workdir: str) -> Iterator[None]:
  """Creates ``workdir`` (one-line errors for a bad path) and holds the lock ``tsm-train``
  takes, so one study runs per workdir; each run directory inside is locked by its own
  ``tsm.config.train_and_evaluate`` (``tsm.fit.run_directory``). Take it after the config has been validated: a bad config creates nothing."""
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  workdir_lib.prepare_workdir(workdir)
  with workdir_lib.WorkdirLock(workdir):
    yield


class BoundRunOne:
  """A grid's ``run_one``: a study's ``run_one(task, settings)`` with its settings (the
  study config or its ``study`` section) bound (picklable, fork-shared), quiet about
  the compilation cache's benign race: two workers compiling the same program may both
  write its cache entry, and one can read the other's half-written file, which JAX
  reports and then compiles again."""

  def __init__(self, run_one: Callable[[Any, Any], Any], settings: Any):
    self.run_one = run_one
    self.settings = settings

  def __call__(self, task: Any) -> Any:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="Error reading persistent compilation "
                              "cache", category=UserWarning)
      return self.run_one(task, self.settings)
