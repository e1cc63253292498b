"""Checkpoints: last k plus the best; exact resumption of a run killed mid-epoch."""

from __future__ import annotations

import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import checkpoint as checkpoint_lib
from tsm import config as config_lib
from tsm import margins
from tsm import train as train_lib

from fit_helpers import run_config  # noqa: E402
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines


def _state(value: float = 0.0) -> train_lib.TrainState:
  params = {"dense": {"kernel": jnp.full((3, 2), value), "bias": jnp.zeros((2,))}}
  tx = optax.adam(1e-3)
  return train_lib.create_train_state({"params": params}, tx, margins.dams(),
                                      jax.random.PRNGKey(0))


def test_keeps_the_last_k_and_the_best(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(tmp_path, keep=2, best_metric="val_loss",
                                     best_mode="min", async_save=False)
  state = _state()
  assert ckpt.latest_step() is None and ckpt.best_step() is None
  ckpt.save(1, state, {"epoch": 0}, metrics={"val_loss": 0.9})
  ckpt.save(2, state, {"epoch": 1}, metrics={"val_loss": 0.3})   # the best
  ckpt.save(3, state, {"epoch": 1, "step_in_epoch": 4})            # mid-epoch, no metrics
  ckpt.save(4, state, {"epoch": 2}, metrics={"val_loss": float("nan")})   # ranks worst
  ckpt.save(5, state, {"epoch": 3}, metrics={"val_loss": 0.5})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  ckpt.close()
  again = checkpoint_lib.Checkpointer(tmp_path, keep=2, best_metric="val_loss")
  assert again.best_step() == 2 and again.latest_step() == 5
  again.close()


def test_best_mode_max(tmp_path):
  with checkpoint_lib.Checkpointer(tmp_path, keep=1, best_metric="val_map@r",
                                   best_mode="max") as ckpt:
    state = _state()
    for step, value in enumerate([0.2, 0.6, 0.4], start=1):
      ckpt.save(step, state, {"epoch": step}, metrics={"val_map@r": value})
    assert ckpt.best_step() == 2
    assert ckpt.all_steps() == [2, 3]


def test_restore_gives_back_structure_dtypes_and_values(tmp_path):
  state = _state(0.25)
  state = state.replace(step=jnp.asarray(7, jnp.int32),
                        margin_state=state.margin_state._replace(margin=jnp.float32(0.35)))
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, state, {"epoch": 2, "step_in_epoch": 3})
    restored, meta = ckpt.restore(7, _state())
  assert meta == {"epoch": 2, "step_in_epoch": 3}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert isinstance(restored.margin_state, margins.MarginState)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_bad_keep_is_one_line():
  with pytest.raises(ValueError, match="checkpoint.keep"):
    checkpoint_lib.Checkpointer("/nonexistent", keep=0)


# ------------------------------------------------------------------ resumption of a fit


def _resume_config() -> config_lib.ml_collections.ConfigDict:
  cfg = config_lib.default_config()
  cfg.data.name = "digits"
  cfg.data.val_fraction = 0.2
  cfg.data.augment = True            # augmentation must resume exactly too
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (32,)
  cfg.model.head = "paper_a"          # dropout: per-step keys must resume exactly
  cfg.model.head_hidden = (16, 16)
  cfg.model.embedding_dim = 8
  cfg.margin.schedule = "dams"
  cfg.margin.threshold = 0.3          # so that the margin moves during the run
  cfg.train.epochs = 3
  cfg.train.classes_per_batch = 4
  cfg.train.samples_per_class = 4
  cfg.train.steps_per_epoch = 7
  cfg.train.log_every = 3
  cfg.train.progress = False
  cfg.eval.every_epochs = 2
  cfg.eval.num_pairs = 100
  cfg.checkpoint.every_steps = 3
  return cfg


def _final_state(workdir):
  import orbax.checkpoint as ocp   # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  with warnings.catch_warnings():   # no template: orbax reads the saved shardings
    warnings.simplefilter("ignore", UserWarning)
    return step, ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step),
                                                               "state"))


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
  whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
  summary_whole = run_config(_resume_config(), whole)

  killed = _resume_config()
  killed.train.stop_after_steps = 11       # epoch 1, step 4 of 7: after the checkpoint at 9
  assert run_config(killed, broken) is None
  assert not os.path.exists(os.path.join(broken, "summary.json"))
  # The killed process wrote step lines past its last checkpoint (step 9): 11 steps, 1 epoch.
  assert [r["step"] for r in read_lines(broken) if r["kind"] == "step"][-1] == 11
  killed.train.stop_after_steps = 5        # a second kill, inside the resumed run
  assert run_config(killed, broken) is None
  summary_broken = run_config(_resume_config(), broken)

  lines_whole, lines_broken = read_lines(whole), read_lines(broken)
  steps = [r["step"] for r in lines_broken if r["kind"] == "step"]
  assert steps == list(range(1, 22))       # no duplicated or missing line
  assert lines_broken == lines_whole
  assert summary_broken == summary_whole
  margins_seen = {r["margin"] for r in lines_whole if r["kind"] == "step"}
  assert len(margins_seen) > 1             # DAMS moved the margin during the run
  step_whole, state_whole = _final_state(whole)
  step_broken, state_broken = _final_state(broken)
  assert step_whole == step_broken == 21
  flat_whole = jax.tree_util.tree_leaves_with_path(state_whole)
  flat_broken = jax.tree_util.tree_leaves_with_path(state_broken)
  assert [p for p, _ in flat_whole] == [p for p, _ in flat_broken]
  for (path, a), (_, b) in zip(flat_whole, flat_broken):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  assert math.isclose(float(state_whole["margin_state"]["margin"]),
                      summary_whole["final_margin"], rel_tol=1e-6)

  # A rerun of a finished workdir trains no further and reports the same summary.
  assert run_config(_resume_config(), broken) == summary_whole
  assert read_lines(broken) == lines_whole
