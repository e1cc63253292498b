"""Tables, verdicts and figures of the loss study, from the runs' ``analysis.json``.

Per dataset (``<workdir>/<dataset>/``): ``table.md`` / ``table.csv`` (paper B's rows,
mean ± std over seeds for each loss, paper B's reported numbers beside them, and the
verdict of the paper's claim on that row), ``curves.png`` (loss, active ratio and
gradient norm per epoch, mean over seeds with a ± std band), ``intra_class_variance.png``
(per class, mean ± std over seeds), ``pca.png`` (2-D PCA of the first seed's test
embeddings), ``effective_margins.png`` (histogram of ``d_an - d_ap`` over the training
triplets of every seed, with a Gaussian mixture fitted to them).

Over all datasets: ``verdicts.md`` / ``verdicts.csv`` (each claim of paper B per dataset:
mean ± std per loss, the paired difference over seeds with its 95 % interval, raw and
Holm p over the study's whole family of claims, MDE, verdict;
:mod:`experiments.common.verdicts`),
``deviations.md`` and ``report.md`` (everything, for reading).

Four of paper B's claims hold by construction and are flagged, each beside a companion
that does not: with contrastive's positive margin 0 its positive pairs are pulled to
d = 0, so its intra-class variance is small whatever training does (companion: the
variance per squared class distance); with its margin below √2 it stops pushing
negatives where triplet does not, so its class distances stay short (companion: the
distance per unit of spread, √ of the variance); under ``y d^2`` every positive pair
with ``d > 0`` is active and half of paper B's pairs are positive (companion: the
active ratio of negative terms); and raw gradient norms of losses of different scale
are not comparable, nor under Adam the size of an update (companion: the gradient norm
per unit of loss).

The study's results page is written from a finished workdir by :func:`docs_page`::

  python -m experiments.loss_comparison.report runs/loss_study docs/results/loss_study.md
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from experiments.common import docs
from experiments.common import figures
from experiments.common import loss_studies
from experiments.common import runs as runs_lib
from experiments.common import tables
from experiments.common import verdicts as verdicts_lib
from experiments.loss_comparison import study
from tsm import diagnostics
from tsm import plotting
from tsm import reporting

# (key in analysis.json, row label, decimals)
ROWS = (
    ("intra_var", "intra-class variance (train; ± over seeds)", 4),
    ("intra_var_std_over_classes", "intra-class variance: std over classes", 4),
    ("inter_dist", "inter-class centroid distance (train)", 4),
    ("inter_dist_std_over_pairs", "inter-class distance: std over class pairs", 4),
    ("loss_decay_epochs", "loss-decay epochs (loss <= 10% of epoch 1)", 1),
    ("loss_decay_epochs_from_step1", "loss-decay epochs (loss <= 10% of step 1)", 1),
    ("mean_active_ratio", "active ratio (mean over epochs)", 3),
    ("mean_grad_norm", "gradient norm (mean over epochs)", 3),
    ("mean_negative_active_ratio", "active ratio of negative terms (mean over epochs)", 3),
    ("mean_grad_norm_per_loss", "gradient norm / loss (mean over epochs)", 3),
    ("intra_var_ratio", "intra-class variance / squared centroid distance", 4),
    ("inter_dist_per_spread", "centroid distance / RMS intra-class radius", 3),
    ("knn@5", "k-NN accuracy (k=5, test)", 4),
    ("recall@1", "Recall@1 (test)", 4),
    ("recall@5", "Recall@5 (test)", 4),
    ("recall@10", "Recall@10 (test)", 4),
    ("map@r", "MAP@R (test)", 4),
    ("eff_margin_mean", "effective margin d_an - d_ap (train, mean)", 4),
    ("final_loss", "final epoch loss", 4),
)

# Paper B's reported numbers (PAPERS.md), (contrastive, triplet), as printed. Its ± of
# the variance rows is over classes (ours, in the same column, is over seeds; the
# "std over classes" rows are comparable to it).
PAPER_B = {
    "synthetic": {
        "intra_var": ("0.0118 ± 0.0113", "0.0329 ± 0.0084"),
        "intra_var_std_over_classes": ("0.0113", "0.0084"),
        "inter_dist": ("1.2611 ± 0.3073", "1.4418 ± 0.1992"),
        "inter_dist_std_over_pairs": ("0.3073", "0.1992"),
        "loss_decay_epochs": ("27", "43"),
        "mean_active_ratio": ("0.65", "0.38"),
        "mean_grad_norm": ("0.12", "0.27"),
    },
    "mnist": {
        "intra_var": ("0.0030 ± 0.0014", "0.0059 ± 0.0022"),
        "intra_var_std_over_classes": ("0.0014", "0.0022"),
        "inter_dist": ("1.0347 ± 0.0800", "1.4840 ± 0.0685"),
        "inter_dist_std_over_pairs": ("0.0800", "0.0685"),
    },
    "cifar10": {"knn@5": ("0.8998", "0.9371"), "recall@1": ("0.8433", "0.9192")},
    "cars196": {"recall@1": ("0.2542", "0.2982")},
    "caltech_birds2011": {"recall@1": ("0.3154", "0.3421")},
}

NOT_MEASURED = "n/a (not measured)"
# Loss-decay rows: -1 (never reached within E epochs) counts as E + 1.
DECAY_KEYS = ("loss_decay_epochs", "loss_decay_epochs_from_step1")


def row_values(runs: Sequence[dict[str, Any]], key: str) -> list[float | None]:
  """Per-seed values of a row. Loss-decay never reached counts as ``epochs + 1``."""
  return [tables.run_value(r, key, DECAY_KEYS) for r in runs]


def _cell(runs: Sequence[dict[str, Any]], key: str, digits: int) -> str:
  runs = [study.with_companions(r) for r in runs]
  text = reporting.summarize(row_values(runs, key)).format(digits)
  if key in DECAY_KEYS and runs:
    never = sum(1 for r in runs if r[key] < 0)
    if never:
      text += f" ({never}/{len(runs)} never reached: counted as {runs[0]['epochs'] + 1})"
  return text


def construction_notes(contrastive: Sequence[dict[str, Any]]) -> dict[str, str]:
  """:func:`experiments.loss_comparison.study.construction_notes` under the margins of
  the contrastive runs (their first record; paper B's 0 and 1 without one)."""
  first = contrastive[0] if contrastive else {}
  return study.construction_notes(float(first.get("positive_margin", 0.0)),
                                  float(first.get("margin", 1.0)))


def study_claims(by_dataset: dict[str, dict[str, list[dict[str, Any]]]],
                 seeds: Sequence[int]) -> list[verdicts_lib.Claim]:
  """Every measured claim of paper B on every dataset (the study's family)."""
  other = {"triplet": "contrastive", "contrastive": "triplet"}
  out = []
  for dataset, by_loss in by_dataset.items():
    by_loss = {loss: [study.with_companions(r) for r in runs]
               for loss, runs in by_loss.items()}
    notes = construction_notes(by_loss.get("contrastive", []))
    for claim, key, favoured, higher in study.CLAIMS:
      a = tables.seed_values(by_loss.get(favoured, []), key, seeds, DECAY_KEYS)
      b = tables.seed_values(by_loss.get(other[favoured], []), key, seeds, DECAY_KEYS)
      if not (reporting.summarize(a).n and reporting.summarize(b).n):
        continue   # not measured here (e.g. k-NN on unseen classes): not in the family
      out.append(verdicts_lib.Claim(claim, key, favoured, other[favoured], a, b,
                                    higher_is_better=higher,
                                    note=notes.get(key, ""), group=dataset))
  return out


def decided(by_dataset: dict[str, dict[str, list[dict[str, Any]]]],
            seeds: Sequence[int]) -> dict[str, dict[str, str]]:
  """``{dataset: {key: verdict}}`` of every claim, Holm over the whole study."""
  claims = study_claims(by_dataset, seeds)
  out = {d: {key: NOT_MEASURED for _, key, _, _ in study.CLAIMS} for d in by_dataset}
  for c, comp in zip(claims, verdicts_lib.decide_claims(claims)):
    out[c.group][c.metric] = comp.verdict
  return out


def claim_verdicts(by_loss: dict[str, list[dict[str, Any]]],
                   seeds: Sequence[int] | None = None) -> dict[str, str]:
  """``{key: verdict}`` of one dataset's claims (Holm over that dataset alone)."""
  if seeds is None:
    seeds = sorted({r["seed"] for runs in by_loss.values() for r in runs})
  return decided({"_": by_loss}, seeds)["_"]


def dataset_table(workdir: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]],
                  losses: Sequence[str], verdicts: dict[str, str] | None = None) -> str:
  """Writes ``<dataset>/table.md`` and ``table.csv``; returns the Markdown.

  ``verdicts``: the claims' verdicts decided over the whole study (default: over this
  dataset alone).
  """
  paper = PAPER_B.get(dataset, {})
  verdicts = claim_verdicts(by_loss) if verdicts is None else verdicts
  claim_of = {key: claim for claim, key, _, _ in study.CLAIMS}
  header = (["quantity"] + [f"{loss} (ours)" for loss in losses]
            + [f"{loss} (paper B)" for loss in losses] + ["paper B's claim", "verdict"])
  rows = []
  for key, label, digits in ROWS:
    cells = [label] + [_cell(by_loss.get(loss, []), key, digits) for loss in losses]
    ref = paper.get(key)
    cells += [ref[("contrastive", "triplet").index(loss)] if ref and loss in (
        "contrastive", "triplet") else "" for loss in losses]
    cells += [claim_of.get(key, ""), verdicts.get(key, "")]
    rows.append(cells)
  n = {loss: len(by_loss.get(loss, [])) for loss in losses}
  title = (f"{dataset}: contrastive vs triplet loss (mean ± std over seeds; "
           + ", ".join(f"{loss} n={n[loss]}" for loss in losses) + ")")
  return reporting.write_table(header, rows, os.path.join(workdir, dataset, "table.md"),
                               os.path.join(workdir, dataset, "table.csv"), title=title)


