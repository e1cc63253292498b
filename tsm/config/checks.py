"""Config checks: every field read and checked once, before anything is loaded.

:func:`check_config` runs before any data is loaded or anything compiled;
:func:`check_config_with_data` adds what needs the loaded splits (batch shape against
the split sizes, the model against the input shape). A field that a typed object takes
is checked by that object's own check (``DataSpec.check``, ``tsm.models.check_model``,
``tsm.losses.check_mining`` / ``check_reduction`` / ``check_curriculum``,
``tsm.distances.check_distance``, ``tsm.data.samplers.check_sampling``,
``tsm.train.check_optimizer``, ``tsm.margins.check_schedule``), whose one-line
message starts with the argument's name; the check here prefixes the section
(``loss.curriculum=...``). Fields that only the config has (and the rules between
sections) are checked here. Every error is a :class:`ConfigError`, a ``ValueError`` whose
message is one line naming the field and the fix.

Why one module of this length: the rules between sections (a loss against the data's
views, a reduction against the train split's labels, the distances of the loss and of
evaluation) need every section at hand, and one place keeps each field checked once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from tsm import distances, losses, margins, models
from tsm import train as train_lib
from tsm.config import loss_table
from tsm.config.builders import (_model_kwargs, data_spec, evaluation_distance,
                                 schedule_arguments, uses_feature_cache)
from tsm.config.defaults import (DISTANCE_LOSSES, LOSS_FIELDS, LOSSES, MARGIN_UPDATES,
                                 NONFINITE, PAIR_PROTOCOLS, RANKING_METRICS,
                                 REFERENCE_LOSSES, default_config)
from tsm.data import samplers as samplers_lib
from tsm.data import spec as spec_lib


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the field and the fix."""


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


def _owned(section: str, check: Callable[..., Any], *args: Any) -> None:
  """Runs a typed object's own check; its error (starting with the argument's name)
  becomes ``section.argument...``."""
  try:
    check(*args)
  except ValueError as e:
    raise _section_error(section, e) from None


def _unknown_fields(cfg: ml_collections.ConfigDict,
                    defaults: ml_collections.ConfigDict) -> None:
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
  defaults = default_config()
  _unknown_fields(cfg, defaults)
  _int(cfg.seed, "seed", 0)
  views = cfg.data.views
  if (uses_feature_cache(cfg) and isinstance(views, int) and not isinstance(views, bool)
      and views > 1):   # before the data section's own rule (views need augment)
    raise ConfigError(f"data.views={views} does not apply to a frozen model.trunk (it "
                      "trains on cached features of the unaugmented images: no second "
                      "view); set data.views=1.")
  try:
    data_spec(cfg).check()
  except ValueError as e:
    raise _section_error("data", e) from None
  _check_trunk(cfg)
  _check_loss(cfg.loss, defaults.loss)
  _check_train(cfg.train, cfg.loss.name)
  _check_loss_wrappers(cfg.loss, cfg.train, int(cfg.data.views))
  _check_views(cfg)
  _check_margin(cfg.margin, cfg)
  _check_eval(cfg.eval, cfg.train.best_metric)
  _check_evaluation_distance(cfg)
  _check_checkpoint(cfg.checkpoint)
  _check_distributed(cfg.distributed)


