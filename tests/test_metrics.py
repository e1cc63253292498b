"""tsm.metrics against brute-force numpy references and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from tsm import distances as tsm_distances
from tsm import metrics
from tsm.data import pairs
from tsm.metrics import neighbors, verification

METHODS = ("top_k", "blocks")


# ----------------------------------------------------------------------------- references


def brute_distances(q, r, distance):
  q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
  if distance == "cosine":
    qn = q / np.where(np.linalg.norm(q, axis=1, keepdims=True) > 0,
                      np.linalg.norm(q, axis=1, keepdims=True), 1.0)
    rn = r / np.where(np.linalg.norm(r, axis=1, keepdims=True) > 0,
                      np.linalg.norm(r, axis=1, keepdims=True), 1.0)
    return 1.0 - np.clip(qn @ rn.T, -1.0, 1.0)
  sq = np.sum((q[:, None, :] - r[None, :, :]) ** 2, axis=-1)
  return np.sqrt(sq) if distance == "euclidean" else sq


def brute_order(d, self_mode):
  """Full sort of every row by (distance, reference index); self excluded."""
  d = d.copy()
  if self_mode:
    np.fill_diagonal(d, np.inf)
  cols = np.broadcast_to(np.arange(d.shape[1]), d.shape)
  order = np.lexsort((cols, d), axis=1)
  return order[:, :d.shape[1] - 1] if self_mode else order


def brute_retrieval(q, ql, r, rl, ks, distance="euclidean", max_r=None):
  self_mode = r is None
  if self_mode:
    r, rl = q, ql
  order = brute_order(brute_distances(q, r, distance), self_mode)
  sums = {f"recall@{k}": 0.0 for k in ks}
  sums.update({"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0})
  count = 0
  for i in range(len(q)):
    rel = rl[order[i]] == ql[i]
    big_r = int(np.sum(rl == ql[i])) - (1 if self_mode else 0)
    if max_r is not None:
      big_r = min(big_r, max_r)
    if big_r == 0:
      continue
    count += 1
    for k in ks:
      sums[f"recall@{k}"] += float(rel[:k].any())
    sums["precision@1"] += float(rel[0])
    sums["r_precision"] += rel[:big_r].sum() / big_r
    ap = 0.0
    for pos in range(big_r):
      if rel[pos]:
        ap += rel[:pos + 1].sum() / (pos + 1)
    sums["map@r"] += ap / big_r
  return {k: (v / count if count else float("nan")) for k, v in sums.items()}


def integer_data(rng, n, dim, classes):
  """Small integer coordinates: exact float32 distances and many exact ties."""
  x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
  return x, rng.integers(0, classes, size=n)


def assert_metrics_close(got, want):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-9, err_msg=key)


# ----------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
@pytest.mark.parametrize("self_mode", [True, False])
def test_neighbors_match_full_sort_with_ties(method, distance, self_mode):
  rng = np.random.default_rng(0)
  r, _ = integer_data(rng, 61, 3, 4)
  q = r if self_mode else integer_data(rng, 23, 3, 4)[0]
  order = brute_order(brute_distances(q, r, distance), self_mode)
  dist = brute_distances(q, r, distance)
  for k in (1, 5, order.shape[1]):
    for chunk_size in (1, 7, 100):
      idx, d = metrics.nearest_neighbors(q, None if self_mode else r, k=k,
                                         distance=distance, chunk_size=chunk_size,
                                         method=method)
      np.testing.assert_array_equal(idx, order[:, :k])
      np.testing.assert_allclose(d, np.take_along_axis(dist, idx, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_neighbors_cosine_continuous(method):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 6)).astype(np.float32)
  order = brute_order(brute_distances(x, x, "cosine"), True)
  idx, d = metrics.nearest_neighbors(x, k=10, distance="cosine", chunk_size=16,
                                     method=method)
  np.testing.assert_array_equal(idx, order[:, :10])
  np.testing.assert_allclose(d, np.take_along_axis(brute_distances(x, x, "cosine"), idx, 1),
                             atol=1e-6)


def test_neighbors_methods_agree_on_class_sorted_data():
  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(8), 40)
  x = (rng.standard_normal((8, 16))[labels] + 0.3 * rng.standard_normal((320, 16)))
  a = metrics.nearest_neighbors(x.astype(np.float32), k=39, chunk_size=50, method="top_k")
  b = metrics.nearest_neighbors(x.astype(np.float32), k=39, chunk_size=64, method="blocks")
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


def test_neighbors_duplicates_and_zero_distance_ties():
  x = np.zeros((5, 2), np.float32)  # all at distance 0: index order, self excluded
  for method in METHODS:
    idx, d = metrics.nearest_neighbors(x, k=4, method=method)
    np.testing.assert_array_equal(idx[2], [0, 1, 3, 4])
    np.testing.assert_array_equal(d, 0.0)


def test_sortable_codes_order_like_floats():
  v = np.array([-np.inf, -3.5, -1e-30, 0.0, 1e-30, 2.0, np.inf], np.float32)
  codes = neighbors._sortable(v)  # pylint: disable=protected-access
  assert np.all(np.diff(codes.astype(np.int64)) > 0)
  np.testing.assert_array_equal(neighbors._unsortable(codes), v)  # pylint: disable=protected-access


def test_kth_smallest_bound_sampled_and_fallback():
  rng = np.random.default_rng(8)
  mins = rng.random((6, 4096)).astype(np.float32)
  mins[0, ::4] = -1.0 - rng.random(1024)  # the every-4th sample holds the smallest: fallback
  for k in (1, 50, 300):
    tau = neighbors._kth_smallest_bound(mins, k)  # pylint: disable=protected-access
    exact = np.sort(mins, axis=1)[:, k - 1]
    assert np.all(np.count_nonzero(mins <= tau[:, None], axis=1) >= k)
    assert np.all(tau >= exact)
    if k > 12:  # the sample's quantile covers too few entries: exact fallback
      assert tau[0] == exact[0]
    assert np.all(np.count_nonzero(mins <= tau[:, None], axis=1) <= 1.6 * k + 64)


@pytest.mark.parametrize("k", [1, 7, 120])
def test_neighbors_large_reference_set(k):
  # 20,000 references: enough blocks for the sampled bound of the "blocks" method.
  rng = np.random.default_rng(9)
  r = rng.integers(-3, 4, size=(20000, 3)).astype(np.float32)
  q = rng.integers(-3, 4, size=(17, 3)).astype(np.float32)
  order = brute_order(brute_distances(q, r, "squared_euclidean"), False)
  for method in METHODS:
    idx, _ = metrics.nearest_neighbors(q, r, k=k, distance="squared_euclidean",
                                       chunk_size=8, method=method)
    np.testing.assert_array_equal(idx, order[:, :k])


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_reference_rows_chunked_equal_augment_bit_for_bit(distance):
  # The gallery is prepared in chunks; every row must be exactly _augment's row.
  rng = np.random.default_rng(10)
  r = rng.standard_normal((103, 5)).astype(np.float32)
  r[7] = 0.0  # a zero vector (cosine: distance 1 to everything)
  order = rng.permutation(103)
  want = neighbors._augment(r[order], queries=False, distance=distance)
  got = np.asarray(neighbors._reference_rows(r, order, 112, distance=distance,
                                             chunk_rows=40))
  np.testing.assert_array_equal(got[:103], want)
  np.testing.assert_array_equal(got[103:], 0.0)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_reference_columns_are_the_transposed_rows_bit_for_bit(distance):
  # The CPU path keeps the gallery transposed for the BLAS product.
  rng = np.random.default_rng(12)
  r = rng.standard_normal((103, 5)).astype(np.float32)
  order = rng.permutation(103)
  want = neighbors._augment(r[order], queries=False, distance=distance)
  got = neighbors._reference_columns(r, order, 112, distance=distance, chunk_rows=40)
  assert got.shape == (6, 112)
  np.testing.assert_array_equal(got[:, :103], want.T)
  np.testing.assert_array_equal(got[:, 103:], 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_neighbors_device_key_path_matches_full_sort(method, monkeypatch):
  # The accelerator path (keys from one jitted program), run on the CPU device.
  monkeypatch.setattr(neighbors.jax, "default_backend", lambda: "gpu")
  rng = np.random.default_rng(14)
  x, _ = integer_data(rng, 61, 3, 4)
  order = brute_order(brute_distances(x, x, "euclidean"), True)
  idx, _ = metrics.nearest_neighbors(x, k=9, chunk_size=16, method=method)
  np.testing.assert_array_equal(idx, order[:, :9])


def test_block_minima_are_minima_of_strided_blocks():
  key = np.random.default_rng(13).standard_normal((3, 48)).astype(np.float32)
  got = neighbors._block_minima(key, 16)  # pylint: disable=protected-access
  want = [[min(key[i, j::3]) for j in range(3)] for i in range(3)]
  np.testing.assert_array_equal(got, want)


def test_retrieval_memory_mapped_gallery_matches_in_memory(tmp_path):
  rng = np.random.default_rng(11)
  r = rng.integers(-2, 3, size=(3000, 4)).astype(np.float32)  # many exact ties
  r_labels = rng.integers(0, 5, 3000)
  q = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
  q_labels = rng.integers(0, 5, 40)
  np.save(tmp_path / "r.npy", r)
  mapped = np.load(tmp_path / "r.npy", mmap_mode="r")
  want = brute_retrieval(q, q_labels, r, r_labels, (1, 5))
  for method in METHODS:
    got = metrics.retrieval_metrics(q, q_labels, mapped, r_labels, ks=(1, 5),
                                    method=method)
    assert_metrics_close(got, want)
    assert got == metrics.retrieval_metrics(q, q_labels, r, r_labels, ks=(1, 5),
                                            method=method)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k=0"),
    (dict(k=5), r"k=5 must be in \[1, 3\]"),
    (dict(k=1, distance="manhattan"), "unknown distance"),
    (dict(k=1, method="faiss"), "unknown method"),
    (dict(k=1, chunk_size=0), "chunk_size"),
])
def test_neighbors_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    metrics.nearest_neighbors(np.zeros((4, 2), np.float32), **kwargs)


def test_neighbors_rejects_bad_embeddings():
  with pytest.raises(ValueError, match="NaN"):
    metrics.nearest_neighbors(np.array([[0.0], [np.nan]]), k=1)
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    metrics.nearest_neighbors(np.zeros(4), k=1)
  with pytest.raises(ValueError, match="same model"):
    metrics.nearest_neighbors(np.zeros((4, 2)), np.zeros((4, 3)), k=1)


# ----------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [1, 9, 64])
def test_retrieval_self_mode_matches_brute_force(method, chunk_size):
  rng = np.random.default_rng(3)
  x, y = integer_data(rng, 57, 3, 6)
  y[0] = 99  # a class with a single member: left out as a query, still in the gallery
  ks = (1, 2, 5, 10, 100)  # K larger than the gallery
  with pytest.warns(UserWarning, match="1 of 57 queries"):
    got = metrics.retrieval_metrics(x, y, ks=ks, chunk_size=chunk_size, method=method)
  assert_metrics_close(got, brute_retrieval(x, y, None, None, ks))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_retrieval_separate_sets_match_brute_force(method, distance):
  rng = np.random.default_rng(4)
  r = rng.standard_normal((70, 5)).astype(np.float32)
  rl = rng.integers(0, 5, 70)
  q = rng.standard_normal((31, 5)).astype(np.float32)
  ql = rng.integers(0, 6, 31)  # class 5 is absent from the references: left out
  ks = (1, 3, 10)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    got = metrics.retrieval_metrics(q, ql, r, rl, ks=ks, distance=distance, chunk_size=8,
                                    method=method)
  assert_metrics_close(got, brute_retrieval(q, ql, r, rl, ks, distance))


def test_retrieval_max_r_cap_matches_brute_force():
  rng = np.random.default_rng(5)
  x, y = integer_data(rng, 40, 2, 2)
  got = metrics.retrieval_metrics(x, y, ks=(1,), max_r=3, chunk_size=16)
  assert_metrics_close(got, brute_retrieval(x, y, None, None, (1,), max_r=3))


def test_retrieval_hand_computed_map_at_r():
  # Query at 0 (class 0); references at 1..5 with classes 0,1,0,0,1: R = 3,
  # top 3 = [rel, not, rel] -> R-precision 2/3, MAP@R = (1 + 0 + 2/3) / 3 = 5/9.
  q = np.array([[0.0]], np.float32)
  r = np.arange(1, 6, dtype=np.float32)[:, None]
  got = metrics.retrieval_metrics(q, [0], r, [0, 1, 0, 0, 1], ks=(1, 2))
  assert got == pytest.approx({"recall@1": 1.0, "recall@2": 1.0, "precision@1": 1.0,
                               "r_precision": 2 / 3, "map@r": 5 / 9})


def test_retrieval_ties_broken_by_reference_index():
  # All points identical: neighbours in index order (self excluded).
  # Labels 0,1,0,1 -> rel rows: q0 [F,T,F], q1 [F,F,T], q2 [T,F,F], q3 [F,T,F].
  x = np.ones((4, 3), np.float32)
  got = metrics.retrieval_metrics(x, [0, 1, 0, 1], ks=(1, 2, 3))
  assert got == pytest.approx({"recall@1": 0.25, "recall@2": 0.75, "recall@3": 1.0,
                               "precision@1": 0.25, "r_precision": 0.25, "map@r": 0.25})


def test_retrieval_all_correct_and_all_wrong():
  clusters = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]], np.float32)
  good = metrics.retrieval_metrics(clusters, [0, 0, 0, 1, 1, 1], ks=(1, 2))
  assert good == pytest.approx({"recall@1": 1.0, "recall@2": 1.0, "precision@1": 1.0,
                                "r_precision": 1.0, "map@r": 1.0})
  # Square corners, classes on the diagonals: both nearest neighbours of every point
  # are of the other class, its class mate is last (rank 3).
  square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
  bad = metrics.retrieval_metrics(square, [0, 1, 1, 0], ks=(1, 2, 3, 5))
  assert bad == pytest.approx({"recall@1": 0.0, "recall@2": 0.0, "recall@3": 1.0,
                               "recall@5": 1.0, "precision@1": 0.0, "r_precision": 0.0,
                               "map@r": 0.0})


def test_retrieval_no_positives_anywhere_is_nan():
  with pytest.warns(UserWarning, match="3 of 3"):
    got = metrics.retrieval_metrics(np.eye(3, dtype=np.float32), [0, 1, 2])
  assert all(np.isnan(v) for v in got.values())
  assert set(got) == {"recall@1", "recall@5", "recall@10", "precision@1", "r_precision",
                      "map@r"}


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((3, 2)), [0, 0, 1]), dict(ks=(0,)), "ks"),
    ((np.zeros((3, 2)), [0, 0]), {}, r"query_labels must have shape \[3\]"),
    ((np.zeros((3, 2)), [0.5, 0, 1]), {}, "integers"),
    ((np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2))), {}, "both"),
    ((np.zeros((3, 2)), [0, 0, 1]), dict(max_r=0), "max_r"),
])
def test_retrieval_errors(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    metrics.retrieval_metrics(*args, **kwargs)


# ----------------------------------------------------------------------------- k-NN


def brute_knn(train, tl, test, k):
  order = brute_order(brute_distances(test, train, "euclidean"), False)[:, :k]
  preds = []
  for row in tl[order]:
    votes = {c: np.sum(row == c) for c in row}
    best = max(votes.values())
    preds.append(next(c for c in row if votes[c] == best))  # nearest tied class
  return np.array(preds)


@pytest.mark.parametrize("method", METHODS)
def test_knn_matches_brute_force(method):
  rng = np.random.default_rng(6)
  train, tl = integer_data(rng, 80, 3, 4)
  test, yl = integer_data(rng, 33, 3, 4)
  for k in (1, 4, 5):
    preds = metrics.knn_predict(train, tl, test, k=k, chunk_size=10, method=method)
    np.testing.assert_array_equal(preds, brute_knn(train, tl, test, k))
    acc = metrics.knn_accuracy(train, tl, test, yl, k=k, chunk_size=10, method=method)
    assert acc == pytest.approx(np.mean(brute_knn(train, tl, test, k) == yl))


def test_knn_tie_goes_to_the_class_of_the_nearest_neighbour():
  train = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
  q = np.array([[0.0]], np.float32)
  assert metrics.knn_predict(train, [7, 3, 3, 7], q, k=4)[0] == 7  # 2-2 tie, 7 nearest
  assert metrics.knn_predict(train, [3, 7, 7, 3], q, k=4)[0] == 3
  assert metrics.knn_predict(train, [3, 7, 7, 5], q, k=4)[0] == 7  # majority wins
  # k larger than the training set: all four vote.
  assert metrics.knn_accuracy(train, [3, 7, 7, 5], q, [7], k=50) == 1.0


# ----------------------------------------------------------------------------- verification


def random_pairs(seed, n=400, overlap=1.0):
  rng = np.random.default_rng(seed)
  same = rng.random(n) < 0.5
  d = rng.random(n) + overlap * (~same)
  return np.round(d, 2), same  # rounding makes tied distances


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_and_auc_match_sklearn(seed):
  d, same = random_pairs(seed, overlap=0.4)
  fpr, tpr, thr = metrics.roc_curve(d, same)
  s_fpr, s_tpr, s_thr = skm.roc_curve(same, -d, drop_intermediate=False)
  np.testing.assert_allclose(fpr, s_fpr)
  np.testing.assert_allclose(tpr, s_tpr)
  np.testing.assert_allclose(thr[1:], -s_thr[1:])
  assert thr[0] == -np.inf
  got = metrics.verification_metrics(d, same)
  assert got["auc"] == pytest.approx(skm.roc_auc_score(same, -d))
  assert set(got) == {"auc", "eer", "tar@far=1e-3", "tar@far=1e-2", "num_same",
                      "num_different"}
  assert got["num_same"] == same.sum() and got["num_different"] == (~same).sum()


def test_eer_and_tar_hand_computed():
  # distances of same pairs 1, 3; different pairs 2, 4.
  # ROC points (fpr, tpr): (0,0) t=-inf, (0,.5) t=1, (.5,.5) t=2, (.5,1) t=3, (1,1) t=4.
  d, same = [1.0, 2.0, 3.0, 4.0], [True, False, True, False]
  fpr, tpr, thr = metrics.roc_curve(d, same)
  np.testing.assert_allclose(fpr, [0, 0, .5, .5, 1])
  np.testing.assert_allclose(tpr, [0, .5, .5, 1, 1])
  np.testing.assert_allclose(thr, [-np.inf, 1, 2, 3, 4])
  got = metrics.verification_metrics(d, same)
  # FNR - FPR: 1, .5, 0 (at t=2) -> EER 0.5; AUC = 0.75.
  # Two different pairs cannot resolve FAR 1e-3 or 1e-2: NaN, never a number.
  assert got == pytest.approx({"auc": 0.75, "eer": 0.5, "tar@far=1e-3": np.nan,
                               "tar@far=1e-2": np.nan, "num_same": 2,
                               "num_different": 2}, nan_ok=True)
  # Even FAR 0.5 needs 20 negatives.
  assert np.isnan(metrics.verification_metrics(d, same, fars=(0.5,))["tar@far=5e-1"])
  assert metrics.choose_threshold_eer(d, same) == 2.0
  # Corner distances^2: 1, .25, .5, .25, 1 -> first minimum at t=1.
  assert metrics.choose_threshold_closest_to_corner(d, same) == 1.0
  assert metrics.accuracy_at_threshold(d, same, 1.0) == 0.75
  assert metrics.accuracy_at_threshold(d, same, 3.0) == 0.75
  assert metrics.accuracy_at_threshold(d, same, 0.0) == 0.5


def test_eer_interpolates_between_roc_points():
  # same 1, 2; different 1.5, 3, 4, 5 -> points (0,0) (0,.5) (.25,.5) (.25,1) ...
  # FNR - FPR: 1, .5, .25, -.25 -> crossing halfway between (.25,.5) and (.25,1): 0.25.
  d = [1.0, 2.0, 1.5, 3.0, 4.0, 5.0]
  same = [True, True, False, False, False, False]
  assert metrics.eer(d, same) == pytest.approx(0.25)
  assert metrics.verification_metrics(d, same)["eer"] == pytest.approx(0.25)


def test_verification_separable_and_reversed():
  d_sep, same = [0.1, 0.2, 0.8, 0.9], [True, True, False, False]
  good = metrics.verification_metrics(d_sep, same)
  assert good == pytest.approx({"auc": 1.0, "eer": 0.0, "tar@far=1e-3": np.nan,
                                "tar@far=1e-2": np.nan, "num_same": 2,
                                "num_different": 2}, nan_ok=True)
  threshold = metrics.choose_threshold_closest_to_corner(d_sep, same)
  assert threshold == 0.2 and metrics.accuracy_at_threshold(d_sep, same, threshold) == 1.0
  bad = metrics.verification_metrics(d_sep, [False, False, True, True])
  assert bad["auc"] == 0.0 and bad["eer"] == 1.0 and np.isnan(bad["tar@far=1e-2"])


@pytest.mark.parametrize("seed", [0, 3])
def test_verification_against_brute_force_definitions(seed):
  d, same = random_pairs(seed, n=300, overlap=0.3)
  fpr, tpr, thr = metrics.roc_curve(d, same)
  for t, f, p in zip(thr, fpr, tpr):
    accept = d <= t
    assert f == pytest.approx(np.mean(accept[~same]))
    assert p == pytest.approx(np.mean(accept[same]))
  got = metrics.verification_metrics(d, same, fars=(1e-2, 0.1, 0.2))
  assert np.isnan(got["tar@far=1e-2"])   # ~150 negatives < 1,000
  for far in (0.1, 0.2):   # 100 and 50 negatives needed
    best = max(np.mean((d <= t)[same]) for t in np.r_[-np.inf, d]
               if np.mean((d <= t)[~same]) <= far)
    assert got[f"tar@far={far:.0e}".replace("e-0", "e-")] == pytest.approx(best)
  corner = metrics.choose_threshold_closest_to_corner(d, same)
  dist2 = [(np.mean((d <= t)[~same])) ** 2 + (1 - np.mean((d <= t)[same])) ** 2
           for t in thr]
  assert corner == thr[int(np.argmin(dist2))]
  assert metrics.eer(d, same) == pytest.approx(got["eer"])
  assert 0.0 <= got["eer"] <= 1.0


@pytest.mark.parametrize("d, same, match", [
    ([0.1, 0.2], [True, True], "needs both"),
    ([0.1, np.nan], [True, False], "NaN"),
    ([0.1, 0.2], [True], "shape"),
    ([0.1, 0.2], [2, 0], "booleans"),
    ([[0.1, 0.2]], [[True, False]], "1-D"),
])
def test_verification_errors(d, same, match):
  with pytest.raises(ValueError, match=match):
    metrics.verification_metrics(d, same)


def test_balanced_accuracy_hand_computed():
  # same 1, 3; different 2, 4, 5, 6 at threshold 3: TPR 2/2, TNR 3/4 -> 0.875
  # (plain accuracy 5/6).
  d = [1.0, 3.0, 2.0, 4.0, 5.0, 6.0]
  same = [True, True, False, False, False, False]
  assert verification.balanced_accuracy_at_threshold(d, same, 3.0) == pytest.approx(0.875)
  assert metrics.accuracy_at_threshold(d, same, 3.0) == pytest.approx(5 / 6)
  with pytest.raises(ValueError, match="both"):
    verification.balanced_accuracy_at_threshold([1.0], [True], 1.0)


def test_min_negatives_for_far_and_reason():
  assert verification.min_negatives_for_far(1e-3) == 10_000   # not 10,001 from 1e-3 rounding
  assert verification.min_negatives_for_far(1e-2) == 1_000
  assert verification.min_negatives_for_far(1e-4) == 100_000
  assert verification.min_negatives_for_far(3e-3) == 3_334
  assert verification.tar_unmeasurable_reason(10_000, 1e-3) is None
  assert verification.tar_unmeasurable_reason(500, 1e-3) == "500 different pairs < 10/FAR = 10,000"
  with pytest.raises(ValueError, match="far=0"):
    verification.min_negatives_for_far(0.0)
  with pytest.raises(ValueError, match="far=2"):
    metrics.verification_metrics([0.1, 0.2], [True, False], fars=(2.0,))


@pytest.mark.parametrize("num_neg", [9_999, 10_000])
def test_tar_reported_exactly_from_ten_per_far(num_neg):
  rng = np.random.default_rng(num_neg)
  same = np.r_[np.ones(400, bool), np.zeros(num_neg, bool)]
  d = np.round(rng.random(same.size) + 0.5 * ~same, 2)   # few distinct thresholds
  got = metrics.verification_metrics(d, same)
  tar = metrics.tar_at_far(d, same, 1e-3)
  if num_neg < 10_000:
    assert np.isnan(got["tar@far=1e-3"]) and np.isnan(tar)
    assert got["tar@far=1e-2"] == pytest.approx(metrics.tar_at_far(d, same, 1e-2))
    return
  # Brute force over every threshold: the largest TPR whose FPR is at most 1e-3.
  thresholds = np.r_[-np.inf, np.unique(d)]
  fpr = np.array([np.mean(d[~same] <= t) for t in thresholds])
  tpr = np.array([np.mean(d[same] <= t) for t in thresholds])
  assert got["tar@far=1e-3"] == tar == pytest.approx(np.max(tpr[fpr <= 1e-3]))


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_pair_distances_match_brute_force(distance, chunk):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 5)).astype(np.float32)
  x[3] = x[4]   # a duplicate: distance exactly zero
  i, j = rng.integers(0, 30, 53), rng.integers(0, 30, 53)
  i[0], j[0] = 3, 4
  got = verification.pair_distances(x, i, j, distance=distance, chunk=chunk)
  xi, xj = x[i].astype(np.float64), x[j].astype(np.float64)
  if distance == "cosine":
    ref = 1 - np.sum(xi * xj, 1) / np.linalg.norm(xi, axis=1) / np.linalg.norm(xj, axis=1)
  else:
    ref = np.sum((xi - xj) ** 2, 1)
    ref = ref if distance == "squared_euclidean" else np.sqrt(ref)
  assert got.shape == (53,) and got[0] == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # The library's own paired distances, up to float32 rounding (jit fuses differently).
  np.testing.assert_allclose(got, np.asarray(tsm_distances.paired_distances(
      x[i], x[j], distance=distance)), rtol=1e-6, atol=1e-7)


def test_pair_distances_nan_in_nan_out():
  x = np.ones((4, 3), np.float32)
  x[2, 1] = np.nan
  d = verification.pair_distances(x, [0, 2, 1], [1, 3, 2])
  assert d[0] == 0.0 and np.isnan(d[1]) and np.isnan(d[2])
  with pytest.raises(ValueError, match="NaN"):   # and the metrics refuse it
    metrics.verification_metrics(d, [True, False, False])


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.zeros((3, 2)), [0, 1], [1]), {}, "1-D integer"),
    ((np.zeros((3, 2)), [0.0], [1.0]), {}, "1-D integer"),
    ((np.zeros((3, 2)), [0, 3], [1, 1]), {}, r"\[0, 3\)"),
    ((np.zeros(3), [0], [1]), {}, r"\[N, D\]"),
    ((np.zeros((3, 2)), [0], [1]), {"chunk": 0}, "chunk"),
    ((np.zeros((3, 2)), [0], [1]), {"distance": "l1"}, "unknown distance"),
])
def test_pair_distances_errors(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    verification.pair_distances(*args, **kwargs)


def test_evaluation_pairs_metrics_against_all_pairs_brute_force():
  # Small split, every pair: AUC equals the Mann-Whitney statistic over all positive x
  # negative pairs (brute force) and sklearn's roc_auc_score on the same pairs.
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 40)
  x = rng.normal(size=(40, 3)) + labels[:, None] * 0.7
  i, j, same = pairs.evaluation_pairs(labels, num_negatives=10_000)
  num_pos, num_neg = pairs.pair_counts(labels)
  assert (same.sum(), (~same).sum()) == (num_pos, num_neg)   # all of them
  d = verification.pair_distances(x, i, j)
  got = metrics.verification_metrics(d, same)
  assert got["num_same"] == num_pos and got["num_different"] == num_neg
  full = np.linalg.norm(x[:, None] - x[None], axis=-1)
  pos = [full[a, b] for a in range(40) for b in range(a + 1, 40) if labels[a] == labels[b]]
  neg = [full[a, b] for a in range(40) for b in range(a + 1, 40) if labels[a] != labels[b]]
  wins = sum((p < q) + 0.5 * (p == q) for p in pos for q in neg)
  assert got["auc"] == pytest.approx(wins / (len(pos) * len(neg)), rel=1e-9)
  assert got["auc"] == pytest.approx(skm.roc_auc_score(same, -d))
  assert np.isnan(got["tar@far=1e-3"])   # 600 negatives < 10,000


def test_many_pairs_auc_matches_sklearn():
  # A 2,000-example split: all 200k positives and 100k sampled negatives.
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 10, 2000)
  x = (rng.normal(size=(2000, 8)) + 0.3 * np.eye(10, 8)[labels]).astype(np.float32)
  i, j, same = pairs.evaluation_pairs(labels, seed=3)
  assert same.sum() == pairs.pair_counts(labels)[0] and (~same).sum() == 100_000
  d = verification.pair_distances(x, i, j)
  got = metrics.verification_metrics(d, same)
  assert got["auc"] == pytest.approx(skm.roc_auc_score(same, -d), rel=1e-9)
  assert np.isfinite(got["tar@far=1e-3"]) and np.isfinite(got["tar@far=1e-2"])


# ----------------------------------------------------------------------------- clustering


def test_clustering_separated_clusters_and_seeding():
  rng = np.random.default_rng(7)
  labels = np.repeat(np.arange(4), 25)
  x = (10 * np.eye(4, 8)[labels] + 0.1 * rng.standard_normal((100, 8))).astype(np.float32)
  got = metrics.clustering_metrics(x, labels, seed=0)
  assert got == pytest.approx({"nmi": 1.0, "ami": 1.0})
  noisy = rng.standard_normal((100, 8)).astype(np.float32)
  assert metrics.clustering_metrics(noisy, labels, seed=1) == metrics.clustering_metrics(
      noisy, labels, seed=1)
  with pytest.raises(ValueError, match="classes"):
    metrics.clustering_metrics(x, np.zeros(100, int), seed=0)
