"""Tables, verdicts and figures of the loss-zoo study, from the runs' ``zoo.json``.

Per dataset (``<workdir>/<dataset>/``):

* ``table.md`` / ``table.csv``: loss x metric, each cell the mean ± std over seeds with
  the two-sided 95 % t interval of the mean;
* ``curves.png``: loss, active ratio, gradient norm and gradient norm per unit of loss
  per epoch, for every loss (mean over seeds, ± std band; loss and norms on a log axis,
  since the losses differ in scale by orders of magnitude);
* ``intra_class_variance.png``: the per-class intra-class variances of every loss
  (training embeddings, every seed pooled), one box per loss;
* ``centroid_distances.png``: the distribution of the inter-class centroid distances
  of every loss (every class pair of every seed), one violin per loss.

Over all datasets: ``verdicts.md`` / ``.csv`` (claims D1-D4 of the follow-up, each a
paired test over seeds of a favoured loss against each of the paper's seven losses
outside the claim's group, Holm over the study's family:
:mod:`experiments.common.verdicts`), ``beside.md`` / ``.csv`` (the favoured losses
against MultiSimilarity and ProxyAnchor, which are not among the paper's seven: paired
differences and unadjusted p, outside the claims, no verdict), ``deviations.md`` and
``report.md`` (everything, for reading).

The claims (PAPERS.md section D) as tested, each favoured loss against each other loss
of the seven:

* D1: triplet and SupCon (each) keep more intra-class variance than the others, and a
  clearer separation (centroid distance / RMS class radius, ``separation``);
* D2: triplet and SupCon (each) have a higher Recall@1, on fine-grained sets only
  (cars196, caltech_birds2011; elsewhere not tested);
* D3: contrastive and NT-Xent (each) converge faster (scale-free loss fall and paper B's
  loss decay), end with lower intra-class variance, have a higher active ratio (and
  negative-term active ratio) and smaller gradient norms (raw and per unit of loss);
* D4: N-pair has a larger mean inter-class centroid distance AND a larger spread (std
  over class pairs) of them.

Comparisons that hold by construction are flagged in the note column beside a companion
that does not: contrastive's intra-class variance (positive margin 0 pulls positive
pairs to d = 0; companion: the variance per squared class distance), its centroid
distance when its margin is below √2 (companion: distance per unit of spread), and raw
gradient norms of losses of different scale (companion: per unit of loss). D1's two
parts pull against each other as defined (separation = centroid distance / RMS radius).

The active ratio's terms are defined per loss (``tsm.losses._activity``): a hinge term
is active when its loss is non-zero, a softmax / proxy / centre term when a competitor
is within one logit unit. The two definitions are not the same quantity, so the D3
active-ratio claims carry a note; the negative-term ratio is the closer comparison.

The study's results page is written from a finished workdir by :func:`docs_page`::

  python -m experiments.loss_zoo.report runs/loss_zoo docs/results/loss_zoo.md
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from experiments.common import docs
from experiments.common import figures
from experiments.common import loss_studies
from experiments.common import measure as measure_lib
from experiments.common import runs as runs_lib
from experiments.common import tables
from experiments.common import verdicts as verdicts_lib
from experiments.loss_zoo import study as zoo_study
from tsm import plotting
from tsm import reporting

# (key in zoo.json, column label, decimals)
COLUMNS = (
    ("recall@1", "Recall@1", 4),
    ("map@r", "MAP@R", 4),
    ("knn@5", "k-NN acc. (k=5)", 4),
    ("intra_var", "intra-class variance", 4),
    ("inter_dist", "centroid distance (mean)", 4),
    ("inter_dist_std_over_pairs", "centroid distance (std over pairs)", 4),
    ("separation", "separation (centroid dist. / RMS radius)", 3),
    ("mean_active_ratio", "active ratio", 3),
    ("mean_negative_active_ratio", "active ratio, negative terms", 3),
    ("mean_grad_norm", "gradient norm", 4),
    ("mean_grad_norm_per_loss", "gradient norm / loss", 4),
    ("loss_fall_epochs", "loss fall (epochs to 90 % of its fall)", 1),
    ("loss_decay_epochs", "loss decay (epochs to 10 % of epoch 1)", 1),
    ("final_loss", "final loss", 4),
)
# Epoch counts where -1 means "never": counted as epochs + 1 (as paper B's study).
EPOCH_KEYS = ("loss_fall_epochs", "loss_decay_epochs")


def _runs(by_loss: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
  """Each loss's records with the companions' measures
  (:func:`experiments.common.measure.with_companions`)."""
  return {loss: [measure_lib.with_companions(r) for r in runs]
          for loss, runs in by_loss.items()}


def comparisons(by_dataset: dict[str, dict[str, list[dict[str, Any]]]],
                seeds: Sequence[int], comparators: Sequence[str],
                contrastive_margin: float = 1.0) -> list[verdicts_lib.Claim]:
  """Every testable claim D1-D4 on every dataset, each favoured loss against each loss
  of ``comparators`` outside the claim's group, paired by seed."""
  out = []
  for dataset, by_loss in by_dataset.items():
    by_loss = _runs(by_loss)
    present = [loss for loss, runs in by_loss.items() if runs]
    for cid, text, key, favoured, group, higher, note, fine in zoo_study.CLAIMS:
      if fine and dataset not in zoo_study.FINE_GRAINED:
        continue
      for loss in favoured:
        if loss not in present:
          continue
        a = tables.seed_values(by_loss[loss], key, seeds, EPOCH_KEYS)
        for other in comparators:
          if other not in present or other in group:
            continue
          b = tables.seed_values(by_loss[other], key, seeds, EPOCH_KEYS)
          if not (reporting.summarize(a).n and reporting.summarize(b).n):
            continue
          built = zoo_study.construction_note(key, loss, other, contrastive_margin)
          out.append(verdicts_lib.Claim(
              f"{cid}: " + text.format(a=loss) + f" (vs {other})", key, loss, other, a, b,
              higher_is_better=higher, note="; ".join(p for p in (built, note) if p),
              group=dataset))
  return out


