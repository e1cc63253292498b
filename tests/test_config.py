"""Config defaults, experiment files, one-line config errors, the CLI's exit status."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from tsm import config as config_lib

from fit_helpers import run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_default_config_is_valid_and_has_every_section():
  cfg = config_lib.default_config()
  config_lib.check_config(cfg)
  assert {"seed", "data", "model", "loss", "margin", "train", "eval",
          "checkpoint"} <= set(cfg.keys())
  for field in ("name", "split"):
    assert field in cfg.data
  assert {"name", "mining", "distance"} <= set(cfg.loss.keys())
  assert {"schedule", "update_every"} <= set(cfg.margin.keys())
  assert {"epochs", "classes_per_batch", "samples_per_class", "learning_rate"} <= set(
      cfg.train.keys())


def test_required_experiment_files_exist():
  names = {os.path.basename(p)[:-3] for p in EXPERIMENTS}
  assert {"digits_dams", "mnist1d_dams", "synthetic_triplet", "mnist_dams",
          "cifar10_triplet", "caltech_birds2011_dams", "lfw_dams"} <= names


def _run_configs(cfg):
  """The tsm run configs of an experiment file; a study config (with a ``study`` section)
  holds one per dataset of ``study.datasets``, and nothing else."""
  if "study" not in cfg:
    return [cfg]
  assert sorted(k for k in cfg.keys() if k != "study") == sorted(cfg.study.datasets)
  return [cfg[name] for name in cfg.study.datasets]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: os.path.basename(p)[:-3])
def test_experiment_configs_are_valid_and_document_their_command(path):
  module = _load(path)
  cfg = module.get_config()
  for run in _run_configs(cfg):
    config_lib.check_config(run)
  name = os.path.basename(path)
  if "study" in cfg:   # run by a study's runner: python -m experiments.<study>.run
    assert "python -m experiments." in module.__doc__
    assert f"--config=experiments/configs/{name}" in module.__doc__
  else:
    assert f"tsm-train --config=experiments/configs/{name}" in module.__doc__


def test_lfw_config_follows_paper_a():
  cfg = _load(os.path.join(ROOT, "experiments", "configs", "lfw_dams.py")).get_config()
  assert cfg.model.head == "paper_a" and cfg.model.name.startswith("resnet")
  assert (cfg.train.classes_per_batch, cfg.train.samples_per_class) == (32, 2)
  assert cfg.train.optimizer == "adam" and cfg.train.learning_rate == 1e-4
  assert cfg.margin.schedule == "dams" and cfg.train.best_metric == "val_loss"


BAD_VALUES = [
    ("loss.name", "softtriple", "loss.name"),
    ("loss.mining", "hardest", "loss.mining"),
    ("loss.distance", "manhattan", "loss.distance"),
    ("loss.reduction", "median", "loss.reduction"),
    ("margin.initial_margin", -0.1, "margin.initial_margin"),
    ("margin.schedule", "cosine", "margin.schedule"),
    ("margin.update_every", "batch", "margin.update_every"),
    ("data.name", "imagenet", "data.name"),
    ("train.samples_per_class", 1, "train.samples_per_class"),
    ("train.classes_per_batch", 1, "train.classes_per_batch"),
    ("train.epochs", 0, "train.epochs"),
    ("train.learning_rate", -1e-3, "train.learning_rate"),
    ("train.sampling", "hard", "train.sampling"),
    ("train.optimizer", "lamb", "train.optimizer"),
    ("train.best_metric", "accuracy", "train.best_metric"),
    ("eval.ks", (), "eval.ks"),
    ("eval.every_epochs", 0, "eval.every_epochs"),
    ("checkpoint.keep", 0, "checkpoint.keep"),
    ("seed", -1, "seed"),
]


@pytest.mark.parametrize("field,value,named", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_gives_one_line_naming_the_field(field, value, named):
  cfg = config_lib.default_config()
  section, _, key = field.rpartition(".")
  target = cfg[section] if section else cfg
  with target.ignore_type():
    target[key] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.check_config(cfg)
  message = str(info.value)
  assert "\n" not in message and named in message, message


@pytest.mark.parametrize("sampling,loss", [("triplets", "contrastive"),
                                           ("pairs", "triplet")])
def test_sampling_must_fit_the_loss(sampling, loss):
  cfg = config_lib.default_config()
  cfg.train.sampling, cfg.loss.name = sampling, loss
  with pytest.raises(config_lib.ConfigError, match="train.sampling"):
    config_lib.check_config(cfg)


def test_unknown_field_is_rejected():
  cfg = config_lib.default_config()
  cfg.train.unlock()
  cfg.train.epoch = 3
  with pytest.raises(config_lib.ConfigError, match="train.epoch is not a train field"):
    config_lib.check_config(cfg)


def _digits(**train):
  cfg = config_lib.default_config()
  cfg.data.name = "digits"
  cfg.train.update(train)
  return cfg


def test_more_classes_per_batch_than_the_split_has(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError, match="train.classes_per_batch") as info:
    run_config(_digits(classes_per_batch=50), str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()


def test_resuming_with_a_different_config_is_refused(tmp_path):
  cfg = _digits(classes_per_batch=4)
  (tmp_path / "config.json").write_text(cfg.to_json())
  cfg.train.stop_after_steps = 3      # run control: may change between runs
  config_lib.prepare(cfg, str(tmp_path))
  cfg.train.epochs += 1
  with pytest.raises(config_lib.ConfigError, match=r"different config \(train.epochs"):
    config_lib.prepare(cfg, str(tmp_path))


def test_cli_config_error_exits_2_with_one_line_and_no_workdir(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli",
       f"--config={os.path.join(ROOT, 'experiments', 'configs', 'digits_dams.py')}",
       f"--workdir={workdir}", "--config.margin.initial_margin=-0.5"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "margin.initial_margin" in lines[0], proc.stderr
  assert not workdir.exists()


def test_cli_unknown_override_exits_2(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli", f"--config={EXPERIMENTS[0]}",
       f"--workdir={workdir}", "--config.train.epochz=3"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.count("\n") == 1 and "epochz" in proc.stderr, proc.stderr
  assert not workdir.exists()


def test_train_and_evaluate_checks_once_and_builds_each_object_once(tmp_path,
                                                                   monkeypatch):
  """One train_and_evaluate: the config checked once, the margin section's arguments
  checked once (without building a schedule), and the schedule, the model and the train
  sampler each built once (the validation-loss sampler over val is another object)."""
  from fit_helpers import tiny_config  # pylint: disable=import-outside-toplevel
  from tsm import margins, models  # pylint: disable=import-outside-toplevel
  from tsm.config import run as run_lib  # pylint: disable=import-outside-toplevel
  from tsm.data import samplers  # pylint: disable=import-outside-toplevel
  calls = {"check_config": 0, "check_schedule": 0, "schedule": 0, "create_model": 0,
           "train_sampler": 0}

  def counted(module, name, key, when=lambda *args, **kwargs: True):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
      calls[key] += bool(when(*args, **kwargs))
      return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)

  counted(run_lib, "check_config", "check_config")
  counted(margins, "check_schedule", "check_schedule")
  for name in margins.SCHEDULES:
    counted(margins, name, "schedule")
  counted(models, "create_model", "create_model")
  counted(samplers, "make_sampler", "train_sampler",
          when=lambda *args, **kwargs: kwargs.get("max_classes") is None)
  cfg = tiny_config(epochs=1, steps_per_epoch=2)
  cfg.eval.every_epochs = 1
  assert cfg.margin.schedule == "dams"
  result = config_lib.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert result.summary and calls == {"check_config": 1, "check_schedule": 1,
                                      "schedule": 1, "create_model": 1,
                                      "train_sampler": 1}


def test_mining_curriculum_is_an_epoch_loss_in_tsm_losses():
  from tsm import losses  # pylint: disable=import-outside-toplevel
  cfg = config_lib.default_config()
  cfg.loss.mining, cfg.loss.curriculum = "curriculum", (1, 2)
  loss = config_lib.build_loss(cfg)
  assert isinstance(loss, losses.MiningCurriculum) and isinstance(loss, losses.EpochLoss)
  assert [loss.for_epoch(e).keywords["mining"] for e in range(3)] == [
      "semihard", "all", "hard"]
  assert loss.for_epoch(0) is loss.for_epoch(0)
  with pytest.raises(ValueError, match=r"^curriculum=\(2, 1\) must be \(a, b\)"):
    losses.MiningCurriculum((2, 1))
