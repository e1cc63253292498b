"""Matplotlib helpers shared by the study scripts (papers A and B).

Why one module of this length: every figure of tsm-train and of the studies (training
curves, ROC, triplet shares, PCA, effective margins) shares the axes, legend, label
and atomic-save helpers here.

Every ``plot_*`` function draws on an ``Axes`` the caller owns and returns it, so a
script composes figures with ``plt.subplots`` and saves them with :func:`save_figure`
(atomic: a reader never sees half a PNG). Inputs may be numpy or jax arrays; nothing
here is jitted. Scripts that run without a display should select a non-interactive
backend first (``matplotlib.use("Agg")``).

* :func:`plot_effective_margins`: paper A's histogram of ``d_an - d_ap`` with the
  fitted Gaussian mixture and the margin ``mu``.
* :func:`plot_curves`: per-epoch curves (loss, active ratio, gradient norm...).
* :func:`plot_steps`: per-epoch values that hold for a whole epoch (margins), drawn as
  steps, with overlapping series kept visible.
* :func:`plot_triplet_shares`: easy / semi-hard / hard shares of the triplets per epoch.
* :func:`plot_pca`: 2-D PCA scatter of embeddings coloured by class (paper B's figure).
* :func:`plot_roc`: ROC of test pairs (linear and log FPR) to a file.
* :func:`plot_training`: a run's per-epoch figure (``training.png``) to a file: the
  training and the validation loss, the validation metrics (higher and lower is better
  apart), the margin, and the easy / semi-hard / hard shares, with the selected epoch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from tsm import artifacts, diagnostics

__all__ = ["legend_outside", "pca_2d", "plot_curves", "plot_effective_margins", "plot_pca",
           "plot_roc", "plot_steps", "plot_training", "plot_triplet_shares", "save_figure"]

# Line styles and markers cycled with the colours, so series stay apart in grey print and
# where they overlap.
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def legend_outside(ax: Any, **kwargs: Any) -> Any:
  """A legend to the right of the axes, so it never hides lines or points.

  :func:`save_figure` saves with ``bbox_inches="tight"``, which keeps it in the file.

  Args:
    ax: a matplotlib ``Axes``.
    **kwargs: passed to ``ax.legend`` (e.g. ``fontsize``, ``ncol``).

  Returns:
    The legend, or None when nothing is labelled.
  """
  if not ax.get_legend_handles_labels()[0]:
    return None
  kwargs = {"fontsize": "small", "loc": "upper left", "bbox_to_anchor": (1.02, 1.0),
            "borderaxespad": 0.0, "frameon": False, **kwargs}
  return ax.legend(**kwargs)


def plot_effective_margins(ax: Any, values: Any,
                           mixture: diagnostics.GaussianMixture | None = None,
                           margin: float | None = None, *, mask: Any = None,
                           bins: int = 60, title: str | None = None,
                           show_components: bool = True) -> Any:
  """Histogram of effective margins with the mixture's density and the margin line.

  Args:
    ax: a matplotlib ``Axes``.
    values: ``[M]`` effective margins ``d_an - d_ap`` (e.g.
      ``diagnostics.effective_margins(...).values``), or an
      :class:`tsm.diagnostics.EffectiveMargins` (its ``mask`` is then used).
    mixture: optional :class:`tsm.diagnostics.GaussianMixture` fitted to the values;
      its total density (and each weighted component) is drawn over the histogram.
    margin: optional margin ``mu``: a dashed vertical line (triplets left of it are
      violating: semi-hard or hard).
    mask: optional ``[M]`` bool; only these entries are drawn.
    bins: histogram bins.
    title: axes title.
    show_components: draw each weighted component besides the total density.

  Returns:
    ``ax``.
  """
  if isinstance(values, diagnostics.EffectiveMargins):
    mask = values.mask if mask is None else mask
    values = values.values
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  if mask is not None:
    values = values[np.asarray(mask, dtype=bool).reshape(-1)]
  values = values[np.isfinite(values)]
  if values.size:
    ax.hist(values, bins=bins, density=True, color="C0", alpha=0.45,
            label=f"d_an - d_ap ({values.size:,} triplets)")
  if mixture is not None:
    lo, hi = (values.min(), values.max()) if values.size else (-1.0, 1.0)
    means = np.asarray(mixture.means, dtype=np.float64)
    stds = np.asarray(mixture.stds, dtype=np.float64)
    lo = min(lo, float(np.min(means - 3 * stds)))
    hi = max(hi, float(np.max(means + 3 * stds)))
    grid = np.linspace(lo, hi, 400)
    parts = np.asarray(diagnostics.mixture_pdf(grid, mixture, components=True))
    ax.plot(grid, parts.sum(axis=-1), color="k", lw=1.8,
            label=f"GMM ({parts.shape[-1]} components)")
    if show_components and parts.shape[-1] > 1:
      weights = np.asarray(mixture.weights)
      for k in range(parts.shape[-1]):
        ax.plot(grid, parts[:, k], lw=1.2, ls="--", color=f"C{k + 1}",
                label=f"w={weights[k]:.2f}, mean={means[k]:.3f}, sd={stds[k]:.3f}")
  if margin is not None:
    ax.axvline(float(margin), color="C3", lw=1.5, ls=":",
               label=f"margin mu={float(margin):g}")
  ax.set_xlabel("effective margin d(a,n) - d(a,p)")
  ax.set_ylabel("density")
  if title:
    ax.set_title(title)
  ax.legend(fontsize="small")
  return ax


def _label_axes(ax: Any, xlabel: str, ylabel: str | None, title: str | None,
                hline: float | None) -> None:
  """The per-epoch panels' finish: a dotted reference line, labels, title, a light grid."""
  if hline is not None:
    ax.axhline(hline, color="0.4", lw=1, ls=":")
  ax.set_xlabel(xlabel)
  if ylabel:
    ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)


