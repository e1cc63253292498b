"""Tables, verdicts and figures of the margin study, computed from its run directories.

Everything here reads files only (``summary.json``, ``metrics.jsonl``, ``pairs.npz`` and
``effective_margins/*.npz`` of each ``<dataset>/<arm>/seed<k>``), so a finished study's
report can be rebuilt at any time. Numbers are summarised with :mod:`tsm.reporting`
(mean ± sample std over seeds) and :mod:`experiments.common.verdicts` (paired tests,
Holm).

Outputs in the study directory:

* ``results.md`` / ``results.csv``: arm x test metric, mean ± std over seeds (no "best"
  marks: a difference is a claim, tested in the verdict table); TAR@FAR cells read "—"
  where the test pairs have too few negatives to resolve the FAR;
* ``verdicts.md`` / ``verdicts.csv``: paper A's claims per reduction / mining: mean ±
  std per arm, paired difference with its 95 % interval, raw and Holm p, MDE, verdict
  (``unstable`` where the rerun named by ``study.compare_to`` disagrees); the best
  constant margin is chosen on the validation split, per metric;
* ``deviations.md``: the settings that differ from paper A and its authors' code;
* ``effective_margins.md`` / ``.csv``: the share of sampled training triplets whose
  effective margin exceeds the epoch's margin, and the upper mixture component;
* ``per_seed.csv`` / ``.md``: every run's numbers;
* figures: ``margin.png`` (mu per epoch), ``easy_share.png``, ``effective_margins.png``
  (histograms + two-component mixture at the first, middle and last epoch, seed
  ``study.plot_seed``), ``roc.png`` (test pairs, vertically averaged over seeds);
* ``report.md``: all of the above in one page; the runs' summaries go to ``study.json``
  (:func:`study_runs`, written by :func:`experiments.common.runs.run_study`).

The study's results page is written from a finished workdir by :func:`docs_page`::

  python -m experiments.margin_scheduler.report runs/margin_study docs/results/margin_study.md

Why one module of this length: every table, verdict and figure of the study reads the
same run files and claim definitions; splitting them would repeat that reading.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

import numpy as np

from experiments.common import docs
from experiments.common import figures
from experiments.common import runs as runs_lib
from experiments.common import tables
from experiments.common import timing as timing_lib
from experiments.common import verdicts as verdicts_lib
from experiments.margin_scheduler import study
from tsm import artifacts
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
# Reported, not ranked. "final mu" is the margin the last epoch trained at (from its
# epoch record), "next mu" the one the last update produced (never trained with).
EXTRAS = (("final_mu", "final mu"), ("next_mu", "next mu"), ("best_epoch", "best epoch"))
TAR_FARS = {"test.tar@far=1e-2": 1e-2, "test.tar@far=1e-3": 1e-3}


# ----------------------------------------------------------------------------- loading


def load_runs(workdir: str, dataset: str, arms: Sequence[Any],
              seeds: Sequence[int]) -> dict[str, list[dict]]:
  """Per arm, the finished runs (seed order): summary, epoch records, paths.

  Args:
    workdir: the study directory.
    dataset: the study's dataset.
    arms: the arms (:class:`~experiments.margin_scheduler.study.Arm` or schedule names).
    seeds: the seeds.

  Returns:
    ``{arm name: [{"seed", "dir", "summary", "epochs"}, ...]}`` (runs without a
    ``summary.json`` are left out). Each summary gains ``final_mu`` (the margin the
    last epoch trained at), ``next_mu`` (the margin after the last update), ``last``
    (the last epoch's model's test metrics, :class:`~experiments.margin_scheduler.study.LastEpochTest`)
    and ``em_last.share_above_margin`` (claim A1's statistic: the share of sampled
    training triplets whose effective margin exceeds mu at the last epoch).
  """
  runs: dict[str, list[dict]] = {}
  for arm in arms:
    name = study.as_arm(arm).name
    runs[name] = []
    for seed in seeds:
      directory = study.run_dir(workdir, dataset, arm, seed)
      path = os.path.join(directory, "summary.json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        summary = json.load(f)
      epochs = tables.epoch_records(os.path.join(directory, "metrics.jsonl"))
      summary["final_mu"] = epochs[-1]["margin"] if epochs else None
      summary["next_mu"] = epochs[-1].get("margin_next") if epochs else None
      last = epochs[-1] if epochs else {}
      prefix = study.LAST_SPLIT + "_"
      summary["last"] = {k[len(prefix):]: v for k, v in last.items()
                         if k.startswith(prefix)}
      summary["em_last"] = {"share_above_margin": last.get("em_share_above_margin")}
      runs[name].append({"seed": seed, "dir": directory, "summary": summary,
                         "epochs": epochs})
  return runs


def _values(runs: list[dict], key: str) -> list[float | None]:
  return reporting.per_seed([r["summary"] for r in runs], key)


def seed_values(runs: list[dict], key: str, seeds: Sequence[int]) -> list[float | None]:
  """Values of ``key`` indexed by ``seeds`` (None where a run is missing), so that two
  arms' lists pair seed by seed."""
  return tables.by_seed(runs, seeds,
                        lambda r: reporting.per_seed([r["summary"]], key)[0])


