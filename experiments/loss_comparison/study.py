"""Paper B's loss study: its config, its arms (dataset x loss x seed) and one run.

A study config (``experiments/configs/loss_study_*.py``) is a ConfigDict with

* ``study``: what to run and how (see :func:`study_section`);
* one section per dataset named in ``study.datasets`` (``synthetic``, ``digits``,
  ``mnist1d``, ``mnist``, ``cifar10``, ``caltech_birds2011``, ``cars196``): a full
  :func:`tsm.config.default_config` for that dataset, with paper B's settings. The study
  runner sets ``loss.name``, ``train.sampling``, ``loss.mining`` and ``seed`` of each run
  from ``study``; everything else is taken as written (and overridable:
  ``--config.synthetic.train.epochs=50``).

Shared settings (paper B, arXiv 2510.02161, and its code): margin m = 1.0 (constant),
plain Euclidean distance on L2-normalised embeddings, mean reduction, Adam 1e-3, batches
of 64 random triplets (triplet loss) or 64 random pairs (contrastive loss; each anchor
with a random positive or a random negative), no validation split: the model after the
last epoch is analysed, as in the paper. Splits keep the test classes equal to the
training classes where k-NN accuracy is reported (``standard`` / ``by_image``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections
from ml_collections import config_dict

from experiments import runner
from tsm import config as tsm_config

OFFLINE_DATASETS = ("synthetic", "digits", "mnist1d")
TFDS_DATASETS = ("mnist", "cifar10", "caltech_birds2011", "cars196")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS
LOSSES = ("contrastive", "triplet")
SAMPLINGS = ("paper", "pk", "random")
# The in-batch samplings of paper B: triplet mining applies; contrastive takes all pairs.
_SAMPLING = {"triplet": "triplets", "contrastive": "pairs"}
log = runner.log


class StudyError(ValueError):
  """A bad study setting; the message is one line naming the field and the fix."""


def study_section(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The ``study`` section.

  Fields:
    datasets: datasets to run, each with its own config section.
    losses: losses compared (paper B: contrastive and triplet).
    seeds: number of seeds per (dataset, loss); seeds are ``first_seed ...``. Ten by
      default, so that the paired tests of the verdicts have power.
    first_seed: the first seed.
    vary_data: draw the data from the run's seed too (``data.data_seed = seed``: the
      synthetic points, the by-image test split), so that the spread over seeds
      includes the variance of the data. Both losses of a seed see the same data.
    outlier_anchors: paper B's code lets the unlabelled outliers (label -1) anchor
      triplets / pairs (``train.outlier_anchors``, where tsm has it).
    positive_is_anchor: paper B's code draws the positive from the anchor's class
      including the anchor itself (``train.positive_is_anchor``, where tsm has it).
    sampling: ``"paper"`` (paper B's random triplets / pairs: ``train.sampling``
      ``"triplets"`` for the triplet loss, ``"pairs"`` for the contrastive loss), or
      in-batch losses over ``"pk"`` (P x K) or ``"random"`` batches.
    mining: triplet mining of the in-batch triplet loss (``"all"``, ``"hard"``,
      ``"semihard"``); ignored with ``"paper"`` sampling.
    epochs: if set, overrides ``train.epochs`` of every dataset (the same knob as the
      margin study's).
    workers: processes running the study in parallel (forked after the data are
      loaded; :func:`experiments.runner.run_grid`); ``<= 1`` runs in this process.
    xla_threads: with ``workers > 1``, 1 makes each worker's XLA CPU runtime
      single-threaded; 0 keeps XLA's default (the stability rerun changes it).
    compilation_cache: JAX persistent compilation cache directory; ``"auto"`` =
      ``<workdir>/jax_cache``, ``""`` = off.
    compare_to: a finished run of the same study (another workdir, e.g. the rerun with
      another ``xla_threads``): claims whose verdict differs there are marked unstable.
    freeze_pretrained: when a dataset's ``model.pretrained_path`` is set, freeze the
      trunk (paper B trains a linear head on a frozen ViT-B/32).
    knn_k: k of the k-NN accuracy (paper B: 5).
    decay_fraction: loss-decay target share of the first epoch's loss (paper B: 0.1).
    max_triplets: effective margins: every valid training triplet up to this many,
      else a uniform sample of this size.
    gmm_components: components of the Gaussian mixture fitted to effective margins.

  Args:
    datasets: the default ``datasets``.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "datasets": tuple(datasets),
      "losses": LOSSES,
      "seeds": 10,
      "first_seed": 0,
      "vary_data": True,
      "outlier_anchors": True,
      "positive_is_anchor": True,
      "sampling": "paper",
      "mining": "all",
      "epochs": config_dict.placeholder(int),
      "workers": 2,
      "xla_threads": 0,
      "compilation_cache": "auto",
      "compare_to": "",
      "freeze_pretrained": True,
      "knn_k": 5,
      "decay_fraction": 0.1,
      "max_triplets": 20_000,
      "gmm_components": 2,
  })


def _paper_b_base() -> ml_collections.ConfigDict:
  """Settings every dataset shares (module docstring)."""
  cfg = tsm_config.default_config()
  cfg.data.val_fraction = 0.0
  cfg.data.test_fraction = 0.2
  cfg.loss.name = "triplet"
  cfg.loss.distance = "euclidean"
  cfg.loss.reduction = "mean"
  cfg.margin.schedule = "constant"
  cfg.margin.initial_margin = 1.0
  cfg.train.sampling = "triplets"
  cfg.train.batch_size = 64
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-3
  cfg.train.lr_schedule = "constant"
  cfg.train.best_metric = "val_loss"   # no validation split: the last model is used
  cfg.train.progress = False
  cfg.train.log_every = 100
  cfg.eval.knn_k = 5
  cfg.eval.every_epochs = 1_000_000   # no validation metrics (there is no split)
  cfg.checkpoint.keep = 1
  cfg.checkpoint.every_epochs = 0   # only after the last epoch (orbax saves cost ~0.1 s)
  return cfg


def synthetic() -> ml_collections.ConfigDict:
  """Paper B's synthetic set and MLP 128 -> 64 -> ReLU -> 32, 100 epochs.

  Split ``by_image`` (a random 20% held out for test): paper B trains and evaluates on
  the same points; a held-out test set keeps k-NN and retrieval honest (each query
  would otherwise find itself in the training set). Variances are measured on the
  training embeddings, as in the paper.
  """
  cfg = _paper_b_base()
  cfg.data.name = "synthetic"
  cfg.data.split = "by_image"
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (64,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 100
  return cfg


def digits() -> ml_collections.ConfigDict:
  """scikit-learn digits (8x8), an MLP 64 -> 128 -> ReLU -> 32, 100 epochs, by-image split."""
  cfg = _paper_b_base()
  cfg.data.name = "digits"
  cfg.data.split = "by_image"
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 100
  return cfg


def mnist1d() -> ml_collections.ConfigDict:
  """MNIST-1D (4,000 / 1,000 official split), a wider conv1d, 32-d, 80 epochs.

  Three convolutions of 64 channels and a Dense(128) hidden layer before the 32-d
  embedding: with the default conv1d (32 channels, no hidden layer) neither loss fell to
  10% of its first epoch within 120 epochs, so paper B's loss-decay was undefined; with
  this one the contrastive loss gets there after 54-60 epochs, the triplet loss after
  34-38 (measured at 60 epochs, 5 seeds; 3 contrastive seeds had not yet).
  """
  cfg = _paper_b_base()
  cfg.data.name = "mnist1d"
  cfg.data.split = "standard"
  cfg.model.name = "conv1d"
  cfg.model.conv_features = (64, 64, 64)
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 32
  cfg.train.epochs = 80
  return cfg


def mnist() -> ml_collections.ConfigDict:
  """Paper B's MNIST: ConvNet conv32-conv64-FC128-64, batch 256, 20 epochs."""
  cfg = _paper_b_base()
  cfg.data.name = "mnist"
  cfg.data.split = "standard"
  cfg.model.name = "convnet"
  cfg.model.conv_features = (32, 64)
  cfg.model.hidden_sizes = (128,)
  cfg.model.embedding_dim = 64
  cfg.train.batch_size = 256
  cfg.train.epochs = 20
  cfg.eval.batch_size = 1024
  return cfg