def plot_curves(ax: Any, epochs: Sequence[float] | None,
                series: Mapping[str, Sequence[float]], *, xlabel: str = "epoch",
                ylabel: str | None = None, title: str | None = None,
                logy: bool = False, markers: bool = True,
                hline: float | None = None,
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                colors: Sequence[str] | None = None) -> Any:
  """One line per named series against epochs (loss, active ratio, gradient norm...).

  Args:
    ax: a matplotlib ``Axes``.
    epochs: x values shared by every series, or None for ``1..len(series)``.
    series: ``{label: values}``; each ``values`` has one entry per epoch (NaN leaves a
      gap). Series of different lengths are allowed when ``epochs`` is None.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: axes title.
    logy: logarithmic y axis.
    markers: mark each point.
    hline: optional horizontal reference line (e.g. a target share).
    bands: optional ``{label: (lower, upper)}``: a shaded band in the series' colour
      (e.g. mean ± std over seeds), one value per epoch each.
    colors: one matplotlib colour per series (a quantity keeps its colour across
      figures); default the colour cycle in order.

  Returns:
    ``ax``.
  """
  bands = bands or {}
  if colors is not None and len(colors) != len(series):
    raise ValueError(f"colors has {len(colors)} entries for {len(series)} series; pass one "
                     "colour per series.")
  for i, (label, values) in enumerate(series.items()):
    color = f"C{i}" if colors is None else colors[i]
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    x = np.arange(1, y.size + 1) if epochs is None else np.asarray(epochs).reshape(-1)
    if x.size != y.size:
      raise ValueError(f"series {label!r} has {y.size} values for {x.size} epochs; pass "
                       "one value per epoch.")
    ax.plot(x, y, marker="o" if markers else None, ms=3, lw=1.5, color=color, label=label)
    if label in bands:
      lower, upper = (np.asarray(b, dtype=np.float64).reshape(-1) for b in bands[label])
      if lower.size != x.size or upper.size != x.size:
        raise ValueError(f"band of {label!r} has {lower.size}/{upper.size} values for "
                         f"{x.size} epochs; pass one lower and one upper value per epoch.")
      ax.fill_between(x, lower, upper, color=color, alpha=0.2, lw=0)
  if logy:
    ax.set_yscale("log")
  _label_axes(ax, xlabel, ylabel, title, hline)
  if len(series) > 1:
    ax.legend(fontsize="small")
  return ax


