"""Tables, verdicts and figures of the margin study, computed from its run directories.

Everything here reads files only (``summary.json``, ``metrics.jsonl``, ``pairs.npz`` and
``effective_margins/*.npz`` of each ``runs/<schedule>/seed<k>``), so a finished study's
report can be rebuilt at any time. Numbers are summarised with :mod:`tsm.reporting`
(mean ± sample std over seeds; the verdict rule is documented there).

Outputs in the study directory:

* ``results.md`` / ``results.csv``: schedule x test metric, mean ± std over seeds, the
  best mean of each column in bold;
* ``verdicts.md`` / ``verdicts.csv``: paper A's claims decided from the numbers;
* ``effective_margins.md`` / ``.csv``: the share of sampled training triplets whose
  effective margin exceeds the epoch's margin, and the upper mixture component;
* ``per_seed.csv`` / ``.md``: every run's numbers;
* figures: ``margin.png`` (mu per epoch), ``easy_share.png``, ``effective_margins.png``
  (histograms + two-component mixture at the first, middle and last epoch, seed
  ``study.plot_seed``), ``roc.png`` (test pairs, vertically averaged over seeds);
* ``report.md``: all of the above in one page, ``study.json``: the raw per-run results.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

import numpy as np

from tsm import reporting

# (summary key, column label, higher is better); the test metrics of paper A first.
METRICS = (
    ("test.auc", "AUC", True),
    ("test.eer", "EER", False),
    ("test.accuracy", "accuracy", True),
    ("test.tar@far=1e-2", "TAR@FAR=1e-2", True),
    ("test.tar@far=1e-3", "TAR@FAR=1e-3", True),
    ("test.recall@1", "R@1", True),
    ("test.map@r", "MAP@R", True),
)
# Reported, not ranked.
EXTRAS = (("final_margin", "final mu"), ("best_epoch", "best epoch"))
VERDICT_METRICS = (("test.auc", "AUC", True), ("test.eer", "EER", False))


# ----------------------------------------------------------------------------- loading


def _read_jsonl_epochs(path: str) -> list[dict[str, Any]]:
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          record = json.loads(line)
          if record.get("kind") == "epoch":
            out.append(record)
  return out


def load_runs(workdir: str, names: Sequence[str], seeds: int) -> dict[str, list[dict]]:
  """Per schedule, the finished runs (seed order): summary, epoch records, paths.

  Args:
    workdir: the study directory.
    names: schedules.
    seeds: number of seeds.

  Returns:
    ``{schedule: [{"seed", "dir", "summary", "epochs"}, ...]}`` (runs without a
    ``summary.json`` are left out).
  """
  from experiments.margin_scheduler import study  # pylint: disable=import-outside-toplevel
  runs: dict[str, list[dict]] = {}
  for name in names:
    runs[name] = []
    for seed in range(seeds):
      directory = study.run_dir(workdir, name, seed)
      path = os.path.join(directory, "summary.json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        summary = json.load(f)
      runs[name].append({"seed": seed, "dir": directory, "summary": summary,
                         "epochs": _read_jsonl_epochs(os.path.join(directory,
                                                                   "metrics.jsonl"))})
  return runs


def _values(runs: list[dict], key: str) -> list[float | None]:
  return reporting.per_seed([r["summary"] for r in runs], key)


# ----------------------------------------------------------------------------- tables


def results_table(runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
  """Schedule x metric cells ``mean ± std``, the best mean of each metric in bold."""
  names = list(runs)
  header = ["schedule", "seeds"] + [label for _, label, _ in METRICS] + [
      label for _, label in EXTRAS]
  columns = []
  for key, _, higher in METRICS:
    summaries = [reporting.summarize(_values(runs[n], key)) for n in names]
    best = reporting.best_index(summaries, higher_is_better=higher)
    columns.append([f"**{s.format()}**" if i == best else s.format()
                    for i, s in enumerate(summaries)])
  for key, _ in EXTRAS:
    columns.append([reporting.summarize(_values(runs[n], key)).format(
        2 if key == "best_epoch" else 3) for n in names])
  rows = [[n, str(len(runs[n]))] + [col[i] for col in columns]
          for i, n in enumerate(names)]
  return header, rows


def per_seed_table(runs: dict[str, list[dict]]) -> tuple[list[str], list[list[Any]]]:
  """One row per run: schedule, seed, every metric (full precision)."""
  header = ["schedule", "seed"] + [key for key, _, _ in METRICS] + [k for k, _ in EXTRAS]
  rows = []
  for name, rs in runs.items():
    for r in rs:
      cells = [name, r["seed"]]
      for key in [k for k, _, _ in METRICS] + [k for k, _ in EXTRAS]:
        value = reporting.per_seed([r["summary"]], key)[0]
        cells.append("" if value is None else f"{value:.6g}")
      rows.append(cells)
  return header, rows


def _best_constant(runs: dict[str, list[dict]], key: str, higher: bool) -> str | None:
  from experiments.margin_scheduler import study  # pylint: disable=import-outside-toplevel
  constants = [n for n in runs if n.startswith(study.CONSTANT_PREFIX) and runs[n]]
  if not constants:
    return None
  summaries = [reporting.summarize(_values(runs[n], key)) for n in constants]
  best = reporting.best_index(summaries, higher_is_better=higher)
  return None if best is None else constants[best]


def claims(runs: dict[str, list[dict]]) -> list[tuple[str, str, str]]:
  """``(claim, a, b)`` triples of paper A's comparisons that the runs allow.

  ``a`` is the schedule the claim favours. The best constant is chosen per metric (the
  best test mean among the constants: an optimistic baseline, since the choice sees the
  test numbers), written ``best-constant`` and resolved by :func:`verdict_table`.
  """
  out = []
  have = {n for n, rs in runs.items() if rs}
  if "dams" in have:
    if any(n.startswith("constant_") for n in have):
      out.append(("DAMS beats the best constant margin", "dams", "best-constant"))
    for name in ("linear", "exponential", "stepwise"):
      if name in have:
        out.append((f"DAMS beats the {name} increase", "dams", name))
    if "controller" in have:
      out.append(("our controller beats DAMS", "controller", "dams"))
  return out


def verdict_table(runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
  """Paper A's claims on AUC and EER, decided by :func:`tsm.reporting.verdict`.

  Columns: claim, metric, A and B (schedule: mean ± std), the difference of the means
  in A's favour, the seed spread (``std_A + std_B``) and the verdict.
  """
  header = ["claim", "metric", "A", "B", "A better by", "seed spread", "verdict"]
  rows = []
  for claim, a, b in claims(runs):
    for key, label, higher in VERDICT_METRICS:
      b_name = _best_constant(runs, key, higher) if b == "best-constant" else b
      if b_name is None:
        continue
      va, vb = _values(runs[a], key), _values(runs[b_name], key)
      sa, sb = reporting.summarize(va), reporting.summarize(vb)
      diff = (sa.mean - sb.mean) if higher else (sb.mean - sa.mean)
      rows.append([claim, label, f"{a}: {sa.format()}", f"{b_name}: {sb.format()}",
                   f"{diff:+.4f}", f"{sa.std + sb.std:.4f}",
                   reporting.verdict(va, vb, higher_is_better=higher)])
  return header, rows


def effective_margin_table(runs: dict[str, list[dict]]
                           ) -> tuple[list[str], list[list[str]]]:
  """Per schedule and recorded epoch: mu, share of effective margins above mu, GMM.

  Paper A's observation: during training the effective margins ``d_an - d_ap`` of many
  triplets pass the fixed margin, so the share above mu grows and the upper mixture
  component moves past mu.
  """
  header = ["schedule", "epoch", "mu", "share of d_an - d_ap > mu", "mean d_an - d_ap",
            "GMM upper mean", "GMM upper weight"]
  rows = []
  for name, rs in runs.items():
    epochs = sorted({r["epoch"] for run in rs for r in run["epochs"] if "em_margin" in r})
    for epoch in epochs:
      recs = [r for run in rs for r in run["epochs"] if r["epoch"] == epoch
              and "em_margin" in r]
      cell = lambda key: reporting.summarize([r[key] for r in recs]).format(3)  # noqa
      rows.append([name, str(epoch + 1), cell("em_margin"), cell("em_share_above_margin"),
                   cell("em_mean"), cell("em_gmm_mean_high"), cell("em_gmm_weight_high")])
  return header, rows


# ----------------------------------------------------------------------------- figures


def _per_epoch(rs: list[dict], key: str) -> np.ndarray:
  """``[seeds, epochs]`` of an epoch-record field (NaN-padded to the longest run)."""
  length = max((len(r["epochs"]) for r in rs), default=0)
  out = np.full((len(rs), length), np.nan)
  for i, r in enumerate(rs):
    for j, rec in enumerate(r["epochs"]):
      out[i, j] = rec.get(key, np.nan)
  return out


def _plot_band(path: str, runs: dict[str, list[dict]], key: str, ylabel: str,
               title: str, hline: float | None = None) -> None:
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import plotting  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(8, 5))
  series, bands = {}, []
  for name, rs in runs.items():
    values = _per_epoch(rs, key)
    if values.size:
      series[name] = np.nanmean(values, axis=0)
      bands.append((np.nanmin(values, axis=0), np.nanmax(values, axis=0)))
  if series:
    plotting.plot_curves(ax, None, series, ylabel=ylabel, title=title, hline=hline,
                         markers=False)
    for i, (lo, hi) in enumerate(bands):
      ax.fill_between(np.arange(1, lo.size + 1), lo, hi, color=f"C{i}", alpha=0.15, lw=0)
  plotting.save_figure(fig, path)


def plot_margins(path: str, runs: dict[str, list[dict]]) -> None:
  """Margin per epoch (mean over seeds, band min..max) for every schedule."""
  _plot_band(path, runs, "margin", "margin mu", "margin per epoch (band: seed range)")


def plot_easy_share(path: str, runs: dict[str, list[dict]],
                    threshold: float | None) -> None:
  """Easy-triplet share per epoch (training batches, the epoch's margin)."""
  _plot_band(path, runs, "easy_share", "easy share",
             "easy-triplet share per epoch (dotted: DAMS threshold)", hline=threshold)


def plot_effective_margins(path: str, runs: dict[str, list[dict]], seed: int) -> None:
  """Histograms + mixture at the recorded epochs (rows: schedules), one seed."""
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import diagnostics, plotting  # pylint: disable=import-outside-toplevel

  panels = []
  for name, rs in runs.items():
    run = next((r for r in rs if r["seed"] == seed), None)
    files = [] if run is None else sorted(
        glob.glob(os.path.join(run["dir"], "effective_margins", "epoch*.npz")))
    if files:
      panels.append((name, files))
  if not panels:
    return
  cols = max(len(f) for _, f in panels)
  fig, axes = plt.subplots(len(panels), cols, figsize=(5.2 * cols, 3.4 * len(panels)),
                           squeeze=False)
  for row, (name, files) in enumerate(panels):
    for col in range(cols):
      ax = axes[row, col]
      if col >= len(files):
        ax.axis("off")
        continue
      with np.load(files[col]) as z:
        mixture = diagnostics.GaussianMixture(
            weights=z["weights"], means=z["means"], stds=z["stds"],
            log_likelihood=np.float32(0), num_iters=np.int32(0), converged=np.bool_(True))
        plotting.plot_effective_margins(
            ax, z["values"], mixture, float(z["margin"]), bins=50,
            title=f"{name}, seed {seed}: epoch {int(z['epoch']) + 1}")
        ax.legend(fontsize="x-small")
  fig.tight_layout()
  plotting.save_figure(fig, path)


def _roc_at(fpr_grid: np.ndarray, distances: np.ndarray, same: np.ndarray) -> np.ndarray:
  """Largest TPR among ROC points with FPR <= each grid value (a step ROC)."""
  from tsm import metrics  # pylint: disable=import-outside-toplevel
  fpr, tpr, _ = metrics.roc_curve(distances, same)
  idx = np.searchsorted(fpr, fpr_grid, side="right") - 1
  return tpr[np.clip(idx, 0, tpr.size - 1)]


def plot_roc(path: str, runs: dict[str, list[dict]]) -> None:
  """Test-pair ROC per schedule, vertically averaged over seeds (linear and log FPR)."""
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import plotting  # pylint: disable=import-outside-toplevel

  grid = np.unique(np.concatenate([np.linspace(0, 1, 401), np.logspace(-3, 0, 200)]))
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  for i, (name, rs) in enumerate(runs.items()):
    curves = []
    for r in rs:
      pairs = os.path.join(r["dir"], "pairs.npz")
      if os.path.exists(pairs):
        with np.load(pairs) as z:
          curves.append(_roc_at(grid, z["test_distances"], z["test_same"]))
    if not curves:
      continue
    tpr = np.mean(curves, axis=0)
    auc = reporting.summarize(_values(rs, "test.auc"))
    label = f"{name} (AUC {auc.format(3)})"
    for ax in axes:
      ax.plot(grid, tpr, color=f"C{i % 10}", lw=1.4,
              ls="-" if i < 10 else "--", label=label)
  for ax, log in zip(axes, (False, True)):
    ax.plot([1e-3, 1], [1e-3, 1], color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate (test pairs)")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    if log:
      ax.set_xscale("log")
      ax.set_xlim(1e-3, 1)
  axes[0].set_title("ROC, mean TPR over seeds")
  axes[1].set_title("ROC, log FPR")
  axes[0].legend(fontsize="small", loc="lower right")
  plotting.save_figure(fig, path)


# ----------------------------------------------------------------------------- report


def _setup_lines(cfg: Any, names: Sequence[str]) -> list[str]:
  t, d, m = cfg.train, cfg.data, cfg.model
  return [
      f"- data: {d.name}, split {d.split} (validation {d.val_fraction:g} of train, "
      f"{d.get('val_split', 'auto')}), model {m.name} + head {m.head}, "
      f"{m.embedding_dim}-d L2-normalised, {cfg.loss.distance} distance",
      f"- triplet loss, mining {cfg.loss.mining}, P x K = {t.classes_per_batch} x "
      f"{t.samples_per_class}, {t.optimizer} lr {t.learning_rate:g}, {t.epochs} epochs, "
      f"model kept at the lowest {t.best_metric} (validation margin "
      f"{cfg.eval.val_margin})",
      f"- margins: mu0 {cfg.margin.initial_margin:g}, mu_last {cfg.margin.final_margin:g}, "
      f"DAMS tau {cfg.margin.threshold:g} delta {cfg.margin.increment:g}; controller "
      f"target {cfg.margin.target:g} gain {cfg.margin.gain:g} floor "
      f"{cfg.margin.min_margin:g}; stepwise {cfg.study.stepwise_stages} stages",
      f"- schedules: {', '.join(names)}; seeds 0..{cfg.study.seeds - 1}",
  ]


def write_report(workdir: str, cfg: Any, names: Sequence[str], *,
                 timing: dict[str, Any] | None = None,
                 command: str | None = None) -> str:
  """Writes every table and figure of the study and returns ``report.md``'s text.

  Args:
    workdir: the study directory.
    cfg: the study config.
    names: the schedules.
    timing: optional ``{"wall_s", "runs", "workers", ...}`` shown in the report.
    command: optional command line shown in the report.

  Returns:
    The Markdown of ``report.md``.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")

  runs = load_runs(workdir, names, int(cfg.study.seeds))
  path = lambda name: os.path.join(workdir, name)  # noqa: E731
  results = reporting.write_table(*results_table(runs), path("results.md"),
                                  path("results.csv"),
                                  title="Test metrics (mean ± std over seeds; best in bold)")
  verdicts = reporting.write_table(*verdict_table(runs), path("verdicts.md"),
                                   path("verdicts.csv"),
                                   title="Paper A's claims (tsm.reporting.verdict)")
  em = reporting.write_table(*effective_margin_table(runs), path("effective_margins.md"),
                             path("effective_margins.csv"),
                             title="Effective margins of training triplets (eval mode)")
  reporting.write_table(*per_seed_table(runs), path("per_seed.md"), path("per_seed.csv"))
  plot_margins(path("margin.png"), runs)
  plot_easy_share(path("easy_share.png"), runs, float(cfg.margin.threshold))
  plot_effective_margins(path("effective_margins.png"), runs, int(cfg.study.plot_seed))
  plot_roc(path("roc.png"), runs)
  with open(path("study.json"), "w") as f:
    json.dump({"timing": timing, "runs": {n: [{"seed": r["seed"], "summary": r["summary"]}
                                             for r in rs] for n, rs in runs.items()}},
              f, indent=1, sort_keys=True)

  lines = ["# Margin-scheduler study (paper A)", ""]
  if command:
    lines += ["```", command, "```", ""]
  lines += _setup_lines(cfg, names)
  if timing:
    lines.append(f"- wall time {timing['wall_s']:.0f} s for {timing['runs']} runs "
                 f"({timing.get('trained', timing['runs'])} trained) with "
                 f"{timing['workers']} worker process(es)")
  lines += ["", results, "", verdicts, "",
            "Verdict rule: 'held' when A's mean is better than B's by more than std_A + "
            "std_B over seeds, 'did not hold' when worse by more, 'not distinguishable' "
            "otherwise. The best constant is picked per metric on the test means "
            "(optimistic for the baseline).", "", em, "",
            "Figures: margin.png, easy_share.png, effective_margins.png, roc.png; "
            "each run's files under runs/<schedule>/seed<k>/.", ""]
  text = "\n".join(lines)
  with open(path("report.md"), "w") as f:
    f.write(text)
  return text
