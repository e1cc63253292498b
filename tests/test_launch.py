"""Where a study's runs train (experiments/common/launch.py): the launcher's fields and
their one-line errors. The real SLURM runs are in test_slurm.py (slow, a local cluster)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from experiments.common import checks
from experiments.common import grid
from experiments.common import launch
from experiments.configs.presets import loss_zoo as presets
from experiments.loss_comparison import study as loss_study
from experiments.loss_zoo import run as zoo_run
from experiments.loss_zoo import study as zoo_study
from experiments.margin_scheduler import study as margin_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section(**fields):
  section = zoo_study.study_section(("synthetic",))
  slurm = fields.pop("slurm", {})
  section.update(fields)
  section.slurm.update(slurm)
  return section


def _error(section) -> str:
  with pytest.raises(grid.StudyError) as e:
    checks.check_grid(section)
  assert "\n" not in str(e.value)
  return str(e.value)


def _fake_slurm(tmp_path, sinfo: str) -> str:
  """A PATH holding ``sbatch`` (unused) and ``sinfo`` running ``sinfo`` (a shell body)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in (("sbatch", "exit 1"), ("sinfo", sinfo)):
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(bin_dir)


def test_every_study_has_the_launcher_fields_with_their_defaults():
  expected = launch.launcher_fields()
  for section in (zoo_study.study_section(()), loss_study.study_section(()),
                  margin_study.study_section(("digits",))):
    assert section.launcher == "local"
    assert section.slurm.to_dict() == expected["slurm"].to_dict()
  checks.check_grid(_section())   # the defaults pass


@pytest.mark.parametrize("fields,message", [
    ({"launcher": "ray"}, "study.launcher='ray' must be one of local, slurm."),
    ({"slurm": {"cpus_per_task": 0}}, "study.slurm.cpus_per_task=0 must be an integer >= 1."),
    ({"slurm": {"gpus_per_task": -1}}, "study.slurm.gpus_per_task=-1 must be an integer >= 0."),
    ({"slurm": {"array_parallelism": 0}}, "study.slurm.array_parallelism=0 must be an "
     "integer >= 1."),
    ({"slurm": {"mem_gb": 0}}, "study.slurm.mem_gb=0 must be a number of GB > 0."),
    ({"slurm": {"partition": None}}, "study.slurm.partition=None must be a partition name"),
    ({"slurm": {"setup": (1,)}}, "study.slurm.setup=(1,) must be a tuple of shell lines."),
])
def test_bad_launcher_fields_are_one_line(fields, message):
  assert _error(_section(**fields)).startswith(message)


def test_an_unknown_slurm_field_is_named():
  section = _section()
  section.slurm.gpus = 2
  assert _error(section).startswith("study.slurm.gpus is not a SLURM field; use one of "
                                    "array_parallelism, cpus_per_task,")


def test_slurm_without_sbatch_on_path_is_one_line(tmp_path, monkeypatch):
  pytest.importorskip("submitit")
  monkeypatch.setenv("PATH", str(tmp_path))   # no sbatch, no sinfo
  assert _error(_section(launcher="slurm")) == (
      "study.launcher='slurm' needs SLURM's sbatch on PATH; run the study on a machine of "
      "the cluster, or set study.launcher=local.")
  # The local launcher does not look for SLURM.
  checks.check_grid(_section(launcher="local", slurm={"partition": "nowhere"}))


def test_a_partition_the_cluster_does_not_have_is_one_line(tmp_path, monkeypatch):
  pytest.importorskip("submitit")
  monkeypatch.setenv("PATH", _fake_slurm(tmp_path, 'printf "gpu\\ndebug\\ngpu\\n"') + ":"
                     + os.environ["PATH"])
  assert _error(_section(launcher="slurm", slurm={"partition": "gpus"})) == (
      "study.slurm.partition='gpus' is not a partition of this cluster; use one of debug, "
      "gpu (or '' for the default).")
  checks.check_grid(_section(launcher="slurm", slurm={"partition": "gpu"}))
  checks.check_grid(_section(launcher="slurm"))   # '': the default, sinfo not asked


def test_an_unreachable_controller_is_one_line(tmp_path, monkeypatch):
  pytest.importorskip("submitit")
  monkeypatch.setenv("PATH", _fake_slurm(
      tmp_path, 'echo "slurm_load_partitions: Unable to contact slurm controller" >&2; '
      "exit 1") + ":" + os.environ["PATH"])
  assert _error(_section(launcher="slurm", slurm={"partition": "gpu"})) == (
      "study.launcher='slurm': sinfo failed (slurm_load_partitions: Unable to contact slurm "
      "controller); is SLURM reachable from here?")


def test_the_command_fails_with_status_2_and_creates_nothing(tmp_path):
  pytest.importorskip("submitit")
  workdir = tmp_path / "study"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.loss_zoo.run", f"--config={zoo_run.EXAMPLE_CONFIG}",
       f"--workdir={workdir}", "--config.study.launcher=slurm"],
      cwd=ROOT, env=dict(os.environ, PATH=str(tmp_path), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip() == ("loss zoo: error: study.launcher='slurm' needs SLURM's "
                                 "sbatch on PATH; run the study on a machine of the cluster, "
                                 "or set study.launcher=local.")
  assert not workdir.exists()


def test_checkpoint_steps_lists_orbax_step_folders(tmp_path):
  assert launch.checkpoint_steps(str(tmp_path)) == []   # no checkpoints folder
  for name in ("12", "4", "4.orbax-checkpoint-tmp-1", "best"):
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  assert launch.checkpoint_steps(str(tmp_path)) == [4, 12]


def test_describe_names_the_launcher():
  assert launch.describe(_section(), 2) == "2 process(es)"
  assert launch.describe(_section(launcher="slurm", slurm={"partition": "gpu"}), 2) == (
      "SLURM jobs (partition gpu, 1 GPU(s), 8 CPUs, 32 GB, 240 min each, at most 32 at "
      "once)")


def test_presets_take_the_launcher_from_the_command_line():
  cfg = presets.study_config(("synthetic",))
  assert cfg.study.launcher == "local" and cfg.study.slurm.partition == ""


@pytest.mark.parametrize("squeue,expected", [
    ('echo 7_0; echo 7_2', {"7_0", "7_2"}),                       # 7_1 has left the queue
    ('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1', set()),
    ('echo "Unable to contact slurm controller" >&2; exit 1', {"7_0", "7_1", "7_2"}),
])
def test_queued_jobs_come_from_squeue_and_an_unreachable_one_loses_none(
    tmp_path, monkeypatch, squeue, expected):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "squeue").write_text(f"#!/bin/sh\n{squeue}\n")
  (bin_dir / "squeue").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  assert launch._queued(["7_0", "7_1", "7_2"]) == expected  # pylint: disable=protected-access