def plot_steps(ax: Any, epochs: Sequence[float] | None,
               series: Mapping[str, Sequence[float]], *, xlabel: str = "epoch",
               ylabel: str | None = None, title: str | None = None,
               hline: float | None = None,
               bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
               legend: str | None = "outside") -> Any:
  """Per-epoch values that hold for the whole epoch (a margin), drawn as steps.

  A margin is set at the start of an epoch and holds until the next, so the value of
  epoch ``e`` is drawn flat over ``[e, e + 1)`` (``drawstyle="steps-post"``), never as
  a ramp between epochs. Schedules often coincide (all start at the same margin; a
  constant equals a schedule that never moves), so overlapping series stay visible:
  each has its own colour, dash pattern and marker; lines drawn first are wider, so a
  later line on top of them leaves their edges showing; and each series' markers sit
  at its own offset inside the epoch (still on its step, since the value holds for the
  whole epoch).

  Args:
    ax: a matplotlib ``Axes``.
    epochs: x values (epoch numbers, equally spaced) shared by every series, or None
      for ``1..len(series)``.
    series: ``{label: values}``, one value per epoch (NaN leaves a gap).
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: axes title.
    hline: optional horizontal reference line.
    bands: optional ``{label: (lower, upper)}``: a shaded step band (e.g. the range over
      seeds), one value per epoch each.
    legend: ``"outside"`` (right of the axes), ``"inside"`` or None.

  Returns:
    ``ax``.
  """
  bands = bands or {}
  n = len(series)
  for i, (label, values) in enumerate(series.items()):
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    x = (np.arange(1, y.size + 1, dtype=np.float64) if epochs is None else
         np.asarray(epochs, dtype=np.float64).reshape(-1))
    if x.size != y.size:
      raise ValueError(f"series {label!r} has {y.size} values for {x.size} epochs; pass "
                       "one value per epoch.")
    if not y.size:
      continue
    width = float(np.median(np.diff(x))) if x.size > 1 else 1.0
    # One more point at the end, so the last epoch's value is drawn over its whole epoch.
    xs, ys = np.r_[x, x[-1] + width], np.r_[y, y[-1]]
    color = f"C{i % 10}"
    style = {"color": color, "ls": _LINESTYLES[i % 4],
             "lw": 1.4 + 1.6 * (n - 1 - i) / max(n - 1, 1)}
    marker = {"marker": _MARKERS[i % len(_MARKERS)], "ms": 4.5, "mec": "white", "mew": 0.5}
    ax.plot(xs, ys, drawstyle="steps-post", alpha=0.85, zorder=2 + i, **style)
    offset = width * (0.1 + 0.8 * i / max(n, 1))
    ax.plot(x + offset, y, ls="none", color=color, zorder=2 + n + i, **marker)
    ax.plot([], [], label=label, **style, **marker)  # legend entry: line and marker
    if label in bands:
      lower, upper = (np.asarray(b, dtype=np.float64).reshape(-1) for b in bands[label])
      if lower.size != x.size or upper.size != x.size:
        raise ValueError(f"band of {label!r} has {lower.size}/{upper.size} values for "
                         f"{x.size} epochs; pass one lower and one upper value per epoch.")
      ax.fill_between(xs, np.r_[lower, lower[-1]], np.r_[upper, upper[-1]], step="post",
                      color=color, alpha=0.15, lw=0)
  _label_axes(ax, xlabel, ylabel, title, hline)
  if legend == "outside":
    legend_outside(ax)
  elif legend == "inside" and n:
    ax.legend(fontsize="small")
  return ax


def triplet_shares(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray] | None:
  """Easy, semi-hard and hard shares per record, or None when the counts are missing.

  Args:
    records: per-epoch records with ``num_easy``, ``num_semihard``, ``num_hard`` and a
      total (``num_total``, else ``num_triplets``); a triplet loss's epoch records.

  Returns:
    ``{"easy": [E], "semi-hard": [E], "hard": [E]}`` (NaN where the total is 0), or None
    if some record lacks a count (e.g. a contrastive loss).
  """
  keys = ("num_easy", "num_semihard", "num_hard")
  if not records or not all(all(k in r for k in keys) and
                            ("num_total" in r or "num_triplets" in r) for r in records):
    return None
  total = np.array([r.get("num_total", r.get("num_triplets")) for r in records], np.float64)
  total = np.where(total > 0, total, np.nan)
  return {name: np.array([r[k] for r in records], np.float64) / total
          for name, k in zip(("easy", "semi-hard", "hard"), keys)}