def _per_dataset(cfg: Any, cell: Any) -> str:
  return verdicts_lib.per_dataset(cfg, study.run_config, cell)


_trunk, _resolution, _dropout = (verdicts_lib.trunk_cell, verdicts_lib.resolution_cell,
                                 verdicts_lib.dropout_cell)


def deviations(cfg: Any) -> list[list[str]]:
  """Paper B vs its authors' code vs this study: every tsm cell is read from ``cfg``
  (each dataset's run of the first loss at the first seed), and each "why" says
  "same" where the cell matches the paper."""
  s = cfg.study
  first = study.run_config(cfg, s.datasets[0], s.losses[0], s.first_seed)
  paper_sampling = s.sampling == "paper"
  lr = _per_dataset(cfg, lambda r: f"{r.train.optimizer} {r.train.learning_rate:g}")
  trunk = _per_dataset(cfg, _trunk)
  dropout = _per_dataset(cfg, _dropout)
  margins = _per_dataset(cfg, lambda r: f"{float(r.loss.get('positive_margin', 0.0)):g} / "
                        f"{float(r.margin.initial_margin):g}")
  aug = _per_dataset(cfg, lambda r: f"augment {'on' if r.data.augment else 'off'}, "
                     f"normalize {r.data.normalize}")
  return [
      ["datasets", "synthetic, MNIST, CIFAR-10, Cars196, CUB-200", "as the paper",
       ", ".join(s.datasets), "the sets this config names"],
      ["losses compared", "contrastive vs triplet", "contrastive vs triplet",
       " vs ".join(s.losses), "same" if set(s.losses) == set(study.LOSSES) else
       "study.losses"],
      ["sampling", "random triplets / pairs, no mining", "one random positive and "
       "negative per anchor; pairs by a coin flip",
       "paper B's random triplets / pairs" if paper_sampling else
       f"in-batch {s.sampling}, mining {s.mining}",
       "as the authors' code" if paper_sampling else "study.sampling"],
      ["outliers (label -1) as anchors", "not stated", "yes",
       "yes" if s.outlier_anchors else "no",
       "as the authors' code" if s.outlier_anchors else "study.outlier_anchors"],
      ["positive = anchor allowed", "not stated", "yes",
       "yes" if s.positive_is_anchor else "no",
       "as the authors' code" if s.positive_is_anchor else "study.positive_is_anchor"],
      ["loss reduction", "mean over the batch", "mean over the batch",
       first.loss.reduction, "same" if first.loss.reduction == "mean" else
       "loss.reduction"],
      ["contrastive margins (positive / negative)", "0 / 1", "0 / 1", margins,
       ("same" if margins == "0 / 1" else "loss.positive_margin / margin.initial_margin")
       + "; claims they make hold by construction are flagged beside companions"],
      ["distance", "squared Euclidean (text)", "Euclidean", first.loss.distance,
       "as the authors' code" if first.loss.distance == "euclidean" else
       "loss.distance"],
      ["learning rate", "Adam 1e-3", "Adam 1e-3", lr,
       "same" if lr == "adam 0.001" else "the dataset's train.learning_rate"],
      ["epochs", "100 (synthetic), 20 (MNIST)", "as the paper",
       _per_dataset(cfg, lambda r: r.train.epochs),
       "study.epochs overrides all" if s.epochs is not None else
       "each dataset's train.epochs"],
      ["augmentation / normalisation", "none / raw", "none / raw", aug,
       "same (pixels scaled to [0, 1])" if aug == "augment off, normalize unit" else
       "the dataset's data.augment / data.normalize"],
      ["dropout", "none", "none", dropout,
       "same" if dropout == "none" else "the dataset's model.head_dropout"],
      ["training images", "all (MNIST: 60,000)", "all",
       _per_dataset(cfg, lambda r: r.data.get("num_examples") or "all"),
       "CPU budget where capped (data.num_examples per split)"],
      ["trunk", "MLP (synthetic), ConvNet (MNIST), frozen ViT-B/32 (images)",
       "as the paper", trunk,
       "a ViT-B/32 trunk is not among tsm's models; a pretrained trunk is frozen "
       "with study.freeze_pretrained"],
      ["input resolution", "native (synthetic, MNIST), 224 px (ViT)", "as the paper",
       _per_dataset(cfg, _resolution), "the dataset's data.image_size"],
      ["split", "train = evaluation set", "train = evaluation set",
       _per_dataset(cfg, lambda r: r.data.split),
       "a held-out test split keeps k-NN and retrieval honest"],
      ["seeds and data", "one run", "one run",
       f"{s.seeds} seeds" + (", data drawn from each seed" if s.vary_data else ""),
       "paired tests over seeds; the spread includes the data's variance"],
  ]


