"""Two-view training: the multi-view sampler and loader, VICReg and the self-supervised
form as config losses, and their one-line config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import pml_reference
from test_losses_vicreg import ref_vicreg
from tsm import config as config_lib
from tsm import losses
from tsm import train as train_lib
from tsm.data import loader, preprocess, samplers, splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n=12, side=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((n, side, side, 1)).astype(np.float32) + 0.5   # no pixel is 0


def _split(x, augment_fn=None):
  labels = np.arange(len(x)) % 3
  return splits.Split(labels, lambda i: x[i], x.shape[1:], augment_fn=augment_fn)


def _augmentations(image, pad):
  """Every shift of the zero-padded ``image`` by up to ``pad`` pixels, flipped or not
  (what ``augment_images`` may make of it), by brute force."""
  h, w, _ = image.shape
  padded = np.zeros((h + 2 * pad, w + 2 * pad, image.shape[2]), image.dtype)
  padded[pad:pad + h, pad:pad + w] = image
  out = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      out += [crop, crop[:, ::-1]]
  return out


def test_repeat_views_and_the_multi_view_sampler():
  base = samplers.PKSampler(np.repeat(np.arange(4), 5), 2, 3, seed=7)
  two = samplers.MultiViewSampler(base, 2)
  assert two.steps_per_epoch == base.steps_per_epoch
  for epoch in (0, 1):
    idx, both = base.epoch(epoch), two.epoch(epoch)
    assert both.shape == (idx.shape[0], 12) and both.dtype == np.int64
    np.testing.assert_array_equal(both[:, :6], idx)
    np.testing.assert_array_equal(both[:, 6:], idx)
  np.testing.assert_array_equal(samplers.repeat_views(np.arange(3), 3),
                                [0, 1, 2, 0, 1, 2, 0, 1, 2])
  made = samplers.make_sampler("random", np.zeros(20, int), seed=1, batch_size=4,
                               views=2)
  assert isinstance(made, samplers.MultiViewSampler) and made.epoch(0).shape[1] == 8
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="views=.* must be an integer >= 1"):
      samplers.repeat_views(np.arange(3), bad)
  with pytest.raises(ValueError, match="views=2 takes in-batch sampling"):
    samplers.make_sampler("triplets", np.repeat(np.arange(3), 4), seed=0, batch_size=2,
                          views=2)


def test_two_view_batches_are_the_same_images_each_augmented_on_its_own():
  x = _images()
  split = _split(x, lambda b, rng: preprocess.augment_images(b, rng, crop_padding=1))
  index_batches = samplers.repeat_views(np.array([[3, 0, 7, 5], [1, 2, 11, 9]]), 2)
  got = list(loader.batches(split, index_batches, augment=True, seed=(4, 1)))
  differ = 0
  for batch, idx in zip(got, index_batches[:, :4]):
    assert batch["inputs"].shape == (8, 6, 6, 1)
    np.testing.assert_array_equal(batch["labels"], np.tile(split.labels[idx], 2))
    for i, j in enumerate(idx):
      choices = _augmentations(x[j], 1)
      for row in (batch["inputs"][i], batch["inputs"][4 + i]):
        assert any(np.array_equal(row, c) for c in choices)
      differ += not np.array_equal(batch["inputs"][i], batch["inputs"][4 + i])
  assert differ >= 4   # 18 equally likely draws each: the views differ
  again = list(loader.batches(split, index_batches, augment=True, seed=(4, 1)))
  other = list(loader.batches(split, index_batches, augment=True, seed=(4, 2)))
  for a, b, c in zip(got, again, other):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])   # a function of (seed, step)
    assert not np.array_equal(a["inputs"], c["inputs"])


def test_two_views_are_equal_under_an_augmentation_that_does_nothing():
  x = _images()
  calls = []

  def get(i):
    calls.append(np.asarray(i).copy())
    return x[i]

  split = splits.Split(np.arange(12) % 3, get, x.shape[1:],
                       augment_fn=lambda b, rng: b)
  idx = np.array([[4, 1, 4, 9]])
  (batch,) = loader.batches(split, samplers.repeat_views(idx, 2), augment=True)
  np.testing.assert_array_equal(batch["inputs"][:4], x[idx[0]])
  np.testing.assert_array_equal(batch["inputs"][4:], x[idx[0]])
  np.testing.assert_array_equal(calls[-1], [1, 4, 9])   # each input decoded once


def _vicreg_config(**loss):
  cfg = config_lib.default_config()
  cfg.data.update(views=2, augment=True)
  cfg.loss.update(name="vicreg", **loss)
  cfg.model.update(name="mlp", hidden_sizes=(8,), embedding_dim=5)
  return cfg


def test_vicreg_loss_name_is_vicreg_of_the_two_halves():
  cfg = _vicreg_config(invariance_lambda=3.0, variance_mu=2.0, covariance_v=0.5, eps=1e-3)
  config_lib.check_config(cfg)
  fn = config_lib.build_loss(cfg, num_classes=3)
  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, 5))
  value, stats = fn(jnp.asarray(z, jnp.float32), jnp.zeros(12, jnp.int32), 0.7)
  want, want_stats = ref_vicreg(z[:6].tolist(), z[6:].tolist(), 3.0, 2.0, 0.5, 1e-3)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  assert float(stats.num_total) == want_stats["num_total"] == 10
  assert float(stats.num_active) == want_stats["num_active"]
  assert float(stats.num_easy) == 10 - want_stats["num_active"]
  with pytest.raises(ValueError, match="a two-view loss takes a batch of 2B rows"):
    fn(jnp.zeros((7, 5)), jnp.zeros(7, jnp.int32), 0.0)


def test_the_train_step_takes_vicreg_of_the_embedded_halves():
  cfg = _vicreg_config()
  model = config_lib.build_model(cfg, (6,))
  loss = config_lib.build_loss(cfg, num_classes=3)
  schedule = config_lib.build_schedule(cfg, steps_per_epoch=1)
  tx = config_lib.build_optimizer(cfg, 10)
  state = train_lib.initial_state(model, loss, schedule, tx, (6,), seed=0)
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(16, 6)).astype(np.float32)
  embeddings = np.asarray(model.apply({"params": state.params}, inputs, train=True),
                          np.float64)
  want, want_stats = ref_vicreg(embeddings[:8].tolist(), embeddings[8:].tolist())
  step = train_lib.make_train_step(model, loss, schedule, tx)
  _, metrics = step(state, {"inputs": inputs,
                            "labels": np.tile(np.arange(8) % 3, 2).astype(np.int32)})
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-4)
  assert float(metrics["num_total"]) == 10
  assert float(metrics["num_active"]) == want_stats["num_active"]
  assert float(metrics["active_ratio"]) == pytest.approx(want_stats["active_ratio"])
  assert float(metrics["easy_share"]) == pytest.approx(
      (10 - want_stats["num_active"]) / 10)


def test_self_supervised_triplet_pairs_rows_by_position():
  cfg = config_lib.default_config()
  cfg.data.update(views=2, augment=True)
  cfg.loss.update(name="triplet", self_supervised=True)
  config_lib.check_config(cfg)
  fn = config_lib.build_loss(cfg, num_classes=3)
  rng = np.random.default_rng(2)
  z = rng.normal(size=(10, 4))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  classes = jnp.asarray(np.tile([0, 0, 1, 1, 1], 2), jnp.int32)   # not used
  value, stats = fn(jnp.asarray(z, jnp.float32), classes, 0.3)
  positions = np.tile(np.arange(5), 2)
  triplets = pml_reference.all_triplets(positions)
  want = pml_reference.triplet_loss(z, positions, 0.3, triplets, reduction="mean")
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  assert float(stats.num_total) == len(triplets[0]) == 10 * 8


@pytest.mark.parametrize("changes,message", [
    ({"loss.name": "vicreg"}, r"^loss.name=vicreg takes 2 views of each input; set "
                              r"data.views=2"),
    ({"data.views": 2}, r"^data.views=2 needs augment=True"),
    ({"data.views": 0}, r"^data.views=0 must be an integer >= 1"),
    ({"data.name": "synthetic", "data.views": 2}, r"^data.views=2 does not apply to "
                                                  r"synthetic"),
    ({"loss.self_supervised": True}, r"^loss.self_supervised=True takes two views"),
    ({"loss.self_supervised": True, "loss.name": "npair", "data.views": 2,
      "data.augment": True}, r"^loss.self_supervised=True applies to angular, "),
    ({"loss.self_supervised": True, "data.views": 2, "data.augment": True,
      "loss.xbm_size": 64}, r"^loss.xbm_size=64 does not apply with "
                            r"loss.self_supervised"),
    ({"data.views": 2, "data.augment": True, "train.sampling": "triplets"},
     r"^data.views=2 takes in-batch sampling"),
    ({"data.views": 2, "data.augment": True, "loss.xbm_size": 40},
     r"^loss.xbm_size=40 is below the batch size 64"),
    ({"data.views": 2, "data.name": "cifar10", "model.trunk": "efficientnet_lite0",
      "model.freeze_trunk": True, "model.head": "linear", "data.image_size": 32},
     r"^data.views=2 does not apply to a frozen model.trunk"),
    ({"loss.name": "vicreg", "data.views": 2, "data.augment": True, "loss.eps": 0.0},
     r"^loss.eps=0.0 must be a finite number > 0"),
    ({"loss.eps": 1e-3}, r"^loss.eps=0.001 does not apply to loss.name=triplet"),
])
def test_two_view_config_errors_are_one_line(changes, message):
  cfg = config_lib.default_config()
  for key, value in changes.items():
    section, field = key.split(".")
    cfg[section][field] = value
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.check_config(cfg)
  assert "\n" not in str(e.value)


def test_the_loss_zoo_runs_vicreg_on_two_augmented_views_of_images():
  from experiments.configs.presets import loss_zoo as presets  # pylint: disable=import-outside-toplevel
  from experiments.loss_zoo import study  # pylint: disable=import-outside-toplevel
  cfg = presets.study_config(("fashion_mnist", "synthetic"))
  run = study.run_config(cfg, "fashion_mnist", "vicreg", 0)
  assert run.data.views == 2 and run.data.augment
  config_lib.check_config(run)
  assert study.run_config(cfg, "fashion_mnist", "triplet", 0).data.views == 1
  with pytest.raises(config_lib.ConfigError, match=r"^data.views=2 does not apply to "
                                                   r"synthetic \(not images"):
    config_lib.check_config(study.run_config(cfg, "synthetic", "vicreg", 0))


def test_help_lines_name_the_two_view_fields():
  help_ = config_lib.FIELD_HELP
  assert "needs data.augment" in help_["data.views"]
  assert "vicreg: weight of the variance hinge (None: 25)" in help_["loss.variance_mu"]
  assert "PML's SelfSupervisedLoss" in help_["loss.self_supervised"]


def test_cli_refuses_vicreg_with_one_view_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli",
       f"--config={os.path.join(ROOT, 'experiments', 'configs', 'digits_dams.py')}",
       f"--workdir={workdir}", "--config.loss.name=vicreg"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "data.views=2" in lines[0], proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("loss", [["--config.loss.name=vicreg"],
                                  ["--config.loss.name=ntxent",
                                   "--config.loss.self_supervised=True"]])
def test_cli_trains_a_two_view_loss_on_the_default_data(tmp_path, loss):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli",
       f"--config={os.path.join(ROOT, 'experiments', 'configs', 'digits_dams.py')}",
       f"--workdir={workdir}", *loss, "--config.data.views=2",
       "--config.data.augment=True", "--config.margin.schedule=constant",
       "--config.train.epochs=1", "--config.train.steps_per_epoch=2",
       "--config.train.progress=False", "--config.train.tensorboard=False"],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  steps = [r for r in records if r["kind"] == "step"]
  assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
  with open(workdir / "config.json") as f:
    embedding_dim = json.load(f)["model"]["embedding_dim"]
  if "vicreg" in loss[0]:   # the variance hinges: one per dimension and view
    assert all(r["num_total"] == 2 * embedding_dim for r in steps)
  assert "val_loss" in [r for r in records if r["kind"] == "epoch"][0]


def _two_view_fit_config():
  from fit_helpers import tiny_config  # pylint: disable=import-outside-toplevel
  cfg = tiny_config("digits", epochs=1, steps_per_epoch=3)
  cfg.data.update(views=2, augment=True)
  cfg.loss.name = "vicreg"
  cfg.margin.schedule = "constant"
  cfg.train.tensorboard = False
  return cfg


_FOUR_DEVICES = """
import sys
import jax
from fit_helpers import run_config
from test_views import _two_view_fit_config
assert jax.device_count() == 4, jax.devices()
run_config(_two_view_fit_config(), sys.argv[1])   # data_parallel: the 4-device mesh
print("OK")
"""


@pytest.mark.slow
def test_two_view_fit_on_four_devices_matches_one_device(tmp_path):
  """The [A; B] batch sharded over 4 devices trains as on one (the loss splits the
  global batch, not each device's rows)."""
  from fit_helpers import read_lines, run_config  # pylint: disable=import-outside-toplevel
  run_config(_two_view_fit_config(), str(tmp_path / "one"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, str(tmp_path / "four")],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
  one, four = read_lines(tmp_path / "one"), read_lines(tmp_path / "four")
  assert len(one) == len(four) == 4   # 3 steps and the epoch
  for a, b in zip(one, four):
    assert set(a) == set(b)
    for key, value in a.items():
      if isinstance(value, float):
        np.testing.assert_allclose(b[key], value, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{a['kind']} {a['step']} {key}")
      else:
        assert value == b[key], key


@pytest.mark.slow
def test_a_killed_two_view_run_resumes_to_the_same_records(tmp_path):
  """The views are drawn from (seed, epoch, step): a run killed mid-epoch and resumed
  logs what an uninterrupted one does."""
  from fit_helpers import read_lines, run_config  # pylint: disable=import-outside-toplevel

  def config():
    cfg = _two_view_fit_config()
    cfg.train.update(epochs=2, steps_per_epoch=4)
    cfg.checkpoint.every_steps = 2
    return cfg

  whole, broken = tmp_path / "whole", tmp_path / "broken"
  summary = run_config(config(), str(whole))
  killed = config()
  killed.train.stop_after_steps = 7        # epoch 1, step 3 of 4: after the checkpoint at 6
  assert run_config(killed, str(broken)) is None
  assert run_config(config(), str(broken)) == summary
  assert read_lines(broken) == read_lines(whole)