def plot_triplet_shares(ax: Any, epochs: Sequence[float] | None,
                        shares: Mapping[str, Sequence[float]], *,
                        threshold: float | None = None, title: str | None = None) -> Any:
  """Easy / semi-hard / hard shares of the triplets per epoch, stacked (they sum to 1).

  Args:
    ax: a matplotlib ``Axes``.
    epochs: x values, or None for ``1..E``.
    shares: ``{"easy": [E], "semi-hard": [E], "hard": [E]}`` (see :func:`triplet_shares`).
    threshold: optional easy-share line (DAMS's threshold), drawn dotted.
    title: axes title.

  Returns:
    ``ax``.
  """
  names = list(shares)
  ys = [np.asarray(shares[k], dtype=np.float64).reshape(-1) for k in names]
  x = (np.arange(1, ys[0].size + 1) if epochs is None else
       np.asarray(epochs, dtype=np.float64).reshape(-1))
  colors = {"easy": "#4c9a2a", "semi-hard": "#e6a817", "hard": "#c0392b"}
  ax.stackplot(x, *ys, labels=names, colors=[colors.get(k, f"C{i}") for i, k in
                                             enumerate(names)], alpha=0.8, lw=0)
  if threshold is not None:
    ax.axhline(threshold, color="k", lw=1, ls=":", label=f"DAMS threshold {threshold:g}")
  ax.set_ylim(0, 1)
  if x.size > 1:
    ax.set_xlim(x.min(), x.max())
  ax.set_xlabel("epoch")
  ax.set_ylabel("share of triplets")
  if title:
    ax.set_title(title)
  legend_outside(ax)
  return ax


