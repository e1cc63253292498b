"""Tests for tsm.diagnostics (against numpy loops and sklearn) and tsm.plotting."""

from __future__ import annotations

import collections
import functools
import itertools

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

from tsm import diagnostics  # noqa: E402
from tsm import plotting  # noqa: E402


def _data(seed=0, n=23, d=4, num_classes=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=n)
  labels[:3] = -1  # paper B's outliers
  labels[labels == 3] = 2  # class 3 empty
  labels[3] = 4  # class 4 has exactly one member
  labels[labels == 4] = 0
  labels[3] = 4
  return x, labels.astype(np.int32)


# ----------------------------------------------------------------------------- paper B


def _np_intra(x, labels, num_classes, ddof):
  per_class = np.zeros(num_classes)
  present = []
  for c in range(num_classes):
    members = x[labels == c].astype(np.float64)
    if len(members):
      per_class[c] = np.mean(np.sum((members - members.mean(0)) ** 2, axis=1))
      present.append(per_class[c])
  return per_class, np.mean(present), np.std(present, ddof=ddof)


def _np_inter(x, labels, num_classes, ddof):
  cents = [x[labels == c].astype(np.float64).mean(0) for c in range(num_classes)
           if np.any(labels == c)]
  pairs = [np.linalg.norm(a - b) for a, b in itertools.combinations(cents, 2)]
  ordered = [np.linalg.norm(a - b) ** 2 for a in cents for b in cents
             if a is not b]
  sq = np.square(pairs)
  return (np.mean(pairs), np.std(pairs, ddof=ddof), np.mean(ordered),
          np.std(sq, ddof=ddof))


