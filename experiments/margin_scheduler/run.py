r"""Paper A's margin-scheduler study by one command.

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_mnist1d.py --workdir=runs/margin_study \
      [--config.study.seeds=3 --config.study.schedules=constant_0.2,dams ...]

Trains the config's model under every schedule of the study (constant margins, linear,
exponential and stepwise increase, DAMS, tsm's controller; see
:mod:`experiments.margin_scheduler.study`) for ``study.seeds`` seeds, each run in
``<workdir>/runs/<schedule>/seed<k>/`` (a full ``tsm.fit`` run directory plus
``effective_margins/`` and ``fit.log``), then writes the tables, verdicts and figures
(:mod:`experiments.margin_scheduler.report`) and prints the report. One progress line per
finished run.

Runs are spread over ``study.workers`` processes (forked after the data are loaded, so
they share it; ``study.xla_threads=1`` makes XLA single-threaded in each). The JAX
persistent compilation cache (``study.compilation_cache``) lets every run after the
first of each process load its compiled programs instead of compiling them: the margin
is a traced value and the schedule enters only the small end-of-epoch update, so one
train step, eval step and embedding program serve every schedule and seed. Its keys
hash the program, the XLA flags, the compile options and (through them) the cache's own
path, so only identical programs share an entry. A rerun with
the same workdir reuses finished runs (same config) and trains the missing ones, so an
interrupted study resumes; a changed config needs a new workdir.

A bad config value prints one line naming the field and exits with status 2.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
import time
from typing import Any, Sequence

from absl import logging

from experiments import common
from experiments.margin_scheduler import report
from experiments.margin_scheduler import study
from tsm import cli as cli_lib

USAGE_ERROR = cli_lib.USAGE_ERROR


def _set_compilation_cache(directory: str | None) -> dict[str, Any]:
  """Points JAX's persistent compilation cache at ``directory``; returns the old values."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  saved = common.use_compilation_cache(directory)
  if directory:
    compilation_cache.reset_cache()
  return saved


def _restore_compilation_cache(saved: dict[str, Any]) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _init_worker(cache_dir: str | None, xla_threads: int) -> None:
  """Pool initializer: XLA threads and the compilation cache, before any jax op."""
  if xla_threads == 1:
    flag = "--xla_cpu_multi_thread_eigen=false"
    current = os.environ.get("XLA_FLAGS", "")
    if flag not in current:
      os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
  _set_compilation_cache(cache_dir)
  logging.set_verbosity(logging.WARNING)


_STUDY_CONFIG = None   # the study config of a forked worker (set before the fork)
_STUDY_DIR = None


def _run_job(job: tuple[str, int]) -> dict[str, Any]:
  name, seed = job
  return study.run_one(_STUDY_CONFIG, _STUDY_DIR, name, seed)


def _progress(done: int, total: int, result: dict[str, Any], start: float) -> None:
  test = result["summary"].get("test", {})
  nan = float("nan")
  final = result["summary"].get("final_margin")
  took = "reused" if result["reused"] else f"{result['seconds']:.1f} s"
  study.log(f"[{done:>{len(str(total))}}/{total}] {result['schedule']:<14} seed "
            f"{result['seed']}  auc {test.get('auc', nan):.4f}  eer {test.get('eer', nan):.4f}"
            f"  acc {test.get('accuracy', nan):.4f}  final mu "
            f"{nan if final is None else final:.3f}  {took}  (elapsed "
            f"{time.time() - start:.0f} s)")


def _preload(cfg: Any, names: Sequence[str]) -> None:
  """Loads the dataset once (offline sets are cached per process; forks share it)."""
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tsm import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    data_lib.load(config_lib.data_spec(study.run_config(cfg, names[0], 0)), seed=0)
  except Exception:  # pylint: disable=broad-except  # fit reports data errors itself
    pass


def run_study(cfg: Any, workdir: str, *, command: str | None = None) -> str:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: the study config (a tsm config plus the ``study`` section).
    workdir: the study directory.
    command: the command line, shown in the report.

  Returns:
    The report's Markdown.

  Raises:
    tsm.config.ConfigError: a bad config value (before anything is created or run).
  """
  global _STUDY_CONFIG, _STUDY_DIR
  names = study.check_study(cfg)
  seeds = int(cfg.study.seeds)
  jobs = [(name, seed) for seed in range(seeds) for name in names]
  for name, seed in jobs:   # a run of another config in the workdir: fail before training
    study.finished(study.run_dir(workdir, name, seed), study.run_config(cfg, name, seed))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "study_config.json"), "w") as f:
    f.write(cfg.to_json(indent=1))
  cache = str(cfg.study.compilation_cache or "")
  cache_dir = os.path.join(workdir, "jax_cache") if cache == "auto" else (cache or None)
  workers = min(int(cfg.study.workers), len(jobs))
  start = time.time()
  _preload(cfg, names)
  results = []
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if workers > 1 and xla_bridge.backends_are_initialized():
    # Forking a process whose XLA runtime has started is unsafe (its threads are not
    # copied); a caller that already used JAX gets the runs in this process.
    study.log("JAX is already initialised in this process: running the runs here")
    workers = 1
  study.log(f"margin study: {len(names)} schedules x {seeds} seeds = {len(jobs)} runs, "
            f"{max(workers, 1)} process(es), workdir {workdir}")
  if workers <= 1:
    saved = _set_compilation_cache(cache_dir)
    try:
      for job in jobs:
        results.append(study.run_one(cfg, workdir, *job))
        _progress(len(results), len(jobs), results[-1], start)
    finally:
      _restore_compilation_cache(saved)
  else:
    # Fork: the workers share the loaded data and the imported modules.
    _STUDY_CONFIG, _STUDY_DIR = cfg, workdir
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker,
                  initargs=(cache_dir, int(cfg.study.xla_threads))) as pool:
      for result in pool.imap_unordered(_run_job, jobs, chunksize=1):
        results.append(result)
        _progress(len(results), len(jobs), result, start)
  wall = time.time() - start
  trained = [r for r in results if not r["reused"]]
  timing = {"wall_s": wall, "runs": len(results), "trained": len(trained),
            "workers": max(workers, 1),
            "mean_run_s": (sum(r["seconds"] for r in trained) / len(trained)
                           if trained else 0.0)}
  study.log(f"all runs done in {wall:.0f} s; writing the report")
  text = report.write_report(workdir, cfg, names, timing=timing, command=command)
  study.log(f"report: {os.path.join(workdir, 'report.md')}")
  return text


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  argv = list(sys.argv if argv is None else argv)
  cli = cli_lib.ConfigCommand(
      "margin study", "experiments/configs/margin_study_mnist1d.py", "runs/margin_study",
      config_help="Study config file (a .py with get_config()), e.g. "
      "experiments/configs/margin_study_mnist1d.py.",
      workdir_help="Study directory (created; finished runs in it are reused).")
  cli.parse(argv)
  cfg, workdir = cli.config, cli.workdir
  logging.set_verbosity(logging.WARNING)
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  command = "python -m experiments.margin_scheduler.run " + " ".join(
      shlex.quote(a) for a in argv[1:])
  try:
    text = run_study(cfg, workdir, command=command)
  except config_lib.ConfigError as e:
    cli.fail(str(e))
  print(text)


if __name__ == "__main__":
  main()