# ----------------------------------------------------------------------------- figures


def plot_curves(path: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]]) -> None:
  """Loss, active ratio and gradient norm per epoch: mean over seeds, ± std band."""
  fig, axes = figures.subplots(3)
  names = (("loss", "loss"), ("active_ratio", "active ratio"),
           ("grad_norm", "gradient norm"))
  for ax, (key, label) in zip(axes[0], names):
    series, bands = {}, {}
    for loss, runs in by_loss.items():
      if not runs:
        continue
      values = figures.curve_matrix(runs, key)
      mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else 0 * values[0]
      name = f"{loss} (n={len(runs)})"
      series[name], bands[name] = mean, (mean - std, mean + std)
    plotting.plot_curves(ax, None, series, ylabel=label, title=f"{dataset}: {label}",
                         markers=False, bands=bands)
  fig.tight_layout()
  plotting.save_figure(fig, path)


def plot_intra_class_variance(path: str, dataset: str,
                              arrays: dict[str, list[dict[str, np.ndarray]]]) -> None:
  """Per-class intra-class variance (training embeddings), mean ± std over seeds."""
  fig, axes = figures.subplots(1, width=7.0)
  ax = axes[0, 0]
  losses = [loss for loss, runs in arrays.items() if runs]
  width = 0.8 / max(len(losses), 1)
  for i, loss in enumerate(losses):
    present = np.all([a["class_present"] for a in arrays[loss]], axis=0)
    classes = np.flatnonzero(present)
    values = np.asarray([a["per_class_variance"][classes] for a in arrays[loss]])
    std = values.std(0, ddof=1) if len(values) > 1 else None
    ax.bar(np.arange(classes.size) + (i - (len(losses) - 1) / 2) * width,
           values.mean(0), width, yerr=std, color=f"C{i}", capsize=2,
           label=f"{loss} (n={len(values)})")
    ax.set_xticks(np.arange(classes.size), [str(c) for c in classes],
                  fontsize="small" if classes.size <= 20 else "xx-small")
  ax.set_xlabel("class")
  ax.set_ylabel("intra-class variance")
  ax.set_title(f"{dataset}: per-class variance of training embeddings")
  ax.legend(fontsize="small")
  fig.tight_layout()
  plotting.save_figure(fig, path)


