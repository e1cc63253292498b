"""Figure plumbing every study's report uses (drawing itself is :mod:`tsm.plotting`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def subplots(ncols: int, width: float = 5.0, height: float = 3.8):
  """``(fig, axes[1, ncols])`` on the Agg backend, each panel ``width x height``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def curve_matrix(runs: Sequence[dict[str, Any]], key: str) -> np.ndarray:
  """``[runs, epochs]`` of the per-epoch curve ``key`` of each run's ``"curves"``, cut to
  the shortest run (None as NaN)."""
  length = min(len(r["curves"][key]) for r in runs)
  return np.asarray([[np.nan if v is None else v for v in r["curves"][key][:length]]
                     for r in runs], np.float64)


def per_epoch(rs: Sequence[dict[str, Any]], key: str) -> np.ndarray:
  """``[runs, epochs]`` of a field of each run's ``"epochs"`` records (NaN-padded to the
  longest run)."""
  length = max((len(r["epochs"]) for r in rs), default=0)
  out = np.full((len(rs), length), np.nan)
  for i, r in enumerate(rs):
    for j, rec in enumerate(r["epochs"]):
      out[i, j] = rec.get(key, np.nan)
  return out


def plot_band(path: str, runs: dict[str, list[dict[str, Any]]], key: str, ylabel: str,
              title: str, hline: float | None = None, steps: bool = False) -> None:
  """Mean over seeds per arm with a min..max band; ``steps`` draws values that hold for
  a whole epoch (margins) as steps, with overlapping arms kept visible."""
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import plotting  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(8, 5))
  series, bands = {}, {}
  for name, rs in runs.items():
    values = per_epoch(rs, key)
    if values.size:
      series[name] = np.nanmean(values, axis=0)
      bands[name] = (np.nanmin(values, axis=0), np.nanmax(values, axis=0))
  if series and steps:
    plotting.plot_steps(ax, None, series, ylabel=ylabel, title=title, hline=hline,
                        bands=bands)
  elif series:
    plotting.plot_curves(ax, None, series, ylabel=ylabel, title=title, hline=hline,
                         markers=False)
    for i, (lo, hi) in enumerate(bands.values()):
      ax.fill_between(np.arange(1, lo.size + 1), lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    plotting.legend_outside(ax)
  plotting.save_figure(fig, path)


def roc_at(fpr_grid: np.ndarray, distances: np.ndarray, same: np.ndarray) -> np.ndarray:
  """Largest TPR among ROC points with FPR <= each grid value (a step ROC)."""
  from tsm import metrics  # pylint: disable=import-outside-toplevel
  fpr, tpr, _ = metrics.roc_curve(distances, same)
  idx = np.searchsorted(fpr, fpr_grid, side="right") - 1
  return tpr[np.clip(idx, 0, tpr.size - 1)]