def _num_different(runs: list[dict], model: str = "test") -> int:
  """The fewest test different-class pairs over the runs (what TAR@FAR can resolve)."""
  counts = [c for c in _values(runs, f"{model}.num_different") if c is not None]
  return int(min(counts)) if counts else 0


# ----------------------------------------------------------------------------- tables


def results_table(runs: dict[str, list[dict]], model: str = "test"
                  ) -> tuple[list[str], list[list[str]]]:
  """Arm x metric cells ``mean ± std`` (TAR@FAR: "—" where the pairs cannot resolve it).

  No cell is marked "best": which arm is better is a claim, and the verdict table tests
  it with its interval and p-value.

  Args:
    runs: from :func:`load_runs`.
    model: ``"test"``: the model the selection rule kept (with the margins and the
      kept epoch); ``"last"``: the last epoch's model.
  """
  names = list(runs)
  extras = EXTRAS if model == "test" else ()
  header = ["schedule", "seeds"] + [label for _, label, _ in METRICS] + [
      label for _, label in extras]
  columns = []
  for key, _, _ in METRICS:
    mine = model + key[len("test"):]
    if key in TAR_FARS:
      columns.append([reporting.tar_cell(_values(runs[n], mine),
                                         _num_different(runs[n], model),
                                         TAR_FARS[key]) if runs[n] else "n/a"
                      for n in names])
    else:
      columns.append([reporting.summarize(_values(runs[n], mine)).format() for n in names])
  for key, _ in extras:
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


def best_constant(runs: dict[str, list[dict]], constants: Sequence[str], key: str,
                  higher: bool) -> str | None:
  """The arm of ``constants`` (constant margins, or one monotone schedule's end
  margins) with the best mean of ``key``'s VALIDATION twin.

  ``test.auc`` is chosen on ``val.auc``: picking the baseline on the test numbers would
  favour it by the selection's own noise.
  """
  val_key = "val." + key.split(".", 1)[1]
  present = [n for n in constants if runs.get(n)]
  summaries = [reporting.summarize(_values(runs[n], val_key)) for n in present]
  best = reporting.best_index(summaries, higher_is_better=higher)
  return None if best is None else present[best]


