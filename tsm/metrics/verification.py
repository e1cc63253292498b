"""Pair verification metrics: ROC, AUC, EER, TAR@FAR, thresholds and accuracy.

A pair is predicted "same" when its distance is at most the threshold. Host-side numpy
(evaluation of at most a few hundred thousand pairs); ``roc_curve`` and the AUC agree with
``sklearn.metrics.roc_curve`` / ``roc_auc_score`` applied to the negated distances (tested).

Conventions:
* ``roc_curve`` has one point per distinct distance (threshold = that distance) plus the
  point (0, 0) at threshold -inf (nothing accepted); the last point is (1, 1).
* AUC: trapezoidal area under that curve (ties between a same and a different pair count
  one half, as in the Mann-Whitney statistic).
* EER: where the ROC, linearly interpolated between its points, crosses FPR = FNR
  (FNR = 1 - TPR).
* ``tar@far=x``: the largest TPR among ROC points with FPR <= x (no interpolation),
  reported only when the different pairs number at least ``10 / x``
  (:func:`min_negatives_for_far`), NaN otherwise. With fewer negatives the FPR grid is
  coarser than ``x`` or barely finer, so the value is TAR at a much lower FAR (with 500
  negatives, TAR@FAR=1e-3 is TAR at FAR = 0, sampling std about 0.12); ten false accepts
  at the threshold make the FAR itself known to about ±30 %. A report prints "—" there,
  with the reason from :func:`tar_unmeasurable_reason`; ``verification_metrics`` returns
  the counts ``num_same`` and ``num_different`` so a table can say why.
* Threshold choosers return a ROC point's threshold, i.e. an observed distance; ties in
  the criterion go to the smaller threshold.

Pairs: ``tsm.data.pairs.evaluation_pairs`` (every positive pair and 100,000 negatives, the
default for reporting) or ``tsm.data.pairs.verification_pairs`` (paper A's 1,000 pairs);
:func:`pair_distances` computes the distances of many index pairs a chunk at a time.

References:
  Paper A (Tomchak et al. 2026): threshold chosen on validation pairs at the ROC point
  closest to (FPR 0, TPR 1), accuracy on test pairs at that threshold, AUC and EER.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tsm import distances as distances_lib
from tsm.metrics import neighbors

FARS = (1e-3, 1e-2)
NEGATIVES_PER_FAR = 10   # false accepts expected at the threshold, at the least


def min_negatives_for_far(far: float) -> int:
  """Different pairs needed to report TAR at ``far``: ``ceil(10 / far)``.

  Args:
    far: false accept rate in ``(0, 1]``.

  Returns:
    The smallest number of different-class pairs for which ``tar@far`` is reported.
  """
  if not 0.0 < far <= 1.0:
    raise ValueError(f"far={far} must be in (0, 1], e.g. 1e-3.")
  # round() first so that 10 / 1e-3 = 10000.000000000002 does not become 10001.
  return int(math.ceil(round(NEGATIVES_PER_FAR / far, 6)))


def tar_unmeasurable_reason(num_different: int, far: float) -> str | None:
  """Why TAR at ``far`` is not reported for this many different pairs (None if it is).

  Args:
    num_different: number of different-class pairs evaluated.
    far: false accept rate.

  Returns:
    ``None`` when ``num_different >= min_negatives_for_far(far)``, else a short reason
    for a table footnote, e.g. ``"500 different pairs < 10/FAR = 10,000"``.
  """
  need = min_negatives_for_far(far)
  if num_different >= need:
    return None
  return f"{int(num_different):,} different pairs < 10/FAR = {need:,}"


def far_key(far: float) -> str:
  """Metric name of TAR at ``far``: ``1e-3 -> "tar@far=1e-3"``."""
  return "tar@far=" + f"{far:.0e}".replace("e-0", "e-").replace("e+00", "")


@functools.partial(jax.jit, static_argnames="distance")
def _chunk_distances(embeddings, i, j, distance: str):
  return distances_lib.paired_distances(embeddings[i], embeddings[j], distance=distance)


def pair_distances(embeddings, i, j, *, distance: str = "euclidean",
                   chunk: int = 65536) -> np.ndarray:
  """Distances ``d(embeddings[i[k]], embeddings[j[k]])`` of many index pairs, in chunks.

  Same values as ``tsm.distances.paired_distances(embeddings[i], embeddings[j])`` without
  gathering all pairs at once: the embeddings go to the device once, and each chunk of
  ``chunk`` pairs is gathered there (the last chunk is padded, so one compilation).

  Args:
    embeddings: ``[N, D]`` float embeddings of the split.
    i: ``[P]`` int indices of the first members of the pairs.
    j: ``[P]`` int indices of the second members.
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``
      (``-x.y``; the thresholds are then negated inner products).
    chunk: pairs per device call (memory ``2 * chunk * D`` floats).

  Returns:
    ``[P]`` float numpy distances (NaN for a pair with a NaN or inf embedding).
  """
  distances_lib.check_distance(distance, distances_lib.RANKING_DISTANCES)
  i, j = np.asarray(i), np.asarray(j)
  if np.ndim(embeddings) != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {np.shape(embeddings)}.")
  if i.ndim != 1 or i.shape != j.shape or not (np.issubdtype(i.dtype, np.integer)
                                               and np.issubdtype(j.dtype, np.integer)):
    raise ValueError(f"i and j must be 1-D integer arrays of one shape, got {i.shape} "
                     f"{i.dtype} and {j.shape} {j.dtype}; pass pair indices.")
  if int(chunk) != chunk or chunk < 1:
    raise ValueError(f"chunk={chunk} must be an integer >= 1, e.g. 65536.")
  n = np.shape(embeddings)[0]
  if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
    raise ValueError(f"pair indices must lie in [0, {n}) for {n} embeddings; pass "
                     "indices into the same split.")
  emb = jnp.asarray(embeddings)
  chunk = int(min(chunk, max(i.size, 1)))
  out = np.empty(i.size, dtype=np.dtype(emb.dtype))
  for s in range(0, i.size, chunk):
    ci, cj = i[s:s + chunk], j[s:s + chunk]
    pad = chunk - ci.size
    if pad:
      ci, cj = np.pad(ci, (0, pad)), np.pad(cj, (0, pad))
    d = _chunk_distances(emb, jnp.asarray(ci, jnp.int32), jnp.asarray(cj, jnp.int32),
                         distance)
    out[s:s + chunk] = np.asarray(d)[:chunk - pad]
  # tsm.distances maps a NaN squared distance to 0 through its zero-distance branch;
  # a pair with a non-finite embedding must read NaN, never a plausible distance.
  bad = ~np.all(np.isfinite(np.asarray(embeddings)), axis=1)
  if np.any(bad):
    out[bad[i] | bad[j]] = np.nan
  return out


def _check_pairs(distances, same) -> tuple[np.ndarray, np.ndarray]:
  distances = np.asarray(distances, dtype=np.float64)
  same = np.asarray(same)
  if distances.ndim != 1:
    raise ValueError(f"distances must be 1-D (one per pair), got shape {distances.shape}.")
  if same.shape != distances.shape:
    raise ValueError(f"same must have the shape of distances {distances.shape}, got "
                     f"{same.shape}; pass one same/different flag per pair.")
  if same.dtype != bool:
    if not np.all((same == 0) | (same == 1)):
      raise ValueError("same must be booleans or 0/1; pass True for same-class pairs.")
    same = same.astype(bool)
  if not np.all(np.isfinite(distances)):
    raise neighbors.NonFiniteEmbeddings("distances contain NaN or inf; check the "
                                        "embeddings.")
  return distances, same


def roc_curve(distances, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC of the rule "same iff distance <= threshold".

  Args:
    distances: ``[P]`` pair distances.
    same: ``[P]`` booleans (or 0/1), True for same-class pairs; both kinds must occur.

  Returns:
    ``(fpr, tpr, thresholds)``, each ``[T + 1]`` for T distinct distances: thresholds
    ``-inf`` then the distinct distances ascending; FPR and TPR non-decreasing from
    (0, 0) to (1, 1).
  """
  distances, same = _check_pairs(distances, same)
  num_pos = int(np.count_nonzero(same))
  num_neg = same.shape[0] - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"same has {num_pos} same and {num_neg} different pairs; the ROC "
                     "needs both (sample pairs with tsm.data.pairs.verification_pairs).")
  order = np.argsort(distances, kind="stable")
  d, s = distances[order], same[order]
  last = np.r_[d[1:] != d[:-1], True]  # last pair of each distinct distance
  tps = np.cumsum(s)[last]
  fps = np.cumsum(~s)[last]
  fpr = np.r_[0.0, fps / num_neg]
  tpr = np.r_[0.0, tps / num_pos]
  return fpr, tpr, np.r_[-np.inf, d[last]]