def plot_pca(path: str, dataset: str, embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
             seed: int) -> None:
  """2-D PCA of the test embeddings, one panel per loss (the first seed's run)."""
  fig, axes = figures.subplots(len(embeddings))
  for ax, (loss, (emb, labels)) in zip(axes[0], embeddings.items()):
    plotting.plot_pca(ax, emb, labels, title=f"{dataset}, {loss} (seed {seed}): test PCA")
  fig.tight_layout()
  plotting.save_figure(fig, path)


def plot_effective_margins(path: str, dataset: str,
                           arrays: dict[str, list[dict[str, np.ndarray]]], margin: float,
                           components: int) -> dict[str, dict[str, list[float]]]:
  """Histograms of effective margins (all seeds pooled) with a fitted Gaussian mixture.

  Returns:
    ``{loss: {"weights", "means", "stds"}}`` of the pooled fits.
  """
  losses = [loss for loss, runs in arrays.items() if runs]
  fig, axes = figures.subplots(max(len(losses), 1))
  fits = {}
  for ax, loss in zip(axes[0], losses):
    values = np.concatenate([a["effective_margins"] for a in arrays[loss]])
    mix = diagnostics.fit_gaussian_mixture(values, components) if values.size else None
    plotting.plot_effective_margins(
        ax, values, mix, margin=margin,
        title=f"{dataset}, {loss}: effective margins (train, {len(arrays[loss])} seeds)")
    if mix is not None:
      fits[loss] = {k: np.asarray(getattr(mix, k)).tolist()
                    for k in ("weights", "means", "stds")}
  fig.tight_layout()
  plotting.save_figure(fig, path)
  return fits