def claims(runs: dict[str, list[dict]], arms: Sequence[Any], seeds: Sequence[int],
           threshold: float = 0.5) -> list[verdicts_lib.Claim]:
  """Paper A's claims (:data:`~experiments.margin_scheduler.study.CLAIMS`) the runs
  allow, per reduction / mining variant and metric; the best constant margin is chosen on
  validation, per metric, and so is a monotone schedule's end margin when the study ran
  a grid of them (``study.final_margins``); then claim A1 (:func:`a1_claims`, at
  ``threshold``)."""
  arms = [study.as_arm(a) for a in arms]
  variants = list(dict.fromkeys((a.reduction, a.mining) for a in arms))
  grouped = len(variants) > 1
  out = []
  for reduction, mining in variants:
    mine = {a.schedule: a.name for a in arms if (a.reduction, a.mining) == (reduction,
                                                                            mining)}
    have = {s for s, n in mine.items() if runs.get(n)}
    families = {study.family(s) for s in have}
    candidates = lambda fam: [mine[s] for s in mine if study.family(s) == fam]  # noqa
    constants = candidates("constant")
    group = study.Arm("x", reduction, mining).variant if grouped else ""
    pairs = [(text, a, b) for text, a, b in study.CLAIMS
             if a in have and (b is None or b in families)]
    for text, a, b in pairs:
      chosen = candidates(b) if b is not None and b not in have else None
      if chosen is not None and len(chosen) > 1:
        text += " (mu_last chosen on validation)"
      for key, label, higher in study.CLAIM_METRICS:
        b_name = (best_constant(runs, constants, key, higher) if b is None else
                  mine[b] if chosen is None else best_constant(runs, chosen, key, higher))
        if b_name is None:
          continue
        out.append(verdicts_lib.Claim(
            text, label, mine[a], b_name, seed_values(runs[mine[a]], key, seeds),
            seed_values(runs[b_name], key, seeds), higher_is_better=higher,
            group=group))
    out += a1_claims(runs, constants, seeds, threshold, group)
  return out


def a1_claims(runs: dict[str, list[dict]], constants: Sequence[str],
              seeds: Sequence[int], threshold: float, group: str = ""
              ) -> list[verdicts_lib.Claim]:
  """Claim A1 (paper A's first finding, "the effective margin of many triplets grows
  past mu") for each constant-margin arm with the statistic recorded.

  Statistic, per seed: the share of the sampled training triplets (eval-mode
  embeddings of ``study.em_examples`` training examples, ``study.em_triplets`` valid
  triplets among them) whose effective margin ``d(a, n) - d(a, p)`` exceeds the arm's
  margin mu at the last epoch. The claim holds when it is above ``threshold``: the
  same paired tests as the other claims, on ``share - threshold`` (a one-sample t-test
  and exact sign-flip test), Holm within the study's family.
  """
  out = []
  for name in constants:
    values = seed_values(runs.get(name, []), study.A1_KEY, seeds)
    if all(v is None for v in values):
      continue
    out.append(verdicts_lib.Claim(
        study.A1_CLAIM.format(threshold), "share above mu", name,
        f"threshold {threshold:g}", values,
        [None if v is None else float(threshold) for v in values], group=group))
  return out


def verdict_table(runs: dict[str, list[dict]], arms: Sequence[Any] | None = None,
                  seeds: Sequence[int] | None = None, *,
                  compare_to: str | None = None, threshold: float = 0.5
                  ) -> tuple[list[str], list[list[str]], str]:
  """Paper A's claims, tested by :mod:`experiments.common.verdicts` (paired, Holm).

  Args:
    runs: from :func:`load_runs`.
    arms: the study's arms (default: every key of ``runs`` as a schedule).
    seeds: the seeds (default: every seed present).
    compare_to: a rerun's study directory: claims whose verdict differs are unstable.
    threshold: claim A1's threshold (``study.a1_threshold``).

  Returns:
    ``(header, rows, stability sentence)``.
  """
  arms = list(runs) if arms is None else arms
  if seeds is None:
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
  study_claims = claims(runs, arms, seeds, threshold)
  grouped = any(c.group for c in study_claims)
  header, rows = verdicts_lib.verdict_table(study_claims, grouped=grouped)
  rows, sentence = verdicts_lib.stability_rows(header, rows, compare_to)
  return header, rows, sentence


