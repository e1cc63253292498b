"""multiple_losses and self_supervised_loss against numpy references of PML's wrappers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses, miners

import pml_reference as ref


def _data(b=8, d=4, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, classes, b).astype(
      np.int32)


def test_multiple_losses_is_the_weighted_sum_with_each_loss_stats():
  x, y = _data()
  combined = losses.multiple_losses(
      {"trip": functools.partial(losses.triplet_margin_loss, reduction="mean_nonzero"),
       "con": losses.contrastive_loss},
      weights={"trip": 0.7, "con": 2.0},
      miners={"con": functools.partial(miners.pair_margin_miner, pos_margin=0.5,
                                       neg_margin=1.2)})
  v = combined.init(jax.random.key(0), 4)
  value, stats, _ = combined.apply(v.params, v.state, jnp.asarray(x), jnp.asarray(y), 0.4)
  trip = ref.triplet_loss(x, y, 0.4, ref.all_pairs(y))
  con = ref.contrastive_loss(x, y, 0.4, ref.pair_margin(x, y, pos_margin=0.5,
                                                        neg_margin=1.2))
  np.testing.assert_allclose(float(value), 0.7 * trip + 2.0 * con, rtol=2e-5)
  np.testing.assert_allclose(float(stats["trip/loss"]), trip, rtol=2e-5)
  np.testing.assert_allclose(float(stats["con/loss"]), con, rtol=2e-5)
  _, trip_stats = losses.triplet_margin_loss(x, y, 0.4)
  assert float(stats["num_total"]) == float(trip_stats.num_total)
  assert float(stats["trip/num_hard"]) == float(trip_stats.num_hard)


def test_multiple_losses_carries_parametric_state_and_defaults_to_unit_weights():
  x, y = _data(seed=1)
  combined = losses.multiple_losses([losses.triplet_margin_loss,
                                     losses.center_contrastive(3)])
  v = combined.init(jax.random.key(0), 4)
  assert set(v.state) == {"loss0", "loss1"}
  value, stats, state = combined.apply(v.params, v.state, jnp.asarray(x), jnp.asarray(y),
                                       0.2)
  cc = losses.center_contrastive(3)
  cv = cc.init(jax.random.key(0), 4)
  cc_value, _, cc_state = cc.apply(cv.params, cv.state, jnp.asarray(x), jnp.asarray(y),
                                   0.2)
  trip = losses.triplet_margin_loss(x, y, 0.2)[0]
  np.testing.assert_allclose(float(value), float(trip + cc_value), rtol=1e-6)
  np.testing.assert_array_equal(state["loss1"]["centers"], cc_state["centers"])
  assert "loss1/num_total" in stats


def test_multiple_losses_rejects_mismatched_weights():
  with pytest.raises(ValueError, match="one weight per loss"):
    losses.multiple_losses({"a": losses.triplet_margin_loss}, weights={"b": 1.0})
  with pytest.raises(ValueError, match="stats_from"):
    losses.multiple_losses([losses.triplet_margin_loss], stats_from="x")


@pytest.mark.parametrize("symmetric", [True, False])
def test_self_supervised_loss_matches_pml(symmetric):
  x, _ = _data(b=6, seed=2)
  r, _ = _data(b=6, seed=3)
  fn = losses.self_supervised_loss(
      functools.partial(losses.triplet_margin_loss, reduction="mean_nonzero"),
      symmetric=symmetric)
  value, _ = fn(jnp.asarray(x), jnp.asarray(r), 0.5)
  labels = np.arange(6)
  if symmetric:
    both = np.concatenate([x, r])
    both_labels = np.concatenate([labels, labels])
    want = ref.triplet_loss(both, both_labels, 0.5, ref.all_pairs(both_labels))
  else:
    want = ref.triplet_loss(x, labels, 0.5, ref.all_pairs(labels, labels), r=r)
  np.testing.assert_allclose(float(value), want, rtol=2e-5)
  grads = jax.grad(lambda a, b: fn(a, b, 0.5)[0], argnums=(0, 1))(jnp.asarray(x),
                                                                   jnp.asarray(r))
  assert all(np.any(g != 0) and np.all(np.isfinite(g)) for g in grads)