def _check_loss(loss: ml_collections.ConfigDict,
                defaults: ml_collections.ConfigDict) -> None:
  """The ``loss`` section (``defaults``: the default ``loss`` section)."""
  _choice(loss.name, "loss.name", LOSSES)
  mining_check = (lambda value: None if value == "curriculum" else
                  losses.check_mining(value))
  distance_check = lambda value: distances.check_distance(value, distances.LOSS_DISTANCES)
  for field, check in (("mining", mining_check),
                       ("distance", distance_check)):
    try:
      check(loss[field])
    except ValueError as e:
      raise ConfigError(f"loss.{field}: {e}") from None
  _check_reduction(loss)
  if loss.name not in DISTANCE_LOSSES and loss.distance != defaults.distance:
    raise ConfigError(f"loss.distance={loss.distance!r} does not apply to loss.name="
                      f"{loss.name}, which keeps its own distance (only "
                      f"{', '.join(DISTANCE_LOSSES)} take one); leave it at "
                      f"{defaults.distance!r} (eval.distance sets evaluation's).")
  _number(loss.positive_margin, "loss.positive_margin")
  takes = LOSS_FIELDS[loss.name]
  curriculum = loss.curriculum
  if loss.mining == "curriculum":
    _owned("loss", losses.check_curriculum, curriculum)
  elif curriculum:
    raise ConfigError(f"loss.curriculum={curriculum!r} applies to loss.mining=curriculum "
                      "only; leave it ().")
  for field in loss_table.LOSS_OPTIONS:
    if field == "curriculum" or field in loss_table.REDUCER_FIELDS:   # checked above
      continue
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
  for field in ("softmax_scale", "la", "gamma", "b"):
    _number(loss[field], f"loss.{field}", strict=True, optional=True)
  for field in ("lambda_plus", "lambda_minus", "nu", "pos_eps", "neg_eps", "lambda_c"):
    _number(loss[field], f"loss.{field}", optional=True)
  for field in ("invariance_lambda", "variance_mu", "covariance_v"):
    _number(loss[field], f"loss.{field}", optional=True)
  _number(loss.eps, "loss.eps", strict=True, optional=True)
  for field in ("tn", "tp", "margin_plus", "margin_minus", "min_val"):
    _number(loss[field], f"loss.{field}", minimum=-math.inf, optional=True)
  _number(loss.imbalance, "loss.imbalance", optional=True)
  if loss.imbalance is not None and loss.imbalance > 1.0:
    raise ConfigError(f"loss.imbalance={loss.imbalance!r} must be in [0, 1]; e.g. 0.5.")
  for field in ("centers_per_class", "sub_centers", "multiplier", "num_bins",
                "num_proxies"):
    _int(loss[field], f"loss.{field}", 1, optional=True)
  if loss.variant is not None:
    _choice(loss.variant, "loss.variant", losses.PNP_VARIANTS)
  for field in loss_table.LOSS_TABLE[loss.name].required:
    if loss[field] is None:
      raise ConfigError(f"loss.{field} is required by loss.name={loss.name} (it has no "
                        f"default); set --config.loss.{field}=<value>.")


def _check_reduction(loss: ml_collections.ConfigDict) -> None:
  """``loss.reduction`` and its ``loss.reduction_*`` parameters (PML's reducers)."""
  _choice(loss.reduction, "loss.reduction", loss_table.REDUCTION_CHOICES)
  for field, owner in loss_table.REDUCER_FIELDS.items():
    if loss.reduction != owner and loss[field] not in (None, ()):
      raise ConfigError(f"loss.{field}={loss[field]!r} applies to loss.reduction={owner} "
                        f"only (loss.reduction={loss.reduction}); leave it unset.")
  for field in ("reduction_low", "reduction_high"):
    _number(loss[field], f"loss.{field}", minimum=-math.inf, optional=True)
  if loss.reduction == "threshold" and loss.reduction_low is None is loss.reduction_high:
    raise ConfigError("loss.reduction=threshold needs loss.reduction_low and/or "
                      "loss.reduction_high (the band low < term loss < high).")
  weights = loss.reduction_class_weights
  if loss.reduction == "class_weighted" and not (
      isinstance(weights, (tuple, list)) and weights
      and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
              for w in weights)):
    raise ConfigError(f"loss.reduction=class_weighted needs loss.reduction_class_weights, "
                      f"one finite number per class (e.g. (1.0, 2.0, 0.5)); got "
                      f"{weights!r}.")
  low, high = loss.reduction_low, loss.reduction_high
  if low is not None and high is not None and not low < high:
    raise ConfigError(f"loss.reduction_low={low!r} must be below loss.reduction_high="
                      f"{high!r} (no term could pass the threshold).")
  try:
    loss_table.reduction_value(loss)
  except ValueError as e:
    raise ConfigError(f"loss.reduction={loss.reduction}: {e}") from None