def _eer_point(fpr: np.ndarray, tpr: np.ndarray) -> tuple[float, int]:
  """EER by linear interpolation, and the index of the ROC point nearest FPR = FNR."""
  gap = (1.0 - tpr) - fpr  # FNR - FPR: 1 at the first point, -1 at the last
  i = int(np.argmax(gap <= 0.0))
  g0, g1 = gap[i - 1], gap[i]
  t = g0 / (g0 - g1)
  eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
  return float(eer), int(np.argmin(np.abs(gap)))


def eer(distances, same) -> float:
  """Equal error rate: FPR = FNR on the linearly interpolated ROC."""
  fpr, tpr, _ = roc_curve(distances, same)
  return _eer_point(fpr, tpr)[0]


def _tar(fpr: np.ndarray, tpr: np.ndarray, num_neg: int, far: float) -> float:
  if num_neg < min_negatives_for_far(far):
    return float("nan")
  return float(np.max(tpr[fpr <= far]))


def tar_at_far(distances, same, far: float) -> float:
  """True accept rate (TPR) at false accept rate (FPR) at most ``far``.

  NaN when the different pairs number fewer than :func:`min_negatives_for_far`.
  """
  fpr, tpr, _ = roc_curve(distances, same)
  return _tar(fpr, tpr, int(np.count_nonzero(~np.asarray(same, bool))), far)