def report_dataset(workdir: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]],
                   seeds: Sequence[int], *, gmm_components: int = 2,
                   verdicts: dict[str, str] | None = None) -> dict[str, Any]:
  """Table and figures of one dataset (``by_loss``: its runs' records per loss).

  Returns:
    ``{"table": markdown, "verdicts": {key: verdict}, "figures": [paths],
    "gmm": pooled fits, "runs": {loss: n}}``.
  """
  losses = list(by_loss)
  directory = os.path.join(workdir, dataset)
  verdicts = claim_verdicts(by_loss, seeds) if verdicts is None else verdicts
  table = dataset_table(workdir, dataset, by_loss, losses, verdicts)
  figures = []
  if any(by_loss.values()):
    path = os.path.join(directory, "curves.png")
    plot_curves(path, dataset, by_loss)
    figures.append(path)
    arrays = {loss: runs_lib.load_arrays(workdir, dataset, loss, runs, study.ARRAYS_FILE)
              for loss, runs in by_loss.items()}
    path = os.path.join(directory, "intra_class_variance.png")
    plot_intra_class_variance(path, dataset, arrays)
    figures.append(path)
    first = {loss: (a[0]["test_embeddings"], a[0]["test_labels"])
             for loss, a in arrays.items() if a and "test_embeddings" in a[0]}
    if first:
      path = os.path.join(directory, "pca.png")
      plot_pca(path, dataset, first, seeds[0])
      figures.append(path)
    margin = next(r["margin"] for runs in by_loss.values() for r in runs)
    path = os.path.join(directory, "effective_margins.png")
    gmm = plot_effective_margins(path, dataset, arrays, margin, gmm_components)
    figures.append(path)
  else:
    gmm = {}
  return {"table": table, "verdicts": verdicts, "figures": figures,
          "gmm": gmm, "runs": {loss: len(runs) for loss, runs in by_loss.items()}}


