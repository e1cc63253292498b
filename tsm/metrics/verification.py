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
* ``tar@far=x``: the largest TPR among ROC points with FPR <= x (no interpolation).
* Threshold choosers return a ROC point's threshold, i.e. an observed distance; ties in
  the criterion go to the smaller threshold.

References:
  Paper A (Tomchak et al. 2026): threshold chosen on validation pairs at the ROC point
  closest to (FPR 0, TPR 1), accuracy on test pairs at that threshold, AUC and EER.
"""

from __future__ import annotations

import numpy as np


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
    raise ValueError("distances contain NaN or inf; check the embeddings.")
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


def tar_at_far(distances, same, far: float) -> float:
  """True accept rate (TPR) at false accept rate (FPR) at most ``far``."""
  fpr, tpr, _ = roc_curve(distances, same)
  return float(np.max(tpr[fpr <= far]))


def verification_metrics(distances, same) -> dict[str, float]:
  """AUC, EER and TAR at FAR 1e-3 and 1e-2 of pair distances.

  Args:
    distances: ``[P]`` pair distances (smaller = more alike).
    same: ``[P]`` booleans, True for same-class pairs.

  Returns:
    ``{"auc", "eer", "tar@far=1e-3", "tar@far=1e-2"}`` as Python floats (see the module
    docstring for the conventions).
  """
  fpr, tpr, _ = roc_curve(distances, same)
  return {
      "auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0),
      "eer": _eer_point(fpr, tpr)[0],
      "tar@far=1e-3": float(np.max(tpr[fpr <= 1e-3])),
      "tar@far=1e-2": float(np.max(tpr[fpr <= 1e-2])),
  }


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
