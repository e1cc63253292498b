"""Studies on a real SLURM cluster (study.launcher=slurm): a single-node cluster on this
machine (tests/slurm_cluster.sh: munged, slurmctld, slurmd on localhost).

Slow, and only as root with Debian's ``slurm-wlm`` and ``munge`` installed; run them
with

  sudo apt-get install -y slurm-wlm munge
  python -m pytest -q -m slow tests/test_slurm.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.common import launch
from experiments.common import runs
from experiments.loss_zoo import run as zoo_run
from fit_helpers import read_lines
from test_loss_zoo_study import tiny_study

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "slurm_cluster.sh")
# The smallest jobs: no GPU, one core, 2 GB, the whole cluster's two cores at once.
SLURM = dict(gpus_per_task=0, cpus_per_task=1, mem_gb=2, timeout_min=30,
             array_parallelism=2)


def _missing() -> str:
  if os.geteuid() != 0:
    return "the test cluster runs as root"
  tools = [t for t in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch")
           if shutil.which(t) is None]
  return f"{', '.join(tools)} not found (apt-get install -y slurm-wlm munge)" if tools else ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  pytest.importorskip("submitit")
  reason = _missing()
  if reason:
    pytest.skip(reason)
  folder = str(tmp_path_factory.mktemp("slurm"))
  out = subprocess.run([SCRIPT, "start", folder], capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode == 0, out.stderr
  saved = os.environ.get("SLURM_CONF")
  os.environ["SLURM_CONF"] = os.path.join(folder, "slurm.conf")
  try:
    yield folder
  finally:
    subprocess.run([SCRIPT, "stop", folder], timeout=60, check=False)
    if saved is None:
      os.environ.pop("SLURM_CONF", None)
    else:
      os.environ["SLURM_CONF"] = saved


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """One compilation cache for every study of this file, local and SLURM: the jobs load
  the programs the local runs compiled."""
  return str(tmp_path_factory.mktemp("jax_cache"))


def _slurm_study(**fields):
  cfg = tiny_study(launcher="slurm", **fields)
  cfg.study.slurm.update(SLURM)
  return cfg


EPOCHS = 100


def preemptible_study(cache):
  """One run of ``EPOCHS`` epochs with a checkpoint after each (the loss studies' configs
  save one after the last epoch only: ``checkpoint.every_epochs=0``)."""
  cfg = _slurm_study(losses=("triplet",), seeds=1, epochs=EPOCHS, compilation_cache=cache)
  cfg.synthetic.checkpoint.every_epochs = 1
  return cfg


def _comparable(workdir, drop=("seconds",)):
  """study.json without what may differ between launchers: the launcher's fields, the
  wall times and the runs' ``drop`` fields."""
  with open(os.path.join(workdir, "study.json")) as f:
    out = json.load(f)
  for field in ("launcher", "slurm"):
    out["config"]["study"].pop(field)
  for run in out["runs"]:
    for field in drop:
      run.pop(field)
  return {"config": out["config"], "runs": out["runs"]}


def test_a_slurm_study_writes_the_local_study_json_and_resubmits_only_what_is_missing(
    cluster, jax_cache, tmp_path, capsys):  # pylint: disable=redefined-outer-name,unused-argument
  local, remote = str(tmp_path / "local"), str(tmp_path / "slurm")
  zoo_run.run_study(tiny_study(compilation_cache=jax_cache), local)
  zoo_run.run_study(_slurm_study(compilation_cache=jax_cache), remote)
  log = capsys.readouterr().out
  assert "submitted 4 job(s)" in log
  assert _comparable(remote) == _comparable(local)
  with open(os.path.join(remote, "slurm", launch.JOBS_FILE)) as f:
    assert len(json.load(f)) == 4   # run directory -> array job id
  # One run lost: the same command submits that run only and reuses the three others.
  shutil.rmtree(runs.run_dir(remote, "synthetic", "ntxent", 1))
  again = zoo_run.run_study(_slurm_study(compilation_cache=jax_cache), remote)
  log = capsys.readouterr().out
  assert "submitted 1 job(s)" in log
  assert sorted((r["loss"], r["seed"]) for r in again["runs"] if not r["reused"]) == [
      ("ntxent", 1)]
  drop = ("seconds", "reused")
  assert _comparable(remote, drop) == _comparable(local, drop)