def deviations(cfg: Any) -> list[list[str]]:
  """Paper A vs its authors' code vs this study's settings (read from ``cfg``)."""
  section = cfg[study.dataset(cfg)]
  t, d, m, s = section.train, section.data, section.model, cfg.study
  epochs = study.run_epochs(cfg)
  images = d.get("image_size") is not None and (d.get("channels") or 1) == 3
  trunk = m.get("trunk", "none") != "none"
  dropout = tuple(m.get("head_dropout", ()) or ())
  return [
      ["loss reduction", "not stated", "mean over violating triplets",
       f"{', '.join(study.axis(cfg, 'reductions'))} (study.reductions)",
       "default as the authors' code; 'mean' (over all valid triplets) scales the "
       "gradient by (1 - easy share), so a higher mu also acts as a larger step"],
      ["mining", "all / semi-hard / hard / curriculum", "all violating triplets",
       f"{', '.join(study.axis(cfg, 'minings'))} (study.minings)",
       "semihard / hard are an optional axis; the curriculum exists "
       "(loss.mining=curriculum, loss.curriculum=(a, b)) but is not a study arm"],
      ["augmentation", "not stated", "resize only", "on" if d.augment else "none",
       "as the authors' code"],
      ["normalisation", "not stated", "dataset mean / std",
       "the trunk's own scaling, (x - 127) / 128" if trunk else d.normalize,
       ("as the pretrained weights were trained" if trunk else
        "same as the authors' code" if d.normalize == "dataset" else
        "data.normalize=dataset gives the authors' training-split mean / std" if images
        else "offline signals are used as provided")],
      ["learning rate", "Adam 1e-4", "Adam 1e-4", f"{t.optimizer} {t.learning_rate:g}",
       "same as the paper" if float(t.learning_rate) == 1e-4 else
       "CPU budget: at 1e-4 no run learns much in the study's epochs"],
      ["epochs", "50-100", "50-100", str(epochs),
       "same range" if epochs >= 50 else "CPU budget (study.epochs)"],
      ["head dropout", "0.5 / 0.3", "0.5 / 0.3", " / ".join(f"{x:g}" for x in dropout),
       "same" if dropout == (0.5, 0.3) else
       "with 0.5 / 0.3 the easy share reaches DAMS's tau only after the study's epochs"],
      ["trunk", "EfficientNet-B0, ImageNet weights", "EfficientNet-B0, ImageNet weights",
       _trunk(m),
       "same" if m.name == "efficientnet_b0" else
       "the closest ImageNet trunk tsm has offline; frozen, its features cached"
       if m.get("trunk", "none") != "none" else "an offline CPU set needs a small trunk"],
      ["batch", "P x K = 32 x 2", "32 x 2", f"{t.classes_per_batch} x {t.samples_per_class}",
       "same" if (t.classes_per_batch, t.samples_per_class) == (32, 2) else
       "P is capped by the training classes; K keeps the batch near 64"],
      ["split", "identity-disjoint train / val / test", "identity-disjoint",
       f"{d.split}, validation {d.val_fraction:g} of train",
       "same" if d.split == "class_disjoint" else
       "a 10-class set leaves too few classes for a class-disjoint split"],
      ["verification pairs", "1,000 test pairs, half same", "1,000",
       (f"every same-class pair + {section.eval.num_negatives:,} different" if
        section.eval.pairs == "all" else f"{section.eval.num_pairs:,}, half same"),
       "1,000 pairs alone give AUC a sampling std of ~0.005, the size of the differences"],
      ["training images", "all", "all",
       (f"{d.num_examples:,} per split" + (", drawn from each seed" if s.vary_data else "")
        if d.get("num_examples") else "all"),
       "same" if not d.get("num_examples") else "CPU budget: 60 minutes on 2 cores"],
      ["input", "224 px RGB", "224 px RGB",
       (f"{d.get('image_size')} px, grey repeated to RGB for the trunk" if trunk else
        f"{d.get('image_size') or 'native'} px, {d.get('channels') or 'native'} channel(s)"
        if d.name not in ("mnist1d", "synthetic") else "1-D signals"),
       "same" if d.get("image_size") == 224 else
       "CPU budget of the feature cache (224 px: the _gpu config)" if trunk else
       "the small trunk runs on the native resolution"],
      ["best constant margin", "not stated", "not stated", "chosen on validation",
       "choosing on test would favour the baseline by the selection's noise"],
      ["end margin of linear / exponential / stepwise", "1.0", "1.0",
       (f"chosen on validation from {', '.join(f'{v:g}' for v in s.final_margins)}"
        if tuple(s.get("final_margins", ()) or ()) else f"{section.margin.final_margin:g}"),
       "tuned like the constant margin, so that DAMS is not compared with an untuned end "
       "margin" if tuple(s.get("final_margins", ()) or ()) else "as the paper"],
      ["model kept", "lowest validation loss", "lowest validation loss (mu = 1.0)",
       f"lowest {t.best_metric} (validation margin {section.eval.val_margin}); the last "
       "epoch's model reported beside it", "fixed before the run, in the config"],
      ["seeds and data", "one run", "one run",
       f"{s.seeds} seeds" + (", data drawn from each seed" if s.vary_data else ""),
       "paired tests over seeds; the spread includes the data's variance"],
  ]