def study_claims(by_dataset: dict[str, dict[str, list[dict[str, Any]]]],
                 seeds: Sequence[int], contrastive_margin: float = 1.0
                 ) -> list[verdicts_lib.Claim]:
  """The study's family: every claim D1-D4 on every dataset, each favoured loss against
  each of the paper's seven losses (:data:`~experiments.loss_zoo.study.PAPER_LOSSES`)
  outside the claim's group, paired by seed; Holm over all of them."""
  return comparisons(by_dataset, seeds, zoo_study.PAPER_LOSSES, contrastive_margin)


BESIDE_HEADER = ("dataset", "claim", "metric", "A (favoured): mean ± std", "B: mean ± std",
                 reporting.COMPARISON_HEADER[0], "seeds", "p (one-sided, unadjusted)")


def beside_table(by_dataset: dict[str, dict[str, list[dict[str, Any]]]],
                 seeds: Sequence[int], contrastive_margin: float = 1.0
                 ) -> tuple[list[str], list[list[str]]]:
  """The claims' favoured losses against MultiSimilarity and ProxyAnchor
  (:data:`~experiments.loss_zoo.study.BESIDE`), reported beside the claims: paired
  differences with their intervals and unadjusted one-sided p, no verdict (they are
  not in the paper's seven, nor in the Holm family)."""
  rows = []
  for c in comparisons(by_dataset, seeds, zoo_study.BESIDE, contrastive_margin):
    comp = reporting.compare(c.a_values, c.b_values, paired=True,
                             higher_is_better=c.higher_is_better)
    cells = comp.cells(4)
    rows.append([c.group, c.claim, c.metric, *verdicts_lib.arm_cells(c), cells[0],
                 cells[1], cells[2]])
  return list(BESIDE_HEADER), rows


