"""Seeds trained together (tsm.seeds) equal their separate runs.

The reference is each seed trained alone with the single-run step
(``tsm.train.make_train_step`` + ``make_end_of_epoch``, what ``tsm.fit.fit`` runs), from
``tsm.train.initial_state(seed)``, on the same sampler's batches gathered on the host.

Tolerance. The seed-axis step runs the same function under ``jax.vmap``; XLA may lower a
batched matrix product with another tiling (hence another float32 summation order) than
the single one, so results agree to float32 round-off, not bit for bit: 1e-5 absolute on
parameters and losses after 4 epochs x 4 steps of Adam at lr 1e-2 (float32's epsilon is
1.2e-7; a step moves each weight by at most about lr, and a last-bit difference in a
gradient changes the Adam step by a relative ~1e-6, so 16 steps stay far below 1e-5).
The margin trajectory and the triplet counts are compared exactly: they are integer
counts of the same embeddings' comparisons, and a flip would need a triplet within
round-off of the margin.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses, margins, seeds as seeds_lib, train
from tsm.data import samplers
from tsm.models import heads

SEEDS = [0, 1, 2]
EPOCHS = 4
TOL = 1e-5


class _Head(nn.Module):
  """A small head with BatchNorm (per-seed batch statistics) and dropout (per-seed keys).

  The Dense before BatchNorm has no bias: BatchNorm removes it, so its gradient would be
  zero up to round-off, and Adam scales round-off to steps of the learning rate's size.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16, use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return heads.l2_normalize(nn.Dense(8)(x))


def _data():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(48, 12)) + 0.8 * y[:, None]).astype(np.float32)
  return x, y


def _loss(emb, labels, margin):
  return losses.triplet_margin_loss(emb, labels, margin, mining="all")


def _separate(model, schedule, tx, x, y, seed, step, end):
  """One seed alone, with the single-run step ``step`` and ``end`` of epoch."""
  state = train.initial_state(model, _loss, schedule, tx, x.shape[1:], seed)
  sampler = samplers.PKSampler(y, 4, 4, seed)
  margins_seen, losses_seen, easy = [float(state.margin_state.margin)], [], []
  for epoch in range(EPOCHS):
    for idx in sampler.epoch(epoch):
      state, m = step(state, {"inputs": x[idx], "labels": y[idx]})
      losses_seen.append(float(m["loss"]))
      easy.append(float(m["num_easy"]))
    state = end(state)
    margins_seen.append(float(state.margin_state.margin))
  return state, np.array(margins_seen), np.array(losses_seen), np.array(easy)


def test_seeds_together_equal_separate_runs():
  model = _Head()
  x, y = _data()
  schedule = margins.dams(initial_margin=0.1, threshold=0.5, increment=0.1)
  tx = train.make_optimizer(optimizer="adam", learning_rate=1e-2)
  result = seeds_lib.train_seeds(
      model, _loss, schedule, tx, x, y, [samplers.PKSampler(y, 4, 4, s) for s in SEEDS],
      seeds=SEEDS, epochs=EPOCHS)
  assert result.margins.shape == (EPOCHS + 1, len(SEEDS))
  assert result.step_metrics["loss"].shape == (EPOCHS, 3, len(SEEDS))
  step, end = train.make_train_step(model, _loss, schedule, tx), train.make_end_of_epoch(
      schedule)
  for i, seed in enumerate(SEEDS):
    alone, margin_path, loss_path, easy = _separate(model, schedule, tx, x, y, seed, step,
                                                    end)
    mine = seeds_lib.take(result.state, i)
    np.testing.assert_array_equal(result.margins[:, i], margin_path)
    np.testing.assert_array_equal(result.step_metrics["num_easy"][..., i].ravel(), easy)
    np.testing.assert_allclose(result.step_metrics["loss"][..., i].ravel(), loss_path,
                               rtol=0, atol=TOL)
    for got, want in zip(jax.tree_util.tree_leaves((mine.params, mine.batch_stats,
                                                    mine.opt_state)),
                         jax.tree_util.tree_leaves((alone.params, alone.batch_stats,
                                                    alone.opt_state))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=TOL)
    assert int(mine.step) == int(alone.step) == EPOCHS * 3
    # The epoch records are those fit writes (margin, counts), per seed.
    records = result.epoch_records(i)
    assert [r["margin"] for r in records] == pytest.approx(margin_path[:-1].tolist())
    assert records[-1]["margin_next"] == pytest.approx(margin_path[-1])
  # DAMS moved each seed on its own counts: every margin moved, and not in step (here
  # seed 2 is raised one epoch after seeds 0 and 1, and seed 1 once more at the end).
  assert np.all(result.margins[-1] > result.margins[0])
  assert len({tuple(result.margins[:, i]) for i in range(len(SEEDS))}) == 3
  # Each seed's embeddings are its own model's.
  embed = seeds_lib.make_seeds_embed(model, batch_size=20)
  emb = embed(result.state, x)
  assert emb.shape == (len(SEEDS), x.shape[0], 8)
  apply = jax.jit(lambda variables, inputs: model.apply(variables, inputs, train=False))
  for i in range(len(SEEDS)):
    mine = seeds_lib.take(result.state, i)
    variables = {"params": mine.params}
    if mine.batch_stats:
      variables["batch_stats"] = mine.batch_stats
    np.testing.assert_allclose(emb[i], apply(variables, x), atol=TOL)


