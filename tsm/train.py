"""Training state, the jitted train / eval steps, the end-of-epoch margin update.

The whole training state is one pytree, :class:`TrainState`: step, model parameters,
BatchNorm statistics, optax state, the margin schedule's :class:`tsm.margins.MarginState`
(the current margin and the running triplet counts) and a PRNG key. One compiled
``train_step(state, batch) -> (state, metrics)`` does forward, loss, backward, the
optimiser update and the margin bookkeeping; the margin is read from the state (a traced
value), so a new margin never recompiles it. ``state`` is donated: its buffers are reused
for the new state.

A batch is a dict ``{"inputs": float32 [N, ...], "labels": int32 [N]}``; the layout of
``N`` depends on ``config.train.sampling``:

* ``"pk"``, ``"random"``: ``N = B`` examples; the loss is taken in-batch over every
  valid triplet / pair (``tsm.losses.triplet_margin_loss`` / ``contrastive_loss``).
* ``"triplets"``: ``N = 3B``, anchors, positives and negatives concatenated
  (``tsm.losses.triplet_margin_loss_from_triplets``; paper B's random triplets).
* ``"pairs"``: ``N = 2B``, first and second members concatenated, ``same`` from the
  labels (``tsm.losses.contrastive_loss_from_pairs``; paper B's random pairs).

Metrics (float32 scalars, left on the device: the fit loop fetches them in bulk):
``loss``, ``grad_norm`` (global L2 norm of the gradient, ``optax.tree.norm``), ``margin``
(the margin this step used), ``active_ratio``, ``mean_pos_dist``, ``mean_neg_dist``, ``easy_share``,
plus for triplet losses ``num_triplets``, ``num_easy``, ``num_semihard``, ``num_hard``, and
for the contrastive loss ``num_pairs``, ``num_positive``, ``num_negative``, ``num_active``,
``num_easy`` (pairs with zero loss). The margin schedule accumulates ``(num_triplets,
num_easy)`` (for the contrastive loss ``(num_pairs, num_easy)``), so DAMS on a
contrastive loss raises the margin on the share of zero-loss pairs.

Data parallelism (one or several hosts): pass a ``jax.sharding.Mesh`` with a ``"data"``
axis (``data_mesh()``); the batch is sharded along it and the state replicated. The loss is
still one global jit program, so in-batch mining sees the whole global batch (XLA inserts
the all-gathers). Multi-host batches are global arrays built from each host's share
(:mod:`tsm.distributed`).
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tsm import losses
from tsm import margins as margins_lib
from tsm.distributed import data_mesh, replicate  # pylint: disable=unused-import  # re-exported

Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters.
    batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
    opt_state: optax state.
    margin_state: the margin schedule's state (``margin_state.margin`` is the margin).
    rng: PRNG key (``jax.random.PRNGKey``); step ``s`` uses ``fold_in(rng, s)``.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  margin_state: margins_lib.MarginState
  rng: jax.Array


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation,
                       schedule: margins_lib.MarginSchedule,
                       rng: chex.PRNGKey) -> TrainState:
  """Builds the initial state from model variables, an optimiser and a margin schedule.

  Args:
    variables: ``{"params": ..., ["batch_stats": ...]}`` from ``tsm.models.init_variables``.
    tx: the optimiser.
    schedule: the margin schedule.
    rng: PRNG key for dropout and other per-step randomness.

  Returns:
    A :class:`TrainState` at step 0.
  """
  params = variables["params"]
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), margin_state=schedule.init(), rng=rng)


def make_optimizer(train_config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """The optax optimiser a ``config.train`` section describes.

  Fields: ``optimizer`` (``"adam"``, ``"adamw"``, ``"sgd"``), ``learning_rate``,
  ``lr_schedule`` (``"constant"`` or ``"cosine"`` decay to 0 over ``total_steps``),
  ``warmup_steps`` (linear warm-up), ``weight_decay`` (adamw, sgd), ``momentum`` (sgd),
  ``grad_clip_norm`` (None: no clipping).

  Args:
    train_config: the ``train`` section of the config.
    total_steps: optimiser steps of the whole run (for the cosine schedule).

  Returns:
    An ``optax.GradientTransformation``.
  """
  lr = float(train_config.learning_rate)
  warmup = int(train_config.warmup_steps)
  if train_config.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
  elif warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  else:
    schedule = lr
  name = train_config.optimizer
  if name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(train_config.weight_decay))
  else:
    tx = optax.chain(optax.add_decayed_weights(float(train_config.weight_decay)),
                     optax.sgd(schedule, momentum=float(train_config.momentum) or None))
  if train_config.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(float(train_config.grad_clip_norm)), tx)
  return tx


def make_loss_fn(config: ml_collections.ConfigDict
                 ) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Metrics]]:
  """``(embeddings [N, D], labels [N], margin) -> (loss, metrics)`` for the config.

  The batch layout ``N`` follows ``config.train.sampling`` (see the module docstring).
  The metrics hold the loss statistics (counts, active ratio, mean distances) and
  ``num_easy`` plus ``num_triplets`` or ``num_pairs``, which the margin schedule
  accumulates.

  Args:
    config: the full config (``loss`` and ``train.sampling`` are read).

  Returns:
    The loss function.
  """
  loss_cfg = config.loss
  sampling = config.train.sampling
  distance = loss_cfg.distance
  reduction = loss_cfg.reduction

  def triplet_metrics(stats: losses.TripletStats) -> Metrics:
    return {k: getattr(stats, k) for k in (
        "num_triplets", "num_easy", "num_semihard", "num_hard", "active_ratio",
        "mean_pos_dist", "mean_neg_dist")}

  def pair_metrics(stats: losses.PairStats) -> Metrics:
    out = {k: getattr(stats, k) for k in (
        "num_pairs", "num_positive", "num_negative", "num_active", "active_ratio",
        "mean_pos_dist", "mean_neg_dist")}
    out["num_easy"] = stats.num_pairs - stats.num_active
    return out

  def loss_fn(embeddings: jax.Array, labels: jax.Array,
              margin: jax.Array) -> tuple[jax.Array, Metrics]:
    if loss_cfg.name == "triplet":
      if sampling == "triplets":
        anchor, positive, negative = jnp.split(embeddings, 3)
        loss, stats = losses.triplet_margin_loss_from_triplets(
            anchor, positive, negative, margin, distance=distance, reduction=reduction)
      else:
        loss, stats = losses.triplet_margin_loss(
            embeddings, labels, margin, distance=distance, mining=loss_cfg.mining,
            reduction=reduction)
      return loss, triplet_metrics(stats)
    if sampling == "pairs":
      x1, x2 = jnp.split(embeddings, 2)
      l1, l2 = jnp.split(labels, 2)
      loss, stats = losses.contrastive_loss_from_pairs(
          x1, x2, l1 == l2, margin, distance=distance, reduction=reduction,
          positive_margin=loss_cfg.positive_margin)
    else:
      loss, stats = losses.contrastive_loss(
          embeddings, labels, margin, distance=distance, reduction=reduction,
          positive_margin=loss_cfg.positive_margin)
    return loss, pair_metrics(stats)

  return loss_fn


def _schedule_counts(metrics: Metrics) -> dict[str, jax.Array]:
  total = metrics["num_triplets"] if "num_triplets" in metrics else metrics["num_pairs"]
  return {"num_triplets": total, "num_easy": metrics["num_easy"]}


def _with_easy_share(metrics: Metrics) -> Metrics:
  counts = _schedule_counts(metrics)
  metrics["easy_share"] = counts["num_easy"] / jnp.maximum(counts["num_triplets"], 1.0)
  return metrics


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  if batch_stats:
    return {"params": params, "batch_stats": batch_stats}
  return {"params": params}


def _shardings(mesh: Mesh | None):
  """(state sharding, batch sharding) for ``mesh``; ``(None, None)`` without one."""
  if mesh is None:
    return None, None
  if "data" not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no 'data' axis; build the mesh "
                     "with axis_names=('data',).")
  return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def make_train_step(config: ml_collections.ConfigDict, model: flax.linen.Module,
                    schedule: margins_lib.MarginSchedule,
                    tx: optax.GradientTransformation, mesh: Mesh | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, Metrics]]:
  """Builds the jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

  The step embeds the batch in training mode (dropout from ``fold_in(state.rng,
  state.step)``, BatchNorm statistics updated), takes the loss at
  ``state.margin_state.margin``, applies ``tx``, and adds the batch's triplet counts to
  the margin state (``schedule.accumulate``); with ``config.margin.update_every ==
  "step"`` it also applies ``schedule.update`` (otherwise call :func:`make_end_of_epoch`'s
  function once per epoch).

  Args:
    config: the full config.
    model: the embedding model (``model.apply(variables, x, train=...)``).
    schedule: the margin schedule.
    tx: the optimiser ``state.opt_state`` belongs to.
    mesh: optional mesh with a ``"data"`` axis: the batch is sharded along it, the state
      replicated. The global batch must divide evenly over the axis.

  Returns:
    The compiled step function.
  """
  loss_fn = make_loss_fn(config)
  per_step_update = config.margin.get("update_every", "epoch") == "step"

  def train_step(state: TrainState, batch: dict[str, jax.Array]
                 ) -> tuple[TrainState, Metrics]:
    inputs, labels = batch["inputs"], batch["labels"]
    chex.assert_rank(labels, 1)
    chex.assert_equal_shape_prefix([inputs, labels], 1)
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    margin = state.margin_state.margin

    def objective(params):
      variables = _variables(params, state.batch_stats)
      if state.batch_stats:
        embeddings, updates = model.apply(variables, inputs, train=True,
                                          rngs={"dropout": dropout_rng},
                                          mutable=["batch_stats"])
        new_batch_stats = updates["batch_stats"]
      else:
        embeddings = model.apply(variables, inputs, train=True,
                                 rngs={"dropout": dropout_rng})
        new_batch_stats = state.batch_stats
      loss, metrics = loss_fn(embeddings, labels, margin)
      return loss, (metrics, new_batch_stats)

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    margin_state = schedule.accumulate(state.margin_state, _schedule_counts(metrics))
    if per_step_update:
      margin_state = schedule.update(margin_state)
    metrics = _with_easy_share(dict(metrics, loss=loss, margin=margin,
                                    grad_norm=optax.tree.norm(grads)))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, margin_state=margin_state)
    return new_state, metrics

  state_sharding, batch_sharding = _shardings(mesh)
  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, state_sharding))


def make_eval_step(config: ml_collections.ConfigDict, model: flax.linen.Module,
                   mesh: Mesh | None = None, *, batch_sharded: bool = True
                   ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], Metrics]:
  """Builds the jitted ``eval_step(state, batch, margin) -> metrics`` (validation loss).

  Embeds the batch in inference mode and returns the loss and its statistics at
  ``margin`` (a float32 scalar: the fit loop passes ``config.eval.val_margin``, or the
  current margin when that is None), with the same loss, sampling and reduction as
  training. Nothing is donated.

  Args:
    config: the full config.
    model: the embedding model.
    mesh: optional mesh with a ``"data"`` axis (see :func:`make_train_step`).
    batch_sharded: with a mesh, whether the batch is sharded along ``"data"`` (False:
      replicated, for batches whose size does not divide the device count).

  Returns:
    The compiled eval function.
  """
  loss_fn = make_loss_fn(config)

  def eval_step(state: TrainState, batch: dict[str, jax.Array],
                margin: jax.Array) -> Metrics:
    embeddings = model.apply(_variables(state.params, state.batch_stats),
                             batch["inputs"], train=False)
    loss, metrics = loss_fn(embeddings, batch["labels"], margin)
    return _with_easy_share(dict(metrics, loss=loss))

  state_sharding, batch_sharding = _shardings(mesh)
  if mesh is None:
    return jax.jit(eval_step)
  if not batch_sharded:
    batch_sharding = state_sharding
  return jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding, state_sharding),
                 out_shardings=state_sharding)


def make_end_of_epoch(schedule: margins_lib.MarginSchedule, mesh: Mesh | None = None
                      ) -> Callable[[TrainState], TrainState]:
  """Builds the jitted ``end_of_epoch(state) -> state``: applies ``schedule.update``.

  Donates ``state``. Call it after an epoch's last train step (not when
  ``config.margin.update_every == "step"``: the train step then updates itself).

  Args:
    schedule: the margin schedule of the train step.
    mesh: optional mesh; the state stays replicated on it.

  Returns:
    The compiled function.
  """

  def end_of_epoch(state: TrainState) -> TrainState:
    return state.replace(margin_state=schedule.update(state.margin_state))

  state_sharding, _ = _shardings(mesh)
  if mesh is None:
    return jax.jit(end_of_epoch, donate_argnums=0)
  return jax.jit(end_of_epoch, donate_argnums=0, in_shardings=state_sharding,
                 out_shardings=state_sharding)


__all__ = ["TrainState", "create_train_state", "data_mesh",
           "make_end_of_epoch", "make_eval_step", "make_loss_fn", "make_optimizer",
           "make_train_step", "replicate"]
