"""The loss-zoo study: its study section, its arms (dataset x loss x seed), one run.

The follow-up paper (Zeng, Niu, Li, Taya, arXiv 2601.21450) compares seven losses under
identical settings and reads their VARIANCE (intra- / inter-class, as paper B) and
GREEDINESS (active ratio, gradient norm, loss decay). This study runs nine losses by
default (:data:`LOSSES`: the paper's seven, :data:`PAPER_LOSSES`, plus MultiSimilarity and
ProxyAnchor, compared beside the claims, not in them; ``study.losses`` takes any
registered ``loss.name``) with the same
model, optimiser, sampler, epochs and seeds on each dataset, and measures every final
model with :func:`experiments.common.measure.measure_embeddings` and its curves with
:func:`experiments.common.measure.curve_summary`, plus what this study adds:

* the inter-class centroid distances of every class pair (claim D4's distribution);
* the active share of the NEGATIVE terms per epoch
  (:func:`tsm.losses.negative_active_ratio`) as a curve;
* the scale-free loss fall (:func:`tsm.diagnostics.loss_fall_epochs`): the softmax
  losses have a floor far above 10 % of their first loss, so paper B's loss decay is
  often undefined for them.

A study config (``experiments/configs/loss_zoo_*.py``, built from
:mod:`experiments.configs.presets.loss_zoo`) is a ConfigDict with

* ``study``: what to run and how (see :func:`study_section`);
* one section per dataset named in ``study.datasets``: a full
  :func:`tsm.config.default_config` for that dataset. :func:`run_config` sets
  ``loss.name``, the loss's options (``study.loss_options.<loss>``),
  ``margin.initial_margin`` (the triplet / contrastive margins) and ``seed`` of each
  run; everything else is taken as written, identically for every loss (overridable:
  ``--config.synthetic.train.epochs=50``).

Each loss runs at its pytorch-metric-learning default parameters except the triplet
margin (0.2, FaceNet; PML 0.05) and the contrastive margins (0 / 1.0 on unit vectors,
PML's). Each run directory holds fit's files plus ``zoo.json`` (its measurements) and
``zoo.npz`` (per-class variances, effective margins, centroid distances).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import ml_collections
from ml_collections import config_dict
import numpy as np

from experiments.common import checks
from experiments.common import grid
from experiments.common import loss_studies
from experiments.common import measure as measure_lib
from experiments.common import runs
from tsm import config as config_lib
from tsm import losses as losses_lib

# Claim D2 is about fine-grained retrieval: many visually close classes.
FINE_GRAINED = ("cars196", "caltech_birds2011")
# The default ``study.losses``: the follow-up paper's seven plus MultiSimilarity and
# ProxyAnchor. ``study.losses`` may name any registered loss (``tsm.config.LOSSES``).
LOSSES = ("triplet", "contrastive", "npair", "ntxent", "supcon", "multi_similarity",
          "arcface", "proxy_anchor", "center_contrastive")
# The options a loss takes from ``study.loss_options.<loss>`` (None: the loss's default):
# the ``loss`` fields whose config default is the loss's own.
_OPTION_TYPES = {k: f.type for k, f in config_lib.loss_table.LOSS_OPTIONS.items()
                 if f.default is None}
RESULT_FILE = "zoo.json"
ARRAYS_FILE = "zoo.npz"
# What a run's progress record keeps of its result.
RECORD_KEYS = ("recall@1", "intra_var", "mean_active_ratio")
StudyError = grid.StudyError


def loss_options() -> ml_collections.ConfigDict:
  """``study.loss_options``: per loss, its ``loss.*`` fields as None placeholders.

  A None leaves the loss at its own default (pytorch-metric-learning's, see
  ``tsm.losses``); e.g. ``--config.study.loss_options.ntxent.temperature=0.1``.
  """
  out = {}
  for name in config_lib.LOSSES:
    fields = [f for f in config_lib.LOSS_FIELDS[name] if f in _OPTION_TYPES]
    out[name] = {f: config_dict.placeholder(_OPTION_TYPES[f]) for f in fields}
  return ml_collections.ConfigDict(out)


# ----------------------------------------------------------------------------- the claims

# The claims (PAPERS.md section D) as tested: each favoured loss against each of the
# paper's seven losses outside the claim's group, pairwise, Holm over the study's family;
# MultiSimilarity and ProxyAnchor are compared beside, outside the claims
# (experiments.loss_zoo.report).
PAPER_LOSSES = ("triplet", "contrastive", "npair", "ntxent", "supcon", "arcface",
                "center_contrastive")
BESIDE = tuple(loss for loss in LOSSES if loss not in PAPER_LOSSES)
ACTIVE_NOTE = ("active terms are defined per loss family (hinge: loss > 0; softmax / "
               "proxy / centre: a competitor within one logit unit), so this compares "
               "different quantities; see the negative-term companion")
GRAD_NOTE = ("losses of different scale: raw gradient norms are not comparable, and "
             "under Adam they do not set the size of the update; see the per-unit-loss "
             "companion")
D1_NOTE = ("D1's two parts pull against each other as defined: separation is the "
           "centroid distance / RMS class radius, so more intra-class variance lowers it")
D1 = ("triplet", "supcon")
D3 = ("contrastive", "ntxent")
D4 = ("npair",)
# (id, claim template, key, favoured losses, the claim's group, higher is better, note,
#  fine-grained only)
CLAIMS = (
    ("D1", "{a} keeps more intra-class variance", "intra_var", D1, D1, True, D1_NOTE,
     False),
    ("D1", "{a} has clearer inter-class margins", "separation", D1, D1, True, D1_NOTE,
     False),
    ("D2", "{a} has a higher Recall@1 (fine-grained)", "recall@1", D1, D1, True, "", True),
    ("D3", "{a} converges faster (loss fall)", "loss_fall_epochs", D3, D3, False, "",
     False),
    ("D3", "{a} converges faster (paper B's loss decay)", "loss_decay_epochs", D3, D3,
     False, "", False),
    ("D3", "{a} ends with lower intra-class variance", "intra_var", D3, D3, False, "",
     False),
    ("D3", "companion: {a} ends with lower intra-class variance per squared class "
     "distance", "intra_var_ratio", D3, D3, False, "", False),
    ("D3", "{a} has a higher active ratio", "mean_active_ratio", D3, D3, True,
     ACTIVE_NOTE, False),
    ("D3", "companion: {a} has a higher active ratio of negative terms",
     "mean_negative_active_ratio", D3, D3, True, "", False),
    ("D3", "{a} has smaller raw gradient norms", "mean_grad_norm", D3, D3, False,
     GRAD_NOTE, False),
    ("D3", "companion: {a} has smaller gradient norms per unit of loss",
     "mean_grad_norm_per_loss", D3, D3, False, "", False),
    ("D4", "{a} has a larger mean class separation", "inter_dist", D4, D4, True, "",
     False),
    ("D4", "companion: {a} has larger class distances per unit of spread", "separation",
     D4, D4, True, "", False),
    ("D4", "{a} spaces its classes unevenly (larger spread)", "inter_dist_std_over_pairs",
     D4, D4, True, "", False),
)
ROOT2 = math.sqrt(2.0)


def construction_note(key: str, a: str, b: str, contrastive_margin: float) -> str:
  """Why the comparison of ``a`` with ``b`` on ``key`` holds by construction, or ``""``.

  The zoo's contrastive loss has a positive margin of 0, so it pulls positive pairs to
  d = 0: its intra-class variance is small whatever training does; with a negative
  margin below √2 (orthogonal unit vectors) it stops pushing negatives there, so its
  centroid distances stay short. Comparisons with it on those measures are flagged; the
  companions (variance per squared class distance, distance per unit of spread) are the
  rows to read.
  """
  if "contrastive" not in (a, b):
    return ""
  if key == "intra_var":
    return ("holds by construction: contrastive's positive margin 0 pulls positive "
            "pairs to d = 0; see the ratio companion")
  if key == "inter_dist" and contrastive_margin < ROOT2:
    return (f"holds by construction: contrastive stops pushing negatives at its margin "
            f"{contrastive_margin:g} < √2; see the per-unit-of-spread companion")
  return ""


def study_section(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The ``study`` section: :func:`experiments.common.runs.study_fields` (five seeds by
  default) and

  Fields:
    datasets: datasets to run, each with its own config section.
    losses: losses compared, any registered ``loss.name`` (default: the nine of
      :data:`LOSSES`).
    triplet_margin: the triplet loss's margin (``margin.initial_margin``, constant).
    contrastive_margin: the contrastive loss's negative margin (positive margin 0).
    loss_options: per loss, its own parameters (:func:`loss_options`).
    fall_fraction: the scale-free loss fall: epochs until the loss has made this share of
      its fall from the first epoch to its lowest (claim D3's convergence speed).

  Args:
    datasets: the default ``datasets``.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "datasets": tuple(datasets),
      "losses": LOSSES,
      "triplet_margin": 0.2,
      "contrastive_margin": 1.0,
      "loss_options": loss_options(),
      "fall_fraction": 0.9,
      **runs.study_fields(seeds=5, em_triplets=2_000),
  })


def check_study(cfg: ml_collections.ConfigDict) -> list[str]:
  """Validates the ``study`` section (one-line :class:`StudyError`); returns the arms
  (the losses)."""
  s = cfg.study
  runs.check_fields(cfg, list(study_section(()).keys()))
  losses = loss_studies.check_losses(cfg, config_lib.LOSSES)
  checks.check_fraction(s, "fall_fraction")
  for field in ("triplet_margin", "contrastive_margin"):
    if not float(s[field]) > 0:
      raise StudyError(f"study.{field}={s[field]!r} must be > 0.")
  return losses


def run_config(cfg: ml_collections.ConfigDict, dataset: str, loss: str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the study's choices set.

  Only the loss differs between the runs of a (dataset, seed): ``loss.name``, its
  options from ``study.loss_options``, the margin the triplet / contrastive loss
  reads from the (constant) schedule, and for a two-view loss (VICReg) two augmented
  views of each input (``data.views``, ``data.augment``; refused on a frozen trunk's
  cached features); the shared choices are
  :func:`experiments.common.runs.loss_run`'s.
  """
  s = cfg.study
  run = runs.loss_run(cfg, dataset, loss, seed)
  run.loss.mining = "all"
  for field, value in s.loss_options[loss].items():
    if value is not None:
      run.loss[field] = value
  views = config_lib.loss_table.LOSS_TABLE[loss].views
  if views > 1:   # a two-view loss (VICReg): each input twice, independently augmented
    run.data.update(views=views, augment=True)
  if loss == "triplet":
    run.margin.initial_margin = float(s.triplet_margin)
  elif loss == "contrastive":
    run.margin.initial_margin = float(s.contrastive_margin)
    run.loss.positive_margin = 0.0
  return run


