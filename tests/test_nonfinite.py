"""``nonfinite="skip"``: skipped steps are counted and kept out of the epoch's means, a run
of them stops with one line, NaN inputs are named, and nothing non-finite is written."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import artifacts, evaluation, history, hooks, losses, margins
from tsm import fit as fit_lib
from tsm.data import samplers

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(4)(x)


def _data(nan_row=None):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(48, 3)) + 2 * np.eye(4, 3)[y]).astype(np.float32)
  train = (x[0::2].copy(), y[0::2])
  if nan_row is not None:
    train[0][nan_row] = np.nan
  return {"train": train, "val": (x[1::4], y[1::4]), "test": (x[3::4], y[3::4])}


def _fit(workdir, data, loss=losses.triplet_margin_loss, hook_list=None, **options):
  sampler = samplers.PKSampler(data["train"][1], 2, 3, seed=0, steps_per_epoch=6)
  return fit_lib.fit(_Net(), loss, margins.constant(0.2), optax.adam(1e-2), data,
                     workdir=str(workdir), epochs=2, sampler=sampler,
                     evaluators=[evaluation.Retrieval("val")], best_metric="val_map@r",
                     best_mode="max", final_evaluators=[evaluation.Retrieval("test")],
                     checkpoint=fit_lib.CheckpointOptions(async_save=False),
                     options=fit_lib.LoopOptions(log_every=1, **options),
                     hooks=hook_list if hook_list is not None else hooks.standard(
                         progress=False, figures=None))


def test_a_nan_train_row_is_skipped_counted_and_kept_out_of_the_printed_loss(tmp_path,
                                                                            capsys):
  data = _data(nan_row=0)
  sampler = samplers.PKSampler(data["train"][1], 2, 3, seed=0, steps_per_epoch=6)
  expected = sum(int(0 in b) for e in range(2) for b in sampler.epoch(e))
  assert expected > 0
  result = _fit(tmp_path, data, nonfinite="skip")
  out, err = capsys.readouterr()
  assert err.count("\n") == 1 and "train inputs hold NaN or inf in 1 row(s) (first: row 0)" in err
  epoch_lines = [l for l in out.splitlines() if l.startswith("epoch ")]
  # No NaN printed (the closing line names the workdir, whose name holds "nan").
  assert "nan" not in out.replace(str(tmp_path), "").lower()
  assert sum(int(l.split("skipped ")[1].split()[0]) for l in epoch_lines
             if "skipped" in l) == expected
  assert result.summary["skipped_steps"] == expected
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["skipped_steps"] == expected
  epochs = [r for r in read_lines(tmp_path) if r["kind"] == "epoch"]
  steps = [r for r in read_lines(tmp_path) if r["kind"] == "step"]
  # The epoch loss is the mean over the applied steps only (a hand computation).
  for e in epochs:
    kept = [r["loss"] for r in steps if r["epoch"] == e["epoch"] and not r["nonfinite"]]
    assert e["loss"] == pytest.approx(float(np.mean(kept)), rel=0, abs=0)
  assert all(r["loss"] is None for r in steps if r["nonfinite"])   # strict JSON: null
  with open(tmp_path / "metrics.jsonl") as f:
    assert "NaN" not in f.read()
  assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(result.state.params))


def test_nan_inputs_under_stop_are_one_line_naming_the_split(tmp_path):
  with pytest.raises(ValueError, match=r"train inputs hold NaN or inf in 1 row\(s\) "
                     r"\(first: row 3\); remove or fix") as info:
    _fit(tmp_path, _data(nan_row=3))
  assert "\n" not in str(info.value)
  assert not os.path.exists(tmp_path / "metrics.jsonl")   # before anything was written


def test_a_run_of_skipped_steps_stops_with_one_line_and_no_nonfinite_checkpoint(tmp_path):
  def always_nan(embeddings, labels, margin):
    value, stats = losses.triplet_margin_loss(embeddings, labels, margin)
    return value * jnp.nan, stats

  with pytest.raises(history.NonFiniteError) as info:
    _fit(tmp_path, _data(), loss=always_nan, nonfinite="skip", max_skipped_steps=4)
  assert str(info.value).startswith("step 4: 4 steps in a row were skipped, their loss "
                                    "not finite")
  assert not os.listdir(tmp_path / "checkpoints")


def test_an_update_that_overflows_the_parameters_is_skipped():
  # An update of 1e60 x the gradient: the loss and the gradient are finite, the updated
  # parameters are not (float32 overflows).
  from tsm import train as train_lib  # pylint: disable=import-outside-toplevel
  data = _data()
  model, schedule = _Net(), margins.constant(0.2)
  tx = optax.chain(optax.scale(1e30), optax.sgd(1e30))
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros((1, 3))))
  batch = {"inputs": jnp.asarray(data["train"][0][:12]),
           "labels": jnp.asarray(data["train"][1][:12])}

  def step(skip):
    state = train_lib.create_train_state(jax.tree.map(jnp.array, variables), tx, schedule,
                                         jax.random.key_data(jax.random.key(1)))
    return train_lib.make_train_step(model, losses.triplet_margin_loss, schedule, tx,
                                     skip_nonfinite=skip)(state, batch)

  applied, metrics = step(False)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert not all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(applied.params))
  kept, metrics = step(True)
  assert float(metrics["nonfinite"]) == 1.0 and int(kept.step) == 1
  for new, old in zip(jax.tree.leaves(kept.params), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_json_files_are_strict():
  text = artifacts.dumps({"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": None})
  assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": None}
  assert "NaN" not in text and "Infinity" not in text


def test_the_epoch_line_shows_a_missing_number_as_a_dash():
  record = {"epoch": 0, "loss": None, "margin": 0.2, "easy_share": None, "val_loss": np.nan,
            "num_skipped": 6}
  line = history.epoch_line(record, 2)
  assert line.startswith("epoch 1/2  loss —  mu 0.200  easy —  val_loss —")
  assert "skipped 6" in line
