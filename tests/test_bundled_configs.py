"""Bundled experiment configs: ``--config=NAME`` resolution, and the wheel that ships them.

The slow test builds a real wheel (``pip wheel --no-deps --no-build-isolation``), unpacks
it into an empty directory and checks, in a fresh interpreter whose only copy of tsm is
the unpacked wheel and whose working directory holds no clone, that every config file of
``experiments/configs`` is there, that ``--config=NAME`` resolves into it and that
``tsm-train --help`` lists it.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest
from absl import flags

from tsm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))


def test_every_config_file_is_bundled_by_name():
  assert CONFIG_FILES   # the clone has configs to bundle
  expected = {os.path.basename(p)[:-3]: os.path.realpath(p) for p in CONFIG_FILES}
  found = {name: os.path.realpath(path) for name, path in cli.bundled_configs().items()}
  assert found == expected


@pytest.mark.parametrize("value", ["experiments/configs/digits_dams.py", "my_config.py",
                                   "some/dir/name", "digits_dams.py:arg", ""])
def test_paths_are_left_alone(value):
  assert cli.resolve_config(value) == value


def test_a_name_resolves_to_the_bundled_file_keeping_its_argument():
  path = os.path.join(cli.BUNDLED_CONFIG_DIR, "digits_dams.py")
  assert cli.resolve_config("digits_dams") == path
  assert cli.resolve_config("digits_dams:small") == path + ":small"
  assert os.path.isfile(path)


def test_an_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "digits_dams").write_text("def get_config():\n  return None\n")
  assert cli.resolve_config("digits_dams") == "digits_dams"


def test_an_unknown_name_is_one_line_naming_the_bundled_ones():
  with pytest.raises(ValueError, match="neither a file nor a bundled config") as e:
    cli.resolve_config("digitz_dams")
  assert "\n" not in str(e.value) and "digits_dams" in str(e.value)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
@pytest.mark.parametrize("form", [["--config=digits_dams"], ["--config", "digits_dams"]])
def test_config_command_loads_a_bundled_config_by_name(tmp_path, monkeypatch, form):
  monkeypatch.chdir(tmp_path)   # no experiments/ here: only the bundled copy can match
  command = cli.ConfigCommand("prog", "digits_dams", "runs/x",
                              flag_values=flags.FlagValues())
  argv = ["prog", *form, f"--workdir={tmp_path / 'w'}", "--config.train.epochs=3"]
  monkeypatch.setattr(sys, "argv", argv)   # config_flags defines overrides from sys.argv
  command.parse(argv)
  assert command.config.data.name == "digits" and command.config.model.embedding_dim == 32
  assert command.config.train.epochs == 3


def test_config_command_unknown_name_exits_2_with_one_line(tmp_path, capsys):
  command = cli.ConfigCommand("prog", "digits_dams", "runs/x",
                              flag_values=flags.FlagValues())
  with pytest.raises(SystemExit) as e:
    command.parse(["prog", "--config=nope", f"--workdir={tmp_path / 'w'}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "prog: error: --config=nope is neither" in err


def test_pyproject_ships_experiments_and_registers_the_scripts():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  scripts = project["project"]["scripts"]
  assert scripts["tsm-embed"] == "tsm.embed_cli:main"
  assert scripts["tsm-train"] == "tsm.cli:main"
  find = project["tool"]["setuptools"]["packages"]["find"]
  assert "experiments*" in find["include"] and find.get("namespaces", True)


@pytest.mark.slow   # builds a wheel: about 20-60 s on two loaded cores
def test_a_real_wheel_bundles_the_configs_and_resolves_names(tmp_path):
  wheels = tmp_path / "wheels"
  build = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", ROOT, "-w", str(wheels), "--no-deps",
       "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = wheels.glob("tsm-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    z.extractall(tmp_path / "site")
  for path in CONFIG_FILES:   # every config, and the study packages they import
    assert f"experiments/configs/{os.path.basename(path)}" in names, path
  for module in ("experiments/loss_comparison/study.py",
                 "experiments/margin_scheduler/study.py", "tsm/embed_cli.py",
                 "tsm/export.py", "tsm/cli.py"):
    assert module in names, module
  entry_points = next(n for n in names if n.endswith("entry_points.txt"))
  with zipfile.ZipFile(wheel) as z:
    assert "tsm-embed = tsm.embed_cli:main" in z.read(entry_points).decode()
  # A fresh interpreter that sees the unpacked wheel first, run outside the clone.
  site = str(tmp_path / "site")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  script = ("import tsm, tsm.cli as c; print(tsm.__file__); "
            "print(c.resolve_config('margin_study_digits')); "
            "import experiments.loss_comparison.study as s; print(s.__file__)")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=elsewhere, timeout=300, env={**os.environ, "PYTHONPATH": site})
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.split()
  assert all(line.startswith(site) for line in lines), lines
  assert lines[1] == os.path.join(site, "experiments", "configs", "margin_study_digits.py")
  helped = subprocess.run([sys.executable, "-m", "tsm.cli", "--help"], capture_output=True,
                          text=True, cwd=elsewhere, timeout=300,
                          env={**os.environ, "PYTHONPATH": site})
  assert helped.returncode == 0, helped.stderr[-3000:]
  for path in CONFIG_FILES:
    assert f"  {os.path.basename(path)[:-3]} " in helped.stdout, path