def pca_2d(embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
  """Projects embeddings on their first two principal axes (numpy SVD).

  Args:
    embeddings: ``[N, D]`` array, ``N >= 1``.

  Returns:
    ``(points, explained)``: ``[N, 2]`` coordinates (zero-padded when ``D < 2`` or
    ``N < 2``) and ``[2]`` share of the total variance each axis explains (0 when
    the points do not vary). Axis signs are fixed so that the largest-magnitude
    loading of each axis is positive (deterministic across runs).
  """
  x = np.asarray(embeddings, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"embeddings must be [N, D] with N >= 1, got shape {x.shape}.")
  x = x - x.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
  vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
  k = min(2, vt.shape[0])
  points = np.zeros((x.shape[0], 2))
  points[:, :k] = x @ vt[:k].T
  var = s ** 2
  explained = np.zeros(2)
  if var.sum() > 0:
    explained[:k] = var[:k] / var.sum()
  return points, explained


def plot_pca(ax: Any, embeddings: Any, labels: Any, *, max_points: int | None = 5000,
             seed: int = 0, title: str | None = None, point_size: float = 6.0,
             legend: bool | None = None) -> Any:
  """2-D PCA scatter of embeddings, one colour per class (outliers, label < 0, grey x).

  PCA is fitted on all points; at most ``max_points`` (a seeded uniform subset) are
  drawn.

  Args:
    ax: a matplotlib ``Axes``.
    embeddings: ``[N, D]`` array.
    labels: ``[N]`` int labels.
    max_points: cap on the points drawn (None: all).
    seed: seed of the subset.
    title: axes title.
    point_size: marker size.
    legend: draw a class legend (default: when there are at most 20 classes).

  Returns:
    ``ax``.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel

  labels = np.asarray(labels).reshape(-1)
  points, explained = pca_2d(embeddings)
  if labels.shape[0] != points.shape[0]:
    raise ValueError(f"labels has {labels.shape[0]} entries for {points.shape[0]} "
                     "embeddings; pass one label per row.")
  idx = np.arange(points.shape[0])
  if max_points is not None and idx.size > max_points:
    idx = np.sort(np.random.default_rng(seed).choice(idx.size, max_points, replace=False))
  classes = np.unique(labels[labels >= 0])
  cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20" if
                              classes.size <= 20 else "viridis"]
  for i, c in enumerate(classes):
    sel = idx[labels[idx] == c]
    color = cmap(i % cmap.N) if classes.size <= 20 else cmap(i / max(classes.size - 1, 1))
    ax.scatter(points[sel, 0], points[sel, 1], s=point_size, color=color, alpha=0.7,
               label=str(c), linewidths=0)
  outliers = idx[labels[idx] < 0]
  if outliers.size:
    ax.scatter(points[outliers, 0], points[outliers, 1], s=point_size * 1.5, c="0.5",
               marker="x", alpha=0.7, label="outlier", linewidths=0.8)
  ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}%)")
  ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)")
  if title:
    ax.set_title(title)
  if legend if legend is not None else classes.size <= 20:
    # Outside the axes: a legend inside always covers some of the points.
    legend_outside(ax, fontsize="x-small", markerscale=2,
                   ncol=2 if classes.size > 10 else 1, title="class")
  return ax


def plot_roc(distances: Any, same: Any, path: str, title: str = "", *,
             split: str = "test") -> dict[str, float]:
  """ROC of test pairs (linear and log FPR), with AUC and EER, saved to ``path``.

  Numbers from :func:`tsm.metrics.roc_curve` and :func:`tsm.metrics.verification_metrics`
  (rule "same iff distance <= threshold").

  Args:
    distances: ``[P]`` pair distances.
    same: ``[P]`` booleans, True for same-class pairs (both kinds must occur).
    path: output file (``.png``, ``.pdf``...), written atomically.
    title: figure title.
    split: the split the pairs come from, named in the title with the pair counts.

  Returns:
    The verification metrics drawn (``auc``, ``eer``, ``tar@far=...``).
  """
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import metrics  # pylint: disable=import-outside-toplevel

  fpr, tpr, _ = metrics.roc_curve(distances, same)
  numbers = metrics.verification_metrics(distances, same)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
  label = f"AUC {numbers['auc']:.4f}, EER {numbers['eer']:.4f}"
  for ax, log in zip(axes, (False, True)):
    # A step ROC: between two thresholds the rates do not change.
    ax.plot(fpr, tpr, drawstyle="steps-post", color="C0", lw=1.6, label=label)
    if not log:  # FNR = 1 - TPR: the EER lies on this line (a curve on a log axis)
      ax.plot([0, 1], [1, 0], color="0.6", lw=0.8, ls="--", label="FPR = FNR")
    chance = np.logspace(-6, 0, 200)  # dense: TPR = FPR is a curve on a log axis
    ax.plot(chance, chance, color="0.6", lw=0.8, ls=":", label="chance")
    eer_value = numbers["eer"]
    ax.plot([eer_value], [1 - eer_value], "o", color="C3", ms=6,
            label=f"EER point ({eer_value:.3f}, {1 - eer_value:.3f})")
    ax.set_xlabel("false positive rate" + (" (log)" if log else ""))
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    ax.set_ylim(-0.01, 1.01)
    if log:
      positive = fpr[fpr > 0]
      ax.set_xscale("log")
      ax.set_xlim(max(positive.min() if positive.size else 1e-3, 1e-5) / 2, 1)
    else:
      ax.set_xlim(-0.01, 1.01)
  axes[0].set_title("ROC")
  axes[1].set_title("ROC, log false positive rate")
  handles, labels = axes[0].get_legend_handles_labels()
  legend_outside(axes[1], handles=handles, labels=labels)
  same = np.asarray(same, dtype=bool)
  n_same = int(np.count_nonzero(same))
  pairs = (f"{split} split: {same.size:,} pairs ({n_same:,} same-class, "
           f"{same.size - n_same:,} different-class)")
  fig.suptitle(f"{title}\n{pairs}" if title else pairs)
  save_figure(fig, path, dpi=110)
  return numbers


def _numeric_keys(records: Sequence[dict[str, Any]], prefix: str) -> list[str]:
  """Keys starting with ``prefix`` whose values are numbers in some record, in order."""
  keys: dict[str, None] = {}
  for r in records:
    for k, v in r.items():
      if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool):
        keys[k] = None
  return list(keys)


# The validation metrics training.png draws, by direction (all of them would crowd the
# panels; metrics.jsonl and TensorBoard have every one), each with its own colour in
# every run (a quantity keeps its colour whichever metrics a run has, and in whatever
# order its records hold them).
# (Precision@1 equals Recall@1, so it is left out.)
HIGHER_IS_BETTER = ("val_map@r", "val_recall@1", "val_r_precision", "val_auc")
LOWER_IS_BETTER = ("val_eer",)
QUANTITY_COLORS = {"loss": "C0", "val_loss": "C1", "val_map@r": "C0", "val_recall@1": "C1",
                   "val_r_precision": "C5", "val_auc": "C2", "val_eer": "C3",
                   "margin": "C0", "easy_share": "C2"}
_LEGEND_NAMES = {"loss": "training loss", "val_loss": "validation loss"}
# The selected epoch's vertical line (its gid names it for readers of the figure).
SELECTED_GID = "selected-epoch"


def _mark_selected(ax: Any, epoch: int | None, label: str) -> None:
  """A dashed vertical line at the selected epoch (labelled in the axes' legend)."""
  if epoch is not None:
    ax.axvline(epoch, color="k", lw=1.0, ls="--", alpha=0.7, zorder=4, label=label,
               gid=SELECTED_GID)


def plot_training(epochs: Sequence[dict[str, Any]], path: str, title: str = "", *,
                  val_label: str = "validation loss",
                  easy_threshold: float | None = None,
                  selected_epoch: int | None = None,
                  selected_by: str | None = None,
                  selected_metric: str | None = None) -> None:
  """Draws the per-epoch training figure to ``path`` (PNG).

  Each panel compares like with like: the training loss (at the margin each epoch
  trained at) and the validation loss (at the validation margin) on their own axes; the
  validation metrics where higher is better (MAP@R, Recall@1, R-precision, AUC) apart from those where lower is better (EER); the margin, drawn as steps since it
  holds for a whole epoch; and the easy / semi-hard / hard shares of the triplets when
  the records carry ``num_easy``, ``num_semihard``, ``num_hard`` and ``num_total`` (or
  ``num_triplets``), else the easy share alone. Panels without data are left out. Each
  quantity has a fixed colour (:data:`QUANTITY_COLORS`). The selected epoch (the kept
  checkpoint) is a dashed vertical line on every panel, named with its rule in the
  legends and the figure's title; on the panel of the selecting metric its value is a
  star, and on the higher-is-better panel each metric's own best epoch is a ring.

  Args:
    epochs: the ``"epoch"`` records of ``metrics.jsonl``.
    path: output file.
    title: figure title.
    val_label: name of the validation loss (e.g. with its margin): its panel's title and
      legend entry.
    easy_threshold: optional horizontal line on the easy-share panel (DAMS's threshold).
    selected_epoch: the kept epoch (1-based), or None for no marker.
    selected_by: the rule that selected it, in words (``"lowest val_loss"``,
      ``tsm.history.selection_rule``).
    selected_metric: the epoch-record key that selected it (``"val_loss"``): its value
      at the selected epoch gets a star; None for none.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  x = [r["epoch"] + 1 for r in epochs]
  nan = float("nan")
  present = set(_numeric_keys(epochs, "val_"))

  def values(key: str) -> list[float]:
    return [r.get(key, nan) for r in epochs]

  higher = [k for k in HIGHER_IS_BETTER if k in present]
  lower = [k for k in LOWER_IS_BETTER if k in present]
  shares = triplet_shares(epochs)
  panels = (["loss"] + (["val_loss"] if "val_loss" in present else []) +
            (["higher"] if higher else []) + (["lower"] if lower else []) +
            ["margin", "shares"])
  cols = 2
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(12.5, 3.4 * rows),
                           constrained_layout=True, squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  axes = dict(zip(panels, axes.flat))
  selected = (f"selected: epoch {selected_epoch}" +
              (f" ({selected_by})" if selected_by else "")) if selected_epoch else ""

  def evaluated(keys: Sequence[str]) -> list[int]:
    """The records that hold some of ``keys`` (evaluators may skip epochs)."""
    return [i for i, r in enumerate(epochs) if any(k in r for k in keys)]

  def curves(name: str, keys: Sequence[str], panel_title: str, ylabel: str) -> Any:
    ax = axes[name]
    rows = evaluated(keys)   # lines join the evaluated epochs, not broken by the others
    plot_curves(ax, [x[i] for i in rows],
                {_LEGEND_NAMES.get(k, k[len("val_"):] if k.startswith("val_") else k):
                 [values(k)[i] for i in rows] for k in keys},
                title=panel_title, ylabel=ylabel,
                colors=[QUANTITY_COLORS.get(k, f"C{i + 6}") for i, k in enumerate(keys)])
    _mark_selected(ax, selected_epoch, selected)
    return ax

  curves("loss", ["loss"], "training loss (at the epoch's margin $\\mu$)", "loss")
  if "val_loss" in present:
    curves("val_loss", ["val_loss"], val_label, "loss")
    axes["val_loss"].get_lines()[0].set_label(val_label)
  if higher:
    ax = curves("higher", higher, "validation metrics, higher is better", "value")
    for k in higher:   # each metric's own best epoch
      y = np.asarray(values(k), np.float64)
      if np.isfinite(y).any():
        i = int(np.nanargmax(y))
        ax.plot([x[i]], [y[i]], "o", ms=9, mfc="none", mew=1.5,
                color=QUANTITY_COLORS.get(k, "k"), zorder=5)
    ax.plot([], [], "o", ms=9, mfc="none", mew=1.5, color="0.3", label="each one's best")
  if lower:
    curves("lower", lower, "validation metrics, lower is better", "value")
  plot_steps(axes["margin"], x, {"margin": [r["margin"] for r in epochs]}, ylabel="$\\mu$",
             title="margin $\\mu$ (held for the whole epoch)", legend=None)
  _mark_selected(axes["margin"], selected_epoch, selected)
  threshold_note = "" if easy_threshold is None else f" (dotted: DAMS threshold {easy_threshold:g})"
  if shares is not None:
    plot_triplet_shares(axes["shares"], x, shares, threshold=easy_threshold,
                        title="triplets by kind, at the epoch's margin")
  else:
    plot_curves(axes["shares"], x, {"easy share": values("easy_share")},
                title="easy share" + threshold_note, hline=easy_threshold,
                colors=[QUANTITY_COLORS["easy_share"]])
    axes["shares"].set_ylim(-0.02, 1.02)
  _mark_selected(axes["shares"], selected_epoch, selected)
  metric = (selected_metric if selected_metric == "loss" or selected_metric in present
            and selected_metric in ("val_loss", *higher, *lower) else None)
  if metric is not None and selected_epoch in x:   # the selecting value: a star
    ax = axes["loss" if metric == "loss" else "val_loss" if metric == "val_loss" else
              "higher" if metric in higher else "lower"]
    ax.plot([selected_epoch], [values(metric)[x.index(selected_epoch)]], "*", ms=13,
            color="k", zorder=6)
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  for name in panels:
    legend_outside(axes[name])
    # One epoch axis for every panel (evaluators may skip epochs), in whole epochs.
    if x:
      axes[name].set_xlim(min(x) - 0.5, max(x) + 0.5)
    axes[name].xaxis.set_major_locator(MaxNLocator(integer=True))
  head = [title] if title else []
  if selected:
    head.append(selected)
  if head:
    fig.suptitle("\n".join(head))
  save_figure(fig, path, dpi=100)


def save_figure(fig: Any, path: str, *, dpi: int = 120) -> None:
  """Saves ``fig`` to ``path`` via a temporary file and a rename, then closes it.

  The format follows the extension of ``path`` (``.png``, ``.pdf``, ``.svg``...).

  Args:
    fig: a matplotlib ``Figure``.
    path: output file; its directory is created if missing.
    dpi: resolution of raster formats.
  """
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  suffix = os.path.splitext(path)[1] or ".png"
  try:
    with artifacts.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=dpi, format=suffix[1:], bbox_inches="tight")
  finally:
    plt.close(fig)
