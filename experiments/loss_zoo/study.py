"""The loss-zoo study: its config, its arms (dataset x loss x seed) and one run.

The follow-up paper (Zeng, Niu, Li, Taya, arXiv 2601.21450) compares seven losses under
identical settings and reads their VARIANCE (intra- / inter-class, as paper B) and
GREEDINESS (active ratio, gradient norm, loss decay). This study runs all nine losses of
``tsm.config.LOSSES`` (the seven plus MultiSimilarity and ProxyAnchor) with the same
model, optimiser, sampler, epochs and seeds on each dataset, and measures every final
model with :func:`experiments.loss_comparison.analysis.measure_embeddings` and its
curves with :func:`experiments.loss_comparison.analysis.curve_summary` (reused, not
copied), plus what this study adds:

* the inter-class centroid distances of every class pair (claim D4's distribution);
* the active share of the NEGATIVE terms per epoch (``neg_active_ratio`` of the
  softmax / proxy / centre losses, ``num_negative_active / num_negative`` of the
  contrastive loss, the active ratio of the triplet loss);
* the scale-free loss fall (:func:`tsm.diagnostics.loss_fall_epochs`): the softmax
  losses have a floor far above 10 % of their first loss, so paper B's loss decay is
  often undefined for them.

A study config (``experiments/configs/loss_zoo_*.py``) is a ConfigDict with

* ``study``: what to run and how (see :func:`study_section`);
* one section per dataset named in ``study.datasets``: a full
  :func:`tsm.config.default_config` for that dataset. The runner sets ``loss.name``,
  the loss's options (``study.loss_options.<loss>``), ``margin.initial_margin`` (the
  triplet / contrastive margins) and ``seed`` of each run; everything else is taken as
  written, identically for every loss (overridable:
  ``--config.synthetic.train.epochs=50``).

Shared settings: P x K batches (every loss is in-batch; P = 8 classes x K = 8 samples),
L2-normalised 32-d embeddings, Adam 1e-3, constant learning rate, no validation split
(the model after the last epoch is measured), each loss at its pytorch-metric-learning
default parameters except the triplet margin (0.2, FaceNet; PML 0.05) and the
contrastive margins (0 / 1.0 on unit vectors, PML's).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from typing import Any

import ml_collections
from ml_collections import config_dict
import numpy as np

from experiments import runner
from experiments.loss_comparison import study as pair_study
from tsm import config as tsm_config

OFFLINE_DATASETS = ("synthetic", "mnist1d", "fashion_mnist")
TFDS_DATASETS = ("cifar10", "cars196", "caltech_birds2011")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS
# Claim D2 is about fine-grained retrieval: many visually close classes.
FINE_GRAINED = ("cars196", "caltech_birds2011")
LOSSES = tuple(tsm_config.LOSSES)
# The options a loss takes from ``study.loss_options.<loss>`` (None: the loss's default).
_OPTION_TYPES = {"temperature": float, "alpha": float, "beta": float, "base": float,
                 "scale": float, "loss_margin": float, "momentum": float}
ZOO_JSON = "zoo.json"
log = runner.log


# A bad study setting; the message is one line naming the field and the fix. The same
# class as paper B's study, so that its data check (loss_comparison.run.check_data) is
# reused as it is.
StudyError = pair_study.StudyError


def loss_options() -> ml_collections.ConfigDict:
  """``study.loss_options``: per loss, its ``loss.*`` fields as None placeholders.

  A None leaves the loss at its own default (pytorch-metric-learning's, see
  ``tsm.losses``); e.g. ``--config.study.loss_options.ntxent.temperature=0.1``.
  """
  out = {}
  for name in LOSSES:
    fields = [f for f in tsm_config.LOSS_FIELDS[name] if f in _OPTION_TYPES]
    out[name] = {f: config_dict.placeholder(_OPTION_TYPES[f]) for f in fields}
  return ml_collections.ConfigDict(out)


def study_section(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The ``study`` section.

  Fields:
    datasets: datasets to run, each with its own config section.
    losses: losses compared (default: all nine of ``tsm.config.LOSSES``).
    seeds: seeds per (dataset, loss): ``first_seed ... first_seed + seeds - 1``.
    first_seed: the first seed.
    vary_data: draw the data from the run's seed too (``data.data_seed = seed``); every
      loss of a seed sees the same data, so claims pair by seed.
    epochs: if set, overrides ``train.epochs`` of every dataset.
    triplet_margin: the triplet loss's margin (``margin.initial_margin``, constant).
    contrastive_margin: the contrastive loss's negative margin (positive margin 0).
    loss_options: per loss, its own parameters (:func:`loss_options`).
    workers: processes (:func:`experiments.runner.run_grid`); ``<= 1``: this process.
    xla_threads: with ``workers > 1``, 1 makes each worker's XLA single-threaded.
    compilation_cache: JAX compilation cache; ``"auto"`` = ``<workdir>/jax_cache``.
    compare_to: a finished run of the same study: differing verdicts are marked unstable.
    freeze_pretrained: freeze the trunk when a dataset's ``model.pretrained_path`` is set
      (the follow-up trains a head on a frozen ViT-B/32).
    knn_k: k of the k-NN accuracy.
    decay_fraction: paper B's loss decay: epochs until the loss is at most this share of
      the first epoch's.
    fall_fraction: the scale-free loss fall: epochs until the loss has made this share of
      its fall from the first epoch to its lowest (claim D3's convergence speed).
    max_triplets: effective margins: a sample of at most this many training triplets.
    gmm_components: Gaussian-mixture components fitted to the effective margins.

  Args:
    datasets: the default ``datasets``.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "datasets": tuple(datasets),
      "losses": LOSSES,
      "seeds": 5,
      "first_seed": 0,
      "vary_data": True,
      "epochs": config_dict.placeholder(int),
      "triplet_margin": 0.2,
      "contrastive_margin": 1.0,
      "loss_options": loss_options(),
      "workers": 2,
      "xla_threads": 0,
      "compilation_cache": "auto",
      "compare_to": "",
      "freeze_pretrained": True,
      "knn_k": 5,
      "decay_fraction": 0.1,
      "fall_fraction": 0.9,
      "max_triplets": 2_000,
      "gmm_components": 2,
  })


def _base() -> ml_collections.ConfigDict:
  """Settings every dataset and every loss share (module docstring)."""
  cfg = tsm_config.default_config()
  cfg.data.val_fraction = 0.0
  cfg.data.test_fraction = 0.2
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = "mean"
  cfg.margin.schedule = "constant"
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 8
  cfg.train.samples_per_class = 8
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-3
  cfg.train.lr_schedule = "constant"
  cfg.train.best_metric = "val_loss"   # no validation split: the last model is used
  cfg.train.progress = False
  cfg.train.tensorboard = False
  cfg.train.log_every = 100
  cfg.eval.knn_k = 5
  cfg.eval.every_epochs = 1_000_000   # no validation metrics (there is no split)
  cfg.checkpoint.keep = 1
  cfg.checkpoint.every_epochs = 0   # only after the last epoch
  return cfg


def synthetic() -> ml_collections.ConfigDict:
  """Paper B's synthetic set (10 classes, 128-d), MLP 128 -> 64 -> 32, 30 epochs."""
  cfg = _base()
  cfg.data.name = "synthetic"
  cfg.data.split = "by_image"
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 30
  return cfg