def _trunk(m: Any) -> str:
  """The trunk in words: a pretrained ``model.trunk`` (frozen or not), else the model."""
  if m.get("trunk", "none") != "none":
    return (f"{m.trunk}, ImageNet weights"
            + (", frozen (a head on its cached features)" if m.freeze_trunk else ""))
  return m.name + (f" ({m.pretrained_path})" if m.get("pretrained_path") else "")


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


def selection_table(runs: dict[str, list[dict]], arms: Sequence[Any]
                    ) -> tuple[list[str], list[list[str]]]:
  """Per schedule family with several arms (the constant margins, a monotone
  schedule's end margins) and claim metric: the arm chosen on validation and every
  candidate's validation mean (what the claims compare DAMS with)."""
  header = ["schedule", "metric", "chosen on validation", "validation mean per candidate"]
  rows = []
  names = [study.as_arm(a).name for a in arms]
  families = list(dict.fromkeys(study.family(n) for n in names))
  for fam in families:
    candidates = [n for n in names if study.family(n) == fam and runs.get(n)]
    if len(candidates) < 2:
      continue
    for key, label, higher in study.CLAIM_METRICS:
      val_key = "val." + key.split(".", 1)[1]
      chosen = best_constant(runs, candidates, key, higher)
      cells = ", ".join(f"{n} {reporting.summarize(_values(runs[n], val_key)).format(4)}"
                        for n in candidates)
      rows.append([fam, label, chosen or "n/a", cells])
  return header, rows


# ----------------------------------------------------------------------------- figures


def plot_margins(path: str, runs: dict[str, list[dict]]) -> None:
  """Margin per epoch (mean over seeds, band min..max) for every schedule."""
  figures.plot_band(path, runs, "margin", "margin mu", "margin per epoch (band: seed range)",
             steps=True)


