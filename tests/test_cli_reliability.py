"""Runs that survive: the non-finite guard, checkpoint fallback through fit, Ctrl-C, a
finished rerun that writes nothing, and the CLI's help (the lock and the filesystem
faults themselves: test_workdir.py, test_checkpoint.py)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tsm import cli as cli_lib
from tsm import config as config_lib
from tsm import history

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import run_config
from fit_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "digits_dams.py")


def _cli(*args, timeout=300, **kw):
  return subprocess.run([sys.executable, "-m", "tsm.cli", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=timeout, **kw)


def _diverging(**train):
  cfg = tiny_config(epochs=2, steps_per_epoch=4, log_every=1, **train)
  cfg.train.optimizer, cfg.train.learning_rate = "sgd", 1e30
  cfg.train.tensorboard = False
  return cfg


def test_divergence_stops_at_the_first_nonfinite_step(tmp_path):
  with pytest.raises(history.NonFiniteError) as info:
    run_config(_diverging(), tmp_path)
  message = str(info.value)
  assert "\n" not in message and message.startswith("step ") and "not finite" in message
  assert "train." not in message   # fit knows no config fields; the CLI names them
  step = info.value.step
  logged = [r for r in read_lines(tmp_path) if r["kind"] == "step"]
  # Nothing of the bad step (or after it) was logged; every logged step is finite.
  assert all(r["step"] < step and np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"])
             for r in logged)


def test_skip_policy_skips_and_counts_the_nonfinite_steps(tmp_path):
  # A loss that is NaN on the batches whose first label is 0: those updates are skipped
  # and counted, the others applied; the run finishes with finite parameters.
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from tsm import fit as fit_lib, hooks, losses, margins
  from tsm.data import samplers  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dense(4)(x)

  def sometimes_nan(embeddings, labels, margin):
    value, stats = losses.triplet_margin_loss(embeddings, labels, margin)
    return jnp.where(labels[0] == 0, jnp.nan, value), stats

  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 10).astype(np.int32)
  x = rng.normal(size=(40, 3)).astype(np.float32)
  sampler = samplers.PKSampler(y, 2, 3, seed=0, steps_per_epoch=6)
  expected_bad = sum(int(b[0] in np.flatnonzero(y == 0)) for e in range(2)
                     for b in sampler.epoch(e))
  assert 0 < expected_bad < 12
  result = fit_lib.fit(Net(), sometimes_nan, margins.constant(0.2), optax.adam(1e-2),
                       {"train": (x, y)}, workdir=str(tmp_path), epochs=2,
                       sampler=sampler,
                       options=fit_lib.LoopOptions(nonfinite="skip", log_every=1),
                       hooks=hooks.standard(progress=False, tensorboard=False,
                                            figures=None))
  epochs = [r for r in read_lines(tmp_path) if r["kind"] == "epoch"]
  assert sum(r["num_skipped"] for r in epochs) == expected_bad
  import jax  # pylint: disable=import-outside-toplevel
  assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(result.state.params))
  assert int(result.state.step) == 12


@pytest.mark.slow
def test_cli_divergence_is_one_line_with_status_3(tmp_path):
  proc = _cli(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}",
              "--config.train.optimizer=sgd", "--config.train.learning_rate=1e30",
              "--config.train.epochs=2", "--config.train.steps_per_epoch=5",
              "--config.train.log_every=1")
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1 and "not finite" in proc.stderr
  assert "train.grad_clip_norm" in proc.stderr and "train.nonfinite=skip" in proc.stderr


def _resume_config():
  cfg = tiny_config(epochs=3, steps_per_epoch=3)
  cfg.checkpoint.keep = 3
  cfg.checkpoint.async_save = False
  cfg.train.tensorboard = False
  return cfg


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  whole = run_config(_resume_config(), tmp_path / "whole")
  broken = tmp_path / "broken"
  stopped = _resume_config()
  stopped.train.stop_after_steps = 7          # checkpoints at steps 3 and 6, then a kill
  assert run_config(stopped, broken) is None
  files = [f for f in glob.glob(str(broken / "checkpoints" / "6" / "state" / "**" / "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, "r+b") as handle:
      handle.truncate(max(os.path.getsize(f) // 2, 0))
  caplog.clear()
  resumed = run_config(_resume_config(), broken)
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any("checkpoint 6" in m and "resuming from checkpoint 3" in m for m in warned)
  assert resumed == whole


@pytest.mark.slow
def test_finished_rerun_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  cfg = tiny_config(epochs=1, steps_per_epoch=2)
  first = run_config(cfg, workdir)
  stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(workdir / "**"),
                                                         recursive=True)}
  time.sleep(0.05)
  again = run_config(tiny_config(epochs=1, steps_per_epoch=2), workdir)
  assert again == first
  assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(workdir / "**"),
                                                       recursive=True)} == stamps


@pytest.mark.slow
def test_ctrl_c_is_one_line_status_130_and_the_run_resumes(tmp_path):
  workdir = tmp_path / "run"
  args = [f"--config={DIGITS}", f"--workdir={workdir}", "--config.train.epochs=400",
          "--config.train.log_every=1", "--config.train.tensorboard=False"]
  # A test runner may ignore SIGINT (inherited by children); give the child the default,
  # so that Python turns it into KeyboardInterrupt as it would in a terminal.
  proc = subprocess.Popen([sys.executable, "-m", "tsm.cli", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 240
  log = workdir / "metrics.jsonl"
  while time.time() < deadline and not (log.exists() and '"kind": "epoch"' in log.read_text()):
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "interrupted at step" in lines[0] and "resumes" in lines[0], err
  step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
  logged = [r["step"] for r in read_lines(workdir) if r["kind"] == "step"]
  assert step >= max(logged) > 0
  assert glob.glob(str(workdir / "checkpoints" / "*"))


def test_help_names_the_flags_the_configs_and_the_field_list():
  proc = _cli("--help", timeout=120)
  assert proc.returncode == 0
  for text in ("--config", "--workdir", "experiments/configs/NAME.py", "--list_fields",
               "  digits_dams  "):
    assert text in proc.stdout, text
  fields = _cli("--list_fields", timeout=120)
  assert fields.returncode == 0
  for key in config_lib.FIELD_HELP:
    assert f"  {key} = " in fields.stdout, key
  assert "(default: " not in fields.stdout


def _study_command(path):
  """The ``python -m experiments.X.run`` line of a config's docstring, found by hand."""
  with open(path) as f:
    text = f.read()
  doc = text[text.index('"""') + 3:text.index('"""', text.index('"""') + 3)]
  lines = [l.strip() for l in doc.splitlines() if l.strip().startswith("python -m ")]
  return lines[0].split()[2] if lines else None