def write_report(workdir: str, datasets: Sequence[str], losses: Sequence[str],
                 seeds: Sequence[int], *, gmm_components: int = 2,
                 preamble: str = "", cfg: Any = None) -> dict[str, Any]:
  """Every dataset's table and figures, the verdict table and ``report.md``.

  Args:
    workdir: the study directory.
    datasets: the datasets.
    losses: the losses.
    seeds: the seeds.
    gmm_components: components of the effective-margin mixtures.
    preamble: text under the title.
    cfg: the study config (deviations table, ``study.compare_to``); optional.

  Returns:
    ``{"datasets": {name: report_dataset(...)}, "verdicts": markdown}``.
  """
  by_dataset = loss_studies.load_by_dataset(workdir, datasets, losses, seeds,
                                            study.RESULT_FILE)
  family = decided(by_dataset, seeds)
  per = {d: report_dataset(workdir, d, by_dataset[d], seeds,
                           gmm_components=gmm_components, verdicts=family[d])
         for d in datasets}
  verdicts_md, stability = loss_studies.verdict_table(
      workdir, study_claims(by_dataset, seeds), "Paper B's claims on this study's runs",
      cfg, seeds)
  parts = {}
  for d in datasets:
    gmm = per[d]["gmm"]
    parts[d] = [per[d]["table"],
                "Gaussian mixture of the pooled effective margins: " + "; ".join(
                    f"{loss}: " + ", ".join(
                        f"w={w:.2f} mean={m:.3f} sd={s:.3f}"
                        for w, m, s in zip(g["weights"], g["means"], g["stds"]))
                    for loss, g in gmm.items()) + "\n" if gmm else "",
                loss_studies.figure_line(workdir, per[d]["figures"])]
  loss_studies.write_report(
      workdir, title="# Loss study: contrastive vs triplet (paper B, arXiv 2510.02161)\n",
      preamble=preamble, verdicts=verdicts_md, stability=stability,
      deviations="" if cfg is None else verdicts_lib.write_deviations(
          workdir, deviations(cfg), "Deviations from paper B and its authors' code"),
      datasets=list(parts.items()))
  return {"datasets": per, "verdicts": verdicts_md}


def write_study_report(workdir: str, cfg: Any, preamble: str) -> dict[str, Any]:
  """:func:`write_report` of a study config's datasets, losses and seeds."""
  return write_report(workdir, list(cfg.study.datasets), list(cfg.study.losses),
                      runs_lib.seeds_of(cfg), gmm_components=int(cfg.study.gmm_components),
                      preamble=preamble, cfg=cfg)


# ----------------------------------------------------------------------------- docs page

ABOUT = (
    "Paper B (Zeng, \"Comparing Contrastive and Triplet Loss: Variance Analysis and "
    "Optimization Behavior\", arXiv 2510.02161) claims that the triplet loss keeps more "
    "intra-class variance and larger inter-class distances, that the contrastive loss "
    "is greedier (its loss decays faster, more terms are active, each with a smaller "
    "gradient norm), and that triplet wins k-NN and retrieval. The study trains both "
    "losses under identical settings over the same seeds on each dataset and tests each "
    "claim paired over seeds, Holm over the whole study; claims that hold by "
    "construction (intra-class variance and inter-class distance under contrastive's "
    "margins, its active ratio, raw gradient norms) are flagged and tested beside "
    "companions that do not.")


def docs_page(workdir: str, commands: Sequence[str] = ()) -> str:
  """The study's results page (:func:`experiments.common.docs.page`) from a finished
  study's workdir: the settings of its ``report.md``, the verdict bullets and the
  claim x dataset verdicts from ``verdicts.csv``, each dataset's table."""
  return docs.page(
      workdir, title="Loss study: contrastive vs triplet (paper B)", about=ABOUT,
      tables=docs.dataset_tables(workdir),
      commands=commands, details=False)


if __name__ == "__main__":
  docs.main(docs_page, program="python -m experiments.loss_comparison.report")