def dataset_table(workdir: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]],
                  seeds: Sequence[int]) -> str:
  """Writes ``<dataset>/table.md`` and ``table.csv`` (loss x metric); returns Markdown."""
  header = ["loss", "seeds"] + [label for _, label, _ in COLUMNS]
  rows = []
  for loss, runs in by_loss.items():
    rows.append([loss, str(len(runs))]
                + [tables.interval_cell(tables.seed_values(runs, key, seeds, EPOCH_KEYS),
                                        digits)
                   for key, _, digits in COLUMNS])
  title = (f"{dataset}: mean ± std over seeds [95 % t interval of the mean]; epoch "
           "counts never reached count as epochs + 1")
  return reporting.write_table(header, rows, os.path.join(workdir, dataset, "table.md"),
                               os.path.join(workdir, dataset, "table.csv"), title=title)


def deviations(cfg: Any) -> list[list[str]]:
  """The follow-up vs this study (no code of the follow-up is known): every tsm cell is
  read from ``cfg`` (each dataset's run of the first loss at the first seed)."""
  s = cfg.study
  cell = lambda f: verdicts_lib.per_dataset(cfg, zoo_study.run_config, f)  # noqa: E731
  paper = set(zoo_study.PAPER_LOSSES)
  beside = [loss for loss in s.losses if loss not in paper]
  return [
      ["datasets", "CIFAR-10, Cars196, CUB-200 and others", "not released",
       ", ".join(s.datasets), "the sets this config names"],
      ["trunk", "frozen ViT-B/32", "not released", cell(verdicts_lib.trunk_cell),
       "a ViT-B/32 trunk is not among tsm's models; a pretrained trunk is frozen with "
       "study.freeze_pretrained"],
      ["head and embedding", "128-d L2-normalised projection head", "not released",
       cell(lambda r: f"head {r.model.head}, {r.model.embedding_dim}-d"),
       "the dataset's model section"],
      ["input resolution", "224 px (ViT)", "not released",
       cell(verdicts_lib.resolution_cell), "the dataset's data.image_size"],
      ["dropout", "not stated", "not released", cell(verdicts_lib.dropout_cell),
       "the dataset's model.head_dropout"],
      ["learning rate", "Adam 1e-4", "not released",
       cell(lambda r: f"{r.train.optimizer} {r.train.learning_rate:g}"),
       "the dataset's train.learning_rate"],
      ["epochs", "100", "not released", cell(lambda r: r.train.epochs),
       "study.epochs overrides all" if s.epochs is not None else
       "each dataset's train.epochs"],
      ["batch", "512", "not released",
       cell(lambda r: f"{r.train.classes_per_batch} x {r.train.samples_per_class}"
            if r.train.sampling == "pk" else f"{r.train.batch_size}"),
       "P x K batches so that every in-batch loss has positives"],
      ["training images", "all", "not released",
       cell(lambda r: r.data.get("num_examples") or "all"),
       "CPU budget where capped (data.num_examples per split)"],
      ["losses", "seven", "not released",
       f"{len(s.losses)}: " + ", ".join(s.losses),
       ("the claims compare with the paper's seven; " + ", ".join(beside)
        + " are compared beside, outside the claims") if beside else "the paper's seven"],
      ["loss parameters", "not stated", "not released",
       f"pytorch-metric-learning defaults; triplet margin {s.triplet_margin:g} "
       f"(PML 0.05), contrastive margins 0 / {s.contrastive_margin:g}",
       "the incumbent library's defaults are the reproducible choice"
       + ("; contrastive's margin < √2 makes its class distances short by construction "
          "(flagged)" if s.contrastive_margin < zoo_study.ROOT2 else "")],
      ["proxy / class-weight learning rate", "not stated", "not released",
       "the model's rate (PML recipes often use x100 for proxies)",
       "identical optimiser for every loss"],
      ["CCL centre update", "real-time centre bank", "not released",
       "EMA of the class's batch mean, renormalised (tsm.losses.center_contrastive)",
       "the exact rule is not known"],
      ["N-pair embeddings", "Sohn 2016: unnormalised, L2 penalty on norms",
       "not released",
       "tsm models output L2-normalised embeddings: logits are cosines in [-1, 1] "
       "(no temperature), so the softmax is soft and nearly every term counts as "
       "active (a competitor within one logit unit)",
       "identical model for every loss; read N-pair's active ratio with that in mind"],
      ["active ratio", "not defined per loss", "not released",
       "per loss family (tsm.losses._activity)",
       "a softmax term is never exactly zero"],
      ["seeds / tests", "not stated", "not released",
       f"{s.seeds} seeds; paired t and sign-flip tests of each claim against each of the "
       "seven, Holm", "claims are hypotheses on our runs"],
  ]


