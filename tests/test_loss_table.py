"""The config's table of losses: every entry builds and runs; miner / XBM fields."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import config as config_lib
from tsm import losses, miners, regularizers
from tsm import train as train_lib
from tsm.config import loss_table

# The fields a loss has no default for (LossEntry.required), set for the tests.
REQUIRED = {"ranked_list": {"tn": 1.0}}
# The data fields a loss needs (LossEntry.views: two views of each input).
DATA = {"vicreg": {"views": 2, "augment": True}}


def _batch(b=8, d=4, classes=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  return (jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True)),
          jnp.asarray(np.arange(b) % classes, jnp.int32))


def train_steps(loss_changes, steps=2):
  """Checks a config with ``loss_changes`` (an MLP, 3 classes x 4 per batch), builds it
  and trains ``steps`` steps; asserts finite losses; returns the last metrics."""
  cfg = config_lib.default_config()
  cfg.loss.update(loss_changes)
  cfg.data.update(DATA.get(loss_changes.get("name"), {}))
  cfg.model.update(name="mlp", hidden_sizes=(8,), embedding_dim=4)
  cfg.train.update(classes_per_batch=3, samples_per_class=4)
  config_lib.check_config(cfg)
  model = config_lib.build_model(cfg, (6,))
  loss = config_lib.build_loss(cfg, num_classes=3)
  schedule = config_lib.build_schedule(cfg, steps_per_epoch=1)
  tx = config_lib.build_optimizer(cfg, 100)
  state = train_lib.initial_state(model, loss, schedule, tx, (6,), seed=0)
  step = train_lib.make_train_step(model, loss, schedule, tx)
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.normal(size=(12, 6)).astype(np.float32),
           "labels": np.repeat(np.arange(3), 4).astype(np.int32)}
  for expected_step in range(1, steps + 1):
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])), loss_changes
    assert int(state.step) == expected_step
  return metrics


@pytest.mark.parametrize("name", config_lib.LOSSES)
def test_every_registered_loss_builds_checks_and_trains_two_steps(name):
  metrics = train_steps({"name": name, **REQUIRED.get(name, {})})
  assert {"num_total", "num_active", "num_easy"} <= set(metrics)
  entry = loss_table.LOSS_TABLE[name]
  for field, meaning in entry.fields.items():
    if field in loss_table.GENERAL_HELP_FIELDS:
      continue
    assert f"{name}: {meaning}" in config_lib.FIELD_HELP[f"loss.{field}"]


def test_unknown_loss_name_lists_every_registered_name():
  cfg = config_lib.default_config()
  cfg.loss.name = "circle_typo"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_config(cfg)
  message = str(e.value)
  assert "\n" not in message and message.startswith("loss.name='circle_typo' is unknown")
  assert message.endswith(", ".join(loss_table.LOSS_TABLE) + ".")


@pytest.mark.parametrize("changes,message", [
    ({"name": "ranked_list"}, "loss.tn is required by loss.name=ranked_list"),
    ({"name": "pnp", "variant": "X"}, "loss.variant='X' is unknown"),
    ({"name": "soft_triple", "centers_per_class": 0}, "loss.centers_per_class=0"),
    ({"name": "sphereface", "multiplier": 0}, "loss.multiplier=0 must be an integer >= 1"),
    ({"name": "ranked_list", "tn": 1.0, "imbalance": 1.5}, "loss.imbalance=1.5"),
    ({"name": "proxy_nca", "softmax_scale": 0.0}, "loss.softmax_scale=0.0"),
    ({"name": "tcm", "lambda_plus": -1.0}, "loss.lambda_plus=-1.0"),
    ({"name": "tcm", "la": 5.0}, "loss.la=5.0 does not apply to loss.name=tcm"),
])
def test_bad_new_loss_fields_are_one_line_config_errors(changes, message):
  cfg = config_lib.default_config()
  cfg.loss.update(changes)
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.check_config(cfg)
  assert "\n" not in str(e.value)


def test_a_margin_entry_takes_the_schedule_margin_by_keyword():
  cfg = config_lib.default_config()
  cfg.loss.name, cfg.loss.scale = "tuplet_margin", 32.0
  x, y = _batch(seed=5)
  got = config_lib.build_loss(cfg)(x, y, 0.15)[0]
  np.testing.assert_allclose(got, losses.tuplet_margin_loss(x, y, margin=0.15,
                                                            scale=32.0)[0])


def test_table_kinds_and_fields_are_checked():
  bad = {"x": loss_table.LossEntry("x", losses.npair_loss, "weird")}
  with pytest.raises(ValueError, match="kind='weird'"):
    loss_table.check_table(bad)
  bad = {"x": loss_table.LossEntry("x", losses.npair_loss, "plain", {"zeta": "?"})}
  with pytest.raises(ValueError, match="not in LOSS_OPTIONS"):
    loss_table.check_table(bad)


def test_a_plain_entry_passes_its_fields_and_drops_the_margin():
  cfg = config_lib.default_config()
  cfg.loss.name, cfg.loss.temperature = "ntxent", 0.5
  x, y = _batch(seed=1)
  got = config_lib.build_loss(cfg)(x, y, 123.0)[0]
  np.testing.assert_allclose(got, losses.ntxent_loss(x, y, temperature=0.5)[0])


@pytest.mark.parametrize("loss_name", ["triplet", "contrastive"])
def test_miner_field_applies_the_miner(loss_name):
  cfg = config_lib.default_config()
  cfg.loss.name, cfg.loss.miner = loss_name, "multi_similarity"
  config_lib.check_config(cfg)
  x, y = _batch(seed=2)
  fn = losses.triplet_margin_loss if loss_name == "triplet" else losses.contrastive_loss
  want = fn(x, y, 0.3, pair_weights=miners.multi_similarity_miner(x, y))[0]
  np.testing.assert_allclose(config_lib.build_loss(cfg)(x, y, 0.3)[0], want, rtol=1e-6)


def test_xbm_field_is_the_cross_batch_memory():
  cfg = config_lib.default_config()
  cfg.loss.xbm_size, cfg.train.classes_per_batch, cfg.train.samples_per_class = 12, 2, 4
  config_lib.check_config(cfg)
  built = config_lib.build_loss(cfg)
  direct = losses.cross_batch_memory(
      functools.partial(losses.triplet_margin_loss, distance="euclidean", mining="all",
                        reduction="mean"), 12)
  s1 = built.init(jax.random.key(0), 4).state
  s2 = direct.init(jax.random.key(0), 4).state
  for seed in range(3):
    x, y = _batch(seed=seed)
    a, _, s1 = built.apply({}, s1, x, y, 0.2)
    b, _, s2 = direct.apply({}, s2, x, y, 0.2)
    assert float(a) == float(b)


@pytest.mark.parametrize("changes,message", [
    ({"name": "ntxent", "miner": "hdc"}, "applies to triplet, contrastive only"),
    ({"xbm_size": 4}, "below the batch size 32"),
    ({"mining": "semihard", "miner": "hdc"}, "needs loss.mining=all"),
    ({"miner": "hardest"}, "loss.miner='hardest' is unknown"),
    ({"xbm_size": -1}, "loss.xbm_size=-1 must be an integer >= 0"),
])
def test_bad_wrapper_fields_are_one_line_config_errors(changes, message):
  cfg = config_lib.default_config()
  cfg.loss.update(changes)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.check_config(cfg)


def test_regularizer_fields_add_the_regularizers():
  cfg = config_lib.default_config()
  cfg.loss.update(name="arcface", embedding_regularizer="lp", embedding_reg_weight=0.5,
                  weight_regularizer="regular_face", weight_reg_weight=2.0)
  config_lib.check_config(cfg)
  built = config_lib.build_loss(cfg, num_classes=3)
  base = losses.arcface(3)
  v = built.init(jax.random.key(0), 4)
  x, y = _batch(classes=3, seed=4)
  value, stats, _ = built.apply(v.params, v.state, x, y, 0.2)
  (w,) = jax.tree_util.tree_leaves(v.params)
  want = (base.apply(v.params, v.state, x, y, 0.2)[0]
          + 0.5 * regularizers.lp_regularizer(x)
          + 2.0 * regularizers.regular_face_regularizer(w))
  np.testing.assert_allclose(value, want, rtol=1e-6)
  assert {"embedding_reg", "weight_reg"} <= set(stats)
  cfg.loss.name = "triplet"
  cfg.loss.margin_from_schedule = False
  with pytest.raises(config_lib.ConfigError, match="applies to arcface, proxy_anchor"):
    config_lib.check_config(cfg)


@pytest.mark.parametrize("per_class,shape", [(False, ()), (True, (3,))])
def test_margin_beta_learns_its_beta_from_the_command_line(per_class, shape):
  cfg = config_lib.default_config()
  cfg.loss.name = "margin_beta"
  cfg.loss.update(beta=1.1, loss_margin=0.3, beta_per_class=per_class)
  cfg.model.update(name="mlp", hidden_sizes=(8,), embedding_dim=4)
  cfg.train.update(classes_per_batch=3, samples_per_class=4, learning_rate=0.05)
  config_lib.check_config(cfg)
  model = config_lib.build_model(cfg, (6,))
  loss = config_lib.build_loss(cfg, num_classes=3)
  schedule = config_lib.build_schedule(cfg, steps_per_epoch=1)
  state = train_lib.initial_state(model, loss, schedule, config_lib.build_optimizer(cfg, 10),
                                  (6,), seed=0)
  np.testing.assert_array_equal(np.asarray(state.loss_params["beta"]),
                                np.full(shape, 1.1, np.float32))
  # At its initial beta the loss is the fixed-beta margin loss at alpha = 0.3.
  x, y = _batch(b=12, classes=3)
  value, _, _ = loss.apply(state.loss_params, state.loss_state, x, y, 1.0)
  fixed, _ = losses.margin_loss(x, y, margin=0.3, beta=1.1)
  np.testing.assert_allclose(float(value), float(fixed), rtol=1e-6)
  step = train_lib.make_train_step(model, loss, schedule, config_lib.build_optimizer(cfg, 10))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.normal(size=(12, 6)).astype(np.float32),
           "labels": np.repeat(np.arange(3), 4).astype(np.int32)}
  state, _ = step(state, batch)
  assert np.asarray(state.loss_params["beta"]).shape == shape
  assert np.all(np.asarray(state.loss_params["beta"]) != 1.1)   # learnt


def test_beta_per_class_without_classes_is_one_line():
  cfg = config_lib.default_config()
  cfg.loss.name = "margin_beta"
  cfg.loss.beta_per_class = True
  with pytest.raises(ValueError, match="beta_per_class=True needs the number of classes"):
    config_lib.build_loss(cfg, num_classes=None)