def cifar10() -> ml_collections.ConfigDict:
  """CIFAR-10: ResNet-18 (CIFAR stem) + linear head to 512-d, 20 epochs.

  Paper B trains a linear head 768 -> 512 on a frozen ViT-B/32. tsm has no ViT: the
  trunk is a ResNet-18, trained end to end unless ``model.pretrained_path`` names a
  local ``.npz`` of trunk weights (then frozen, ``study.freeze_pretrained``).
  """
  cfg = _paper_b_base()
  cfg.data.name = "cifar10"
  cfg.data.split = "standard"
  cfg.data.normalize = "symmetric"
  cfg.model.name = "resnet18"
  cfg.model.stem = "cifar"
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 512
  cfg.train.epochs = 20
  cfg.eval.batch_size = 1024
  return cfg


def _fine_grained(name: str) -> ml_collections.ConfigDict:
  cfg = _paper_b_base()
  cfg.data.name = name
  cfg.data.split = "class_disjoint"
  cfg.data.image_size = 224
  cfg.data.normalize = "imagenet"
  cfg.model.name = "resnet50"
  cfg.model.stem = "imagenet"
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 512
  cfg.train.epochs = 30
  return cfg


def caltech_birds2011() -> ml_collections.ConfigDict:
  """CUB-200-2011: ResNet-50 (ImageNet stem, 224 px) + linear head to 512-d, 30 epochs.

  Class-disjoint split (classes 1-100 train, 101-200 test; the field's protocol,
  Musgrave et al. 2020), so k-NN accuracy is not reported (test classes are unseen).
  Paper B's frozen ViT-B/32 is replaced by a ResNet-50 trunk: pass ImageNet weights as
  ``model.pretrained_path`` (a local ``.npz``, see ``tsm.models``) to freeze it.
  """
  return _fine_grained("caltech_birds2011")


