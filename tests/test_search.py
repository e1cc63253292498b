"""tsm.search.Index against a numpy brute force over every (query, reference) pair."""

import os

import numpy as np
import pytest

from tsm import search


def _brute_force(queries, refs, k, distance):
  """Every distance in float64, then a stable sort (equal distances: lower row first)."""
  q = np.asarray(queries, np.float64)
  r = np.asarray(refs, np.float64)
  if distance == "cosine":
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    d = 1.0 - qn @ rn.T
  else:
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    if distance == "euclidean":
      d = np.sqrt(d)
  order = np.argsort(d, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(d, order, axis=1)


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("batch_size,chunk_size", [(1024, 65536), (7, 13), (1, 1)])
def test_matches_brute_force(distance, batch_size, chunk_size):
  rng = np.random.default_rng(0)
  refs = rng.normal(size=(57, 5)).astype(np.float32)
  queries = rng.normal(size=(23, 5)).astype(np.float32)
  index = search.Index.build(refs, distance=distance)
  ids, dist = index.search(queries, k=6, batch_size=batch_size, chunk_size=chunk_size)
  want_ids, want_dist = _brute_force(queries, refs, 6, distance)
  assert ids.shape == dist.shape == (23, 6) and dist.dtype == np.float32
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [65536, 3, 4])
def test_ties_by_row_across_chunks(chunk_size):
  # Integer points: equal distances are exactly equal in float32 too. Rows 0, 4, 5, 9 are
  # one point; rows 2, 7 another; every query ties among several references.
  base = np.array([[0, 0], [3, 0], [0, 4], [1, 1], [0, 0], [0, 0], [2, 2], [0, 4], [5, 5],
                   [0, 0]], np.float32)
  queries = np.array([[0, 0], [0, 2], [1, 0], [2, 1]], np.float32)
  index = search.Index.build(base, ids=np.arange(100, 110))
  ids, dist = index.search(queries, k=10, chunk_size=chunk_size, batch_size=3)
  want, want_dist = _brute_force(queries, base, 10, "euclidean")
  np.testing.assert_array_equal(ids, want + 100)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-6)
  np.testing.assert_array_equal(ids[0, :4], [100, 104, 105, 109])  # by hand


def test_string_ids_and_duplicates():
  refs = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # each point twice
  index = search.Index.build(refs, ids=np.array(list("abcdef")))
  ids, dist = index.search(np.eye(3, dtype=np.float32), k=2, chunk_size=1)
  np.testing.assert_array_equal(ids, [["a", "b"], ["c", "d"], ["e", "f"]])
  np.testing.assert_array_equal(dist, np.zeros((3, 2)))


def test_save_load_roundtrip_and_umask(tmp_path):
  rng = np.random.default_rng(1)
  refs = rng.normal(size=(40, 4)).astype(np.float32)
  queries = rng.normal(size=(9, 4)).astype(np.float32)
  index = search.Index.build(refs, ids=np.arange(40) * 3, distance="cosine")
  path = str(tmp_path / "index.npz")
  old = os.umask(0o022)
  try:
    index.save(path)
  finally:
    os.umask(old)
  assert os.stat(path).st_mode & 0o777 == 0o644
  assert os.listdir(tmp_path) == ["index.npz"]  # no temporary file left
  loaded = search.Index.load(path)
  assert loaded.distance == "cosine" and len(loaded) == 40 and loaded.dim == 4
  for a, b in zip(loaded.search(queries, 5), index.search(queries, 5)):
    np.testing.assert_array_equal(a, b)


def test_memory_mapped_embeddings(tmp_path):
  rng = np.random.default_rng(2)
  refs = rng.normal(size=(30, 3)).astype(np.float32)
  np.save(tmp_path / "emb.npy", refs)
  mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
  index = search.Index.build(mapped)
  assert isinstance(index.embeddings, np.memmap)  # kept, not read whole
  queries = rng.normal(size=(4, 3)).astype(np.float32)
  ids, _ = index.search(queries, k=30, chunk_size=8)
  np.testing.assert_array_equal(ids, _brute_force(queries, refs, 30, "euclidean")[0])


@pytest.mark.parametrize("call,match", [
    (lambda ix, q: ix.search(q, k=11), "k=11 must be an integer in \\[1, 10\\]"),
    (lambda ix, q: ix.search(q, k=0), "k=0"),
    (lambda ix, q: ix.search(q[:, :2], k=1), "queries have 2 dimensions"),
    (lambda ix, q: ix.search(q, k=1, batch_size=0), "batch_size=0"),
    (lambda ix, q: ix.search(q, k=1, chunk_size=2.5), "chunk_size=2.5"),
    (lambda ix, q: ix.search(q * np.nan, k=1), "queries"),
])
def test_bad_arguments(call, match):
  index = search.Index.build(np.ones((10, 3), np.float32))
  with pytest.raises(ValueError, match=match):
    call(index, np.ones((2, 3), np.float32))


def test_bad_build_and_load(tmp_path):
  with pytest.raises(ValueError, match="distance"):
    search.Index.build(np.ones((3, 2)), distance="manhattan")
  with pytest.raises(ValueError, match="ids must be a \\[N\\] array"):
    search.Index.build(np.ones((3, 2)), ids=[1, 2])
  with pytest.raises(ValueError, match="embeddings must be a \\[N, D\\]"):
    search.Index.build(np.ones(3))
  with pytest.raises(ValueError, match="must end with .npz"):
    search.Index.build(np.ones((3, 2))).save(str(tmp_path / "index"))
  with pytest.raises(ValueError, match="does not exist"):
    search.Index.load(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "other.npz", x=np.ones(2))
  with pytest.raises(ValueError, match="lacks"):
    search.Index.load(str(tmp_path / "other.npz"))
