"""tsm.losses.negative_active_ratio: the negative terms' active share of every loss family."""

import math

import jax.numpy as jnp
import numpy as np

from tsm import losses


def _batch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(12, 4)).astype(np.float32))
  y = jnp.asarray(np.repeat(np.arange(4), 3).astype(np.int32))
  return x, y


def _as_record(stats):
  return {k: float(v) for k, v in stats._asdict().items()}


def test_each_family_by_its_own_fields():
  x, y = _batch()
  _, triplet = losses.triplet_margin_loss(x, y, 0.5)
  _, pairs = losses.contrastive_loss(x, y, 1.0)
  _, activity = losses.ntxent_loss(x, y)
  t, p, a = _as_record(triplet), _as_record(pairs), _as_record(activity)
  assert losses.negative_active_ratio(t) == t["active_ratio"]
  assert 0 < p["num_negative"]
  assert losses.negative_active_ratio(p) == p["num_negative_active"] / p["num_negative"]
  assert losses.negative_active_ratio(a) == a["neg_active_ratio"]


def test_unknown_or_empty_is_nan():
  assert math.isnan(losses.negative_active_ratio({"loss": 1.0}))
  assert math.isnan(losses.negative_active_ratio({"num_negative_active": 0.0,
                                                  "num_negative": 0.0}))
  assert losses.negative_active_ratio({"num_negative_active": 10.0,
                                       "num_negative": 40.0}) == 0.25