def _check_loss_wrappers(loss: ml_collections.ConfigDict,
                         t: ml_collections.ConfigDict, views: int = 1) -> None:
  """``loss.miner`` and ``loss.xbm_size`` (pair / triplet losses, in-batch sampling),
  and the regularizer fields (``views``: ``data.views``, rows per input)."""
  _choice(loss.miner, "loss.miner", ("none",) + tuple(loss_table.MINERS))
  _int(loss.xbm_size, "loss.xbm_size", 0, "0 turns the cross-batch memory off")
  for field, on in (("miner", loss.miner != "none"), ("xbm_size", loss.xbm_size != 0)):
    if not on:
      continue
    if loss.name not in REFERENCE_LOSSES:
      raise ConfigError(f"loss.{field}={loss[field]!r} applies to "
                        f"{', '.join(REFERENCE_LOSSES)} only (loss.name={loss.name}).")
    if loss.mining != "all":
      raise ConfigError(f"loss.{field}={loss[field]!r} needs loss.mining=all (got "
                        f"{loss.mining!r}); the miner does the mining.")
    if t.sampling in ("triplets", "pairs"):
      raise ConfigError(f"loss.{field}={loss[field]!r} needs in-batch sampling (pk or "
                        f"random); train.sampling={t.sampling!r} gives explicit tuples.")
  _choice(loss.embedding_regularizer, "loss.embedding_regularizer",
          ("none",) + tuple(loss_table.EMBEDDING_REGULARIZERS))
  _choice(loss.weight_regularizer, "loss.weight_regularizer",
          ("none",) + tuple(loss_table.WEIGHT_REGULARIZERS))
  for field in ("embedding_reg_weight", "weight_reg_weight"):
    _number(loss[field], f"loss.{field}")
  if "none" != loss.embedding_regularizer and loss.mining == "curriculum":
    raise ConfigError("loss.embedding_regularizer does not apply to loss.mining="
                      "curriculum (a loss per epoch); use a fixed loss.mining.")
  with_weights = [n for n, e in loss_table.LOSS_TABLE.items() if e.class_weights]
  if loss.weight_regularizer != "none" and loss.name not in with_weights:
    raise ConfigError(f"loss.weight_regularizer={loss.weight_regularizer!r} applies to "
                      f"{', '.join(with_weights)} only (loss.name={loss.name}).")
  batch = views * (t.classes_per_batch * t.samples_per_class if t.sampling == "pk"
                   else t.batch_size)
  if loss.xbm_size and loss.xbm_size < batch:
    raise ConfigError(f"loss.xbm_size={loss.xbm_size} is below the batch size {batch}; "
                      f"use loss.xbm_size >= {batch}.")


def _check_views(cfg: ml_collections.ConfigDict) -> None:
  """``data.views`` against the loss and the sampling, and ``loss.self_supervised``
  (``DataSpec.check`` has checked ``data.views`` against ``data.augment``)."""
  views, loss, t = int(cfg.data.views), cfg.loss, cfg.train
  _bool(loss.self_supervised, "loss.self_supervised")
  wanted = loss_table.LOSS_TABLE[loss.name].views
  if wanted != 1 and views != wanted:
    raise ConfigError(f"loss.name={loss.name} takes {wanted} views of each input; set "
                      f"data.views={wanted} (with data.augment=True).")
  if loss.self_supervised:
    if loss.name not in loss_table.SELF_SUPERVISED_LOSSES:
      raise ConfigError(f"loss.self_supervised=True applies to "
                        f"{', '.join(loss_table.SELF_SUPERVISED_LOSSES)} (PML's "
                        f"SelfSupervisedLoss), not loss.name={loss.name}.")
    if views != 2:
      raise ConfigError(f"loss.self_supervised=True takes two views of each input; set "
                        f"data.views=2 (with data.augment=True), not {views}.")
    if loss.xbm_size:
      raise ConfigError(f"loss.xbm_size={loss.xbm_size} does not apply with "
                        "loss.self_supervised=True (its labels are positions in the "
                        "batch, which a memory of past batches would confuse); set 0.")
    if loss.mining == "curriculum":
      raise ConfigError("loss.self_supervised=True does not apply to loss.mining="
                        "curriculum (a loss per epoch); use a fixed loss.mining.")
  if views > 1 and t.sampling in ("triplets", "pairs"):
    raise ConfigError(f"data.views={views} takes in-batch sampling (train.sampling=pk or "
                      f"random); train.sampling={t.sampling!r} draws explicit tuples.")