def _wait(predicate, timeout, what):
  deadline = time.time() + timeout
  while not predicate():
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


def test_a_killed_study_and_a_preempted_job_resume_from_the_checkpoint(
    cluster, jax_cache, tmp_path, capsys):  # pylint: disable=redefined-outer-name,unused-argument
  workdir = str(tmp_path / "study")
  rundir = runs.run_dir(workdir, "synthetic", "triplet", 0)
  study = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys
          sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
          from test_slurm import preemptible_study
          from experiments.loss_zoo import run
          run.run_study(preemptible_study({jax_cache!r}), {workdir!r})
      """)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait(lambda: launch.checkpoint_steps(rundir), 300, "the run's first checkpoint")
  finally:
    study.send_signal(signal.SIGKILL)   # the study command dies; its job runs on
    study.wait()
  with open(os.path.join(workdir, "slurm", launch.JOBS_FILE)) as f:
    (job_id,) = json.load(f).values()
  # A preemption as SLURM signals it (submitit's SlurmJob._interrupt): SIGTERM, which
  # submitit ignores, then USR2: submitit calls the job's checkpoint hook and requeues it.
  for sig in ("TERM", "USR2"):
    subprocess.run(["scancel", f"--signal={sig}", job_id], check=True, timeout=60)

  def state():
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True, check=False).stdout.strip()
  _wait(lambda: state() == "PENDING", 120, "the job to be requeued")
  # A requeued job waits ~2 minutes before it may start again: start it now.
  subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True,
                 timeout=60)
  out = zoo_run.run_study(preemptible_study(jax_cache), workdir)   # the same command again
  log = capsys.readouterr().out
  assert "waiting for 1 job(s) already in SLURM's queue" in log
  assert "submitted" not in log
  assert len(out["runs"]) == 1 and not out["runs"][0]["reused"]
  job_log = os.path.join(workdir, "slurm", f"{job_id}_0_log.out")
  with open(job_log) as f:
    lines = [line for line in f.read().splitlines() if line.startswith(rundir)]
  assert lines[0] == f"{rundir}: starting", lines
  assert len(lines) == 2 and lines[1].startswith(f"{rundir}: resuming from its checkpoint "
                                                 "at step "), lines
  resumed_at = int(lines[1].rsplit(" ", 1)[1])
  epochs = [r for r in read_lines(rundir) if r["kind"] == "epoch"]
  assert [r["epoch"] for r in epochs] == list(range(EPOCHS))   # every epoch once
  assert 0 < resumed_at < epochs[-1]["step"]


def test_a_job_that_dies_without_a_result_is_one_line_and_status_1(cluster, tmp_path,
                                                                   capsys):  # pylint: disable=redefined-outer-name,unused-argument
  workdir = str(tmp_path / "study")
  cfg = _slurm_study(losses=("triplet",), seeds=1)
  cfg.study.slurm.setup = ("exit 3",)   # the job script ends before the run starts
  with pytest.raises(SystemExit) as e:
    zoo_run.run_study(cfg, workdir)
  assert e.value.code == 1
  lines = capsys.readouterr().out.strip().splitlines()
  rundir = runs.run_dir(workdir, "synthetic", "triplet", 0)
  assert lines[-1] == (f"error: 1 of 1 SLURM job(s) failed; the first ({rundir}): the job "
                       "left SLURM's queue without a result (cancelled or killed); the same "
                       "command resubmits them")
  assert lines[-2].endswith("_0_log.err") and f"({rundir}) failed; log " in lines[-2]
