"""tsm.miners against numpy references of PML's rules; the losses' weight keywords."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses, miners

import pml_reference as ref


def _data(b=10, d=4, classes=3, seed=0, m=None):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y = rng.integers(0, classes, b).astype(np.int32)
  if m is None:
    return x, y, None, None
  r = rng.normal(size=(m, d)).astype(np.float32)
  r /= np.linalg.norm(r, axis=1, keepdims=True)
  return x, y, r, rng.integers(0, classes, m).astype(np.int32)


PAIR_CASES = {
    "multi_similarity": (functools.partial(miners.multi_similarity_miner, epsilon=0.2),
                         functools.partial(ref.multi_similarity, epsilon=0.2)),
    "pair_margin": (functools.partial(miners.pair_margin_miner, pos_margin=0.9,
                                      neg_margin=1.3),
                    functools.partial(ref.pair_margin, pos_margin=0.9, neg_margin=1.3)),
    "hdc": (functools.partial(miners.hdc_miner, filter_percentage=0.3),
            functools.partial(ref.hdc, filter_percentage=0.3)),
}
STRATEGIES = [("easy", "semihard"), ("hard", "hard"), ("semihard", "easy"),
              ("all", "hard"), ("easy", "all"), ("all", "all"), ("hard", "easy")]


@pytest.mark.parametrize("m", [None, 7])
@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_pair_miners_match_pml(name, m):
  x, y, r, ry = _data(m=m, seed=len(name))
  tsm_miner, ref_miner = PAIR_CASES[name]
  got = tsm_miner(x, y, r, ry)
  b, mm = len(y), (len(y) if m is None else m)
  np.testing.assert_array_equal(got, ref.pair_weights(ref_miner(x, y, r, ry), b, mm))


@pytest.mark.parametrize("strategies", STRATEGIES)
def test_batch_easy_hard_matches_pml(strategies):
  x, y, _, _ = _data(b=12, seed=4)
  pos, neg = strategies
  got = miners.batch_easy_hard_miner(x, y, pos_strategy=pos, neg_strategy=neg)
  want = ref.pair_weights(ref.batch_easy_hard(x, y, pos_strategy=pos, neg_strategy=neg),
                          12, 12)
  np.testing.assert_array_equal(got, want)


def test_batch_easy_hard_allowed_ranges_match_pml():
  x, y, r, ry = _data(b=8, m=9, seed=6)
  kw = dict(pos_strategy="hard", neg_strategy="easy", allowed_pos_range=(0.3, 1.2),
            allowed_neg_range=(0.5, 1.5))
  np.testing.assert_array_equal(miners.batch_easy_hard_miner(x, y, r, ry, **kw),
                                ref.pair_weights(ref.batch_easy_hard(x, y, r, ry, **kw),
                                                 8, 9))


def test_batch_easy_hard_rejects_pml_forbidden_strategies():
  with pytest.raises(ValueError, match="both be 'semihard'"):
    miners.batch_easy_hard_miner(*_data()[:2], pos_strategy="semihard",
                                 neg_strategy="semihard")
  with pytest.raises(ValueError, match="together with 'all'"):
    miners.batch_easy_hard_miner(*_data()[:2], pos_strategy="all",
                                 neg_strategy="semihard")


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_margin_miner_matches_pml(kind):
  x, y, r, ry = _data(b=8, m=6, seed=2)
  got = miners.triplet_margin_miner(x, y, r, ry, margin=0.3, type_of_triplets=kind)
  want = ref.triplet_weights(ref.triplet_margin(x, y, r, ry, margin=0.3,
                                                type_of_triplets=kind), 8, 6)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m", [None, 6])
def test_angular_miner_matches_pml(m):
  x, y, r, ry = _data(b=8, m=m, seed=3)
  got = miners.angular_miner(x, y, r, ry, angle=35.0)
  mm = 8 if m is None else m
  want = ref.triplet_weights(ref.angular(x, y, r, ry, angle=35.0), 8, mm)
  np.testing.assert_array_equal(got, want)
  assert 0 < want.sum() < ref.triplet_weights(ref.all_triplets(y, ry), 8, mm).sum()


def test_distance_weighted_probabilities_match_pml():
  x, y, _, _ = _data(b=12, d=8, seed=5)
  got = miners.distance_weighted_probabilities(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4)
  want = ref.distance_weighted_probabilities(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4)
  np.testing.assert_allclose(got, want, rtol=1e-4, equal_nan=True)


def test_distance_weighted_miner_draws_pml_triplets():
  x, y, _, _ = _data(b=12, d=8, seed=5)
  probs = ref.distance_weighted_probabilities(x, y)
  keys = jax.random.split(jax.random.key(0), 400)
  draws = np.asarray(jax.vmap(lambda k: miners.distance_weighted_miner(k, x, y))(keys))
  valid = ref.triplet_weights(ref.all_triplets(y), 12, 12) > 0
  assert np.all(draws[:, ~valid] == 0)
  counts = np.bincount(y, minlength=3)[y]
  usable = (counts >= 2) & np.all(np.isfinite(probs), axis=1) & (np.nansum(probs, 1) > 0)
  np.testing.assert_array_equal(draws.sum(axis=(2, 3)),
                                np.broadcast_to(np.where(usable, counts, 0), (400, 12)))
  # The negatives follow PML's distribution: a chi-square test per usable anchor.
  from scipy import stats  # pylint: disable=import-outside-toplevel
  for a in np.flatnonzero(usable)[:3]:
    observed = draws[:, a].sum(axis=(0, 1))
    expected = probs[a] * observed.sum()
    keep = expected > 0
    assert np.all(observed[~keep] == 0)
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > 1e-3


@pytest.mark.parametrize("loss_name", ["triplet", "contrastive"])
@pytest.mark.parametrize("miner", ["multi_similarity", "triplet_margin"])
def test_losses_take_mined_weights_as_pml(loss_name, miner):
  x, y, _, _ = _data(b=10, seed=9)
  if miner == "multi_similarity":
    w = miners.multi_similarity_miner(x, y, epsilon=0.2)
    tuples = ref.multi_similarity(x, y, epsilon=0.2)
    kw = {"pair_weights": w}
  else:
    w = miners.triplet_margin_miner(x, y, margin=0.4)
    tuples = ref.triplet_margin(x, y, margin=0.4)
    kw = {"triplet_weights": w}
  for reduction in ("mean", "mean_nonzero", "sum"):
    if loss_name == "triplet":
      got = losses.triplet_margin_loss(x, y, 0.4, reduction=reduction, **kw)[0]
      want = ref.triplet_loss(x, y, 0.4, tuples, reduction=reduction)
    else:
      got = losses.contrastive_loss(x, y, 0.9, reduction=reduction, **kw)[0]
      want = ref.contrastive_loss(x, y, 0.9, tuples, reduction=reduction)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_weighted_path_gradients_finite_at_duplicates_and_one_class():
  x = jnp.asarray(np.repeat(np.eye(3, dtype=np.float32), 2, axis=0))
  y = jnp.zeros(6, jnp.int32)
  w = jnp.ones((6, 6))
  for fn in (losses.triplet_margin_loss, losses.contrastive_loss):
    g = jax.grad(lambda e, fn=fn: fn(e, y, 0.5, pair_weights=w)[0])(x)
    assert np.all(np.isfinite(g))
  x = x.at[0, 0].set(jnp.nan)
  assert np.isnan(losses.triplet_margin_loss(x, jnp.arange(6) % 2, 0.5,
                                             pair_weights=w)[0])


def test_weight_keywords_reject_bad_shapes():
  x, y, _, _ = _data(b=5)
  with pytest.raises(ValueError, match="pair_weights must have shape"):
    losses.triplet_margin_loss(x, y, 0.1, pair_weights=jnp.ones((5, 4)))
  with pytest.raises(ValueError, match="not both"):
    losses.contrastive_loss(x, y, 0.1, pair_weights=jnp.ones((5, 5)),
                            triplet_weights=jnp.ones((5, 5, 5)))
  with pytest.raises(ValueError, match="mining='all'"):
    losses.triplet_margin_loss(x, y, 0.1, mining="hard", pair_weights=jnp.ones((5, 5)))
  with pytest.raises(ValueError, match="give both or neither"):
    losses.triplet_margin_loss(x, y, 0.1, ref_embeddings=x)


def test_uniform_histogram_miner_draws_per_bin_as_pml():
  x, y, _, _ = _data(b=12, seed=12)
  d = ref.distances(x)
  a1, p, a2, n = ref.all_pairs(y)
  w = np.asarray(miners.uniform_histogram_miner(jax.random.key(3), x, y, num_bins=5,
                                                pos_per_bin=4, neg_per_bin=6))
  for a, o, per_bin in ((a1, p, 4), (a2, n, 6)):
    bins = ref.histogram_bins([d[i, j] for i, j in zip(a, o)], 5)
    drawn = np.array([w[i, j] for i, j in zip(a, o)])
    for b in range(5):
      # Each non-empty bin gives exactly per_bin draws, all among its own pairs.
      assert drawn[bins == b].sum() == (per_bin if np.any(bins == b) else 0)
  pairs = np.zeros((12, 12), bool)
  pairs[a1, p] = True
  pairs[a2, n] = True
  assert np.all(w[~pairs] == 0)


def test_without_weights_the_exact_paths_run(monkeypatch):
  from tsm.losses import _mined  # pylint: disable=import-outside-toplevel

  def refuse(*args, **kwargs):
    raise AssertionError("the general path ran without weights or references")
  monkeypatch.setattr(_mined, "triplet_general", refuse)
  monkeypatch.setattr(_mined, "contrastive_general", refuse)
  x, y, _, _ = _data(b=6)
  for mining in ("all", "semihard", "batch_hard"):
    losses.triplet_margin_loss(x, y, 0.2, mining=mining)
  losses.contrastive_loss(x, y, 0.2)