def _check_train(t: ml_collections.ConfigDict, loss_name: str) -> None:
  """The ``train`` section (its sampling against ``loss.name``)."""
  _int(t.epochs, "train.epochs", 1)
  _owned("train", samplers_lib.check_sampling, t.sampling)
  if t.sampling in ("triplets", "pairs") and loss_name not in ("triplet", "contrastive"):
    raise ConfigError(f"train.sampling={t.sampling!r} draws explicit tuples for the triplet "
                      f"/ contrastive losses; loss.name={loss_name} is in-batch: use "
                      "sampling pk or random.")
  if t.sampling == "triplets" and loss_name != "triplet":
    raise ConfigError("train.sampling='triplets' needs loss.name=triplet; use sampling "
                      "pairs, pk or random with the contrastive loss.")
  if t.sampling == "pairs" and loss_name != "contrastive":
    raise ConfigError("train.sampling='pairs' needs loss.name=contrastive; use sampling "
                      "triplets, pk or random with the triplet loss.")
  if t.sampling == "pk":
    _int(t.classes_per_batch, "train.classes_per_batch", 2, "a batch needs negatives")
    _int(t.samples_per_class, "train.samples_per_class", 2,
         f"a {loss_name} batch needs two examples of a class for a positive pair")
  else:
    _int(t.batch_size, "train.batch_size", 2)
  _int(t.steps_per_epoch, "train.steps_per_epoch", 1, optional=True)
  _owned("train", train_lib.check_optimizer, t.optimizer, t.lr_schedule)
  _number(t.learning_rate, "train.learning_rate", strict=True, hint="e.g. 1e-3")
  _int(t.warmup_steps, "train.warmup_steps", 0)
  _number(t.weight_decay, "train.weight_decay")
  _number(t.momentum, "train.momentum")
  _number(t.grad_clip_norm, "train.grad_clip_norm", strict=True, optional=True)
  _int(t.log_every, "train.log_every", 1)
  _choice(t.best_metric, "train.best_metric", RANKING_METRICS)
  _int(t.stop_after_steps, "train.stop_after_steps", 0, "0 turns it off")
  _int(t.print_every_steps, "train.print_every_steps", 0, "0 turns it off")
  _choice(t.nonfinite, "train.nonfinite", NONFINITE)
  _int(t.max_skipped_steps, "train.max_skipped_steps", 1)
  for field in ("data_parallel", "progress", "tensorboard", "outlier_anchors",
                "positive_is_anchor"):
    _bool(t[field], f"train.{field}")


def _check_margin(m: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict) -> None:
  """The ``margin`` section: its schedule's own argument checks
  (``tsm.margins.check_schedule``), without building it. The schedule's length only
  has to be a positive count here (``train.epochs`` is checked); the run builds the
  schedule once, over its real steps per epoch."""
  _choice(m.update_every, "margin.update_every", MARGIN_UPDATES)
  if m.schedule not in margins.SCHEDULES:
    raise ConfigError(f"margin.schedule={m.schedule!r} is unknown; use one of "
                      f"{', '.join(margins.SCHEDULES)}.")
  name, kwargs = schedule_arguments(cfg, num_updates=int(cfg.train.epochs))
  try:
    if name == "constant":   # constant's one argument is the section's initial_margin
      margins.check_margin("initial_margin", kwargs["margin"])
    else:
      margins.check_schedule(name, **kwargs)
  except ValueError as e:
    message = str(e).strip().splitlines()[0]
    raise ConfigError(message if message.startswith(("num_epochs", "stepwise")) else
                      f"margin.{message}") from None


def _check_eval(e: ml_collections.ConfigDict, best_metric: str) -> None:
  """The ``eval`` section (and ``train.best_metric`` against ``eval.ks``)."""
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
  if best_metric.startswith("recall@") and int(best_metric[7:]) not in e.ks:
    raise ConfigError(f"train.best_metric={best_metric!r} is not computed; add "
                      f"{best_metric[7:]} to eval.ks or pick another metric.")
  _int(e.knn_k, "eval.knn_k", 0, "0 turns k-NN off")


def _check_evaluation_distance(cfg: ml_collections.ConfigDict) -> None:
  """``eval.distance``, or ``loss.distance`` in its place: a distance evaluation ranks
  by (the SNR distance is a loss distance only)."""
  field = "eval.distance" if cfg.eval.distance is not None else "loss.distance"
  distance = evaluation_distance(cfg)
  if distance not in distances.RANKING_DISTANCES:
    how = ("use one of" if field == "eval.distance" else
           "set --config.eval.distance to one of")
    raise ConfigError(f"{field}={distance!r} is not a distance evaluation can rank by "
                      f"(no nearest-neighbour search); {how} "
                      f"{', '.join(distances.RANKING_DISTANCES)}.")


def _check_checkpoint(c: ml_collections.ConfigDict) -> None:
  """The ``checkpoint`` section."""
  _int(c.every_steps, "checkpoint.every_steps", 0, "0 checkpoints at epoch ends only")
  _int(c.every_epochs, "checkpoint.every_epochs", 0, "0 checkpoints after the last epoch")
  _int(c.keep, "checkpoint.keep", 1)
  _bool(c.async_save, "checkpoint.async_save")


def _check_distributed(d: ml_collections.ConfigDict) -> None:
  """The ``distributed`` section."""
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
  weights = cfg.loss.reduction_class_weights
  if cfg.loss.reduction == "class_weighted" and labels.size and labels.max() >= len(weights):
    raise ConfigError(f"loss.reduction_class_weights has {len(weights)} weights but the "
                      f"train split's labels go up to {labels.max()}; give one weight per "
                      f"class ({labels.max() + 1}).")
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
