"""Verification pairs: fixed same / different pairs of a split, for AUC, EER, accuracy.

Paper A's protocol: 1,000 test pairs, half same-identity, drawn once per split (the
same pairs for every model compared).
"""

from __future__ import annotations

import numpy as np

from tsm.data import samplers


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