def plot_easy_share(path: str, runs: dict[str, list[dict]],
                    threshold: float | None) -> None:
  """Easy-triplet share per epoch (training batches, the epoch's margin)."""
  figures.plot_band(path, runs, "easy_share", "easy share",
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
          curves.append(figures.roc_at(grid, z["test_distances"], z["test_same"]))
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


def _floor(margin: Any) -> float:
  """The controller's floor: ``margin.min_margin``, None meaning the initial margin."""
  return margin.initial_margin if margin.min_margin is None else margin.min_margin


def _setup_lines(cfg: Any, names: Sequence[str]) -> list[str]:
  section = cfg[study.dataset(cfg)]
  t, d, m, margin = section.train, section.data, section.model, section.margin
  seeds = runs_lib.seeds_of(cfg)
  finals = tuple(cfg.study.get("final_margins", ()) or ())
  return [
      f"- data: {d.name}, split {d.split} (validation {d.val_fraction:g} of train, "
      f"{d.get('val_split', 'auto')}), model {_trunk(m)} + head {m.head}, "
      f"{m.embedding_dim}-d L2-normalised, {section.loss.distance} distance; "
      + ("data drawn from each run's seed (data.data_seed = seed)" if cfg.study.vary_data
         else f"data.data_seed fixed at {d.data_seed}"),
      f"- triplet loss, reductions {', '.join(study.axis(cfg, 'reductions'))}, minings "
      f"{', '.join(study.axis(cfg, 'minings'))}, P x K = {t.classes_per_batch} x "
      f"{t.samples_per_class}, {t.optimizer} lr {t.learning_rate:g}, "
      f"{study.run_epochs(cfg)} epochs, model kept at the lowest {t.best_metric} "
      f"(validation margin {section.eval.val_margin}; the rule is fixed in the config), "
      "the last epoch's model reported beside it"
      + ("; every seed of an arm trained in one compiled step (tsm.seeds)"
         if cfg.study.get("seeds_together") else ""),
      f"- margins: mu0 {margin.initial_margin:g}, mu_last "
      + (f"chosen on validation from {', '.join(f'{v:g}' for v in finals)}"
         if finals else f"{margin.final_margin:g}") + ", "
      f"DAMS tau {margin.threshold:g} delta {margin.increment:g}; controller "
      f"target {margin.target:g} gain {margin.gain:g} floor "
      f"{_floor(margin):g}; stepwise {cfg.study.stepwise_stages} stages",
      f"- arms: {', '.join(names)}; seeds {seeds[0]}..{seeds[-1]}",
  ]


A1_NOTE = (
    "Claim A1 (paper A's first finding): per constant-margin arm and seed, the share of "
    "sampled training triplets (eval-mode embeddings) whose effective margin "
    "d(a, n) - d(a, p) exceeds mu at the last epoch, tested against {:g} (\"many\" "
    "read as \"most\") with the same tests, in the same Holm family.")

REDUCTION_NOTE = (
    "Reduction: under 'mean_nonzero' (the authors' code) the loss is averaged over the "
    "violating triplets; under 'mean' over all valid triplets, so its gradient is that "
    "of 'mean_nonzero' times (1 - easy share): raising mu, which lowers the easy share, "
    "then also enlarges the step, and part of a schedule's effect is a learning-rate "
    "effect.")


def study_runs(runs: dict[str, list[dict]]) -> dict[str, list[dict[str, Any]]]:
  """What ``study.json`` records of the runs: per arm, each run's seed and summary."""
  return {n: [{"seed": r["seed"], "summary": r["summary"]} for r in rs]
          for n, rs in runs.items()}


def write_report(workdir: str, cfg: Any, arms: Sequence[Any], *,
                 timing: dict[str, Any] | None = None,
                 command: str | None = None) -> tuple[str, dict[str, list[dict]]]:
  """Writes every table and figure of the study.

  Args:
    workdir: the study directory.
    cfg: the study config.
    arms: the arms (:func:`experiments.margin_scheduler.study.arms`).
    timing: optional ``{"wall_s", "runs", "workers", ...}`` shown in the report.
    command: optional command line shown in the report.

  Returns:
    ``(report.md's Markdown, study_runs(...))``.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")

  seeds = runs_lib.seeds_of(cfg)
  runs = load_runs(workdir, study.dataset(cfg), arms, seeds)
  names = list(runs)
  path = lambda name: os.path.join(workdir, name)  # noqa: E731
  results = reporting.write_table(*results_table(runs), path("results.md"),
                                  path("results.csv"),
                                  title="Test metrics (mean ± std over seeds)")
  threshold = float(cfg.study.get("a1_threshold", 0.5))
  header, rows, stability = verdict_table(runs, arms, seeds,
                                          compare_to=cfg.study.compare_to or None,
                                          threshold=threshold)
  verdicts = reporting.write_table(header, rows, path("verdicts.md"), path("verdicts.csv"),
                                   title="Paper A's claims")
  verdicts_lib.write_claims(workdir, claims(runs, arms, seeds), seeds,
                            grouped=header[0] == "dataset",
                            compare_to=cfg.study.compare_to or None)
  deviation_md = verdicts_lib.write_deviations(
      workdir, deviations(cfg), "Deviations from paper A and its authors' code")
  last = reporting.write_table(
      *results_table(runs, "last"), path("results_last_epoch.md"),
      path("results_last_epoch.csv"),
      title="Test metrics of the last epoch's model (mean ± std over seeds; reported "
      "beside the selected model, not tested)")
  selection = reporting.write_table(
      *selection_table(runs, arms), path("selection.md"), path("selection.csv"),
      title="Baselines chosen on validation")
  em = reporting.write_table(*effective_margin_table(runs), path("effective_margins.md"),
                             path("effective_margins.csv"),
                             title="Effective margins of training triplets (eval mode)")
  reporting.write_table(*per_seed_table(runs), path("per_seed.md"), path("per_seed.csv"))
  plot_margins(path("margin.png"), runs)
  plot_easy_share(path("easy_share.png"), runs,
                  float(cfg[study.dataset(cfg)].margin.threshold))
  plot_effective_margins(path("effective_margins.png"), runs, int(cfg.study.plot_seed))
  plot_roc(path("roc.png"), runs)

  lines = ["# Margin-scheduler study (paper A)", ""]
  if command:
    lines += ["```", command, "```", ""]
  lines += _setup_lines(cfg, names)
  if timing:
    lines.append(f"- {timing_lib.timing_line(timing)}")
  lines += ["", results, "",
            "final mu: the margin the last epoch trained at; next mu: the margin after "
            "the last update (never trained with).", "", last, "", selection, "",
            verdicts, "",
            verdicts_lib.RULE + " The best constant (and, with a grid of end margins, "
            "each monotone schedule's mu_last) is chosen per metric on the validation "
            "split; a verdict speaks for these settings only. " + A1_NOTE.format(
                threshold)]
  if stability:
    lines += ["", stability]
  lines += ["", REDUCTION_NOTE, "", deviation_md, "", em, "",
            "Figures: margin.png, easy_share.png, effective_margins.png, roc.png; "
            f"each run's files under {study.dataset(cfg)}/<arm>/seed<k>/.", ""]
  text = "\n".join(lines)
  artifacts.write_atomic(path("report.md"), text)
  return text, study_runs(runs)


# ----------------------------------------------------------------------------- docs page

ABOUT = (
    "Paper A (Tomchak et al., \"Maintaining Difficulty: A Margin Scheduler for Triplet "
    "Loss in Siamese Networks Training\", arXiv 2603.26389) claims that DAMS, which raises "
    "the margin whenever the share of easy triplets passes a threshold, beats constant "
    "margins and monotonic increases (linear, exponential, stepwise) on verification "
    "(AUC, EER). The study trains every schedule, and tsm's two-sided controller, over "
    "the same seeds and tests each claim paired over seeds (:mod:`tsm.reporting`).")


def docs_page(workdir: str, commands: Sequence[str] = ()) -> str:
  """The study's results page (:func:`experiments.common.docs.page`) from a finished
  study's workdir: the settings and command of its ``report.md``, the verdict bullets
  from ``verdicts.csv``, the test-metric and effective-margin tables."""
  return docs.page(
      workdir, title="Margin-scheduler study (paper A)", about=ABOUT,
      tables=[docs.read_text(workdir, "results.md"),
              docs.read_text(workdir, "selection.md"),
              docs.read_text(workdir, "effective_margins.md")],
      commands=commands)


if __name__ == "__main__":
  docs.main(docs_page, program="python -m experiments.margin_scheduler.report")