def _usage_sections(text):
  """``{"training": {name: description}, "python -m ...": {name: description}}``."""
  sections, current = {}, None
  for line in text.splitlines():
    if line.startswith("training configs"):
      current = sections.setdefault("training", {})
    elif line.startswith("  python -m "):
      current = sections.setdefault(line.split()[2], {})
    elif line.startswith("study configs") or not line.startswith("  ") or current is None:
      if not line.startswith("  "):
        current = None if not line.startswith("training configs") else current
      continue
    else:
      name, description = line.split(None, 1)
      current[name] = description
  return sections


def test_help_lists_training_and_study_configs_apart_with_their_commands():
  cli = cli_lib.ConfigCommand("tsm-train", "digits_dams", "runs/d", study_configs=False)
  sections = _usage_sections(cli.usage())
  bundled = cli_lib.bundled_configs()
  listed = {name for names in sections.values() for name in names}
  assert listed == set(bundled)
  for name, path in bundled.items():
    command = _study_command(path)
    section = "training" if command is None else command
    assert name in sections[section], (name, section)
    with open(path) as f:   # the docstring's first line opens the description
      first = f.readline().strip().lstrip("r").strip('"')
    assert sections[section][name].startswith(first), name
    if command is not None:   # each study's command is a module of the experiments package
      assert os.path.exists(os.path.join(ROOT, *command.split(".")) + ".py"), command
  assert "digits_dams" in sections["training"]
  assert "loss_study_offline" in sections["experiments.loss_comparison.run"]
  assert "not tsm-train" in cli.usage()


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
def test_a_study_config_given_to_tsm_train_names_its_command(tmp_path, capsys):
  cli = cli_lib.ConfigCommand("tsm-train", "digits_dams", "runs/d", study_configs=False)
  with pytest.raises(SystemExit) as info:
    cli.parse(["tsm-train", "--config=loss_study_offline", f"--workdir={tmp_path / 'w'}"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("tsm-train: error: --config=loss_study_offline "
                                                 "is a study config")
  assert "python -m experiments.loss_comparison.run --config=loss_study_offline" in err
  assert not (tmp_path / "w").exists()
  studies = cli_lib.ConfigCommand("loss study", "loss_study_offline", "runs/s")
  studies.parse(["study", "--config=loss_study_offline", f"--workdir={tmp_path / 'w'}"])
  assert studies.config.study is not None   # the study commands still take them


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
def test_list_fields_with_a_config_shows_its_values_beside_the_defaults(capsys, monkeypatch):
  cli = cli_lib.ConfigCommand("tsm-train", "digits_dams", "runs/d", study_configs=False)
  argv = ["tsm-train", "--list_fields", f"--config={DIGITS}", "--config.train.epochs=3"]
  monkeypatch.setattr(sys, "argv", argv)   # config_flags defines overrides from sys.argv
  with pytest.raises(SystemExit) as info:
    cli.parse(argv)
  assert info.value.code == 0
  out = capsys.readouterr().out
  defaults = config_lib.default_config()
  assert f"  train.epochs = 3  (default: {defaults.train.epochs!r})\n" in out
  assert f"  data.split = 'by_image'  (default: {defaults.data.split!r})\n" in out
  assert f"  seed = {defaults.seed!r}\n" in out   # the same as the default: the value alone
  assert all(f"  {key} " in out for key in config_lib.FIELD_HELP)


def test_config_file_without_get_config_gets_its_own_line(tmp_path):
  path = tmp_path / "not_a_config.py"
  path.write_text("x = 1\n")
  proc = _cli(f"--config={path}", f"--workdir={tmp_path / 'w'}", timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and "defines no get_config()" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_every_field_has_help_and_every_help_a_field():
  cfg = config_lib.default_config()
  fields = {f"{s}.{k}" for s in cfg.keys() if s != "seed" for k in cfg[s].keys()}
  assert fields | {"seed"} == set(config_lib.FIELD_HELP)


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_the_step_and_the_rerun_is_bit_exact(tmp_path):
  args = [f"--config={DIGITS}", "--config.train.epochs=2",
          "--config.train.steps_per_epoch=300", "--config.train.log_every=1",
          "--config.train.tensorboard=False", "--config.eval.every_epochs=1",
          "--config.train.progress=False"]
  whole = _cli(*args, f"--workdir={tmp_path / 'whole'}")
  assert whole.returncode == 0, whole.stderr[-2000:]
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "tsm.cli", *args, f"--workdir={workdir}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 240
  log = workdir / "metrics.jsonl"
  while time.time() < deadline and not (log.exists() and log.read_text().count("\n") > 5):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("tsm-train: terminated at step "), err
  step = int(lines[0].split("terminated at step ")[1].split(";")[0])
  assert lines[0].endswith("; the same command resumes.")
  assert 0 < step < 600
  assert max(r["step"] for r in read_lines(workdir)) == step
  assert str(step) in os.listdir(workdir / "checkpoints")
  again = _cli(*args, f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-2000:]
  for name in ("summary.json",):
    assert (workdir / name).read_text() == (tmp_path / "whole" / name).read_text()
  assert read_lines(workdir) == read_lines(tmp_path / "whole")