@pytest.mark.parametrize("ddof", [0, 1])
def test_intra_class_variance_matches_numpy(ddof):
  x, labels = _data()
  got = jax.jit(functools.partial(diagnostics.intra_class_variance, num_classes=5,
                                  ddof=ddof))(x, labels)
  per_class, mean, std = _np_intra(x, labels, 5, ddof)
  np.testing.assert_allclose(got.per_class, per_class, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(got.std, std, rtol=1e-5)
  np.testing.assert_array_equal(got.present, [True, True, True, False, True])
  np.testing.assert_array_equal(got.counts, [np.sum(labels == c) for c in range(5)])
  assert float(got.per_class[4]) == 0.0  # one member: zero variance, still counted


@pytest.mark.parametrize("ddof", [0, 1])
def test_inter_class_distances_matches_numpy(ddof):
  x, labels = _data(1)
  got = diagnostics.inter_class_distances(x, labels, 5, ddof=ddof)
  mean, std, mean_sq, std_sq = _np_inter(x, labels, 5, ddof)
  np.testing.assert_allclose(got.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(got.std, std, rtol=1e-5)
  np.testing.assert_allclose(got.mean_squared, mean_sq, rtol=1e-5)
  np.testing.assert_allclose(got.std_squared, std_sq, rtol=1e-5)
  present = np.array([np.any(labels == c) for c in range(5)])
  want_mask = present[:, None] & present[None, :] & ~np.eye(5, dtype=bool)
  np.testing.assert_array_equal(got.pair_mask, want_mask)
  np.testing.assert_array_equal(np.asarray(got.distances)[~want_mask], 0.0)


def test_hand_computed_case():
  # Class 0: (0,0), (2,0) -> centroid (1,0), variance 1. Class 1: (1,3) -> variance 0.
  # Class 2: (4,4), (4,4) -> variance 0. The outlier (9,9) is ignored.
  x = np.array([[0, 0], [2, 0], [1, 3], [4, 4], [4, 4], [9, 9]], np.float32)
  labels = np.array([0, 0, 1, 2, 2, -1])
  var = diagnostics.intra_class_variance(x, labels, 3)
  np.testing.assert_allclose(var.per_class, [1.0, 0.0, 0.0])
  np.testing.assert_allclose(var.mean, 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(var.std, np.std([1, 0, 0]), rtol=1e-6)
  inter = diagnostics.inter_class_distances(x, labels, 3)
  # Centroid distances: |(1,0)-(1,3)| = 3, |(1,0)-(4,4)| = 5, |(1,3)-(4,4)| = sqrt(10).
  d = np.array([3.0, 5.0, np.sqrt(10.0)])
  np.testing.assert_allclose(inter.distances[0, 1], 3.0)
  np.testing.assert_allclose(inter.distances[2, 0], 5.0)
  np.testing.assert_allclose(inter.mean, d.mean(), rtol=1e-6)
  np.testing.assert_allclose(inter.std, d.std(ddof=1), rtol=1e-6)
  np.testing.assert_allclose(inter.mean_squared, (9 + 25 + 10) / 3, rtol=1e-6)


@pytest.mark.parametrize("case", ["single_class", "one_per_class", "identical",
                                  "all_outliers"])
def test_variance_degenerate_inputs_are_finite(case):
  n, c = 6, 4
  x = np.random.default_rng(2).normal(size=(n, 3)).astype(np.float32)
  labels = np.zeros(n, np.int32)
  if case == "one_per_class":
    labels = np.array([0, 1, 2, 3, -1, -1])
  elif case == "identical":
    x[:] = x[0]
    labels = np.array([0, 0, 1, 1, 2, 3])
  elif case == "all_outliers":
    labels[:] = -1
  var = diagnostics.intra_class_variance(x, labels, c)
  inter = diagnostics.inter_class_distances(x, labels, c)
  for leaf in jax.tree.leaves((var, inter)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  if case in ("single_class", "all_outliers"):
    assert float(inter.mean) == 0.0 and float(inter.std) == 0.0
  if case in ("one_per_class", "identical"):
    np.testing.assert_array_equal(var.per_class, 0.0)
  if case == "identical":
    np.testing.assert_array_equal(inter.distances, 0.0)  # exactly, no Gram rounding

  def objective(z):
    return (diagnostics.intra_class_variance(z, labels, c).mean
            + diagnostics.inter_class_distances(z, labels, c).mean)

  grad = jax.grad(objective)(x)
  assert np.all(np.isfinite(grad))


def test_loss_decay_epochs():
  f = diagnostics.loss_decay_epochs
  assert int(f(jnp.array([1.0, 0.5, 0.09, 0.05]))) == 3
  assert int(f(jnp.array([1.0, 0.5, 0.1]))) == 3  # "falls to" includes equality
  assert int(f(jnp.array([1.0, 0.5, 0.2]))) == -1  # never
  assert int(f(jnp.array([2.0, 1.5, 0.8]), fraction=0.5)) == 3
  assert int(f(jnp.array([2.0, 3.0]), fraction=1.0)) == 1
  assert int(f(jnp.array([1.0, np.nan, 0.05]))) == 3  # NaN never counts
  assert int(f(jnp.array([np.nan, 0.0]))) == -1
  assert int(f(jnp.array([0.7]))) == -1
  runs = jnp.array([[1.0, 0.05, 0.01], [1.0, 0.5, 0.01], [1.0, 1.0, 1.0]])
  np.testing.assert_array_equal(jax.jit(jax.vmap(f))(runs), [2, 3, -1])
  with pytest.raises(ValueError, match="fraction"):
    f(jnp.array([1.0]), fraction=0.0)
  with pytest.raises(ValueError, match="empty"):
    f(jnp.zeros((0,)))


def test_epoch_means():
  values = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 9.0], np.float32)
  epochs = np.array([0, 0, 1, 1, 1, 7])  # epoch 7 is out of range, epoch 2 empty
  got = jax.jit(diagnostics.epoch_means, static_argnums=2)(values, epochs, 3)
  np.testing.assert_allclose(got[:2], [2.0, 4.0])
  assert np.isnan(got[2])


def test_argument_errors():
  x, labels = _data()
  with pytest.raises(ValueError, match="num_classes"):
    diagnostics.intra_class_variance(x, labels, 0)
  with pytest.raises(ValueError, match="ddof"):
    diagnostics.inter_class_distances(x, labels, 5, ddof=2)
  with pytest.raises(ValueError, match="max_triplets"):
    diagnostics.effective_margins(x, labels, max_triplets=0)
  with pytest.raises(ValueError, match="distance"):
    diagnostics.effective_margins(x, labels, distance="manhattan")
  with pytest.raises(ValueError, match="init"):
    diagnostics.fit_gaussian_mixture(x[:, 0], init="kmeans")
  with pytest.raises(ValueError, match="num_components"):
    diagnostics.fit_gaussian_mixture(x[:, 0], 0)


# ----------------------------------------------------------------------------- paper A


def _np_triplets(labels, valid=None):
  n = len(labels)
  valid = np.ones(n, bool) if valid is None else valid
  return [(a, p, q) for a in range(n) for p in range(n) for q in range(n)
          if valid[a] and valid[p] and valid[q] and a != p and labels[a] == labels[p]
          and labels[q] != labels[a]]


def _np_dist(x, i, j, distance):
  u, v = x[i].astype(np.float64), x[j].astype(np.float64)
  if distance == "cosine":
    return 1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v)
  sq = np.sum((u - v) ** 2)
  return sq if distance == "squared_euclidean" else np.sqrt(sq)


def _triplets_of(em):
  mask = np.asarray(em.mask)
  return list(zip(np.asarray(em.anchor)[mask].tolist(),
                  np.asarray(em.positive)[mask].tolist(),
                  np.asarray(em.negative)[mask].tolist()))


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_effective_margins_exact_enumerates_every_triplet(distance):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(11, 3)).astype(np.float32)
  labels = np.array([2, 0, 2, 1, 0, 2, -1, 1, 2, 0, 5], np.int32)  # -1 is a class here
  want = _np_triplets(labels)
  em = diagnostics.effective_margins(x, labels, distance=distance, max_triplets=200)
  assert bool(em.exact) and int(em.num_valid) == len(want)
  assert float(em.num_triplets) == len(want)
  got = _triplets_of(em)
  assert sorted(got) == sorted(want)  # each valid triplet exactly once
  values = np.asarray(em.values)[np.asarray(em.mask)]
  ref = [_np_dist(x, a, q, distance) - _np_dist(x, a, p, distance) for a, p, q in got]
  np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(em.values)[~np.asarray(em.mask)], 0.0)
  if distance == "euclidean":  # The boundary T == M is still exact.
    em = diagnostics.effective_margins(x, labels, max_triplets=len(want))
    assert bool(em.exact) and sorted(_triplets_of(em)) == sorted(want)


