"""The studies' shared layer (experiments/common): order, workers, reuse, Ctrl-C, --help.

The forking checks run in a fresh interpreter (a test process whose JAX runtime has
started must not fork, and run_grid then falls back to one process by design).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.common import grid as runner
from experiments.common import timing
from experiments.loss_comparison import run as loss_run
from experiments.loss_zoo import run as zoo_run
from experiments.margin_scheduler import run as margin_run
from tsm import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, **kwargs) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)


def test_in_process_results_keep_the_jobs_order_and_log_one_line_each():
  lines = []
  out = runner.run_grid([3, 1, 2], lambda x: x * 10, workers=1, log=lines.append,
                        progress=lambda r: f"got {r}")
  assert out == [30, 10, 20]
  assert [line.split("  (elapsed")[0] for line in lines] == [
      "[1/3] got 30", "[2/3] got 10", "[3/3] got 20"]


def test_bad_xla_threads_is_one_line():
  with pytest.raises(ValueError, match="xla_threads=2") as e:
    runner.run_grid([1], str, xla_threads=2)
  assert "\n" not in str(e.value)


def test_cache_directory_setting():
  assert runner.cache_directory("auto", "w") == os.path.join("w", "jax_cache")
  assert runner.cache_directory("", "w") is None
  assert runner.cache_directory(None, "w") is None
  assert runner.cache_directory("/c", "w") == "/c"


def test_finished_reuses_only_a_same_config_run_with_its_files(tmp_path):
  cfg = config_lib.default_config()
  run_dir = str(tmp_path / "run")
  assert not runner.finished(run_dir, cfg)   # nothing there
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(config_lib.to_json(cfg), f)
  assert not runner.finished(run_dir, cfg)   # started, not finished
  open(os.path.join(run_dir, "summary.json"), "w").close()
  assert runner.finished(run_dir, cfg)
  assert not runner.finished(run_dir, cfg, ("summary.json", "pairs.npz"))
  cfg.train.progress = False   # a run-control field may differ
  assert runner.finished(run_dir, cfg)
  cfg.train.learning_rate = 0.5
  with pytest.raises(config_lib.ConfigError, match="train.learning_rate") as e:
    runner.finished(run_dir, cfg)
  assert "\n" not in str(e.value)


def test_workers_are_forked_processes_and_results_keep_the_order():
  proc = _python("""
      import os
      from experiments.common import grid as runner
      parent = os.getpid()
      out = runner.run_grid(list(range(6)), lambda j: (j, os.getpid()), workers=2,
                            log=lambda line: None)
      assert [j for j, _ in out] == list(range(6)), out
      pids = {p for _, p in out}
      assert parent not in pids and 1 <= len(pids) <= 2, (parent, pids)
      print("ok")
  """)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert out.strip() == "ok"


def test_ctrl_c_terminates_the_workers_and_exits_130(tmp_path):
  pids = tmp_path / "pids"
  pids.mkdir()
  # A shell's background jobs start with SIGINT ignored, and Python then installs no
  # KeyboardInterrupt handler: restore it, as an interactive terminal would have it.
  proc = _python(f"""
      import os, signal, time
      signal.signal(signal.SIGINT, signal.default_int_handler)
      from experiments.common import grid as runner
      def job(j):
        open(os.path.join({str(pids)!r}, str(os.getpid())), "w").close()
        time.sleep(60)
      runner.run_grid(list(range(4)), job, workers=2)
  """)
  deadline = time.time() + 60
  while len(os.listdir(pids)) < 2 and time.time() < deadline:
    time.sleep(0.1)
  workers = [int(p) for p in os.listdir(pids)]
  assert len(workers) == 2
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == runner.INTERRUPTED_STATUS
  assert out.strip().splitlines()[-1] == runner.INTERRUPTED
  for pid in workers:   # terminated and reaped: no orphan left
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_sigterm_terminates_the_workers_quietly_and_exits_143(tmp_path):
  pids = tmp_path / "pids"
  pids.mkdir()
  proc = _python(f"""
      import os, time
      from experiments.common import grid as runner
      def job(j):
        open(os.path.join({str(pids)!r}, str(os.getpid())), "w").close()
        time.sleep(60)
      runner.run_grid(list(range(4)), job, workers=2)
  """)
  deadline = time.time() + 60
  while len(os.listdir(pids)) < 2 and time.time() < deadline:
    time.sleep(0.1)
  workers = [int(p) for p in os.listdir(pids)]
  assert len(workers) == 2
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err
  assert out.strip().splitlines()[-1] == "terminated; the same command resumes"
  assert err == ""   # the workers ended quietly (no "Process ForkPoolWorker" tracebacks)
  for pid in workers:   # terminated and reaped: no orphan left
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


# A job function of the dead-worker checks: "a" and "b" train at once, "long" trains
# until stopped (checkpointing its step as the fit loop does), "kill" dies by SIGKILL
# (as by the out-of-memory killer) once "long" runs; a rerun resumes or reuses each.
_JOBS = """
    import os, signal, time
    from experiments.common import grid as runner
    from tsm import stopping
    W = {work!r}
    def path(name):
      return os.path.join(W, name)
    def job(name):
      if os.path.exists(path(name + ".done")):
        return name + " reused"
      if name == "long":
        if os.path.exists(path("long.ckpt")):
          return f"long resumed at step {{open(path('long.ckpt')).read()}}"
        with stopping.deferred():   # a signal is only recorded, as in the fit loop
          open(path("long.pid"), "w").write(str(os.getpid()))
          for step in range(1, 1200):
            time.sleep(0.05)
            if stopping.requested():
              open(path("long.ckpt"), "w").write(str(step))
              raise stopping.Stop(stopping.requested())
      if name == "kill" and {kill!r}:
        while not os.path.exists(path("long.pid")):
          time.sleep(0.05)
        open(path("kill.pid"), "w").write(f"{{os.getpid()}} {{time.time()}}")
        os.kill(os.getpid(), signal.SIGKILL)
      open(path(name + ".done"), "w").close()
      return name + " trained"
    try:
      print(runner.run_grid(["a", "long", "kill", "b"], job, workers=2))
    finally:
      open(path("end"), "w").write(str(time.time()))
