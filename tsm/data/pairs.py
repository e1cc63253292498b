"""Verification pairs: fixed same / different pairs of a split, for AUC, EER, TAR@FAR.

Two protocols:

* :func:`evaluation_pairs` (the default for reporting): every same-class pair ``i < j`` of
  the split and ``num_negatives`` (100,000) distinct different-class pairs drawn uniformly
  (all of them when there are fewer). With 1,000 pairs the pair sampling alone moves AUC
  by about 0.005 and EER by about 0.010 (standard deviations), the size of the
  differences between the variants a study compares, and 500 negatives cannot resolve
  FAR = 1e-3 at all. On a synthetic 10,000-example, 10-class split (AUC 0.98) the
  standard deviation over pair seeds fell from 0.0034 to 0.0002 (AUC) and from 0.0093 to
  0.0003 (EER), and TAR is measurable down to FAR = 1e-4 (``10 / FAR`` negatives, see
  ``tsm.metrics.verification.min_negatives_for_far``).
* :func:`verification_pairs`: paper A's protocol, 1,000 test pairs, half same-identity,
  drawn once per split (the same pairs for every model compared).

Both are seeded and deterministic, and return indices into the split. Pairs are
enumerated without materialising the ``N × N`` matrix: examples are grouped by class, and
the ``k``-th pair is decoded from ``k`` through per-example cumulative counts (``O(N)``
memory, plus ``O(num_pairs)`` for the output and the draw): on a 70,000-example split the
default 10M positives and 100k negatives peak at about 360 MB (an ``N × N`` boolean
matrix alone would be 4.9 GB).
"""

from __future__ import annotations

import numpy as np

from tsm.data import samplers

DEFAULT_NUM_NEGATIVES = 100_000
# All ~5M positive pairs of a 10,000-example, 10-class test split (MNIST, Fashion-MNIST)
# fit under the cap; a 70,000-example split (245M) is sampled down to it (80 MB of int32).
DEFAULT_MAX_POSITIVES = 10_000_000
_CHUNK = 1 << 20   # pairs decoded at a time