def test_effective_margins_valid_mask():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(11, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 0, 2, 1, 3, 3], np.int32)
  valid = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1], bool)
  want = _np_triplets(labels, valid)
  em = diagnostics.effective_margins(x, labels, max_triplets=200, valid=valid)
  assert sorted(_triplets_of(em)) == sorted(want)


def test_effective_margins_sampled_is_uniform_over_valid_triplets():
  # Skewed classes: uniform anchors would over-weight the small ones.
  labels = np.array([0] * 2 + [1] * 3 + [2] * 6, np.int32)
  x = np.random.default_rng(5).normal(size=(11, 3)).astype(np.float32)
  want = _np_triplets(labels)
  t = len(want)  # 2*1*9 + 3*2*8 + 6*5*5 = 216
  m = 100
  fn = jax.jit(jax.vmap(functools.partial(diagnostics.effective_margins, x, labels,
                                          max_triplets=m)))
  em = fn(seed=jnp.arange(800))
  assert not np.any(em.exact) and np.all(em.mask)
  np.testing.assert_array_equal(em.num_valid, m)
  np.testing.assert_array_equal(em.num_triplets, t)
  counts = collections.Counter(zip(*(np.asarray(v).ravel().tolist()
                                     for v in (em.anchor, em.positive, em.negative))))
  assert set(counts) == set(want)  # only valid triplets, and every one of them
  observed = np.array([counts[w] for w in want], np.float64)
  expected = 800 * m / t
  chi2 = np.sum((observed - expected) ** 2 / expected)
  # chi-square with 215 dof: mean 215, sd ~20.7; 300 is > 4 sd.
  assert chi2 < 300, chi2
  a, p, q = (np.asarray(v)[0] for v in (em.anchor, em.positive, em.negative))
  ref = [_np_dist(x, i, k, "euclidean") - _np_dist(x, i, j, "euclidean")
         for i, j, k in zip(a, p, q)]
  np.testing.assert_allclose(em.values[0], ref, rtol=1e-5, atol=1e-5)
  # Seeded: same seed, same sample; another seed, another sample.
  again = fn(seed=jnp.roll(jnp.arange(800), -7))  # same shape: no recompilation
  np.testing.assert_array_equal(again.anchor[0], em.anchor[7])
  np.testing.assert_array_equal(again.negative[1], em.negative[8])
  assert not np.array_equal(em.anchor[7], em.anchor[8])