"""


def _run_jobs(work, kill: bool) -> tuple[int, str, str]:
  proc = _python(_JOBS.format(work=str(work), kill=kill))
  try:
    out, err = proc.communicate(timeout=180)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    pytest.fail("run_grid did not end after its worker was killed")
  return proc.returncode, out, err


def test_a_killed_worker_stops_the_grid_at_once_and_the_rerun_resumes_the_rest(tmp_path):
  code, out, err = _run_jobs(tmp_path, kill=True)
  assert code == runner.WORKER_DIED_STATUS == 1, err
  lines = [line.split("  (elapsed")[0] for line in out.strip().splitlines()]
  assert lines == [
      "[1/4] a trained",
      "error: a study worker was killed by signal 9 (SIGKILL, often the out-of-memory "
      "killer: lower study.workers) while running job 3 of 4; the finished runs are kept "
      "and the same command resumes the rest"]
  assert err == ""   # the other worker ended quietly
  pid, killed_at = open(tmp_path / "kill.pid").read().split()
  assert float(open(tmp_path / "end").read()) - float(killed_at) < 30
  assert int(open(tmp_path / "long.ckpt").read()) >= 1   # "long" checkpointed its step
  assert sorted(p.name for p in tmp_path.glob("*.done")) == ["a.done"]   # "b" never began
  for worker in (int(pid), int(open(tmp_path / "long.pid").read())):
    with pytest.raises(ProcessLookupError):   # both ended and reaped: no orphan
      os.kill(worker, 0)
  code, out, err = _run_jobs(tmp_path, kill=False)   # the same command again
  assert code == 0, err
  step = int(open(tmp_path / "long.ckpt").read())
  assert out.strip().splitlines()[-1] == str(
      ["a reused", f"long resumed at step {step}", "kill trained", "b trained"])


def test_an_error_in_a_job_reaches_the_caller_and_ends_the_other_worker(tmp_path):
  proc = _python(f"""
      import os, time
      from experiments.common import grid as runner
      def job(j):
        if j == 1:
          while not os.path.exists(os.path.join({str(tmp_path)!r}, "0")):
            time.sleep(0.05)
          raise ValueError("job 1 is bad")
        open(os.path.join({str(tmp_path)!r}, str(j)), "w").write(str(os.getpid()))
        time.sleep(60)
      try:
        runner.run_grid(list(range(4)), job, workers=2, log=print)
      except ValueError as e:
        print(repr(e), "job 1 is bad" in str(e.__cause__), ", in job" in str(e.__cause__))
  """)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert out.strip().splitlines() == ["ValueError('job 1 is bad') True True"]
  assert os.listdir(tmp_path) == ["0"]   # jobs 2 and 3 never began
  with pytest.raises(ProcessLookupError):   # the worker of job 0 ended: no orphan
    os.kill(int(open(tmp_path / "0").read()), 0)


def test_a_dead_workers_line_says_how_it_ended_and_in_which_run():
  tasks = [{"rundir": "w/a"}, [{"rundir": "w/b0"}, {"rundir": "w/b1"}, {"rundir": "w/b2"}],
           ("c", 1)]
  rest = "; the finished runs are kept and the same command resumes the rest"
  assert runner._died_line(-9, 0, tasks) == (  # pylint: disable=protected-access
      "a study worker was killed by signal 9 (SIGKILL, often the out-of-memory killer: "
      "lower study.workers) while running job 1 of 3 (w/a)" + rest)
  assert runner._died_line(-11, 1, tasks) == (  # pylint: disable=protected-access
      "a study worker was killed by signal 11 (SIGSEGV) while running job 2 of 3 (w/b0 and "
      "2 more)" + rest)
  assert runner._died_line(3, 2, tasks) == (  # pylint: disable=protected-access
      "a study worker exited with status 3 while running job 3 of 3" + rest)
  assert runner._died_line(143, None, tasks) == (  # pylint: disable=protected-access
      "a study worker exited with status 143 between jobs" + rest)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
@pytest.mark.parametrize("main,command", [
    (margin_run.main, "python -m experiments.margin_scheduler.run"),
    (loss_run.main, "python -m experiments.loss_comparison.run"),
    (zoo_run.main, "python -m experiments.loss_zoo.run"),
])
def test_help_prints_the_usage(main, command, capsys):
  with pytest.raises(SystemExit) as e:
    main(["run", "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert command in out and "--config" in out and "--workdir" in out
  assert "study.epochs" in out   # the shared epoch knob is documented in each


STUDIES = ("margin_scheduler", "loss_comparison", "loss_zoo")


def test_every_study_has_the_same_file_roles_and_fields():
  for package in STUDIES:
    for role in ("study.py", "run.py", "report.py"):
      assert os.path.exists(os.path.join(ROOT, "experiments", package, role)), (package,
                                                                              role)
  from experiments.common import grid  # pylint: disable=import-outside-toplevel
  from experiments.loss_comparison import study as loss_study
  from experiments.loss_zoo import study as zoo_study
  from experiments.margin_scheduler import study as margin_study
  from experiments.common import runs  # pylint: disable=import-outside-toplevel
  shared = set(runs.grid_fields(seeds=1)) | {"datasets", "em_triplets"}
  assert {"seeds", "epochs", "vary_data", "workers", "xla_threads", "compilation_cache",
          "compare_to", "launcher", "slurm"} <= shared
  assert shared <= set(margin_study.study_section(("digits",)).keys())
  assert shared <= set(loss_study.study_section(()).keys())
  assert shared <= set(zoo_study.study_section(()).keys())
  for module in (margin_study, loss_study, zoo_study):
    assert module.StudyError is grid.StudyError


def test_no_study_imports_another_study():
  import ast  # pylint: disable=import-outside-toplevel
  for package in STUDIES:
    folder = os.path.join(ROOT, "experiments", package)
    for name in os.listdir(folder):
      if not name.endswith(".py"):
        continue
      with open(os.path.join(folder, name)) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for imported in names:
          for other in STUDIES:
            if other != package:
              assert not imported.startswith(f"experiments.{other}"), (package, name,
                                                                       imported)


def test_a_compared_table_reads_as_its_own_verdicts():
  from experiments.common import verdicts as verdicts_lib  # pylint: disable=import-outside-toplevel
  assert verdicts_lib.own_verdict("held") == "held"
  assert verdicts_lib.own_verdict(
      "unstable (contradicted here / inconclusive in the rerun)") == "contradicted"


def test_study_timing_sums_training_invocations_and_ignores_report_rebuilds(tmp_path):
  workdir = str(tmp_path)
  first = timing.study_timing(workdir, seconds=100.0, runs=5, trained=3, workers=2,
                              xla_threads=0)
  assert (first["wall_s"], first["trained"], first["invocations"]) == (100.0, 3, 1)
  # Resumed after an interruption: the remaining 2 runs in 50 s.
  resumed = timing.study_timing(workdir, seconds=50.0, runs=5, trained=2, workers=2,
                                xla_threads=1)
  assert (resumed["wall_s"], resumed["trained"], resumed["invocations"]) == (150.0, 5, 2)
  assert resumed["xla_threads"] == 1          # the last training invocation's settings
  # The report rebuilt: nothing trained, the study's timing unchanged.
  rebuilt = timing.study_timing(workdir, seconds=2.0, runs=5, trained=0, workers=2,
                                xla_threads=0)
  assert rebuilt == resumed
  line = timing.timing_line(rebuilt)
  assert line.startswith("wall time 150 s for 5 runs (5 trained, over 2 invocations)")
  with open(os.path.join(workdir, timing.TIMING_FILE)) as f:
    assert [h["seconds"] for h in json.load(f)["invocations"]] == [100.0, 50.0, 2.0]


def test_study_timing_starts_again_from_an_unreadable_file(tmp_path):
  with open(os.path.join(tmp_path, timing.TIMING_FILE), "w") as f:
    f.write("{not json")
  only = timing.study_timing(str(tmp_path), seconds=7.0, runs=2, trained=0, workers=1,
                             xla_threads=0)
  assert (only["wall_s"], only["trained"], only["invocations"]) == (7.0, 0, 1)
  assert timing.timing_line(only).startswith("wall time 7 s for 2 runs (0 trained)")
