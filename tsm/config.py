"""The full experiment config and its validation.

:func:`default_config` assembles every section: ``data``, ``model`` and ``margin`` from
their modules' ``default_config()``, plus ``loss``, ``train``, ``eval`` and
``checkpoint`` defined here, and ``seed``. Experiment files under
``experiments/configs/`` start from it and override what they need (big_vision style
``get_config()``).

:func:`check_config` validates every value before anything is loaded or compiled and
raises :class:`ConfigError`, a ``ValueError`` whose message is one line naming the field
and the fix. :func:`check_config_with_data` adds the checks that need the loaded dataset
(batch shape against the split sizes, model against the input shape); ``tsm.fit.fit``
runs both before it creates the workdir.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

from tsm import distances, distributed, losses, margins, models
from tsm.data import config as data_config

LOSSES = ("triplet", "contrastive")
SAMPLINGS = ("pk", "random", "triplets", "pairs")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
MARGIN_UPDATES = ("epoch", "step")
# Validation metrics a run can keep its best checkpoint by; lower is better for these:
MINIMISED_METRICS = ("val_loss", "eer")
RANKING_METRICS = ("val_loss", "map@r", "r_precision", "precision@1", "recall@1",
                   "recall@5", "recall@10", "auc", "eer")


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the field and the fix."""


def loss_config() -> ml_collections.ConfigDict:
  """Default ``loss`` section.

  Fields:
    name: ``"triplet"`` or ``"contrastive"``.
    mining: triplet mining, ``"all"``, ``"hard"`` (batch-hard) or ``"semihard"``.
    distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
    reduction: ``"mean"``, ``"mean_nonzero"`` or ``"sum"``.
    positive_margin: contrastive only: the positive margin of the two-margin variant
      (0 = paper B's ``y d^2 + (1 - y) max(0, m - d)^2``).

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "name": "triplet", "mining": "all", "distance": "euclidean", "reduction": "mean",
      "positive_margin": 0.0})


def train_config() -> ml_collections.ConfigDict:
  """Default ``train`` section.

  Fields:
    epochs: number of epochs.
    sampling: ``"pk"`` (P classes x K examples, in-batch loss), ``"random"`` (plain random
      batches of ``batch_size``, in-batch loss), ``"triplets"`` (paper B: ``batch_size``
      random (anchor, positive, negative) triplets; triplet loss only) or ``"pairs"``
      (paper B: ``batch_size`` random pairs, each anchor with a random positive or
      negative; contrastive loss only).
    classes_per_batch, samples_per_class: P and K of ``"pk"`` sampling.
    batch_size: B of ``"random"``, ``"triplets"`` and ``"pairs"`` sampling.
    steps_per_epoch: None = one pass over the training split (as the sampler defines it).
    optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``; learning_rate, lr_schedule
      (``"constant"`` / ``"cosine"``), warmup_steps, weight_decay, momentum (sgd),
      grad_clip_norm (None = no clipping).
    log_every: steps between host transfers of the step metrics (and progress updates).
    best_metric: the validation metric that picks the kept model: ``"val_loss"`` (lowest
      wins; paper A), ``"eer"`` (lowest) or ``"map@r"``, ``"r_precision"``,
      ``"precision@1"``, ``"recall@K"``, ``"auc"`` (highest).
    stop_after_steps: stop this process after that many steps without saving anything
      more, as a kill would (0 = off); for testing resumption.
    data_parallel: with several devices, shard each batch over all of them (a 1-D
      ``"data"`` mesh; the state is replicated). Multi-host runs always shard.
    progress: show a tqdm progress bar.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "epochs": 10,
      "sampling": "pk",
      "classes_per_batch": 8,
      "samples_per_class": 4,
      "batch_size": 64,
      "steps_per_epoch": config_dict.placeholder(int),
      "optimizer": "adam",
      "learning_rate": 1e-3,
      "lr_schedule": "constant",
      "warmup_steps": 0,
      "weight_decay": 0.0,
      "momentum": 0.9,
      "grad_clip_norm": config_dict.placeholder(float),
      "log_every": 20,
      "best_metric": "val_loss",
      "stop_after_steps": 0,
      "data_parallel": True,
      "progress": True,
  })