CURVES = (("loss", "loss", True), ("active_ratio", "active ratio", False),
          ("grad_norm", "gradient norm", True),
          ("grad_norm_per_loss", "gradient norm / loss", True))


def plot_curves(path: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]]) -> None:
  """Per-epoch curves of every loss: mean over seeds, ± std band."""
  fig, axes = figures.subplots(len(CURVES), width=4.5)
  for ax, (key, label, log_scale) in zip(axes[0], CURVES):
    for i, (loss, runs) in enumerate(by_loss.items()):
      if not runs:
        continue
      values = figures.curve_matrix(runs, key)
      mean = np.nanmean(values, 0)
      epochs = np.arange(1, values.shape[1] + 1)
      ax.plot(epochs, mean, color=f"C{i % 10}", label=loss)
      if len(runs) > 1:
        std = np.nanstd(values, 0, ddof=1)
        ax.fill_between(epochs, mean - std, mean + std, color=f"C{i % 10}", alpha=0.15)
    if log_scale:
      ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title(f"{dataset}: {label}")
  plotting.legend_outside(axes[0, -1])
  fig.tight_layout()
  plotting.save_figure(fig, path)


def _pooled(arrays: dict[str, list[dict[str, np.ndarray]]], name: str
            ) -> tuple[list[str], list[np.ndarray]]:
  names, values = [], []
  for loss, items in arrays.items():
    parts = []
    for a in items:
      v = a[name]
      if name == "per_class_variance":
        v = v[a["class_present"].astype(bool)]
      parts.append(v)
    if parts and sum(p.size for p in parts):
      names.append(loss)
      values.append(np.concatenate(parts))
  return names, values


def plot_distributions(directory: str, dataset: str,
                       arrays: dict[str, list[dict[str, np.ndarray]]]) -> list[str]:
  """``intra_class_variance.png`` (boxes) and ``centroid_distances.png`` (violins)."""
  paths = []
  for name, file, label, violin in (
      ("per_class_variance", "intra_class_variance.png", "intra-class variance", False),
      ("centroid_distances", "centroid_distances.png",
       "inter-class centroid distance", True)):
    names, values = _pooled(arrays, name)
    if not names:
      continue
    fig, axes = figures.subplots(1, width=max(6.0, 0.9 * len(names)))
    ax = axes[0, 0]
    if violin:
      ax.violinplot(values, showmeans=True, showextrema=True)
    else:
      ax.boxplot(values)
    ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_title(f"{dataset}: {label} per loss (training embeddings, seeds pooled)")
    fig.tight_layout()
    path = os.path.join(directory, file)
    plotting.save_figure(fig, path)
    paths.append(path)
  return paths


def report_dataset(workdir: str, dataset: str, by_loss: dict[str, list[dict[str, Any]]],
                   seeds: Sequence[int]) -> dict[str, Any]:
  """Table and figures of one dataset (``by_loss``: its runs' records per loss):
  ``{"table", "figures", "runs"}``."""
  directory = os.path.join(workdir, dataset)
  os.makedirs(directory, exist_ok=True)
  table = dataset_table(workdir, dataset, by_loss, seeds)
  figures = []
  if any(by_loss.values()):
    path = os.path.join(directory, "curves.png")
    plot_curves(path, dataset, by_loss)
    figures.append(path)
    arrays = {loss: runs_lib.load_arrays(workdir, dataset, loss, runs,
                                         zoo_study.ARRAYS_FILE)
              for loss, runs in by_loss.items()}
    figures += plot_distributions(directory, dataset, arrays)
  return {"table": table, "figures": figures,
          "runs": {loss: len(runs) for loss, runs in by_loss.items()}}