@pytest.mark.parametrize("case", ["single_class", "all_distinct", "identical", "one"])
def test_effective_margins_without_triplets_or_degenerate(case):
  n = 6
  x = np.random.default_rng(6).normal(size=(n, 3)).astype(np.float32)
  labels = np.zeros(n, np.int32)
  if case == "all_distinct":
    labels = np.arange(n, dtype=np.int32)
  elif case == "identical":
    x[:] = x[0]
    labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  elif case == "one":
    x, labels = x[:1], labels[:1]
  for m in (4, 1000):
    em = diagnostics.effective_margins(x, labels, max_triplets=m, seed=1)
    for leaf in jax.tree.leaves(em):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
    if case == "identical":
      assert int(em.num_valid) == min(m, 24)
      np.testing.assert_array_equal(em.values, 0.0)
    else:
      assert int(em.num_valid) == 0 and float(em.num_triplets) == 0.0
      assert not np.any(em.mask)


def _two_gaussians(seed, n=3000, means=(-0.4, 0.6), stds=(0.1, 0.2), share=0.3):
  rng = np.random.default_rng(seed)
  first = rng.random(n) < share
  return np.where(first, rng.normal(means[0], stds[0], n),
                  rng.normal(means[1], stds[1], n)).astype(np.float32)


@pytest.mark.parametrize("init", ["quantile", "random"])
def test_gmm_matches_sklearn_on_separated_data(init):
  from sklearn.mixture import GaussianMixture  # pylint: disable=import-outside-toplevel

  values = _two_gaussians(7)
  if init == "quantile":  # also under an outer jit
    got = jax.jit(diagnostics.fit_gaussian_mixture)(values, seed=3)
  else:
    got = diagnostics.fit_gaussian_mixture(values, seed=3, init=init)
  ref = GaussianMixture(2, tol=1e-8, max_iter=1000, random_state=0).fit(
      values[:, None].astype(np.float64))
  order = np.argsort(ref.means_[:, 0])
  assert bool(got.converged)
  np.testing.assert_allclose(got.weights, ref.weights_[order], atol=1e-3)
  np.testing.assert_allclose(got.means, ref.means_[order, 0], atol=1e-3)
  np.testing.assert_allclose(got.stds, np.sqrt(ref.covariances_[order, 0, 0]), atol=1e-3)
  np.testing.assert_allclose(got.log_likelihood, ref.score(values[:, None]), atol=1e-3)
  # ... and close to the generating parameters.
  np.testing.assert_allclose(got.weights, [0.3, 0.7], atol=0.03)
  np.testing.assert_allclose(got.means, [-0.4, 0.6], atol=0.02)
  np.testing.assert_allclose(got.stds, [0.1, 0.2], atol=0.02)


def test_gmm_weights_select_entries_and_one_component_is_moments():
  values = _two_gaussians(8, n=1000)
  padded = np.concatenate([values, np.full(300, 1e6, np.float32)])
  padded[-1] = np.nan
  mask = np.arange(padded.size) < values.size
  a = diagnostics.fit_gaussian_mixture(values)
  b = diagnostics.fit_gaussian_mixture(padded, weights=mask)
  for u, v in zip(a[:4], b[:4]):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)
  one = diagnostics.fit_gaussian_mixture(values, 1)
  np.testing.assert_allclose(one.weights, [1.0], rtol=1e-6)
  np.testing.assert_allclose(one.means, [values.astype(np.float64).mean()], atol=1e-5)
  np.testing.assert_allclose(one.stds, [values.astype(np.float64).std()], rtol=1e-4)


@pytest.mark.parametrize("k,values", [
    (1, np.full(50, 0.37, np.float32)), (2, np.full(50, 0.37, np.float32)),
    (3, np.full(50, 0.37, np.float32)), (2, np.zeros(1, np.float32)),
    (3, np.array([0.0, 0.0, 0.0, 1.0], np.float32))])
