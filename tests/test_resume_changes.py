"""Continuing a run with changed optimiser settings or more epochs
(``--resume_with_changes``): what may change, what stays refused, and what is recorded."""

from __future__ import annotations

import json
import os

import pytest

from tsm import config as config_lib
from tsm import train as train_lib

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import tiny_config


def _saved(tmp_path, cfg):
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_json(cfg)))
  return str(tmp_path)


def _changed(**train):
  cfg = tiny_config()
  cfg.train.update(train)
  return cfg


def test_a_changed_learning_rate_names_the_flag_and_is_accepted_with_it(tmp_path):
  workdir = _saved(tmp_path, tiny_config())
  new = _changed(learning_rate=1e-4)
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.check_same_run(workdir, new)
  message = str(info.value)
  assert "\n" not in message and "train.learning_rate (0.001 there, 0.0001 now)" in message
  assert "--resume_with_changes" in message
  assert config_lib.check_same_run(workdir, new, resume_with_changes=True) == {
      "train.learning_rate": [1e-3, 1e-4]}


@pytest.mark.parametrize("field,value", [("optimizer", "sgd"), ("sampling", "random"),
                                         ("classes_per_batch", 2)])
def test_every_other_change_stays_refused_naming_the_field(tmp_path, field, value):
  workdir = _saved(tmp_path, tiny_config())
  with pytest.raises(config_lib.ConfigError, match=f"train.{field} .*cannot change"):
    config_lib.check_same_run(workdir, _changed(**{field: value}),
                              resume_with_changes=True)


def test_a_change_of_the_optimiser_states_structure_is_refused(tmp_path):
  workdir = _saved(tmp_path, tiny_config())
  with pytest.raises(config_lib.ConfigError, match="train.warmup_steps .*structure"):
    config_lib.check_same_run(workdir, _changed(warmup_steps=5), resume_with_changes=True)


def test_clipping_leaves_the_optimiser_state_and_clips_like_optax():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([30.0, 40.0, 0.0])}
  clipped = train_lib.make_optimizer(learning_rate=0.1, grad_clip_norm=1.0)
  plain = train_lib.make_optimizer(learning_rate=0.1)
  reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
  assert (jax_structure(clipped.init(params)) == jax_structure(plain.init(params)))
  ours, _ = clipped.update(grads, clipped.init(params), params)
  theirs, _ = reference.update(grads, reference.init(params), params)
  assert jnp.allclose(ours["w"], theirs["w"], rtol=0, atol=0)


def jax_structure(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.structure(tree)


def test_fewer_epochs_than_trained_are_refused(tmp_path):
  workdir = _saved(tmp_path, _changed(epochs=3))
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"kind": "epoch", "epoch": e}) + "\n" for e in range(3)))
  with pytest.raises(config_lib.ConfigError, match="train.epochs=2 is below the 3 epochs"):
    config_lib.check_same_run(workdir, _changed(epochs=2), resume_with_changes=True)


def test_a_damaged_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text('{"train": ')
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  with pytest.raises(workdir_lib.DamagedRun, match="config.json is damaged") as info:
    config_lib.check_same_run(str(tmp_path), tiny_config())
  assert "\n" not in str(info.value)


@pytest.mark.slow
def test_more_epochs_continue_the_run_exactly_and_are_recorded(tmp_path):
  straight = config_lib.train_and_evaluate(_changed(epochs=3), str(tmp_path / "straight"))
  workdir = tmp_path / "continued"
  config_lib.train_and_evaluate(tiny_config(), str(workdir))
  continued = config_lib.train_and_evaluate(_changed(epochs=3), str(workdir),
                                            resume_with_changes=True)
  assert continued.summary == straight.summary
  records = read_lines(workdir)
  change = [r for r in records if r["kind"] == "change"]
  assert change == [{"kind": "change", "step": 12, "epoch": 2,
                     "changes": {"train.epochs": [2, 3]}}]
  assert [r for r in records if r["kind"] != "change"] == read_lines(tmp_path / "straight")
  with open(workdir / "changes.jsonl") as f:
    assert [json.loads(l)["changes"] for l in f] == [{"train.epochs": [2, 3]}]
  with open(workdir / "config.json") as f:
    assert json.load(f)["train"]["epochs"] == 3   # the plain command now resumes it
  assert os.path.exists(workdir / "summary.json")


def test_a_run_saved_before_a_field_existed_is_the_same_run_at_that_fields_default(tmp_path):
  saved = config_lib.to_json(tiny_config())
  del saved["loss"]["beta_per_class"]   # a field tsm added after this run was saved
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert config_lib.check_same_run(str(tmp_path), tiny_config()) == {}
  # Away from its default the new field is a change like any other.
  changed = tiny_config()
  changed.loss.beta_per_class = True
  with pytest.raises(config_lib.ConfigError, match=r"loss\.beta_per_class \(None there, "
                     r"True now\)\); that field cannot change"):
    config_lib.check_same_run(str(tmp_path), changed)
  # A field present in the saved config keeps its saved value, default or not.
  saved["loss"]["beta_per_class"] = True
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(config_lib.ConfigError, match="beta_per_class"):
    config_lib.check_same_run(str(tmp_path), tiny_config())