def write_report(workdir: str, datasets: Sequence[str], losses: Sequence[str],
                 seeds: Sequence[int], *, preamble: str = "", cfg: Any = None
                 ) -> dict[str, Any]:
  """Every dataset's table and figures, the verdict table and ``report.md``.

  Args:
    workdir: the study directory.
    datasets: the datasets.
    losses: the losses.
    seeds: the seeds.
    preamble: text under the title.
    cfg: the study config (deviations, ``study.compare_to``); optional.

  Returns:
    ``{"datasets": {name: report_dataset(...)}, "verdicts": markdown}``.
  """
  by_dataset = loss_studies.load_by_dataset(workdir, datasets, losses, seeds,
                                            zoo_study.RESULT_FILE)
  per = {d: report_dataset(workdir, d, by_dataset[d], seeds) for d in datasets}
  margin = 1.0 if cfg is None else float(cfg.study.contrastive_margin)
  verdicts_md, stability = loss_studies.verdict_table(
      workdir, study_claims(by_dataset, seeds, margin),
      "Claims D1-D4 of the follow-up on this study's runs", cfg, seeds)
  header, rows = beside_table(by_dataset, seeds, margin)
  notes = [reporting.write_table(
      header, rows, os.path.join(workdir, "beside.md"), os.path.join(workdir, "beside.csv"),
      title="Beside the claims: the favoured losses against MultiSimilarity and "
      "ProxyAnchor (not among the paper's seven; unadjusted p, no verdict)")] if rows else []
  if not any(d in zoo_study.FINE_GRAINED for d in datasets):
    notes.append("D2 (fine-grained Recall@1) is not tested: no fine-grained set "
                 f"({', '.join(zoo_study.FINE_GRAINED)}) in this study; Recall@1 of every "
                 "loss is in the tables.\n")
  loss_studies.write_report(
      workdir,
      title="# Loss zoo: variance and greediness of nine losses (arXiv 2601.21450)\n",
      preamble=preamble, verdicts=verdicts_md, stability=stability, notes=notes,
      deviations="" if cfg is None else verdicts_lib.write_deviations(
          workdir, deviations(cfg), "Deviations from the follow-up (arXiv 2601.21450)"),
      datasets=[(d, [per[d]["table"], loss_studies.figure_line(workdir, per[d]["figures"])])
                for d in datasets])
  return {"datasets": per, "verdicts": verdicts_md}


def write_study_report(workdir: str, cfg: Any, preamble: str) -> dict[str, Any]:
  """:func:`write_report` of a study config's datasets, losses and seeds."""
  return write_report(workdir, list(cfg.study.datasets), list(cfg.study.losses),
                      runs_lib.seeds_of(cfg), preamble=preamble, cfg=cfg)


# ----------------------------------------------------------------------------- docs page

ABOUT = (
    "The follow-up (Zeng 2026, \"Variance & Greediness\", arXiv 2601.21450) makes claims "
    "D1-D4 about nine losses (triplet, contrastive, N-pair, NT-Xent, SupCon, "
    "MultiSimilarity, ArcFace, ProxyAnchor, Center Contrastive): which keep within-class "
    "variance and clear margins (D1), win fine-grained retrieval (D2), compact fast "
    "through many small updates (D3), and separate classes widely but unevenly (D4). The "
    "study trains every loss under identical settings over the same seeds and tests each "
    "claim as the favoured loss against each of the paper's seven losses, paired over "
    "seeds, Holm over the study; MultiSimilarity and ProxyAnchor are compared beside, "
    "outside the claims.")


def docs_page(workdir: str, commands: Sequence[str] = ()) -> str:
  """The study's results page (:func:`experiments.common.docs.page`) from a finished
  study's workdir: the settings of its ``report.md``, the verdict bullets and the
  claim x dataset verdicts from ``verdicts.csv``, each dataset's table."""
  return docs.page(
      workdir, title="Loss zoo: variance and greediness of nine losses", about=ABOUT,
      tables=docs.dataset_tables(workdir) + [docs.read_text(workdir, "beside.md")],
      commands=commands, details=True)


if __name__ == "__main__":
  docs.main(docs_page, program="python -m experiments.loss_zoo.report")
