"""Where a study's runs train: this machine's worker pool, or a SLURM cluster (submitit).

Every study has the same ``study.launcher`` field (:func:`launcher_fields`):

* ``"local"``: :func:`experiments.common.grid.run_grid`'s forked workers on this
  machine (``study.workers``). Not submitit's local executor: that starts a fresh
  interpreter per run, which loads the data and imports JAX again, where the forked
  workers share what the parent loaded;
* ``"slurm"``: one SLURM job per run, submitted as job arrays through submitit_
  (``study.slurm.*``: partition, GPUs and CPUs per task, memory, time limit, array
  parallelism). The study command waits for the jobs and writes the same report and
  ``study.json`` as a local study.

Both reuse the same finished runs (:func:`experiments.common.grid.finished`) and run the
same checks first. With SLURM:

* each job's stdout / stderr and submitit's pickles are in ``<workdir>/slurm/``
  (``<job id>_0_log.out`` / ``.err``, the job id ``<array id>_<index>``);
  ``<workdir>/slurm/jobs.json`` maps each run directory to its job id (array index ``i``
  = the ``i``-th unfinished run, in the study's order);
* a study command that is stopped (Ctrl-C, a closed session) leaves its jobs running; the
  same command again waits for those still queued or running, submits only the runs that
  are neither finished nor in the queue, and reuses the finished ones;
* a preempted or timed-out job (SLURM's ``--signal=USR2@<delay>``, submitit's hook) is
  requeued by submitit: the job's callable has a ``checkpoint`` method that resubmits the
  same run, and the run resumes from its run directory's last checkpoint
  (``tsm.config.train_and_evaluate`` resumes a run directory; see BUILD_NOTES.md, "Many
  machines").

Hand-written here, not in submitit: which runs are finished, which jobs are still in the
queue (``squeue``) and the ``jobs.json`` that lets a restarted command find them again;
submitit keeps no registry of past submissions.

.. _submitit: https://github.com/facebookincubator/submitit
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Sequence

import ml_collections

from experiments.common import grid

LAUNCHERS = ("local", "slurm")
LOG_FOLDER = "slurm"        # <workdir>/slurm: the jobs' logs and submitit's pickles
JOBS_FILE = "jobs.json"     # run directory -> SLURM job id
_POLL_S = 2.0
_GONE_GRACE_S = 30.0        # a job out of the queue may still be writing its result
_MISSING_SUBMITIT = ("study.launcher='slurm' needs submitit; install it with "
                     "pip install 'tsm[cluster]'.")


def launcher_fields() -> dict[str, Any]:
  """The ``study`` fields that choose where the runs train, with their defaults.

  Fields:
    launcher: ``"local"`` (this machine: ``study.workers`` forked processes) or
      ``"slurm"`` (one SLURM job per run, through submitit).
    slurm.partition: the partition (``""``: the cluster's default partition).
    slurm.gpus_per_task: GPUs per run (``--gpus-per-task``; 0 on a CPU partition).
    slurm.cpus_per_task: CPU cores per run (``--cpus-per-task``).
    slurm.mem_gb: memory per run in GB (``--mem``).
    slurm.timeout_min: time limit per job in minutes (``--time``); a run that needs
      longer is requeued from its checkpoint (at most ``slurm.max_timeouts`` times).
    slurm.array_parallelism: at most this many jobs of the study run at once
      (``--array=0-N%P``).
    slurm.signal_delay_s: SLURM signals a job this many seconds before its time limit
      (``--signal=USR2@...``), so that submitit requeues it.
    slurm.max_timeouts: requeues after a time-out before a job is given up (preemptions
      do not count).
    slurm.setup: shell lines run in each job before the run (``module load ...``).

  Returns:
    ``{"launcher": "local", "slurm": ConfigDict}``.
  """
  return {
      "launcher": "local",
      "slurm": ml_collections.ConfigDict({
          "partition": "",
          "gpus_per_task": 1,
          "cpus_per_task": 8,
          "mem_gb": 32,
          "timeout_min": 240,
          "array_parallelism": 32,
          "signal_delay_s": 120,
          "max_timeouts": 3,
          "setup": (),
      }),
  }


def check_launcher(section: Any) -> None:
  """Checks ``study.launcher`` and, for SLURM, ``study.slurm`` and the cluster.

  For ``"slurm"``: submitit is installed, ``sbatch`` is on PATH, and
  ``study.slurm.partition`` is one of the cluster's partitions (``sinfo``).

  Raises:
    StudyError: one line naming the field and the fix.
  """
  launcher = section.launcher
  if launcher not in LAUNCHERS:
    raise grid.StudyError(f"study.launcher={launcher!r} must be one of "
                          f"{', '.join(LAUNCHERS)}.")
  s = section.slurm
  known = set(launcher_fields()["slurm"].keys())
  unknown = sorted(set(s.keys()) - known)
  if unknown:
    raise grid.StudyError(f"study.slurm.{unknown[0]} is not a SLURM field; use one of "
                          f"{', '.join(sorted(known))}.")
  for field, minimum in (("gpus_per_task", 0), ("cpus_per_task", 1), ("timeout_min", 1),
                         ("array_parallelism", 1), ("signal_delay_s", 0),
                         ("max_timeouts", 0)):
    value = s[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise grid.StudyError(f"study.slurm.{field}={value!r} must be an integer >= "
                            f"{minimum}.")
  if isinstance(s.mem_gb, bool) or not isinstance(s.mem_gb, (int, float)) or not (
      s.mem_gb > 0):
    raise grid.StudyError(f"study.slurm.mem_gb={s.mem_gb!r} must be a number of GB > 0.")
  if not isinstance(s.partition, str):
    raise grid.StudyError(f"study.slurm.partition={s.partition!r} must be a partition "
                          "name or '' (the cluster's default).")
  if isinstance(s.setup, str) or not all(isinstance(x, str) for x in s.setup):
    raise grid.StudyError(f"study.slurm.setup={s.setup!r} must be a tuple of shell lines.")
  if launcher != "slurm":
    return
  try:
    import submitit  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise grid.StudyError(_MISSING_SUBMITIT) from None
  if shutil.which("sbatch") is None:
    raise grid.StudyError("study.launcher='slurm' needs SLURM's sbatch on PATH; run the "
                          "study on a machine of the cluster, or set study.launcher=local.")
  if s.partition:
    partitions = _partitions()
    if s.partition not in partitions:
      raise grid.StudyError(f"study.slurm.partition={s.partition!r} is not a partition of "
                            f"this cluster; use one of {', '.join(partitions)} (or '' for "
                            "the default).")


def _partitions() -> list[str]:
  """The cluster's partition names (``sinfo``); one-line StudyError when it fails."""
  try:
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                         timeout=60, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise grid.StudyError(f"study.launcher='slurm': sinfo failed ({e}); is SLURM "
                          "reachable from here?") from None
  if out.returncode != 0:
    first = (out.stderr.strip().splitlines() or ["no output"])[0]
    raise grid.StudyError(f"study.launcher='slurm': sinfo failed ({first}); is SLURM "
                          "reachable from here?")
  return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


def describe(section: Any, workers: int) -> str:
  """Where the runs train, in words (the study's first log line)."""
  if section.launcher == "slurm":
    s = section.slurm
    return (f"SLURM jobs (partition {s.partition or 'default'}, {s.gpus_per_task} GPU(s), "
            f"{s.cpus_per_task} CPUs, {s.mem_gb:g} GB, {s.timeout_min} min each, at most "
            f"{s.array_parallelism} at once)")
  return f"{workers} process(es)"


def run_jobs(section: Any, jobs: Sequence[Any], run_one: Callable[[Any], Any],
             workdir: str, *, workers: int, log: Callable[[str], None] = grid.log,
             progress: Callable[[Any], str] | None = None) -> list[Any]:
  """Runs ``run_one(job)`` for every job where ``study.launcher`` says.

  Args:
    section: the ``study`` section (``launcher``, ``slurm``, ``xla_threads``,
      ``compilation_cache``).
    jobs: the study's tasks: dicts with ``"rundir"`` and ``"config"`` (picklable).
    run_one: trains or reuses one task's run and returns its (picklable) record.
    workdir: the study directory.
    workers: processes of the local launcher.
    log: where progress lines go.
    progress: formats a record for its progress line.

  Returns:
    The records, in ``jobs``' order.
  """
  cache = grid.cache_directory(section.compilation_cache, workdir)
  if section.launcher == "local":
    return grid.run_grid(jobs, run_one, workers=workers,
                         xla_threads=int(section.xla_threads), compilation_cache=cache,
                         log=log, progress=progress)
  return run_slurm(jobs, run_one, os.path.join(workdir, LOG_FOLDER), section.slurm,
                   job=SlurmRun(run_one, cache, int(section.xla_threads)),
                   job_name=os.path.basename(os.path.abspath(workdir)), log=log,
                   progress=progress)


class SlurmRun:
  """The callable a SLURM job runs: ``run_one(task)`` in a fresh process set up as a
  grid worker is (``experiments.common.grid._init_worker``).

  Its :meth:`checkpoint` is submitit's preemption / time-out hook: called on
  ``USR2``, it returns the same call, which submitit requeues; the requeued job's
  ``run_one`` then resumes the run from the last checkpoint in its run directory.
  """

  def __init__(self, run_one: Callable[[Any], Any], cache_dir: str | None,
               xla_threads: int):
    self.run_one = run_one
    self.cache_dir = cache_dir
    self.xla_threads = xla_threads

  def __call__(self, task: Any) -> Any:
    grid._init_worker(self.cache_dir, self.xla_threads)  # pylint: disable=protected-access
    steps = checkpoint_steps(task["rundir"])
    grid.log(f"{task['rundir']}: " + (f"resuming from its checkpoint at step {steps[-1]}"
                                      if steps else "starting"))
    return self.run_one(task)

  def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
    """submitit's hook: requeue the same run (it resumes from its checkpoint)."""
    import submitit  # pylint: disable=import-outside-toplevel
    return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def checkpoint_steps(rundir: str) -> list[int]:
  """The steps of the checkpoints in ``<rundir>/checkpoints`` (orbax's step folders),
  in increasing order."""
  try:
    names = os.listdir(os.path.join(rundir, "checkpoints"))
  except OSError:
    return []
  return sorted(int(name) for name in names if name.isdigit())


def _queued(job_ids: Sequence[str]) -> set[str]:
  """The job ids among ``job_ids`` still pending, running or requeued (``squeue``)."""
  if not job_ids:
    return set()
  try:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return set(job_ids)   # SLURM unreachable for now: nothing is known to have left
  if out.returncode != 0 and "Invalid job id" not in out.stderr:
    return set(job_ids)
  return {line.strip() for line in out.stdout.splitlines()} & set(job_ids)


def _last_error_line(error: Exception) -> str:
  """The exception line of a failed job's traceback (submitit's ``FailedJobError``
  message: the job's traceback, then where the full logs are)."""
  text = str(error).split("You can check full logs", 1)[0]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _read_jobs(path: str) -> dict[str, str]:
  try:
    with open(path) as f:
      return dict(json.load(f))
  except (OSError, ValueError):
    return {}


def run_slurm(jobs: Sequence[Any], run_one: Callable[[Any], Any], folder: str,
              slurm: Any, *, job: Callable[[Any], Any], job_name: str,
              log: Callable[[str], None] = grid.log,
              progress: Callable[[Any], str] | None = None) -> list[Any]:
  """Runs the jobs on SLURM (one array job per submission, through submitit) and waits.

  Finished runs (:func:`experiments.common.grid.finished`) are reused here, by
  ``run_one``; a run whose job (``<folder>/jobs.json``) is still queued is waited for;
  the others are submitted as one job array.

  Args:
    jobs: the tasks (dicts with ``"rundir"`` and ``"config"``).
    run_one: reuses a finished task's run here.
    folder: the jobs' logs, submitit's pickles and ``jobs.json``.
    slurm: the ``study.slurm`` section.
    job: what each SLURM job runs on its task (:class:`SlurmRun`).
    job_name: the jobs' SLURM name.
    log: where progress lines go.
    progress: formats a record for its progress line.

  Returns:
    The records, in ``jobs``' order.

  Raises:
    SystemExit: 130 after Ctrl-C (the jobs keep running; the same command waits for
      them), 1 when jobs failed (one line: how many, the first error and its log).
  """
  import submitit  # pylint: disable=import-outside-toplevel
  jobs = list(jobs)
  fmt = progress or str
  start = time.time()
  results: list[Any] = [None] * len(jobs)
  done = 0

  def report(result: Any) -> None:
    nonlocal done
    done += 1
    log(f"[{done:>{len(str(len(jobs)))}}/{len(jobs)}] {fmt(result)}  (elapsed "
        f"{time.time() - start:.0f} s)")   # run_grid's progress line

  os.makedirs(folder, exist_ok=True)
  jobs_path = os.path.join(folder, JOBS_FILE)
  recorded = _read_jobs(jobs_path)
  pending: dict[int, Any] = {}   # job index -> submitit job
  to_submit: list[int] = []
  waiting = []
  for i, task in enumerate(jobs):
    if grid.finished(task["rundir"], task["config"]):
      results[i] = run_one(task)
      report(results[i])
    else:
      waiting.append(i)
  queued = _queued([recorded[jobs[i]["rundir"]] for i in waiting
                    if jobs[i]["rundir"] in recorded])
  for i in waiting:
    job_id = recorded.get(jobs[i]["rundir"])
    if job_id in queued:
      pending[i] = submitit.SlurmJob(folder=folder, job_id=job_id)
    else:
      to_submit.append(i)
  if pending:
    log(f"waiting for {len(pending)} job(s) already in SLURM's queue")
  if to_submit:
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(slurm.max_timeouts))
    executor.update_parameters(
        job_name=job_name, partition=slurm.partition or None,
        gpus_per_task=int(slurm.gpus_per_task) or None,
        cpus_per_task=int(slurm.cpus_per_task), mem=f"{int(slurm.mem_gb * 1024)}MB",
        time=int(slurm.timeout_min), array_parallelism=int(slurm.array_parallelism),
        signal_delay_s=int(slurm.signal_delay_s), setup=list(slurm.setup) or None,
        additional_parameters={"requeue": True})
    submitted = executor.map_array(job, [jobs[i] for i in to_submit])
    for i, sjob in zip(to_submit, submitted):
      pending[i] = sjob
      recorded[jobs[i]["rundir"]] = sjob.job_id
    from tsm import artifacts  # pylint: disable=import-outside-toplevel
    artifacts.write_json_atomic(jobs_path, recorded)
    log(f"submitted {len(to_submit)} job(s): array {submitted[0].job_id.split('_')[0]}, "
        f"logs in {folder}")
  failed: list[tuple[int, str]] = []

  def fail(i: int, sjob: Any, error: str) -> None:
    failed.append((i, error))
    log(f"job {sjob.job_id} ({jobs[i]['rundir']}) failed; log {sjob.paths.stderr}")

  try:
    gone: dict[int, float] = {}   # job index -> when it was first seen out of the queue
    while pending:
      # A job is over when it has left the queue (squeue): then its result file holds
      # its record or its exception (submitit writes both), or, when none comes, it was
      # killed. Not before: a preempted job's first attempt may leave an exception
      # there while its requeued attempt waits in the queue. (submitit's own watcher
      # asks sacct, which needs SLURM's accounting database.)
      queued = _queued([sjob.job_id for sjob in pending.values()])
      now = time.time()
      for i in [i for i, sjob in pending.items() if sjob.job_id not in queued]:
        sjob = pending[i]
        if sjob.paths.result_pickle.exists():
          del pending[i]
          try:
            results[i] = sjob.result()
          except Exception as e:  # pylint: disable=broad-except  # reported below, in one line
            fail(i, sjob, _last_error_line(e))
          else:
            report(results[i])
        elif now - gone.setdefault(i, now) > _GONE_GRACE_S:   # no result file came
          fail(i, pending.pop(i), "the job left SLURM's queue without a result "
               "(cancelled or killed)")
      if pending:
        time.sleep(_POLL_S)
  except KeyboardInterrupt:
    log(f"{grid.INTERRUPTED} (the SLURM jobs keep running; scancel stops them)")
    raise SystemExit(grid.INTERRUPTED_STATUS) from None
  if failed:
    i, error = failed[0]
    log(f"error: {len(failed)} of {len(jobs)} SLURM job(s) failed; the first "
        f"({jobs[i]['rundir']}): {error}; the same command resubmits them")
    raise SystemExit(1)
  return results
