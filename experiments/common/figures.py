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


def paired_dots_figure(a_values: Sequence[float | None], b_values: Sequence[float | None],
                       seeds: Sequence[int], labels: Sequence[str],
                       interval: Sequence[float], *, higher_is_better: bool = True,
                       title: str = "", ylabel: str = ""):
  """The evidence of one claim in one figure: per-seed values and the paired difference.

  Left panel: each seed with a value in both arms is a line from A's value (x = 0) to
  B's (x = 1), dots at both ends (``gid="seed:<seed>"``). Right panel: each seed's
  difference in the claim's favour (``A − B``, ``B − A`` when lower is better; dots,
  ``gid="differences"``), the mean difference and its interval as a vertical bar
  (``gid="interval"``, from ``low`` to ``high``; the mean, ``gid="mean"``) and 0 dashed.
  Seeds missing in either arm are left out of both panels, as the test leaves them out.

  Args:
    a_values: per-seed values of the arm the claim favours (None/NaN: missing).
    b_values: per-seed values of the other arm, same seed order.
    seeds: the seeds, same order.
    labels: ``(A's name, B's name)``.
    interval: ``(mean, low, high)`` of the difference in the claim's favour
      (``Comparison.mean_diff, ci_low, ci_high``).
    higher_is_better: whether larger values of the metric are better.
    title: the figure's title (the claim).
    ylabel: the metric's label.

  Returns:
    The matplotlib figure (two axes).
  """
  if len(a_values) != len(seeds) or len(b_values) != len(seeds):
    raise ValueError(f"{len(a_values)} and {len(b_values)} values for {len(seeds)} seeds; "
                     "pass one value (or None) per seed in each arm.")
  if len(labels) != 2 or len(interval) != 3:
    raise ValueError("labels must be (A's name, B's name) and interval (mean, low, "
                     f"high); got {len(labels)} labels and {len(interval)} numbers.")
  a = np.asarray([np.nan if v is None else float(v) for v in a_values], np.float64)
  b = np.asarray([np.nan if v is None else float(v) for v in b_values], np.float64)
  keep = np.isfinite(a) & np.isfinite(b)   # the complete pairs, as the test uses
  xa, xb = a[keep], b[keep]
  kept_seeds = [s for s, k in zip(seeds, keep) if k]
  sign = 1.0 if higher_is_better else -1.0
  fig, axes = subplots(2, width=3.6, height=3.8)
  left, right = axes[0]
  for seed, va, vb in zip(kept_seeds, xa, xb):
    left.plot([0, 1], [va, vb], "-o", color="0.45", alpha=0.7, lw=1, ms=4,
              gid=f"seed:{seed}")
  left.set_xticks([0, 1], list(labels))
  left.set_xlim(-0.3, 1.3)
  left.set_ylabel(ylabel)
  left.set_title(f"per seed (n={len(kept_seeds)} of {len(seeds)})", fontsize=9)
  diffs = sign * (xa - xb)
  jitter = np.linspace(-0.12, 0.12, diffs.size) if diffs.size > 1 else np.zeros(1)
  right.plot(jitter[:diffs.size], diffs, "o", color="0.45", alpha=0.7, ms=4,
             gid="differences")
  mean, low, high = (float(x) for x in interval)
  right.plot([0.35, 0.35], [low, high], "-", color="C3", lw=2.5, gid="interval")
  right.plot([0.35], [mean], "D", color="C3", ms=6, gid="mean")
  right.axhline(0.0, color="0.2", ls="--", lw=0.8)
  right.set_xticks([])
  right.set_xlim(-0.4, 0.6)
  better = f"{labels[0]} − {labels[1]}" if higher_is_better else (
      f"{labels[1]} − {labels[0]}")
  right.set_title(f"{better} (claim's favour > 0)\nmean, 95 % interval", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def paired_dots(path: str, a_values: Sequence[float | None],
                b_values: Sequence[float | None], seeds: Sequence[int],
                labels: Sequence[str], interval: Sequence[float], **kwargs: Any) -> None:
  """Writes :func:`paired_dots_figure` to ``path`` (atomically; format by extension).

  Example, beside a claim's row of the verdict table::

    comp = verdicts.decide_claims(claims)[i]
    figures.paired_dots("dams_vs_constant_auc.png", claim.a_values, claim.b_values,
                        seeds, (claim.a, claim.b),
                        (comp.mean_diff, comp.ci_low, comp.ci_high),
                        higher_is_better=claim.higher_is_better, title=claim.claim,
                        ylabel=claim.metric)
  """
  from tsm import plotting  # pylint: disable=import-outside-toplevel
  plotting.save_figure(paired_dots_figure(a_values, b_values, seeds, labels, interval,
                                          **kwargs), path)


def claim_dots(path: str, claim: Any, comparison: Any, seeds: Sequence[int]) -> None:
  """:func:`paired_dots` of a :class:`~experiments.common.verdicts.Claim` and its
  decided :class:`tsm.reporting.Comparison` (title: the claim; its group, if any)."""
  title = claim.claim + (f" ({claim.group})" if claim.group else "")
  paired_dots(path, claim.a_values, claim.b_values, seeds, (claim.a, claim.b),
              (comparison.mean_diff, comparison.ci_low, comparison.ci_high),
              higher_is_better=claim.higher_is_better, title=title, ylabel=claim.metric)
