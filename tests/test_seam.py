"""The seam: schedules driven by any loss's statistics, losses with their own parameters
and state in the train state (checkpointed, resumed exactly), fit over built objects."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import distances, evaluation, losses, margins
from tsm import fit as fit_lib
from tsm import hooks
from tsm.data import samplers

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import


def _contrastive_easy_share(x: np.ndarray, labels: np.ndarray, margin: float) -> float:
  """Share of pairs i < j with zero contrastive loss, by a loop (paper B's form)."""
  easy = total = 0
  for i in range(len(labels)):
    for j in range(i + 1, len(labels)):
      d = np.float32(np.linalg.norm(x[i] - x[j]))
      loss = d * d if labels[i] == labels[j] else max(np.float32(0), np.float32(margin) - d)
      total += 1
      easy += loss == 0
  return easy / total


@pytest.mark.parametrize("above", [True, False])
def test_dams_driven_by_contrastive_stats_in_a_plain_jitted_loop(above):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 3).astype(np.int32)
  x = (rng.normal(size=(12, 5)) + 2.0 * np.eye(4, 5)[labels]).astype(np.float32)
  margin0 = 1.5
  share = _contrastive_easy_share(x, labels, margin0)
  assert 0.0 < share < 1.0
  threshold = share - 0.01 if above else share + 0.01
  schedule = margins.dams(initial_margin=margin0, threshold=threshold, increment=0.25)

  @jax.jit
  def epoch(state, x, labels):
    for _ in range(2):   # two "batches" of one epoch
      _, stats = losses.contrastive_loss(x, labels, state.margin)
      state = schedule.accumulate(state, stats)
    return state

  state = epoch(schedule.init(), jnp.asarray(x), jnp.asarray(labels))
  assert float(state.num_total) == 2 * 66    # 12 * 11 / 2 pairs, twice
  np.testing.assert_allclose(float(state.num_easy) / 132, share, rtol=1e-6)
  state = schedule.update(state)
  np.testing.assert_allclose(float(state.margin), margin0 + 0.25 if above else margin0,
                             rtol=1e-6)


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return distances.l2_normalize(nn.Dense(8)(nn.relu(nn.Dense(16)(x))))


def _scaled_triplet_with_running_mean() -> losses.ParametricLoss:
  """A small loss with one learnable parameter (a log scale on the triplet loss) and a
  running state (the mean of the unscaled loss over the steps seen, and their count)."""

  def init(rng, embedding_dim):
    del rng, embedding_dim
    return losses.LossVariables(params={"log_scale": jnp.float32(0.0)},
                                state={"mean": jnp.float32(0.0), "count": jnp.float32(0.0)})

  def apply(params, state, embeddings, labels, margin):
    value, stats = losses.triplet_margin_loss(embeddings, labels, margin)
    raw = jax.lax.stop_gradient(value)
    count = state["count"] + 1.0
    new_state = {"mean": state["mean"] + (raw - state["mean"]) / count, "count": count}
    # d/d log_scale of exp(s) * L + (s - 0.3)^2 / 2 moves s: a parameter the optimiser
    # must update together with the model's.
    loss = jnp.exp(params["log_scale"]) * value + 0.5 * (params["log_scale"] - 0.3) ** 2
    return loss, stats, new_state

  return losses.ParametricLoss(init=init, apply=apply)


def _data():
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(5), 24).astype(np.int32)
  x = (rng.normal(size=(120, 6)) + 2 * np.eye(5, 6)[y]).astype(np.float32)
  return {"train": (x[0::2], y[0::2]), "val": (x[1::4], y[1::4]), "test": (x[3::4], y[3::4])}


def _fit(workdir, **kw):
  data = _data()
  sampler = samplers.PKSampler(data["train"][1], 4, 3, seed=0, steps_per_epoch=4)
  return fit_lib.fit(
      _Net(), _scaled_triplet_with_running_mean(), margins.constant(0.3), optax.adam(1e-2),
      data, workdir=str(workdir), epochs=3, sampler=sampler, seed=2,
      evaluators=[evaluation.Retrieval("val")],
      final_evaluators=[evaluation.Retrieval("test")], best_metric="val_map@r",
      best_mode="max", checkpoint=fit_lib.CheckpointOptions(every_steps=1, keep=3,
                                                            async_save=False),
      hooks=hooks.standard(progress=False, tensorboard=False, figures=None), **kw)


def test_loss_parameters_and_state_are_trained_checkpointed_and_resumed_exactly(tmp_path):
  whole = _fit(tmp_path / "whole")
  # The optimiser moved the loss's parameter; the loss's rule counted every step.
  assert float(whole.state.loss_params["log_scale"]) != 0.0
  assert float(whole.state.loss_state["count"]) == 12.0
  assert float(whole.state.loss_state["mean"]) > 0.0
  steps = [json.loads(l) for l in open(tmp_path / "whole" / "metrics.jsonl")
           if '"kind": "step"' in l]
  assert len(steps) == 12
  # A killed run (stopped after 5 steps: mid-epoch) resumes to the same final state.
  assert _fit(tmp_path / "broken", options=fit_lib.LoopOptions(stop_after_steps=5)) is None
  resumed = _fit(tmp_path / "broken")
  for a, b in zip(jax.tree.leaves((whole.state.params, whole.state.loss_params,
                                   whole.state.loss_state, whole.state.opt_state)),
                  jax.tree.leaves((resumed.state.params, resumed.state.loss_params,
                                   resumed.state.loss_state, resumed.state.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.summary == whole.summary
  with open(tmp_path / "whole" / "summary.json") as f:
    assert json.load(f)["test"] == whole.summary["test"]


def test_fit_result_embeds_with_the_best_state(tmp_path):
  result = _fit(tmp_path / "run")
  x = _data()["test"][0]
  emb = result.embed(x)
  assert emb.shape == (len(x), 8)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  direct = _Net().apply({"params": result.best_state.params}, x, train=False)
  np.testing.assert_allclose(emb, np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_fit_rejects_data_it_cannot_read(tmp_path):
  with pytest.raises(ValueError, match="data must be"):
    fit_lib.fit(_Net(), losses.triplet_margin_loss, margins.constant(0.2),
                optax.adam(1e-3), [1, 2, 3], workdir=str(tmp_path), epochs=1)
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_batch_job_logs_have_plain_epoch_lines_and_no_progress_frames(tmp_path, capfd):
  # Under pytest stderr is not a terminal: no tqdm frames, whatever `progress` says, and
  # one plain line per epoch on stdout.
  data = _data()
  sampler = samplers.PKSampler(data["train"][1], 4, 3, seed=0, steps_per_epoch=2)
  fit_lib.fit(_Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-3),
              data, workdir=str(tmp_path), epochs=2, sampler=sampler,
              hooks=hooks.standard(progress=True, print_every_steps=1, tensorboard=False,
                                   figures=None))
  out, err = capfd.readouterr()
  assert "\r" not in err and "\r" not in out
  assert [l.split()[1] for l in out.splitlines() if l.startswith("epoch ")] == ["1/2", "2/2"]
  assert [l.split()[1] for l in out.splitlines() if l.startswith("step ")] == [
      "1/4", "2/4", "3/4", "4/4"]