def eval_config() -> ml_collections.ConfigDict:
  """Default ``eval`` section.

  Fields:
    every_epochs: retrieval and verification metrics on the validation split every that
      many epochs (and after the last); the validation loss is computed every epoch.
    val_margin: margin of the validation loss; None = the margin in force during the
      epoch. The default 1.0 follows paper A's code (a fixed margin, so that validation
      losses of epochs with different training margins compare).
    val_batches: cap on the number of validation-loss batches (None = one pass).
    batch_size: batch size for embedding a split.
    num_pairs: verification pairs per split (paper A: 1000, half same-class).
    ks: the K of Recall@K.
    knn_k: k of the k-NN accuracy reported in the test summary for ``"standard"`` splits
      (train classes = test classes); 0 = off.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "every_epochs": 1,
      "val_margin": config_dict.FieldReference(1.0, field_type=float),
      "val_batches": config_dict.placeholder(int),
      "batch_size": 256,
      "num_pairs": 1000,
      "ks": (1, 5, 10),
      "knn_k": 5,
  })


def checkpoint_config() -> ml_collections.ConfigDict:
  """Default ``checkpoint`` section.

  Fields:
    every_steps: also checkpoint every that many steps within epochs (0 = only at the end
      of each epoch).
    every_epochs: checkpoint at the end of every that many epochs, and always after the
      last (0 = after the last epoch only). The best model is picked among the saved
      epochs. Short runs of small models (the studies) save seconds per run with 0.
    keep: number of most recent checkpoints kept (the best one is kept besides).
    async_save: write checkpoints in a background thread.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({"every_steps": 0, "every_epochs": 1, "keep": 2,
                                    "async_save": True})


def default_config() -> ml_collections.ConfigDict:
  """The full default config: every section with its defaults.

  Returns:
    A ConfigDict with sections ``data``, ``model``, ``loss``, ``margin`` (plus
    ``margin.update_every``: ``"epoch"`` or ``"step"``), ``train``, ``eval``,
    ``checkpoint``, ``distributed`` (multi-host start-up, :mod:`tsm.distributed`) and
    the field ``seed``.
  """
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.data = data_config.default_config()
  cfg.model = models.default_config()
  cfg.loss = loss_config()
  cfg.margin = margins.default_config()
  cfg.margin.update_every = "epoch"
  cfg.train = train_config()
  cfg.eval = eval_config()
  cfg.checkpoint = checkpoint_config()
  cfg.distributed = distributed.default_config()
  return cfg


def schedule_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``margin`` section without the train-loop field ``update_every``."""
  out = ml_collections.ConfigDict(cfg.margin.to_dict())
  if "update_every" in out:
    del out["update_every"]
  return out


def schedule_length(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Number of ``update`` calls of the margin schedule over the run."""
  if cfg.margin.get("update_every", "epoch") == "step":
    return int(cfg.train.epochs) * int(steps_per_epoch)
  return int(cfg.train.epochs)


def best_metric_key(name: str) -> tuple[str, str]:
  """``(key in the epoch records, "min" | "max")`` for ``config.train.best_metric``."""
  key = name if name == "val_loss" else f"val_{name}"
  return key, "min" if name in MINIMISED_METRICS else "max"


# ----------------------------------------------------------------------------- checks


def _fail(message: str) -> ConfigError:
  return ConfigError(message)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _int(cfg: Any, section: str, field: str, minimum: int, hint: str = "",
         optional: bool = False) -> None:
  value = cfg[section][field]
  if optional and value is None:
    return
  if not _is_int(value) or value < minimum:
    none = " or None" if optional else ""
    raise _fail(f"{section}.{field}={value!r} must be an integer >= {minimum}{none}"
                f"{'; ' + hint if hint else ''}.")


def _number(cfg: Any, section: str, field: str, *, minimum: float = 0.0,
            strict: bool = False, optional: bool = False, hint: str = "") -> None:
  value = cfg[section][field]
  if optional and value is None:
    return
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > minimum if strict else value >= minimum))
  if not ok:
    relation = ">" if strict else ">="
    none = " or None" if optional else ""
    raise _fail(f"{section}.{field}={value!r} must be a finite number {relation} "
                f"{minimum}{none}{'; ' + hint if hint else ''}.")