def test_gmm_degenerate_data_is_finite(k, values):
  got = diagnostics.fit_gaussian_mixture(values, k)
  for leaf in jax.tree.leaves(got):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  assert np.all(np.asarray(got.stds) > 0)
  np.testing.assert_allclose(np.sum(got.weights), 1.0, rtol=1e-5)
  if np.all(values == values[0]):
    np.testing.assert_allclose(got.means, values[0], atol=1e-6)


def test_mixture_pdf_is_a_density():
  mix = diagnostics.GaussianMixture(
      weights=jnp.array([0.25, 0.75]), means=jnp.array([-1.0, 2.0]),
      stds=jnp.array([0.5, 1.0]), log_likelihood=jnp.array(0.0),
      num_iters=jnp.array(0), converged=jnp.array(True))
  grid = np.linspace(-8, 10, 20001)
  pdf = np.asarray(diagnostics.mixture_pdf(grid, mix))
  np.testing.assert_allclose(np.trapezoid(pdf, grid), 1.0, rtol=1e-4)
  parts = np.asarray(diagnostics.mixture_pdf(grid, mix, components=True))
  assert parts.shape == (grid.size, 2)
  np.testing.assert_allclose(parts.sum(-1), pdf, rtol=1e-6)
  want = 0.25 * np.exp(-0.5 * 4) / (0.5 * np.sqrt(2 * np.pi))  # component 0 at x = 0
  at_zero = diagnostics.mixture_pdf(np.zeros(1), mix, components=True)
  np.testing.assert_allclose(at_zero[0, 0], want, rtol=1e-5)


def test_effective_margins_to_gmm_under_jit():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(40, 8)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.repeat(np.arange(8), 5).astype(np.int32)

  @jax.jit
  def pipeline(x, labels, seed):
    em = diagnostics.effective_margins(x, labels, max_triplets=2000, seed=seed)
    return em, diagnostics.fit_gaussian_mixture(em.values, weights=em.mask)

  em, mix = pipeline(x, labels, 0)
  assert not bool(em.exact) and float(em.num_triplets) == 8 * 5 * 4 * 35
  for leaf in jax.tree.leaves(mix):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  assert np.all(np.abs(np.asarray(em.values)) <= 2.0 + 1e-6)


# ----------------------------------------------------------------------------- plotting


def test_plotting_helpers_draw_and_save(tmp_path):
  values = _two_gaussians(10, n=500)
  mix = diagnostics.GaussianMixture(
      weights=np.array([0.3, 0.7]), means=np.array([-0.4, 0.6]), stds=np.array([0.1, 0.2]),
      log_likelihood=0.0, num_iters=10, converged=True)
  fig, axes = plt.subplots(1, 3)
  plotting.plot_effective_margins(axes[0], values, mix, margin=0.2, title="margins")
  assert len(axes[0].patches) == 60  # histogram bars
  assert len(axes[0].lines) == 4  # total, two components, margin line
  x, labels = _data()
  em = diagnostics.effective_margins(x, labels, max_triplets=50)
  plotting.plot_effective_margins(axes[0], em, mix)
  assert len(axes[0].patches) == 120
  plotting.plot_curves(axes[1], None, {"contrastive": [1.0, 0.5, np.nan],
                                       "triplet": [1.0, 0.8, 0.3]}, logy=True)
  assert len(axes[1].lines) == 2
  with pytest.raises(ValueError, match="epochs"):
    plotting.plot_curves(axes[1], [1, 2], {"loss": [1.0, 2.0, 3.0]})
  plotting.plot_pca(axes[2], x, labels, max_points=10)
  assert len(axes[2].collections) >= 2
  path = tmp_path / "sub" / "fig.png"
  plotting.save_figure(fig, str(path))
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_pca_2d_matches_sklearn_and_handles_degenerate_input():
  from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel

  x = np.random.default_rng(11).normal(size=(30, 5)) * [3, 2, 1, 0.5, 0.1]
  points, explained = plotting.pca_2d(x)
  ref = PCA(2).fit(x)
  np.testing.assert_allclose(np.abs(points), np.abs(ref.transform(x)), atol=1e-8)
  np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-8)
  same, explained = plotting.pca_2d(np.ones((4, 3)))
  np.testing.assert_array_equal(same, 0.0)
  np.testing.assert_array_equal(explained, 0.0)
  one, _ = plotting.pca_2d(np.ones((3, 1)))
  assert one.shape == (3, 2) and np.all(np.isfinite(one))