def verification_metrics(distances, same, *, fars: Sequence[float] = FARS
                         ) -> dict[str, float]:
  """AUC, EER and TAR at the given FARs of pair distances, and the pair counts.

  Args:
    distances: ``[P]`` pair distances (smaller = more alike).
    same: ``[P]`` booleans, True for same-class pairs.
    fars: false accept rates of the ``tar@far=...`` keys (:func:`far_key`).

  Returns:
    ``{"auc", "eer", "tar@far=1e-3", "tar@far=1e-2", "num_same", "num_different"}`` as
    Python floats (see the module docstring for the conventions; ``tar@far=x`` is NaN
    when ``num_different < min_negatives_for_far(x)``).
  """
  for far in fars:
    min_negatives_for_far(far)   # validates before any work
  fpr, tpr, _ = roc_curve(distances, same)
  num_same = int(np.count_nonzero(np.asarray(same).astype(bool)))
  num_diff = int(np.size(same)) - num_same
  out = {
      "auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0),
      "eer": _eer_point(fpr, tpr)[0],
  }
  out.update({far_key(far): _tar(fpr, tpr, num_diff, far) for far in fars})
  out.update(num_same=float(num_same), num_different=float(num_diff))
  return out


def choose_threshold_closest_to_corner(distances, same) -> float:
  """Paper A's threshold: the ROC point closest (Euclidean) to (FPR 0, TPR 1).

  Args:
    distances: ``[P]`` validation pair distances.
    same: ``[P]`` booleans, True for same-class pairs.

  Returns:
    The threshold (an observed distance, or -inf if accepting nothing is best).
  """
  fpr, tpr, thresholds = roc_curve(distances, same)
  return float(thresholds[np.argmin(np.square(fpr) + np.square(1.0 - tpr))])


def choose_threshold_eer(distances, same) -> float:
  """Threshold of the ROC point where |FNR - FPR| is smallest (the EER point)."""
  fpr, tpr, thresholds = roc_curve(distances, same)
  return float(thresholds[_eer_point(fpr, tpr)[1]])


def accuracy_at_threshold(distances, same, threshold: float) -> float:
  """Share of pairs classified correctly by "same iff distance <= threshold"."""
  distances, same = _check_pairs(distances, same)
  if distances.shape[0] == 0:
    raise ValueError("distances is empty; pass at least one pair.")
  return float(np.mean((distances <= threshold) == same))


def balanced_accuracy_at_threshold(distances, same, threshold: float) -> float:
  """Mean of TPR and TNR of "same iff distance <= threshold".

  The accuracy of paper A's balanced pairs (half same, half different), in expectation,
  on any pair set: with every positive and 100,000 negatives the plain accuracy would be
  dominated by whichever kind is more numerous.

  Args:
    distances: ``[P]`` pair distances.
    same: ``[P]`` booleans, True for same-class pairs; both kinds must occur.
    threshold: accept pairs at distance at most this.

  Returns:
    ``(TPR + TNR) / 2`` in ``[0, 1]``.
  """
  distances, same = _check_pairs(distances, same)
  if not np.any(same) or np.all(same):
    raise ValueError("same needs both same and different pairs for a balanced accuracy.")
  accept = distances <= threshold
  return float((np.mean(accept[same]) + np.mean(~accept[~same])) / 2.0)
