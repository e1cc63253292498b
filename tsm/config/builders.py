"""Builders: a checked config to the typed objects of a run.

Each builder reads its section(s) of a config that passed
:func:`tsm.config.checks.check_config` and returns a library object that takes no
config: a ``tsm.data.DataSpec`` and the loaded splits, a Flax model (or a frozen
pretrained trunk), a loss function, a margin schedule, an optax optimiser, a sampler and
the evaluators. The typed objects validate their own arguments; the checks call those
validations before anything is loaded, so a builder meets no bad value.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import optax

from tsm import evaluation, margins, models
from tsm import train as train_lib
from tsm.config import loss_table
from tsm.config.defaults import MINIMISED_METRICS
from tsm.data import datasets as datasets_lib
from tsm.data import samplers as samplers_lib
from tsm.data import spec as spec_lib


def data_spec(cfg: ml_collections.ConfigDict) -> spec_lib.DataSpec:
  """The ``data`` section as a :class:`tsm.data.DataSpec`."""
  return spec_lib.DataSpec(**cfg.data)


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


def build_model(cfg: ml_collections.ConfigDict, input_shape: Sequence[int]) -> Any:
  """The embedding model of the ``model`` section for inputs of ``input_shape`` (a
  frozen ``model.trunk``'s features for a feature-cache run)."""
  m = _model_kwargs(cfg)
  return models.create_model(m.pop("name"), input_shape=input_shape, **m)


def build_loss(cfg: ml_collections.ConfigDict, num_classes: int | None = None) -> Any:
  """The loss of the ``loss`` section: ``(embeddings, labels, margin) -> (loss, stats)``
  in the batch layout of ``train.sampling`` (explicit triplets / pairs for paper B's
  samplers), or a ``tsm.losses.ParametricLoss`` for the losses with class vectors or a
  centre bank (they need ``num_classes``), or a cross-batch memory (``loss.xbm_size``).
  Losses without a margin ignore the schedule's. Built from the entry of ``loss.name``
  in :data:`tsm.config.loss_table.LOSS_TABLE`.
  """
  return loss_table.build(cfg.loss, cfg.train.sampling, num_classes)


def schedule_length(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Number of ``update`` calls of the margin schedule over the run."""
  if cfg.margin.update_every == "step":
    return int(cfg.train.epochs) * int(steps_per_epoch)
  return int(cfg.train.epochs)


def schedule_arguments(cfg: ml_collections.ConfigDict,
                       num_updates: int) -> tuple[str, dict[str, Any]]:
  """The ``margin`` section as ``(schedule, keyword arguments of its tsm.margins
  constructor)``; ``num_updates``: the schedule's ``update`` calls over the run
  (:func:`schedule_length`)."""
  m = cfg.margin
  if m.schedule == "constant":
    return "constant", {"margin": m.initial_margin}
  if m.schedule in ("linear", "exponential"):
    return m.schedule, {"initial_margin": m.initial_margin, "final_margin": m.final_margin,
                        "num_epochs": num_updates}
  if m.schedule == "stepwise":
    given = ({"values": m["values"]} if m["values"] is not None   # item access: a
             else {"increment": m.increment})                     # ConfigDict method
    return "stepwise", {"initial_margin": m.initial_margin, "boundaries": m.boundaries,
                        **given}
  if m.schedule == "dams":
    return "dams", {"initial_margin": m.initial_margin, "threshold": m.threshold,
                    "increment": m.increment, "max_margin": m.max_margin}
  return "controller", {"initial_margin": m.initial_margin, "target": m.target,
                        "gain": m.gain, "min_margin": m.min_margin,
                        "max_margin": 2.0 if m.max_margin is None else m.max_margin,
                        "deadband": m.deadband}


def build_schedule(cfg: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> margins.MarginSchedule:
  """The margin schedule of the ``margin`` section (:func:`schedule_arguments` over the
  run's :func:`schedule_length`; ``tsm.config.check_config`` has checked them)."""
  name, kwargs = schedule_arguments(cfg, schedule_length(cfg, steps_per_epoch))
  return getattr(margins, name)(**kwargs)


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
  """The sampler of the ``train`` section over ``labels`` (a
  :class:`tsm.data.MultiViewSampler` with ``data.views`` > 1: its batch size and P x K
  count inputs per view)."""
  t = cfg.train
  return samplers_lib.make_sampler(
      t.sampling, labels, seed=seed, classes_per_batch=t.classes_per_batch,
      samples_per_class=t.samples_per_class, batch_size=t.batch_size,
      steps_per_epoch=t.steps_per_epoch, max_classes=max_classes,
      outlier_anchors=t.outlier_anchors, positive_is_anchor=t.positive_is_anchor,
      views=int(cfg.data.views))


def _val_loss_batches(cfg: ml_collections.ConfigDict, splits: Any) -> np.ndarray | None:
  """Fixed validation-loss index batches (epoch 0 of a sampler over val), or None; with
  ``data.views`` > 1 the views are the same unaugmented inputs (the loss sees the
  training batch's layout)."""
  labels = np.asarray(splits.val.labels)
  counts = np.bincount(labels[labels >= 0]) if labels.size else np.zeros(0, int)
  with_pairs = int(np.count_nonzero(counts >= 2))
  if with_pairs < 2:
    return None
  indices = build_sampler(cfg, labels, cfg.seed + 1, max_classes=with_pairs).epoch(0)
  return indices[:cfg.eval.val_batches] if cfg.eval.val_batches else indices


def evaluation_distance(cfg: ml_collections.ConfigDict) -> str:
  """The distance retrieval, verification and k-NN rank by: ``eval.distance``, or
  ``loss.distance`` when it is None."""
  return cfg.eval.distance if cfg.eval.distance is not None else cfg.loss.distance


def build_evaluators(cfg: ml_collections.ConfigDict, splits: Any
                     ) -> tuple[list[Any], list[Any]]:
  """``(epoch evaluators, final evaluators)`` of the ``eval`` section.

  Every epoch: the validation loss (at ``eval.val_margin``); every ``eval.every_epochs``:
  validation retrieval and verification. Final (on the best state, into the summary):
  test retrieval and verification (pairs seeded by ``data.data_seed``, the threshold
  chosen on validation pairs seeded by ``seed``), validation retrieval and verification,
  and the test k-NN accuracy on splits whose test classes are training classes.
  """
  e, distance, seed = cfg.eval, evaluation_distance(cfg), int(cfg.seed)
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