def _choice(cfg: Any, section: str, field: str, choices: tuple[str, ...]) -> None:
  value = cfg[section][field]
  if value not in choices:
    raise _fail(f"{section}.{field}={value!r} is unknown; use one of {', '.join(choices)}.")


def _unknown_fields(cfg: ml_collections.ConfigDict) -> None:
  defaults = default_config()
  for key in cfg.keys():
    if key not in defaults:
      raise _fail(f"{key} is not a config section; use one of "
                  f"{', '.join(defaults.keys())}.")
  for section in ("loss", "train", "eval", "checkpoint", "data", "model", "distributed"):
    for key in cfg[section].keys():
      if key not in defaults[section]:
        raise _fail(f"{section}.{key} is not a {section} field; use one of "
                    f"{', '.join(defaults[section].keys())}.")


def _wrap(section: str, error: ValueError) -> ConfigError:
  message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
  if not message.startswith(section + "."):
    message = f"{section}: {message}"
  return ConfigError(message)


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Validates every value of a full config, before loading or compiling anything.

  Args:
    cfg: a config like :func:`default_config`'s.

  Raises:
    ConfigError: one line naming the bad field and the fix.
  """
  _unknown_fields(cfg)
  if not _is_int(cfg.seed) or cfg.seed < 0:
    raise _fail(f"seed={cfg.seed!r} must be an integer >= 0.")
  try:
    data_config.check_data_config(cfg.data)
  except ValueError as e:
    raise _wrap("data", e) from None

  _choice(cfg, "loss", "name", LOSSES)
  for field, check in (("mining", losses.check_mining),
                       ("reduction", losses.check_reduction),
                       ("distance", distances.check_distance)):
    try:
      check(cfg.loss[field])
    except ValueError as e:
      raise _fail(f"loss.{field}: {e}") from None
  _number(cfg, "loss", "positive_margin")
  if cfg.loss.name == "contrastive" and cfg.loss.mining != "all":
    raise _fail(f"loss.mining={cfg.loss.mining!r} applies to the triplet loss only; "
                "set loss.mining=all with loss.name=contrastive.")
  if cfg.loss.name == "triplet" and cfg.loss.positive_margin:
    raise _fail("loss.positive_margin applies to the contrastive loss only; set it to 0 "
                "with loss.name=triplet.")

  train = cfg.train
  _int(cfg, "train", "epochs", 1)
  _choice(cfg, "train", "sampling", SAMPLINGS)
  if train.sampling == "triplets" and cfg.loss.name != "triplet":
    raise _fail("train.sampling='triplets' needs loss.name=triplet; use sampling "
                "pairs, pk or random with the contrastive loss.")
  if train.sampling == "pairs" and cfg.loss.name != "contrastive":
    raise _fail("train.sampling='pairs' needs loss.name=contrastive; use sampling "
                "triplets, pk or random with the triplet loss.")
  if train.sampling == "pk":
    _int(cfg, "train", "classes_per_batch", 2, "a batch needs negatives")
    _int(cfg, "train", "samples_per_class", 2,
         f"a {cfg.loss.name} batch needs two examples of a class for a positive pair")
  else:
    _int(cfg, "train", "batch_size", 2)
  _int(cfg, "train", "steps_per_epoch", 1, optional=True)
  _choice(cfg, "train", "optimizer", OPTIMIZERS)
  _number(cfg, "train", "learning_rate", strict=True, hint="e.g. 1e-3")
  _choice(cfg, "train", "lr_schedule", LR_SCHEDULES)
  _int(cfg, "train", "warmup_steps", 0)
  _number(cfg, "train", "weight_decay")
  _number(cfg, "train", "momentum")
  _number(cfg, "train", "grad_clip_norm", strict=True, optional=True)
  _int(cfg, "train", "log_every", 1)
  _choice(cfg, "train", "best_metric", RANKING_METRICS)
  _int(cfg, "train", "stop_after_steps", 0, "0 turns it off")
  for field in ("data_parallel", "progress"):
    if not isinstance(train[field], bool):
      raise _fail(f"train.{field}={train[field]!r} must be True or False.")

  if cfg.margin.get("update_every", "epoch") not in MARGIN_UPDATES:
    raise _fail(f"margin.update_every={cfg.margin.update_every!r} is unknown; use one of "
                f"{', '.join(MARGIN_UPDATES)}.")
  try:
    margins.check_config(schedule_config(cfg), max(int(train.epochs), 2))
  except ValueError as e:
    raise _wrap("margin", e) from None

  _int(cfg, "eval", "every_epochs", 1)
  _number(cfg, "eval", "val_margin", optional=True,
          hint="None uses the current training margin")
  _int(cfg, "eval", "val_batches", 1, optional=True)
  _int(cfg, "eval", "batch_size", 1)
  _int(cfg, "eval", "num_pairs", 2)
  ks = cfg.eval.ks
  if (not isinstance(ks, (tuple, list)) or not ks
      or not all(_is_int(k) and k >= 1 for k in ks)):
    raise _fail(f"eval.ks={ks!r} must be a non-empty tuple of integers >= 1, e.g. "
                "(1, 5, 10).")
  if train.best_metric.startswith("recall@") and int(train.best_metric[7:]) not in ks:
    raise _fail(f"train.best_metric={train.best_metric!r} is not computed; add "
                f"{train.best_metric[7:]} to eval.ks or pick another metric.")
  _int(cfg, "eval", "knn_k", 0, "0 turns k-NN off")

  _int(cfg, "checkpoint", "every_steps", 0, "0 checkpoints at epoch ends only")
  _int(cfg, "checkpoint", "every_epochs", 0, "0 checkpoints after the last epoch only")
  _int(cfg, "checkpoint", "keep", 1)
  if not isinstance(cfg.checkpoint.async_save, bool):
    raise _fail(f"checkpoint.async_save={cfg.checkpoint.async_save!r} must be True or "
                "False.")
  try:
    distributed.check_config(cfg.distributed)
  except ValueError as e:
    raise _wrap("distributed", e) from None


def check_config_with_data(cfg: ml_collections.ConfigDict, splits: Any) -> None:
  """The checks that need the loaded dataset; still before any compilation.

  Args:
    cfg: a config that passed :func:`check_config`.
    splits: the ``tsm.data.DatasetSplits`` of ``cfg.data``.

  Raises:
    ConfigError: one line naming the bad field and the fix.
  """
  train = cfg.train
  labels = np.asarray(splits.train.labels)
  labels = labels[labels >= 0]   # unlabelled points (synthetic outliers, -1) form no class
  counts = np.bincount(labels) if labels.size else np.zeros(0, int)
  num_classes = int(np.count_nonzero(counts))
  with_pairs = int(np.count_nonzero(counts >= 2))
  if with_pairs == 0:
    raise _fail(f"the train split of data.name={cfg.data.name!r} has no class with two "
                "examples; raise data.num_examples or lower data.val_fraction.")
  if train.sampling == "pk":
    if train.classes_per_batch > num_classes:
      raise _fail(f"train.classes_per_batch={train.classes_per_batch} exceeds the "
                  f"{num_classes} classes of the train split; set "
                  f"train.classes_per_batch<={num_classes}.")
  elif train.batch_size > len(labels):
    raise _fail(f"train.batch_size={train.batch_size} exceeds the {len(labels)} examples "
                f"of the train split; set train.batch_size<={len(labels)}.")
  if num_classes < 2:
    raise _fail(f"the train split of data.name={cfg.data.name!r} has {num_classes} "
                "class; a metric-learning run needs at least 2 (check data.split).")
  for name in ("val", "test"):
    split = getattr(splits, name)
    if len(split) and len(np.unique(np.asarray(split.labels))) < 2:
      raise _fail(f"the {name} split of data.name={cfg.data.name!r} has fewer than 2 "
                  "classes; change data.val_fraction / data.split.")
  if len(splits.val) == 0 and train.best_metric != "val_loss":
    raise _fail(f"train.best_metric={train.best_metric!r} needs a validation split; set "
                "data.val_fraction > 0.")
  try:
    models.check_model_config(cfg.model, splits.input_shape)
  except ValueError as e:
    raise _wrap("model", e) from None