def cars196() -> ml_collections.ConfigDict:
  """Cars196: as :func:`caltech_birds2011` (classes 1-98 train, 99-196 test)."""
  return _fine_grained("cars196")


BUILDERS = {
    "synthetic": synthetic, "digits": digits, "mnist1d": mnist1d, "mnist": mnist,
    "cifar10": cifar10, "caltech_birds2011": caltech_birds2011, "cars196": cars196,
}


def study_config(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """A study config over ``datasets``: the ``study`` section and one section each.

  Args:
    datasets: names from :data:`DATASETS`.

  Returns:
    A ConfigDict.
  """
  unknown = [d for d in datasets if d not in BUILDERS]
  if unknown:
    raise ValueError(f"unknown datasets {unknown}; use names from {', '.join(DATASETS)}.")
  cfg = ml_collections.ConfigDict()
  cfg.study = study_section(datasets)
  for name in datasets:
    cfg[name] = BUILDERS[name]()
  return cfg


# ----------------------------------------------------------------------------- the arms


def check_study(cfg: ml_collections.ConfigDict) -> None:
  """Validates the ``study`` section (one-line :class:`StudyError`)."""
  s = cfg.study
  unknown = sorted(set(s.keys()) - set(study_section(()).keys()))
  if unknown:
    raise StudyError(f"study.{unknown[0]} is not a study field; use one of "
                     f"{', '.join(study_section(()).keys())}.")
  datasets = tuple(s.datasets)
  if not datasets:
    raise StudyError("study.datasets is empty; name at least one dataset.")
  for name in datasets:
    if name not in cfg:
      raise StudyError(f"study.datasets names {name!r}, which has no config section; use "
                       f"one of {', '.join(k for k in cfg.keys() if k != 'study')}.")
  losses = tuple(s.losses)
  if not losses or any(loss not in LOSSES for loss in losses):
    raise StudyError(f"study.losses={losses!r} must be a non-empty subset of {LOSSES}.")
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
  if s.sampling not in SAMPLINGS:
    raise StudyError(f"study.sampling={s.sampling!r} is unknown; use one of "
                     f"{', '.join(SAMPLINGS)}.")
  if not 0 < float(s.decay_fraction) < 1:
    raise StudyError(f"study.decay_fraction={s.decay_fraction!r} must be in (0, 1); "
                     "paper B uses 0.1.")
  if s.compare_to and not os.path.exists(os.path.join(s.compare_to, "verdicts.csv")):
    raise StudyError(f"study.compare_to={s.compare_to!r} has no verdicts.csv; point it at "
                     "a finished run of the same study.")


def sampler_options_available(run: ml_collections.ConfigDict) -> bool:
  """Whether this tsm has paper B's sampler options (``train.outlier_anchors``, ...)."""
  return "outlier_anchors" in run.train and "positive_is_anchor" in run.train


def run_config(cfg: ml_collections.ConfigDict, dataset: str, loss: str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the study's choices set.

  ``loss.name``, ``train.sampling`` and ``loss.mining`` from the study's sampling;
  ``train.epochs`` from ``study.epochs`` when set; ``data.data_seed = seed`` with
  ``study.vary_data``; paper B's sampler options where tsm has them; no progress bar.
  """
  s = cfg.study
  run = ml_collections.ConfigDict(cfg[dataset].to_dict())
  run.seed = int(seed)
  run.loss.name = loss
  if s.sampling == "paper":
    run.train.sampling = _SAMPLING[loss]
    run.loss.mining = "all"
  else:
    run.train.sampling = s.sampling
    run.loss.mining = s.mining if loss == "triplet" else "all"
  if s.epochs is not None:
    run.train.epochs = int(s.epochs)
  if s.vary_data:
    run.data.data_seed = int(seed)
  if sampler_options_available(run):
    run.train.outlier_anchors = bool(s.outlier_anchors)
    run.train.positive_is_anchor = bool(s.positive_is_anchor)
  if run.model.get("pretrained_path") and s.freeze_pretrained:
    run.model.freeze_trunk = True
  run.train.progress = False
  return run


def run_dir(workdir: str, dataset: str, loss: str, seed: int) -> str:
  """``<workdir>/<dataset>/<loss>/seed<seed>``."""
  return os.path.join(workdir, dataset, loss, f"seed{seed}")


def seeds_of(cfg: ml_collections.ConfigDict) -> list[int]:
  """The study's seeds, ``first_seed ... first_seed + seeds - 1``."""
  return list(range(cfg.study.first_seed, cfg.study.first_seed + cfg.study.seeds))


def plan(cfg: ml_collections.ConfigDict, workdir: str, *,
         build=None) -> list[dict[str, Any]]:
  """Every run of the study, validated (tsm.config.check_config) before any training.

  Args:
    cfg: the study config.
    workdir: the study directory.
    build: ``build(cfg, dataset, loss, seed)`` -> the run's config; this module's
      :func:`run_config` by default (the loss zoo passes its own).

  Returns:
    One task per (dataset, loss, seed); the first seed keeps its embeddings.
  """
  build = run_config if build is None else build
  s = cfg.study
  seeds = seeds_of(cfg)
  tasks = []
  for dataset in s.datasets:
    for loss in s.losses:
      for seed in seeds:
        run = build(cfg, dataset, loss, seed)
        try:
          tsm_config.check_config(run)
        except tsm_config.ConfigError as e:
          raise StudyError(f"{dataset} ({loss}): {e}") from None
        tasks.append({"dataset": dataset, "loss": loss, "seed": seed, "config": run,
                      "rundir": run_dir(workdir, dataset, loss, seed),
                      "keep_embeddings": seed == seeds[0]})
  return tasks


def run_one(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or reuses) and analyses one run; returns a short record.

  Returns:
    ``{"dataset", "loss", "seed", "seconds", "reused", "recall@1", "intra_var",
    "loss_decay_epochs"}``.
  """
  from experiments.loss_comparison import analysis  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  done = os.path.exists(os.path.join(task["rundir"], analysis.ANALYSIS_JSON))
  result = analysis.train_and_analyse(task["config"], task["rundir"], study=study,
                                      keep_embeddings=task["keep_embeddings"])
  return {"dataset": task["dataset"], "loss": task["loss"], "seed": task["seed"],
          "seconds": round(time.time() - t0, 2), "reused": done,
          "recall@1": result.get("recall@1"), "intra_var": result.get("intra_var"),
          "loss_decay_epochs": result.get("loss_decay_epochs")}