class _PairIndex:
  """Labelled examples grouped by class, with the pair counts of each example.

  Position ``p`` is an example in class-sorted order (``order[p]`` its index in the split,
  ascending within a class). The positive pairs of ``p`` are the later positions of its
  class; its negative pairs are all positions after its class block. Every unordered pair
  is counted exactly once.
  """

  def __init__(self, labels: np.ndarray):
    keep = np.flatnonzero(labels >= 0)
    self.order = keep[np.argsort(labels[keep], kind="stable")]
    _, counts = np.unique(labels[self.order], return_counts=True)
    self.num_classes = counts.size
    ends = np.repeat(np.cumsum(counts), counts)         # end of each position's block
    self.block_end = ends
    position = np.arange(self.order.size)
    self.pos_count = ends - 1 - position
    self.neg_count = self.order.size - ends
    self.num_positives = int(np.sum(self.pos_count))
    self.num_negatives = int(np.sum(self.neg_count))

  def _decode(self, k: np.ndarray, counts: np.ndarray, positive: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    starts = np.cumsum(counts) - counts                  # exclusive cumulative counts
    # The last row starting at or before k; empty rows share their successor's start,
    # so "right" skips them.
    p = np.searchsorted(starts, k, side="right") - 1
    offset = k - starts[p]
    q = p + 1 + offset if positive else self.block_end[p] + offset
    a, b = self.order[p], self.order[q]
    return np.minimum(a, b), np.maximum(a, b)

  def pairs(self, ks: np.ndarray | None, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs number ``ks`` (sorted int64; ``None``: all) of the positive or negative
    enumeration, decoded a chunk at a time."""
    counts = self.pos_count if positive else self.neg_count
    total = int(np.sum(counts)) if ks is None else ks.size
    i = np.empty(total, np.int32)
    j = np.empty(total, np.int32)
    for s in range(0, total, _CHUNK):
      chunk = (np.arange(s, min(s + _CHUNK, total), dtype=np.int64) if ks is None
               else ks[s:s + _CHUNK])
      i[s:s + _CHUNK], j[s:s + _CHUNK] = self._decode(chunk, counts, positive)
    return i, j


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} and "
                     f"dtype {labels.dtype}; pass the split's class ids.")
  if labels.size >= 2 ** 31:
    raise ValueError(f"labels has {labels.size} examples; pair indices are int32, so "
                     "split it below 2**31 examples.")
  return labels


def pair_counts(labels) -> tuple[int, int]:
  """Numbers of same-class and different-class unordered pairs among labelled examples.

  Args:
    labels: ``[N]`` int labels; examples with a negative label take no part.

  Returns:
    ``(num_positive_pairs, num_negative_pairs)``.
  """
  index = _PairIndex(_check_labels(labels))
  return index.num_positives, index.num_negatives


def _sorted_unique(x: np.ndarray) -> np.ndarray:
  # np.unique (numpy 2.4) takes over a minute on 12M int64; a sort takes seconds.
  x = np.sort(x)
  return x[np.r_[True, x[1:] != x[:-1]]]


def _draw(rng: np.random.Generator, total: int, count: int | None) -> np.ndarray | None:
  """Sorted numbers of ``count`` distinct pairs drawn uniformly out of ``total``.

  ``None`` means all ``total`` pairs. Memory is ``O(count)`` whatever ``total`` is
  (``Generator.choice(replace=False)`` would allocate ``arange(total)`` once ``count``
  exceeds ``total / 50``): draw with replacement until ``count`` distinct numbers are
  found, then keep a uniform ``count``-subset of them, which is a uniform subset of the
  whole range by exchangeability.
  """
  if count is None or count >= total:
    return None
  if 2 * count >= total:
    return np.sort(rng.permutation(total)[:count])
  found = _sorted_unique(rng.integers(0, total, size=count + count // 4 + 16))
  while found.size < count:
    found = _sorted_unique(np.concatenate([found, rng.integers(0, total, size=count)]))
  keep = rng.permutation(found.size)[:count]
  return np.sort(found[keep])


def evaluation_pairs(labels, *, num_negatives: int = DEFAULT_NUM_NEGATIVES,
                     max_positives: int | None = DEFAULT_MAX_POSITIVES, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every same-class pair and many uniformly drawn different-class pairs of a split.

  Only labelled examples (label >= 0) take part. Positive pairs: every unordered
  same-class pair ``i < j``; when there are more than ``max_positives``, that many drawn
  uniformly without replacement. Negative pairs: ``num_negatives`` distinct unordered
  different-class pairs drawn uniformly without replacement (all of them when there are
  fewer). The positive and negative draws use independent streams of ``seed``, so
  changing one count leaves the other set unchanged.

  Args:
    labels: ``[N]`` int labels of the split.
    num_negatives: number of different-class pairs (>= 1); at least ``10 / FAR`` for
      TAR at that FAR to be reported.
    max_positives: cap on the same-class pairs (``None``: no cap; mind the memory, 8
      bytes a pair: a 70,000-example 10-class split has 245M).
    seed: seed (fix it to compare models on the same pairs).

  Returns:
    ``(i, j, same)``: int32 indices into the split with ``i < j``, and bool ``same``;
    positives first, then negatives, each in a fixed canonical order.
  """
  labels = _check_labels(labels)
  if int(num_negatives) != num_negatives or num_negatives < 1:
    raise ValueError(f"num_negatives={num_negatives} must be an integer >= 1, e.g. "
                     f"{DEFAULT_NUM_NEGATIVES}.")
  if max_positives is not None and (int(max_positives) != max_positives
                                    or max_positives < 1):
    raise ValueError(f"max_positives={max_positives} must be an integer >= 1 or None "
                     "(every positive pair).")
  index = _PairIndex(labels)
  if index.num_positives == 0:
    raise ValueError("labels have no class with two examples, so no same pairs; pass "
                     "another split.")
  if index.num_negatives == 0:
    raise ValueError("labels hold fewer than two classes, so no different pairs.")
  rng_pos, rng_neg = np.random.default_rng(seed).spawn(2)
  pi, pj = index.pairs(_draw(rng_pos, index.num_positives, max_positives), True)
  ni, nj = index.pairs(_draw(rng_neg, index.num_negatives, int(num_negatives)), False)
  same = np.zeros(pi.size + ni.size, dtype=bool)
  same[:pi.size] = True
  return np.concatenate([pi, ni]), np.concatenate([pj, nj]), same


def verification_pairs(labels, num_pairs: int, seed: int, same_fraction: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random distinct pairs ``(i, j)``, ``round(same_fraction * num_pairs)`` of them same-class.

  Only labelled examples (label >= 0) take part. A same pair is an example that has a
  positive (uniform over such examples) and a random other example of its class; a
  different pair is an example and a random example of another class. Pairs are
  unordered and distinct while enough distinct pairs exist (then repeats are allowed).

  Args:
    labels: ``[N]`` int labels of the split.
    num_pairs: number of pairs.
    seed: seed (fix it to compare models on the same pairs).
    same_fraction: share of same-class pairs.

  Returns:
    ``(i, j, same)``: int64 ``[num_pairs]`` indices into the split and bool ``[num_pairs]``
    (same pairs first, then different ones).
  """
  labels = np.asarray(labels).reshape(-1)
  if num_pairs < 1 or not 0.0 <= same_fraction <= 1.0:
    raise ValueError(f"num_pairs={num_pairs} must be >= 1 and same_fraction="
                     f"{same_fraction} in [0, 1].")
  keep = np.flatnonzero(labels >= 0)
  index = samplers._ClassIndex(labels[keep])  # pylint: disable=protected-access
  anchors = index.anchors()
  num_same = int(round(same_fraction * num_pairs))
  num_diff = num_pairs - num_same
  if num_same and anchors.size == 0:
    raise ValueError("labels have no class with two examples, so no same pairs; use "
                     "same_fraction=0 or another split.")
  if num_diff and index.classes.size < 2:
    raise ValueError("labels hold fewer than two classes, so no different pairs.")
  rng = np.random.default_rng(seed)

  def draw(count: int, same: bool) -> np.ndarray:
    pool = anchors if same else np.arange(keep.size)
    found: dict[tuple[int, int], None] = {}
    for _ in range(20):   # rejection rounds for duplicates
      need = count - len(found)
      if need <= 0:
        break
      a = rng.choice(pool, 2 * need)
      b = index.positives(a, rng) if same else index.negatives(a, rng)
      for x, y in zip(a.tolist(), b.tolist()):
        key = (min(x, y), max(x, y))
        if key not in found and len(found) < count:
          found[key] = None
    pairs = np.asarray(list(found), np.int64).reshape(-1, 2)
    if len(pairs) < count:   # too few distinct pairs: allow repeats
      extra = rng.choice(len(pairs), count - len(pairs))
      pairs = np.concatenate([pairs, pairs[extra]])
    return pairs

  parts = [draw(num_same, True)] if num_same else []
  if num_diff:
    parts.append(draw(num_diff, False))
  pairs = keep[np.concatenate(parts)]
  same = np.arange(num_pairs) < num_same
  return pairs[:, 0], pairs[:, 1], same
