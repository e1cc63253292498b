"""``model.dtype = "bfloat16"``: bf16 compute, float32 parameters, optimiser state and loss."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tsm import losses
from tsm import margins
from tsm import models
from tsm import train as train_lib

SHAPE = (12, 12, 1)
MARGIN = 0.3


def _model(dtype):
  return models.create_model("convnet", input_shape=SHAPE, embedding_dim=8,
                             conv_features=(4, 8), hidden_sizes=(16,), dtype=dtype)


def _batch():
  rng = np.random.default_rng(0)
  return {"inputs": jnp.asarray(rng.normal(size=(12,) + SHAPE), jnp.float32),
          "labels": jnp.asarray(np.repeat(np.arange(3), 4), jnp.int32)}


def _brute_force(x, labels, margin):
  """Mean hinge and counts over every valid (a, p, n), float64 loops."""
  x = np.asarray(x, np.float64)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  hinges, easy, hard = [], 0, 0
  for a, p, n in itertools.product(range(len(x)), repeat=3):
    if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
      hinges.append(max(0.0, d[a, p] - d[a, n] + margin))
      easy += d[a, n] >= d[a, p] + margin
      hard += d[a, n] <= d[a, p]
  return np.mean(hinges), len(hinges), easy, hard


def test_bfloat16_computes_in_bf16_and_keeps_float32_state_and_exact_loss():
  batch = _batch()
  labels = np.asarray(batch["labels"])
  model16, model32 = _model("bfloat16"), _model("float32")
  variables = models.init_variables(model16, jax.random.key(0), SHAPE)
  emb16 = jax.jit(lambda v, x: model16.apply(v, x, train=True))(variables, batch["inputs"])
  emb32 = jax.jit(lambda v, x: model32.apply(v, x, train=True))(variables, batch["inputs"])
  # The embeddings are float32, but they were computed in bf16 (8-bit mantissa).
  assert emb16.dtype == jnp.float32
  gap = float(jnp.max(jnp.abs(emb16 - emb32)))
  assert 1e-4 < gap < 0.1, gap

  tx = optax.adam(1e-2)
  schedule = margins.constant(MARGIN)
  state = train_lib.create_train_state(variables, tx, schedule, jax.random.PRNGKey(1))
  step = train_lib.make_train_step(model16, losses.triplet_margin_loss, schedule, tx)
  old_params = jax.tree.map(np.asarray, state.params)   # the step donates its state
  new_state, metrics = step(state, batch)
  for tree in (new_state.params, new_state.opt_state):
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype,
                                                                          jnp.floating)]
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
  assert not jax.tree_util.tree_all(jax.tree.map(
      lambda a, b: bool(np.all(np.asarray(a) == b)), new_state.params, old_params))

  # The step's loss is float32 over the bf16 model's (float32) embeddings, counts exact.
  want, total, easy, hard = _brute_force(np.asarray(emb16), labels, MARGIN)
  assert metrics["loss"].dtype == jnp.float32
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  _, stats = losses.triplet_margin_loss(emb16, batch["labels"], MARGIN)
  assert int(stats.num_triplets) == total == 3 * 4 * 3 * 8
  assert int(stats.num_easy) == easy and int(stats.num_hard) == hard
  assert int(stats.num_active) == total - easy
