"""Paper B's loss study: its study section, its arms (dataset x loss x seed), one run.

Paper B (arXiv 2510.02161) compares the contrastive and the triplet loss under identical
settings and reads their VARIANCE (intra- / inter-class) and GREEDINESS (active ratio,
gradient norm, loss decay). A study config (``experiments/configs/loss_study_*.py``,
built from :mod:`experiments.configs.presets.paper_b`) is a ConfigDict with

* ``study``: what to run and how (see :func:`study_section`);
* one section per dataset named in ``study.datasets``: a full
  :func:`tsm.config.default_config` for that dataset. :func:`run_config` sets
  ``loss.name``, ``train.sampling``, ``loss.mining`` and ``seed`` of each run from
  ``study``; everything else is taken as written (and overridable:
  ``--config.synthetic.train.epochs=50``).

Each run is trained and measured by
:func:`experiments.common.loss_studies.train_and_measure` (:func:`measure`,
:func:`summarize`): its directory holds fit's files plus
``analysis.json`` (every number of :func:`experiments.common.measure.measure_embeddings`
and :func:`experiments.common.measure.curve_summary`, and fit's test metrics) and
``analysis.npz`` (per-class variances, effective margins; test embeddings for the first
seed, for the PCA figure). A run whose ``analysis.json`` exists is not retrained.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections
import numpy as np

from experiments.common import grid
from experiments.common import loss_studies
from experiments.common import measure as measure_lib
from experiments.common import runs

LOSSES = ("contrastive", "triplet")
SAMPLINGS = ("paper", "pk", "random")
# The in-batch samplings of paper B: triplet mining applies; contrastive takes all pairs.
_SAMPLING = {"triplet": "triplets", "contrastive": "pairs"}
RESULT_FILE = "analysis.json"
ARRAYS_FILE = "analysis.npz"
# What a run's progress record keeps of its result.
RECORD_KEYS = ("recall@1", "intra_var", "loss_decay_epochs")
StudyError = grid.StudyError

# ----------------------------------------------------------------------------- the claims

# Claims that hold by construction (they follow from the losses' forms or scales, not
# from training); each is flagged in the verdict table beside a companion that does not.
ROOT2 = 2 ** 0.5
ACTIVE_NOTE = ("holds by construction under y·d²: every positive pair with d > 0 is "
               "active and half the pairs are positive; see the negative-term companion")
GRAD_NOTE = ("losses of different scale: raw gradient norms are not comparable, and "
             "under Adam they do not set the size of the update; see the per-unit-loss "
             "companion")
# (claim, key, the loss the claim favours, higher_is_better); the companions' keys are
# derived from the measurements (:func:`experiments.common.measure.with_companions`).
CLAIMS = (
    ("triplet keeps more intra-class variance", "intra_var", "triplet", True),
    ("triplet keeps larger inter-class distances", "inter_dist", "triplet", True),
    ("contrastive's loss decays faster (fewer epochs)", "loss_decay_epochs", "contrastive",
     False),
    ("contrastive's loss decays faster, counted from the first step's loss",
     "loss_decay_epochs_from_step1", "contrastive", False),
    ("contrastive has a higher active ratio (many small updates)", "mean_active_ratio",
     "contrastive", True),
    ("triplet has larger raw gradient norms", "mean_grad_norm", "triplet", True),
    ("companion: triplet keeps more intra-class variance per squared class distance",
     "intra_var_ratio", "triplet", True),
    ("companion: triplet keeps larger inter-class distances per unit of spread",
     "inter_dist_per_spread", "triplet", True),
    ("companion: contrastive has a higher active ratio of negative terms",
     "mean_negative_active_ratio", "contrastive", True),
    ("companion: triplet has a larger gradient norm per unit of loss",
     "mean_grad_norm_per_loss", "triplet", True),
    ("triplet wins k-NN accuracy", "knn@5", "triplet", True),
    ("triplet wins Recall@1", "recall@1", "triplet", True),
    ("triplet wins retrieval (MAP@R)", "map@r", "triplet", True),
)


def construction_notes(positive_margin: float, margin: float) -> dict[str, str]:
  """``{key: note}`` of paper B's claims that hold by construction under contrastive's
  ``positive_margin`` and (negative) ``margin``, on L2-normalised embeddings.

  * intra-class variance, with a positive margin of 0: contrastive pulls every positive
    pair to d = 0, so its classes shrink whatever training does;
  * inter-class distance, with a margin below √2 (the distance of orthogonal unit
    vectors): contrastive stops pushing a negative pair at d = margin, triplet does not;
  * the active ratio (:data:`ACTIVE_NOTE`) and raw gradient norms (:data:`GRAD_NOTE`).
  """
  notes = {"mean_active_ratio": ACTIVE_NOTE, "mean_grad_norm": GRAD_NOTE}
  if positive_margin == 0:
    notes["intra_var"] = ("holds by construction with contrastive's positive margin 0: "
                          "positive pairs are pulled to d = 0; see the ratio companion")
  if margin < ROOT2:
    notes["inter_dist"] = (f"holds by construction with contrastive's margin {margin:g} "
                           "< √2: it stops pushing negatives there; see the "
                           "per-unit-of-spread companion")
  return notes


with_companions = measure_lib.with_companions


def study_section(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The ``study`` section: :func:`experiments.common.runs.study_fields` (ten seeds by
  default) and

  Fields:
    datasets: datasets to run, each with its own config section.
    losses: losses compared (paper B: contrastive and triplet).
    outlier_anchors: paper B's code lets the unlabelled outliers (label -1) anchor
      triplets / pairs (``train.outlier_anchors``).
    positive_is_anchor: paper B's code draws the positive from the anchor's class
      including the anchor itself (``train.positive_is_anchor``).
    sampling: ``"paper"`` (paper B's random triplets / pairs: ``train.sampling``
      ``"triplets"`` for the triplet loss, ``"pairs"`` for the contrastive loss), or
      in-batch losses over ``"pk"`` (P x K) or ``"random"`` batches.
    mining: triplet mining of the in-batch triplet loss (``"all"``, ``"hard"``,
      ``"semihard"``); ignored with ``"paper"`` sampling.

  Args:
    datasets: the default ``datasets``.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "datasets": tuple(datasets),
      "losses": LOSSES,
      "outlier_anchors": True,
      "positive_is_anchor": True,
      "sampling": "paper",
      "mining": "all",
      **runs.study_fields(seeds=10, em_triplets=20_000),
  })


def check_study(cfg: ml_collections.ConfigDict) -> list[str]:
  """Validates the ``study`` section (one-line :class:`StudyError`); returns the arms
  (the losses)."""
  s = cfg.study
  runs.check_fields(cfg, list(study_section(()).keys()))
  losses = loss_studies.check_losses(cfg, LOSSES)
  if s.sampling not in SAMPLINGS:
    raise StudyError(f"study.sampling={s.sampling!r} is unknown; use one of "
                     f"{', '.join(SAMPLINGS)}.")
  return losses


def run_config(cfg: ml_collections.ConfigDict, dataset: str, loss: str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the study's choices set.

  The shared choices of :func:`experiments.common.runs.loss_run`; ``train.sampling``
  and ``loss.mining`` from the study's sampling; paper B's sampler options
  (``train.outlier_anchors``, ``train.positive_is_anchor``).
  """
  s = cfg.study
  run = runs.loss_run(cfg, dataset, loss, seed)
  if s.sampling == "paper":
    run.train.sampling = _SAMPLING[loss]
    run.loss.mining = "all"
  else:
    run.train.sampling = s.sampling
    run.loss.mining = s.mining if loss == "triplet" else "all"
  run.train.outlier_anchors = bool(s.outlier_anchors)
  run.train.positive_is_anchor = bool(s.positive_is_anchor)
  return run