# ----------------------------------------------------------------------------- one run


def measure(ctx: Any, config: ml_collections.ConfigDict, study: ml_collections.ConfigDict,
            keep_embeddings: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The final model's measurements (an evaluator's context ``ctx``): paper B's, plus
  the centroid distance of every class pair (``keep_embeddings``: unused, the zoo
  draws no PCA)."""
  del keep_embeddings
  from tsm import diagnostics  # pylint: disable=import-outside-toplevel
  num_classes = int(ctx.splits.num_classes)
  train_emb = measure_lib.normalised(ctx.embeddings("train"))
  train_labels = ctx.labels("train")
  test_emb = measure_lib.normalised(ctx.embeddings("test"))
  scalars, arrays = measure_lib.measure_embeddings(
      train_emb, train_labels, test_emb, ctx.labels("test"), num_classes,
      knn_k=int(study.knn_k), em_triplets=int(study.em_triplets),
      gmm_components=int(study.gmm_components),
      margin=float(config.margin.initial_margin), seed=int(config.seed),
      distance="euclidean")
  keep = train_labels >= 0
  inter = diagnostics.inter_class_distances(train_emb[keep], train_labels[keep],
                                            num_classes)
  upper = np.triu(np.asarray(inter.pair_mask), k=1)
  arrays["centroid_distances"] = np.asarray(inter.distances)[upper].astype(np.float32)
  return scalars, arrays


def summarize(config: ml_collections.ConfigDict, study: ml_collections.ConfigDict,
              records: list[dict[str, Any]], first_step: dict[str, Any],
              scalars: dict[str, Any], arrays: dict[str, np.ndarray],
              summary: dict[str, Any] | None) -> dict[str, Any]:
  """A run's ``zoo.json``: paper B's curves and measurements, the negative-term active
  ratio of every loss, the scale-free loss fall, the per-epoch gradient norm per unit
  of loss and the spread of the centroid distances (``summary``: unused)."""
  del summary
  from tsm import diagnostics  # pylint: disable=import-outside-toplevel
  loss = config.loss.name
  curves = measure_lib.curve_summary(records, first_step["loss"],
                                     float(study.decay_fraction))
  curves["curves"]["neg_active_ratio"] = [losses_lib.negative_active_ratio(r)
                                          for r in records]
  curves["curves"]["grad_norm_per_loss"] = measure_lib.grad_norm_per_loss(records)
  fall = int(diagnostics.loss_fall_epochs(np.asarray(curves["curves"]["loss"], np.float32),
                                          float(study.fall_fraction)))
  d = arrays["centroid_distances"]
  return {
      "dataset": config.data.name, "loss": loss, "seed": int(config.seed),
      "model": config.model.name,
      **scalars, **curves,
      "loss_fall_epochs": fall,
      "inter_dist_cv": float(d.std(ddof=1) / d.mean()) if d.size > 1 and d.mean() > 0
                       else math.nan,
      "separation": (float(scalars["inter_dist"]) / math.sqrt(float(scalars["intra_var"]))
                     if scalars["intra_var"] > 0 else math.nan),
      "intra_var_ratio": (float(scalars["intra_var"]) / float(scalars["inter_dist_sq"])
                          if scalars["inter_dist_sq"] > 0 else math.nan),
  }


def run_one(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or reuses) and measures one run
  (:func:`experiments.common.loss_studies.run_one`); returns its short record:
  ``{"dataset", "loss", "seed", "seconds", "reused"}`` and :data:`RECORD_KEYS`."""
  return loss_studies.run_one(sys.modules[__name__], task, study)