def mnist1d() -> ml_collections.ConfigDict:
  """MNIST-1D (4,000 / 1,000), paper B's study's wider conv1d, 32-d, 20 epochs."""
  cfg = _base()
  cfg.data.name = "mnist1d"
  cfg.data.split = "standard"
  cfg.model.name = "conv1d"
  cfg.model.conv_features = (64, 64, 64)
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 20
  return cfg


def fashion_mnist() -> ml_collections.ConfigDict:
  """Fashion-MNIST (Debian's IDX files), 6,000 / 2,000 examples, small ConvNet, 10 epochs.

  One of the follow-up's five sets. Subsampled (``data.num_examples`` caps each split)
  so that the offline study fits its CPU budget; the full set: ``--config.fashion_mnist.
  data.num_examples=None``.
  """
  cfg = _base()
  cfg.data.name = "fashion_mnist"
  cfg.data.split = "standard"
  cfg.data.num_examples = 6_000
  cfg.model.name = "convnet"
  cfg.model.conv_features = (16, 32)
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 10
  cfg.eval.batch_size = 1024
  return cfg


def _with_head(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The follow-up's head: 128-d L2-normalised projection, Adam 1e-4, batch 32 x 4."""
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 128
  cfg.train.learning_rate = 1e-4
  cfg.train.classes_per_batch = 32
  cfg.train.samples_per_class = 4
  cfg.eval.batch_size = 512
  return cfg


def cifar10() -> ml_collections.ConfigDict:
  """CIFAR-10: ResNet-18 (CIFAR stem) + 128-d linear head, 20 epochs.

  P = 10 classes per batch (CIFAR-10 has ten) x K = 16.
  """
  cfg = pair_study.cifar10()
  cfg = _with_head(_rebase(cfg))
  cfg.train.classes_per_batch = 10
  cfg.train.samples_per_class = 16
  cfg.train.epochs = 20
  return cfg


def cars196() -> ml_collections.ConfigDict:
  """Cars196: ResNet-50 (224 px) + 128-d head, class-disjoint split, 30 epochs."""
  return _with_head(_rebase(pair_study.cars196()))


def caltech_birds2011() -> ml_collections.ConfigDict:
  """CUB-200-2011: ResNet-50 (224 px) + 128-d head, class-disjoint split, 30 epochs."""
  return _with_head(_rebase(pair_study.caltech_birds2011()))


def _rebase(paper_b: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """This study's shared settings with paper B's study's data and model sections."""
  cfg = _base()
  cfg.data = paper_b.data
  cfg.model = paper_b.model
  cfg.train.epochs = paper_b.train.epochs
  return cfg


BUILDERS = {"synthetic": synthetic, "mnist1d": mnist1d, "fashion_mnist": fashion_mnist,
            "cifar10": cifar10, "cars196": cars196, "caltech_birds2011": caltech_birds2011}


def study_config(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A study config over ``datasets``: the ``study`` section and one section each.

  Args:
    datasets: names from :data:`DATASETS`.

  Returns:
    A ConfigDict.

  Raises:
    StudyError: an unknown dataset.
  """
  unknown = [d for d in datasets if d not in BUILDERS]
  if unknown:
    raise StudyError(f"unknown datasets {unknown}; use names from {', '.join(DATASETS)}.")
  cfg = ml_collections.ConfigDict()
  cfg.study = study_section(datasets)
  for name in datasets:
    cfg[name] = BUILDERS[name]()
  return cfg


# ----------------------------------------------------------------------------- the arms


def check_study(cfg: ml_collections.ConfigDict) -> None:
  """Validates the ``study`` section (one-line :class:`StudyError`)."""
  s = cfg.study
  fields = study_section(()).keys()
  unknown = sorted(set(s.keys()) - set(fields))
  if unknown:
    raise StudyError(f"study.{unknown[0]} is not a study field; use one of "
                     f"{', '.join(fields)}.")
  datasets = tuple(s.datasets)
  if not datasets:
    raise StudyError("study.datasets is empty; name at least one dataset.")
  for name in datasets:
    if name not in cfg:
      raise StudyError(f"study.datasets names {name!r}, which has no config section; use "
                       f"one of {', '.join(k for k in cfg.keys() if k != 'study')}.")
  losses = tuple(s.losses)
  if not losses or any(loss not in LOSSES for loss in losses) or len(set(losses)) != len(
      losses):
    raise StudyError(f"study.losses={losses!r} must be distinct names from "
                     f"{', '.join(LOSSES)}.")
  for field, minimum in (("seeds", 1), ("first_seed", 0), ("knn_k", 1),
                         ("max_triplets", 1), ("gmm_components", 1), ("xla_threads", 0)):
    value = s[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise StudyError(f"study.{field}={value!r} must be an integer >= {minimum}.")
  if s.xla_threads > 1:
    raise StudyError(f"study.xla_threads={s.xla_threads} must be 0 (XLA's default) or 1 "
                     "(single-threaded).")
  if not isinstance(s.workers, int) or isinstance(s.workers, bool):
    raise StudyError(f"study.workers={s.workers!r} must be an integer (<= 1 runs in this "
                     "process).")
  if s.epochs is not None and (not isinstance(s.epochs, int) or s.epochs < 1):
    raise StudyError(f"study.epochs={s.epochs!r} must be an integer >= 1 or None.")
  for field in ("decay_fraction", "fall_fraction"):
    if not 0 < float(s[field]) < 1:
      raise StudyError(f"study.{field}={s[field]!r} must be in (0, 1).")
  for field in ("triplet_margin", "contrastive_margin"):
    if not float(s[field]) > 0:
      raise StudyError(f"study.{field}={s[field]!r} must be > 0.")
  if s.compare_to and not os.path.exists(os.path.join(s.compare_to, "verdicts.csv")):
    raise StudyError(f"study.compare_to={s.compare_to!r} has no verdicts.csv; point it at "
                     "a finished run of the same study.")


def run_config(cfg: ml_collections.ConfigDict, dataset: str, loss: str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the study's choices set.

  Only the loss differs between the runs of a (dataset, seed): ``loss.name``, its
  options from ``study.loss_options``, and the margin the triplet / contrastive loss
  reads from the (constant) schedule.
  """
  s = cfg.study
  run = ml_collections.ConfigDict(cfg[dataset].to_dict())
  run.seed = int(seed)
  run.loss.name = loss
  run.loss.mining = "all"
  for field, value in s.loss_options[loss].items():
    if value is not None:
      run.loss[field] = value
  if loss == "triplet":
    run.margin.initial_margin = float(s.triplet_margin)
  elif loss == "contrastive":
    run.margin.initial_margin = float(s.contrastive_margin)
    run.loss.positive_margin = 0.0
  if s.epochs is not None:
    run.train.epochs = int(s.epochs)
  if s.vary_data:
    run.data.data_seed = int(seed)
  if run.model.get("pretrained_path") and s.freeze_pretrained:
    run.model.freeze_trunk = True
  run.train.progress = False
  return run


# The grid's layout and planning are the loss study's (same fields, same run directories).
run_dir = pair_study.run_dir
seeds_of = pair_study.seeds_of


def plan(cfg: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Every run of the study, validated before any training (see ``pair_study.plan``)."""
  return pair_study.plan(cfg, workdir, build=run_config)


# ----------------------------------------------------------------------------- one run


def negative_active_ratio(record: dict[str, Any], loss: str) -> float:
  """Active share of the negative terms in one epoch record (NaN where not recorded).

  The softmax / proxy / centre losses record ``neg_active_ratio``
  (``tsm.losses._activity``); the contrastive and triplet losses as paper B's study
  reads them (:func:`experiments.loss_comparison.analysis.negative_active_ratio`).
  """
  from experiments.loss_comparison import analysis  # pylint: disable=import-outside-toplevel
  if "neg_active_ratio" in record:
    return float(record["neg_active_ratio"])
  return analysis.negative_active_ratio(record, loss)


def train_and_measure(config: ml_collections.ConfigDict, rundir: str, *,
                      study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains one run (``tsm.config.train_and_evaluate``) and writes its ``zoo.json``.

  The final model is measured at the last epoch by
  :func:`experiments.loss_comparison.analysis.measure_embeddings`; the curves by
  :func:`experiments.loss_comparison.analysis.curve_summary`; this study adds the
  per-pair centroid distances, the negative-term active ratio of every loss, the
  scale-free loss fall and the per-epoch gradient norm per unit of loss.

  Args:
    config: the run's full tsm config.
    rundir: the run directory (fit's workdir).
    study: the ``study`` section.

  Returns:
    The run's measurements (as written to ``zoo.json``; NaN as None).
  """
  from experiments.loss_comparison import analysis  # pylint: disable=import-outside-toplevel
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  from tsm import diagnostics  # pylint: disable=import-outside-toplevel
  from tsm import distances  # pylint: disable=import-outside-toplevel
  path = os.path.join(rundir, ZOO_JSON)
  if runner.finished(rundir, config, (ZOO_JSON,)):
    with open(path) as f:
      return json.load(f)
  if os.path.isdir(rundir):   # a run stopped before its measurements: train it again
    shutil.rmtree(rundir)
  epochs = int(config.train.epochs)
  found: dict[str, Any] = {}

  class FinalModel:
    """Evaluator at the last epoch: the variance measurements of the final model."""
    every_epochs = epochs

    def __call__(self, ctx):
      if ctx.epoch + 1 != epochs:
        return {}
      num_classes = int(ctx.splits.num_classes)
      train_emb = np.asarray(distances.l2_normalize(ctx.embeddings("train")))
      train_labels = ctx.labels("train")
      test_emb = np.asarray(distances.l2_normalize(ctx.embeddings("test")))
      scalars, arrays = analysis.measure_embeddings(
          train_emb, train_labels, test_emb, ctx.labels("test"), num_classes,
          knn_k=int(study.knn_k), max_triplets=int(study.max_triplets),
          gmm_components=int(study.gmm_components),
          margin=float(config.margin.initial_margin), seed=int(config.seed),
          distance="euclidean")
      keep = train_labels >= 0
      inter = diagnostics.inter_class_distances(train_emb[keep], train_labels[keep],
                                                num_classes)
      upper = np.triu(np.asarray(inter.pair_mask), k=1)
      arrays["centroid_distances"] = np.asarray(inter.distances)[upper].astype(np.float32)
      found.update(scalars=scalars, arrays=arrays)
      return {"study": {"intra_var": scalars["intra_var"],
                        "inter_dist": scalars["inter_dist"]}}

  os.makedirs(rundir, exist_ok=True)
  with open(os.path.join(rundir, "fit.log"), "w") as out, contextlib.redirect_stdout(out):
    tsm_config.train_and_evaluate(config, rundir, evaluators=[FinalModel()])
  if "scalars" not in found:
    raise RuntimeError(f"{rundir}: the last epoch's measurements did not run; delete the "
                       "directory and run again.")
  lines = artifacts.MetricsLog(os.path.join(rundir, "metrics.jsonl")).read()
  records = [r for r in lines if r["kind"] == "epoch"]
  first_step = next(r for r in lines if r["kind"] == "step")
  loss = config.loss.name
  curves = analysis.curve_summary(records, first_step["loss"], float(study.decay_fraction),
                                  loss)
  neg = [negative_active_ratio(r, loss) for r in records]
  per_loss = [r["grad_norm"] / r["loss"] if r["loss"] > 0 else math.nan for r in records]
  curves["curves"]["neg_active_ratio"] = neg
  curves["curves"]["grad_norm_per_loss"] = per_loss
  curves["mean_negative_active_ratio"] = (float(np.mean(neg)) if np.all(np.isfinite(neg))
                                          else math.nan)
  fall = int(diagnostics.loss_fall_epochs(np.asarray(curves["curves"]["loss"], np.float32),
                                          float(study.fall_fraction)))
  d = found["arrays"]["centroid_distances"]
  result = {
      "dataset": config.data.name, "loss": loss, "seed": int(config.seed),
      "model": config.model.name,
      **found["scalars"], **curves,
      "loss_fall_epochs": fall,
      "inter_dist_cv": float(d.std(ddof=1) / d.mean()) if d.size > 1 and d.mean() > 0
                       else math.nan,
      "separation": (float(found["scalars"]["inter_dist"])
                     / math.sqrt(float(found["scalars"]["intra_var"]))
                     if found["scalars"]["intra_var"] > 0 else math.nan),
  }
  np.savez_compressed(os.path.join(rundir, "zoo.npz"), **found["arrays"])
  safe = analysis.json_safe(result)
  artifacts.write_json_atomic(path, safe)
  return safe


def run_one(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or reuses) and measures one run; returns a short record.

  Returns:
    ``{"dataset", "loss", "seed", "seconds", "reused", "recall@1", "intra_var",
    "mean_active_ratio"}``.
  """
  t0 = time.time()
  done = os.path.exists(os.path.join(task["rundir"], ZOO_JSON))
  result = train_and_measure(task["config"], task["rundir"], study=study)
  return {"dataset": task["dataset"], "loss": task["loss"], "seed": task["seed"],
          "seconds": round(time.time() - t0, 2), "reused": done,
          "recall@1": result.get("recall@1"), "intra_var": result.get("intra_var"),
          "mean_active_ratio": result.get("mean_active_ratio")}
