"""Cross-batch memory against a numpy reference of PML's CrossBatchMemory, and resume."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import checkpoint as checkpoint_lib
from tsm import losses, margins, miners, models
from tsm import train as train_lib

import pml_reference as ref


def _batches(num, b, d, classes, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num):
    x = rng.normal(size=(b, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    yield x, rng.integers(0, classes, b).astype(np.int32)


def _run(loss, memory_size, batches, margin):
  xbm = losses.cross_batch_memory(loss, memory_size)
  state = xbm.init(jax.random.key(0), batches[0][0].shape[1]).state
  apply = jax.jit(xbm.apply)
  out = []
  for x, y in batches:
    value, stats, state = apply({}, state, jnp.asarray(x), jnp.asarray(y), margin)
    out.append((float(value), stats))
  return out, state


@pytest.mark.parametrize("batch,memory", [(4, 10), (5, 5), (3, 7)])
@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean"])
def test_triplet_xbm_matches_pml_over_batches(batch, memory, reduction):
  batches = list(_batches(6, batch, 5, 3, seed=batch + memory))
  loss = functools.partial(losses.triplet_margin_loss, reduction=reduction)
  got, state = _run(loss, memory, batches, 0.3)
  reference = ref.CrossBatchMemory(
      lambda x, y, t, e, l: ref.triplet_loss(x, y, 0.3, t, r=e, reduction=reduction),
      memory, 5)
  for (x, y), (value, _) in zip(batches, got):
    np.testing.assert_allclose(value, reference(x, y), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(state.embeddings, reference.embedding_memory, atol=1e-7)
  np.testing.assert_array_equal(state.labels, reference.label_memory)
  assert int(state.pointer) == reference.queue_idx


def test_contrastive_xbm_matches_pml_over_batches():
  batches = list(_batches(5, 4, 6, 2, seed=3))
  loss = functools.partial(losses.contrastive_loss, positive_margin=0.1)
  got, _ = _run(loss, 9, batches, 1.2)
  reference = ref.CrossBatchMemory(
      lambda x, y, t, e, l: ref.contrastive_loss(x, y, 1.2, t, r=e, ref_labels=l,
                                                 positive_margin=0.1), 9, 6)
  for (x, y), (value, _) in zip(batches, got):
    np.testing.assert_allclose(value, reference(x, y), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["multi_similarity", "batch_hard", "triplet_margin"])
def test_xbm_miner_option_matches_pml(name):
  batches = list(_batches(5, 4, 5, 3, seed=11))
  tsm_miner = {"multi_similarity": functools.partial(miners.multi_similarity_miner,
                                                     epsilon=0.3),
               "batch_hard": miners.batch_hard_miner,
               "triplet_margin": functools.partial(miners.triplet_margin_miner,
                                                   margin=0.3)}[name]
  ref_miner = {"multi_similarity": functools.partial(ref.multi_similarity, epsilon=0.3),
               "batch_hard": functools.partial(ref.batch_easy_hard, pos_strategy="hard",
                                               neg_strategy="hard"),
               "triplet_margin": functools.partial(ref.triplet_margin, margin=0.3)}[name]
  xbm = losses.cross_batch_memory(
      functools.partial(losses.triplet_margin_loss, reduction="mean_nonzero"), 8,
      miner=tsm_miner)
  state = xbm.init(jax.random.key(0), 5).state
  reference = ref.CrossBatchMemory(
      lambda x, y, t, e, l: ref.triplet_loss(x, y, 0.3, t, r=e), 8, 5,
      miner=lambda x, y, e, l: ref_miner(x, y, e, l))
  for x, y in batches:
    value, _, state = xbm.apply({}, state, jnp.asarray(x), jnp.asarray(y), 0.3)
    np.testing.assert_allclose(float(value), reference(x, y), rtol=2e-5, atol=1e-6)


def test_xbm_gradient_flows_to_the_batch_only():
  (x0, y0), (x1, y1) = _batches(2, 4, 5, 2, seed=5)
  xbm = losses.cross_batch_memory(losses.triplet_margin_loss, 8)
  state = xbm.init(jax.random.key(0), 5).state
  _, _, state = xbm.apply({}, state, jnp.asarray(x0), jnp.asarray(y0), 0.5)
  grad = jax.grad(lambda e: xbm.apply({}, state, e, jnp.asarray(y1), 0.5)[0])(
      jnp.asarray(x1))
  # Reference: the same loss with the memory (the new copies too) held constant.
  mem = np.concatenate([x0, x1])
  lab = np.concatenate([y0, y1])
  weights = np.ones((4, 8), np.float32)
  weights[np.arange(4), 4 + np.arange(4)] = 0

  def fixed(e):
    return losses.triplet_margin_loss(e, jnp.asarray(y1), 0.5,
                                      ref_embeddings=jnp.asarray(mem),
                                      ref_labels=jnp.asarray(lab),
                                      pair_weights=jnp.asarray(weights))[0]
  np.testing.assert_allclose(grad, jax.grad(fixed)(jnp.asarray(x1)), atol=1e-6)
  assert np.all(np.isfinite(grad))


def test_xbm_rejects_bad_arguments():
  with pytest.raises(ValueError, match="memory_size"):
    losses.cross_batch_memory(losses.triplet_margin_loss, 0)
  with pytest.raises(ValueError, match="ref_embeddings"):
    losses.cross_batch_memory(losses.npair_loss, 8)
  xbm = losses.cross_batch_memory(losses.triplet_margin_loss, 3)
  state = xbm.init(jax.random.key(0), 2).state
  with pytest.raises(ValueError, match="memory_size >= 4"):
    xbm.apply({}, state, jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), 0.1)


def test_xbm_queue_checkpoints_and_resumes_exactly(tmp_path):
  model = models.create_model("mlp", input_shape=(6,), embedding_dim=4,
                              hidden_sizes=(8,))
  variables = models.init_variables(model, jax.random.key(0), (6,))
  tx = optax.adam(1e-2)
  schedule = margins.constant(0.2)
  loss = losses.cross_batch_memory(losses.triplet_margin_loss, 10)
  state = train_lib.create_train_state(variables, tx, schedule, jax.random.PRNGKey(1),
                                       loss_variables=loss.init(jax.random.key(2), 4))
  step = train_lib.make_train_step(model, loss, schedule, tx)
  rng = np.random.default_rng(0)
  batches = [{"inputs": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
              "labels": jnp.asarray(rng.integers(0, 2, 4), jnp.int32)} for _ in range(6)]
  for batch in batches[:3]:
    state, _ = step(state, batch)
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(3, state, {"epoch": 0})
    restored, _ = ckpt.restore(3, jax.tree.map(jnp.zeros_like, state))
  assert isinstance(restored.loss_state, losses.MemoryState)
  assert int(restored.loss_state.pointer) == 2 and int(restored.loss_state.filled) == 10
  a, b = state, restored
  for batch in batches[3:]:
    a, metrics_a = step(a, batch)
    b, metrics_b = step(b, batch)
    assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