# ----------------------------------------------------------------------------- one run


def measure(ctx: Any, config: ml_collections.ConfigDict, study: ml_collections.ConfigDict,
            keep_embeddings: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Paper B's measurements of the final model (an evaluator's context ``ctx``).

  ``keep_embeddings`` also keeps the test embeddings and labels (the PCA figure).
  """
  train_emb = measure_lib.normalised(ctx.embeddings("train"))
  test_emb = measure_lib.normalised(ctx.embeddings("test"))
  test_labels = ctx.labels("test")
  scalars, arrays = measure_lib.measure_embeddings(
      train_emb, ctx.labels("train"), test_emb, test_labels,
      int(ctx.splits.num_classes), knn_k=int(study.knn_k),
      em_triplets=int(study.em_triplets), gmm_components=int(study.gmm_components),
      margin=float(config.margin.initial_margin), seed=int(config.seed),
      distance=config.loss.distance)
  if keep_embeddings:
    arrays["test_embeddings"] = test_emb.astype(np.float32)
    arrays["test_labels"] = test_labels
  return scalars, arrays


def summarize(config: ml_collections.ConfigDict, study: ml_collections.ConfigDict,
              records: list[dict[str, Any]], first_step: dict[str, Any],
              scalars: dict[str, Any], arrays: dict[str, np.ndarray],
              summary: dict[str, Any] | None) -> dict[str, Any]:
  """A run's ``analysis.json``: the run, the final model's measurements, the curves and
  fit's test metrics (``arrays``: unused)."""
  del arrays
  return {
      "dataset": config.data.name, "loss": config.loss.name, "seed": int(config.seed),
      "sampling": config.train.sampling, "model": config.model.name,
      "margin": float(config.margin.initial_margin),
      "positive_margin": float(config.loss.get("positive_margin", 0.0)),
      **scalars,
      **measure_lib.curve_summary(records, first_step["loss"],
                                  float(study.decay_fraction)),
      "fit_test": None if summary is None else summary.get("test"),
  }


def run_one(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or reuses) and measures one run
  (:func:`experiments.common.loss_studies.run_one`); returns its short record:
  ``{"dataset", "loss", "seed", "seconds", "reused"}`` and :data:`RECORD_KEYS`."""
  return loss_studies.run_one(sys.modules[__name__], task, study)