def test_bad_input_is_one_line_before_compiling():
  x, y = _data()
  model = _Head()
  schedule, tx = margins.constant(0.2), train.make_optimizer()
  good = [samplers.PKSampler(y, 4, 4, s) for s in SEEDS]
  cases = [
      (dict(seeds=[0, 0, 1], epochs=1, samplers=good), "repeat a seed"),
      (dict(seeds=[], epochs=1, samplers=[]), "non-empty list"),
      (dict(seeds=SEEDS, epochs=0, samplers=good), "epochs=0"),
      (dict(seeds=SEEDS, epochs=1, samplers=good[:2]), "one sampler per seed"),
      (dict(seeds=SEEDS, epochs=1,
            samplers=good[:2] + [samplers.PKSampler(y, 2, 4, 2)]), "steps per epoch"),
  ]
  cases.append((dict(seeds=SEEDS, epochs=1, samplers=good, margin_update="daily"),
                "margin_update"))
  cases.append((dict(seeds=SEEDS, epochs=1, samplers=good,
                     state=seeds_lib.init_seeds(model, _loss, schedule, tx, (12,), [0, 1])),
                "2,\\) seeds, not 3"))
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message) as info:
      seeds_lib.train_seeds(model, _loss, schedule, tx, x, y, kwargs.pop("samplers"),
                            **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_seeds_together_equal_fit_runs(tmp_path):
  # The separate runs are tsm.fit.fit's own (loader, checkpoints and all), one per seed.
  from tsm import fit as fit_lib  # pylint: disable=import-outside-toplevel
  x, y = _data()
  model = _Head()
  schedule = margins.dams(initial_margin=0.1, threshold=0.5, increment=0.1)
  tx = train.make_optimizer(optimizer="adam", learning_rate=1e-2)
  result = seeds_lib.train_seeds(
      model, _loss, schedule, tx, x, y, [samplers.PKSampler(y, 4, 4, s) for s in SEEDS],
      seeds=SEEDS, epochs=EPOCHS)
  for i, seed in enumerate(SEEDS):
    run = fit_lib.fit(model, _loss, schedule, tx, {"train": (x, y)},
                      workdir=str(tmp_path / f"seed{seed}"), epochs=EPOCHS,
                      sampler=samplers.PKSampler(y, 4, 4, seed), seed=seed, hooks=[])
    mine = seeds_lib.take(result.state, i)
    for got, want in zip(jax.tree_util.tree_leaves((mine.params, mine.batch_stats)),
                         jax.tree_util.tree_leaves((run.state.params,
                                                    run.state.batch_stats))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=TOL)
    records = result.epoch_records(i)
    for mine_r, fit_r in zip(records, run.history):
      assert mine_r["margin"] == fit_r["margin"]
      assert mine_r["margin_next"] == fit_r["margin_next"]
      assert mine_r["num_easy"] == fit_r["num_easy"]
      assert mine_r["loss"] == pytest.approx(fit_r["loss"], abs=TOL)
