"""The jitted train step, the margin bookkeeping and end-to-end fits (data parallelism:
test_scale.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import config as config_lib
from tsm import evaluation
from tsm import losses
from tsm import models
from tsm import train as train_lib

from fit_helpers import run_config  # noqa: E402
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SHAPE = (6,)


def _setup(loss="triplet", sampling="pk", schedule="constant", update_every="epoch",
           **margin):
  cfg = config_lib.default_config()
  cfg.loss.name = loss
  cfg.train.sampling = sampling
  cfg.margin.schedule = schedule
  cfg.margin.update_every = update_every
  cfg.margin.update(margin)
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (8,)
  cfg.model.embedding_dim = 4
  cfg.train.epochs = 10
  model = config_lib.build_model(cfg, INPUT_SHAPE)
  variables = models.init_variables(model, jax.random.key(0), INPUT_SHAPE)
  schedule_fn = config_lib.build_schedule(cfg, steps_per_epoch=1)
  tx = config_lib.build_optimizer(cfg, 100)
  state = train_lib.create_train_state(variables, tx, schedule_fn, jax.random.PRNGKey(1))
  step = train_lib.make_train_step(model, config_lib.build_loss(cfg), schedule_fn, tx,
                                   margin_update=update_every)
  return cfg, model, schedule_fn, tx, state, step


def _batch(n=12, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"inputs": rng.normal(size=(n,) + INPUT_SHAPE).astype(np.float32),
          "labels": np.repeat(np.arange(classes), n // classes).astype(np.int32)}


def test_step_is_jitted_donates_its_state_and_never_recompiles_for_a_new_margin():
  _, _, _, _, state, step = _setup()
  batch = _batch()
  old_params = state.params
  state, metrics = step(state, batch)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))   # donated
  seen = []
  for mu in (0.1, 0.35, 0.8, 1.3):
    state = state.replace(margin_state=state.margin_state._replace(margin=jnp.float32(mu)))
    state, metrics = step(state, batch)
    seen.append(float(metrics["margin"]))
  np.testing.assert_allclose(seen, [0.1, 0.35, 0.8, 1.3], rtol=1e-6)
  assert step._cache_size() == 1
  assert int(state.step) == 5


def test_metrics_and_margin_accumulation_match_the_loss():
  cfg, model, schedule, _, state, step = _setup(schedule="dams", threshold=0.0,
                                                increment=0.1)
  batch = _batch()
  params, margin = state.params, float(state.margin_state.margin)
  embeddings = model.apply({"params": params}, batch["inputs"], train=True)
  loss, stats = losses.triplet_margin_loss(embeddings, batch["labels"], margin)
  state, metrics = step(state, batch)
  expected = {"loss", "num_triplets", "num_easy", "num_semihard", "num_hard",
              "active_ratio", "grad_norm", "margin", "mean_pos_dist", "mean_neg_dist",
              "easy_share"}
  assert expected <= set(metrics)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert float(metrics["num_triplets"]) == float(stats.num_triplets) == 3 * 4 * 3 * 8
  assert float(metrics["num_easy"] + metrics["num_semihard"] + metrics["num_hard"]) == float(
      metrics["num_triplets"])
  assert float(metrics["grad_norm"]) > 0 and math.isfinite(float(metrics["grad_norm"]))
  # The step added its counts to the margin state; end_of_epoch applies DAMS and resets.
  state, metrics2 = step(state, batch)
  ms = state.margin_state
  assert float(ms.num_total) == 2 * float(metrics["num_triplets"])
  assert float(ms.num_easy) == float(metrics["num_easy"] + metrics2["num_easy"])
  end = train_lib.make_end_of_epoch(schedule)
  state = end(state)
  np.testing.assert_allclose(state.margin_state.margin, margin + 0.1, rtol=1e-6)
  assert float(state.margin_state.num_total) == 0 and int(state.margin_state.epoch) == 1
  del cfg


def test_margin_update_every_step():
  _, _, _, _, state, step = _setup(schedule="dams", update_every="step", threshold=0.0,
                                   increment=0.05)
  batch = _batch()
  for _ in range(3):
    state, metrics = step(state, batch)
  np.testing.assert_allclose(metrics["margin"], 0.3, rtol=1e-6)   # 0.2 + 2 x 0.05
  np.testing.assert_allclose(state.margin_state.margin, 0.35, rtol=1e-6)


@pytest.mark.parametrize("loss,sampling,rows", [
    ("triplet", "random", 12), ("triplet", "triplets", 12), ("contrastive", "pk", 12),
    ("contrastive", "pairs", 12)])
def test_every_loss_and_sampling_gives_finite_metrics(loss, sampling, rows):
  _, _, _, _, state, step = _setup(loss=loss, sampling=sampling)
  batch = _batch(rows)
  if sampling == "triplets":     # anchors, positives, negatives
    batch["labels"] = np.asarray([0, 1, 2, 0] * 2 + [1, 2, 0, 1], np.int32)
  state, metrics = step(state, batch)
  for key, value in metrics.items():
    assert np.isfinite(value), key
  if loss == "contrastive":
    assert {"num_pairs", "num_positive", "num_negative", "num_active"} <= set(metrics)
    assert float(metrics["num_easy"]) == float(metrics["num_pairs"] - metrics["num_active"])
    # The margin schedule counts pairs (zero-loss pairs as easy).
    assert float(state.margin_state.num_total) == float(metrics["num_pairs"])
  if sampling == "triplets":
    assert float(metrics["num_triplets"]) == 4


def test_eval_step_is_the_loss_in_inference_mode():
  cfg, model, _, _, state, _ = _setup()
  batch = _batch()
  eval_step = train_lib.make_eval_step(model, config_lib.build_loss(cfg))
  out = eval_step(state, batch, jnp.float32(1.0))
  embeddings = model.apply({"params": state.params}, batch["inputs"], train=False)
  loss, _ = losses.triplet_margin_loss(embeddings, batch["labels"], 1.0)
  np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)


# The 4-device data-parallel checks (step and fit against 1 device) are in test_scale.py.


# ---------------------------------------------------------------------- end-to-end fits


def _check_run(workdir, epochs):
  records = read_lines(workdir)
  epoch_records = [r for r in records if r["kind"] == "epoch"]
  assert len(epoch_records) == epochs
  for r in records:
    for key, value in r.items():
      if isinstance(value, float):
        assert math.isfinite(value), (key, r)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  for key in ("recall@1", "map@r", "auc", "eer", "accuracy"):
    assert 0.0 <= summary["test"][key] <= 1.0, key
  assert os.path.getsize(os.path.join(workdir, "training.png")) > 1000
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  return epoch_records, summary


@pytest.mark.slow
@pytest.mark.parametrize("dataset,model", [("digits", "mlp"), ("mnist1d", "conv1d")])
def test_fit_end_to_end_loss_decreases(tmp_path, dataset, model):
  cfg = tiny_config(dataset, epochs=4, steps_per_epoch=8)
  cfg.model.name = model
  if model == "conv1d":
    cfg.model.hidden_sizes = ()
  cfg.train.learning_rate = 3e-3
  cfg.margin.schedule = "constant"     # a constant margin: the loss is comparable
  cfg.eval.every_epochs = 2
  summary = run_config(cfg, str(tmp_path))
  epoch_records, saved = _check_run(tmp_path, 4)
  assert saved == summary
  assert epoch_records[-1]["loss"] < epoch_records[0]["loss"]
  assert epoch_records[-1]["val_loss"] < epoch_records[0]["val_loss"]
  assert "val_map@r" in epoch_records[1] and "val_map@r" not in epoch_records[0]


def test_fit_embeds_every_split_with_one_apply_fn(tmp_path, monkeypatch):
  # One apply_fn object for the whole run: evaluation.embed's jit cache then compiles the
  # forward pass once per batch shape, not once per evaluation.
  seen = []
  jitted = evaluation._jitted  # pylint: disable=protected-access

  def spy(apply_fn):
    seen.append(apply_fn)
    return jitted(apply_fn)

  monkeypatch.setattr(evaluation, "_jitted", spy)
  run_config(tiny_config(epochs=2, steps_per_epoch=2), str(tmp_path))
  assert len(seen) >= 3    # validation after each epoch, then the summary's splits
  assert all(fn is seen[0] for fn in seen)


@pytest.mark.slow
def test_cli_runs_the_default_experiment_config(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli",
       f"--config={os.path.join(ROOT, 'experiments', 'configs', 'digits_dams.py')}",
       f"--workdir={workdir}", "--config.train.epochs=2",
       "--config.train.steps_per_epoch=5", "--config.train.progress=False"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test:" in proc.stdout and "map@r" in proc.stdout
  _check_run(workdir, 2)
