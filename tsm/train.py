"""Training state, the jitted train / eval steps, the end-of-epoch margin update.

The whole training state is one pytree, :class:`TrainState`: step, model parameters,
BatchNorm statistics, the loss's own parameters and state (``{}`` for plain losses),
optax state, the margin schedule's :class:`tsm.margins.MarginState` (the current margin
and the running counts) and a PRNG key. One compiled ``train_step(state, batch) ->
(state, metrics)`` does forward, loss, backward, the optimiser update (of the model's
and the loss's parameters together), the loss's own state update and the margin
bookkeeping; the margin is read from the state (a traced value), so a new margin never
recompiles it. ``state`` is donated: its buffers are reused for the new state.

Everything here takes built objects: a Flax module, a loss, a margin schedule and an
optax transform. A loss is either a function ``(embeddings, labels, margin) -> (loss,
stats)`` or a :class:`tsm.losses.ParametricLoss`; ``stats`` has the common statistics
shape (``num_total``, ``num_active``, ``num_easy``), so any schedule accumulates from any
loss. A batch is a dict ``{"inputs": float32 [N, ...], "labels": int32 [N]}``; losses
over explicit tuples take the batch layouts of :func:`tsm.losses.explicit_triplets_loss`
and :func:`tsm.losses.explicit_pairs_loss`.

Metrics (float32 scalars, left on the device: the fit loop fetches them in bulk):
``loss``, ``grad_norm`` (global L2 norm of the gradient, ``optax.tree.norm``), ``margin``
(the margin this step used), ``easy_share`` (``num_easy / num_total``), ``nonfinite``
(1.0 when the loss or the gradient is not finite, or, when such steps are skipped, the
updated parameters), and every scalar field of the loss's
stats (``num_total``, ``num_active``, ``num_easy``, ``active_ratio``, ``mean_pos_dist``,
``mean_neg_dist``, and the loss's own counts such as ``num_triplets``, ``num_semihard``,
``num_hard`` or ``num_pairs``, ``num_positive``, ``num_negative``).

Data parallelism (one or several hosts): pass a ``jax.sharding.Mesh`` with a ``"data"``
axis (``data_mesh()``); the batch is sharded along it and the state replicated. The loss is
still one global jit program, so in-batch mining sees the whole global batch (XLA inserts
the all-gathers). Multi-host batches are global arrays built from each host's share
(:mod:`tsm.distributed`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
from tsm import _extras

_extras.require(__name__, "flax", "optax")   # else one line naming tsm[train]

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tsm import distributed
from tsm import losses as losses_lib
from tsm import margins as margins_lib
from tsm.data import loader
from tsm.distributed import data_mesh, replicate  # pylint: disable=unused-import  # re-exported

Metrics = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters.
    batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
    loss_params: the loss's trainable parameters (``{}`` for plain losses), optimised
      with ``params``.
    loss_state: the loss's non-gradient state (``{}`` for plain losses), updated by the
      loss's own rule in every step.
    opt_state: optax state of ``(params, loss_params)``.
    margin_state: the margin schedule's state (``margin_state.margin`` is the margin).
    rng: PRNG key data; step ``s`` uses ``fold_in(rng, s)``.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  loss_params: Any
  loss_state: Any
  opt_state: Any
  margin_state: margins_lib.MarginState
  rng: jax.Array


def create_train_state(variables: dict[str, Any], tx: optax.GradientTransformation,
                       schedule: margins_lib.MarginSchedule, rng: chex.PRNGKey,
                       loss_variables: losses_lib.LossVariables | None = None
                       ) -> TrainState:
  """Builds the initial state from model variables, an optimiser and a margin schedule.

  Args:
    variables: ``{"params": ..., ["batch_stats": ...]}`` from ``tsm.models.init_variables``
      (or ``model.init``).
    tx: the optimiser, applied to the pair ``(params, loss_params)``.
    schedule: the margin schedule.
    rng: PRNG key for dropout and other per-step randomness.
    loss_variables: the loss's parameters and state (``ParametricLoss.init``); None for
      a plain loss.

  Returns:
    A :class:`TrainState` at step 0.
  """
  params = variables["params"]
  if loss_variables is None:
    loss_variables = losses_lib.LossVariables(params={}, state={})
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    loss_params=loss_variables.params, loss_state=loss_variables.state,
                    opt_state=tx.init((params, loss_variables.params)),
                    margin_state=schedule.init(), rng=rng)


def initial_state(model: flax.linen.Module, loss: LossFn | losses_lib.ParametricLoss,
                  schedule: margins_lib.MarginSchedule, tx: optax.GradientTransformation,
                  input_shape: Sequence[int], seed: int,
                  init_fn: Callable[..., Any] | None = None) -> TrainState:
  """The fresh train state of a run with ``seed`` (what :func:`tsm.fit.fit` starts from).

  The model's variables come from ``split(key(seed))[0]``, the state's PRNG key (dropout)
  from ``split(key(seed))[1]`` and the loss's variables (sized by the model's embedding
  width) from ``fold_in(key(seed), 1)``.

  Args:
    model: the embedding model.
    loss: the loss (see :func:`make_train_step`).
    schedule: the margin schedule.
    tx: the optimiser.
    input_shape: one example's shape (no batch axis).
    seed: the run's seed.
    init_fn: ``(rng, input_shape) -> variables``; default ``model.init`` on a zero batch.

  Returns:
    A :class:`TrainState` at step 0, on the default device.
  """
  init_rng, state_rng = jax.random.split(jax.random.key(seed))
  loss_rng = jax.random.fold_in(jax.random.key(seed), 1)
  shape = tuple(input_shape)
  zeros = jnp.zeros((1,) + shape, jnp.float32)
  if init_fn is None:
    variables = model.init({"params": init_rng}, zeros, train=False)
  else:
    variables = init_fn(init_rng, shape)
  probe = jax.eval_shape(lambda v: model.apply(v, zeros, train=False), variables)
  if getattr(probe, "ndim", None) != 2 or probe.shape[0] != 1:
    got = getattr(probe, "shape", type(probe).__name__)
    raise ValueError(f"the model returns {got} for a batch of one input of shape "
                     f"{shape}; a model must return [batch, D] embeddings (add a Dense "
                     "head or reshape its output).")
  loss_variables = losses_lib.as_parametric(loss).init(loss_rng, int(probe.shape[-1]))
  return create_train_state(variables, tx, schedule, jax.random.key_data(state_rng),
                            loss_variables)


def check_optimizer(optimizer: str, lr_schedule: str = "constant") -> None:
  """Raises a one-line ValueError, naming the argument, for an unknown optimiser or
  learning-rate schedule name (see :func:`make_optimizer`)."""
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r} is unknown; use one of "
                     f"{', '.join(OPTIMIZERS)}.")
  if lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"lr_schedule={lr_schedule!r} is unknown; use one of "
                     f"{', '.join(LR_SCHEDULES)}.")


def make_optimizer(*, optimizer: str = "adam", learning_rate: float = 1e-3,
                   lr_schedule: str = "constant", warmup_steps: int = 0,
                   weight_decay: float = 0.0, momentum: float = 0.9,
                   grad_clip_norm: float | None = None,
                   total_steps: int = 1) -> optax.GradientTransformation:
  """An optax optimiser by name, with an optional warm-up, cosine decay and clipping.

  Args:
    optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
    learning_rate: peak learning rate.
    lr_schedule: ``"constant"`` or ``"cosine"`` (decay to 0 over ``total_steps``).
    warmup_steps: linear warm-up steps from 0.
    weight_decay: decoupled weight decay (adamw, sgd).
    momentum: sgd momentum (0 = none).
    grad_clip_norm: clip the global gradient norm to this (None: no clipping).
    total_steps: optimiser steps of the whole run (for the cosine schedule).

  Returns:
    An ``optax.GradientTransformation``.
  """
  check_optimizer(optimizer, lr_schedule)
  lr = float(learning_rate)
  warmup = int(warmup_steps)
  if lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
  elif warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  else:
    schedule = lr
  if optimizer == "adam":
    tx = optax.adam(schedule)
  elif optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(weight_decay))
  else:
    tx = optax.chain(optax.add_decayed_weights(float(weight_decay)),
                     optax.sgd(schedule, momentum=float(momentum) or None))
  if grad_clip_norm is not None:
    tx = _clipped(tx, float(grad_clip_norm))
  return tx


def _clipped(tx: optax.GradientTransformation, max_norm: float
             ) -> optax.GradientTransformation:
  """``tx`` applied to gradients clipped to global norm ``max_norm``, with ``tx``'s own
  state: ``optax.chain(optax.clip_by_global_norm(max_norm), tx)`` computes the same
  updates but nests the state in a tuple, so adding or removing clipping would change
  the state's structure and a run could not resume with it changed."""
  clip = optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    clipped, _ = clip.update(updates, clip.init(params))
    return tx.update(clipped, state, params)

  return optax.GradientTransformation(tx.init, update)


def stats_metrics(stats: Any) -> Metrics:
  """Every scalar field of a loss's stats as float32 metrics, plus the contract counts.

  Args:
    stats: a loss's statistics (NamedTuple or mapping).

  Returns:
    A dict with ``num_total``, ``num_active``, ``num_easy``, ``easy_share`` and every
    scalar field of ``stats``.
  """
  fields = stats._asdict() if hasattr(stats, "_asdict") else dict(stats)
  out = {k: jnp.asarray(v, jnp.float32) for k, v in fields.items() if jnp.ndim(v) == 0}
  out.update(losses_lib.common_stats(stats))
  out["easy_share"] = out["num_easy"] / jnp.maximum(out["num_total"], 1.0)
  return out


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


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def train_step_fn(model: flax.linen.Module, loss: LossFn | losses_lib.ParametricLoss,
                  schedule: margins_lib.MarginSchedule, tx: optax.GradientTransformation,
                  *, margin_update: str = "epoch", skip_nonfinite: bool = False
                  ) -> Callable[[TrainState, dict[str, jax.Array]],
                                tuple[TrainState, Metrics]]:
  """The pure, uncompiled ``train_step(state, batch) -> (state, metrics)``.

  :func:`make_train_step` compiles it for one run; :func:`tsm.seeds.make_seeds_step`
  maps it over a seed axis. Arguments as in :func:`make_train_step`.

  Returns:
    The step function (jit-, grad- and vmap-safe).
  """
  if margin_update not in ("epoch", "step"):
    raise ValueError(f"margin_update={margin_update!r} is unknown; use 'epoch' or 'step'.")
  loss = losses_lib.as_parametric(loss)
  per_step_update = margin_update == "step"

  def train_step(state: TrainState, batch: dict[str, jax.Array]
                 ) -> tuple[TrainState, Metrics]:
    inputs, labels = batch["inputs"], batch["labels"]
    chex.assert_rank(labels, 1)
    chex.assert_equal_shape_prefix([inputs, labels], 1)
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    margin = state.margin_state.margin

    def objective(trainable):
      params, loss_params = trainable
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
      value, stats, new_loss_state = loss.apply(loss_params, state.loss_state, embeddings,
                                                labels, margin)
      return value, (stats, new_batch_stats, new_loss_state)

    trainable = (state.params, state.loss_params)
    (value, (stats, batch_stats, loss_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(trainable)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    params, loss_params = optax.apply_updates(trainable, updates)
    loss_state = jax.lax.stop_gradient(loss_state)
    margin_state = schedule.accumulate(state.margin_state, stats)
    if per_step_update:
      margin_state = schedule.update(margin_state)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    if skip_nonfinite:   # an update can overflow finite parameters: skip it too
      finite = finite & _all_finite((params, loss_params, batch_stats, loss_state))
    metrics = dict(stats_metrics(stats), loss=value, margin=margin, grad_norm=grad_norm,
                   nonfinite=(~finite).astype(jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              loss_params=loss_params, loss_state=loss_state,
                              opt_state=opt_state, margin_state=margin_state)
    if skip_nonfinite:
      kept = state.replace(step=state.step + 1)
      new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                         new_state, kept)
    return new_state, metrics

  return train_step


def make_train_step(model: flax.linen.Module, loss: LossFn | losses_lib.ParametricLoss,
                    schedule: margins_lib.MarginSchedule, tx: optax.GradientTransformation,
                    *, mesh: Mesh | None = None, margin_update: str = "epoch",
                    skip_nonfinite: bool = False
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, Metrics]]:
  """Builds the jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

  The step embeds the batch in training mode (dropout from ``fold_in(state.rng,
  state.step)``, BatchNorm statistics updated), takes the loss at
  ``state.margin_state.margin``, applies ``tx`` to the model's and the loss's
  parameters, stores the loss's new state, and adds the batch's counts to the margin
  state (``schedule.accumulate``); with ``margin_update == "step"`` it also applies
  ``schedule.update`` (otherwise call :func:`make_end_of_epoch`'s function once per
  epoch).

  Args:
    model: the embedding model (``model.apply(variables, x, train=...)``).
    loss: ``(embeddings, labels, margin) -> (loss, stats)`` or a
      :class:`tsm.losses.ParametricLoss`.
    schedule: the margin schedule.
    tx: the optimiser ``state.opt_state`` belongs to.
    mesh: optional mesh with a ``"data"`` axis: the batch is sharded along it, the state
      replicated. The global batch must divide evenly over the axis.
    margin_update: ``"epoch"`` or ``"step"``.
    skip_nonfinite: when the loss, the gradient or the updated parameters are not
      finite, keep the old state (the step counter still advances) instead of applying
      the update; the step's ``nonfinite`` metric is 1.

  Returns:
    The compiled step function.
  """
  train_step = train_step_fn(model, loss, schedule, tx, margin_update=margin_update,
                             skip_nonfinite=skip_nonfinite)
  state_sharding, batch_sharding = _shardings(mesh)
  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, state_sharding))


def make_eval_step(model: flax.linen.Module, loss: LossFn | losses_lib.ParametricLoss,
                   *, mesh: Mesh | None = None, batch_sharded: bool = True
                   ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], Metrics]:
  """Builds the jitted ``eval_step(state, batch, margin) -> metrics`` (validation loss).

  Embeds the batch in inference mode and returns the loss and its statistics at
  ``margin`` (a float32 scalar), with the loss's current parameters and state (the state
  is not updated). Nothing is donated.

  Args:
    model: the embedding model.
    loss: the training loss (see :func:`make_train_step`).
    mesh: optional mesh with a ``"data"`` axis (see :func:`make_train_step`).
    batch_sharded: with a mesh, whether the batch is sharded along ``"data"`` (False:
      replicated, for batches whose size does not divide the device count).

  Returns:
    The compiled eval function.
  """
  loss = losses_lib.as_parametric(loss)

  def eval_step(state: TrainState, batch: dict[str, jax.Array],
                margin: jax.Array) -> Metrics:
    embeddings = model.apply(_variables(state.params, state.batch_stats),
                             batch["inputs"], train=False)
    value, stats, _ = loss.apply(state.loss_params, state.loss_state, embeddings,
                                 batch["labels"], margin)
    return dict(stats_metrics(stats), loss=value)

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

  Donates ``state``. Call it after an epoch's last train step (not with
  ``margin_update="step"``: the train step then updates itself).

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


def make_loss_on_batches(model: flax.linen.Module, loss_of: Callable[[int], Any],
                         splits: Any, mesh: Mesh | None = None) -> Callable[..., Any]:
  """``(state, split, index_batches, margin, epoch=0) -> [host metric dicts]``: the loss of
  ``epoch`` (``loss_of(epoch)``) on fixed batches, one compiled step per loss and layout."""
  steps: dict[tuple[int, bool], Any] = {}

  def loss_fn(state, split_name: str, index_batches: Any, margin: float,
              epoch: int = 0):
    # Batches that do not split over the devices are loaded whole by every host and
    # replicated; the others are sharded like the train batches.
    sharded = distributed.divides(index_batches.shape[1], mesh)
    loss = loss_of(epoch)
    key = (id(loss), sharded)
    if key not in steps:
      steps[key] = make_eval_step(model, loss, mesh=mesh, batch_sharded=sharded)
    if sharded:
      index_batches = distributed.host_batches(index_batches, mesh)
    margin = jnp.float32(margin)
    outputs = [steps[key](state, distributed.shard_batch(batch, mesh if sharded else None),
                          margin)
               for batch in loader.batches(getattr(splits, split_name), index_batches)]
    return jax.device_get(outputs)

  return loss_fn


__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "TrainState", "check_optimizer",
           "create_train_state", "data_mesh", "initial_state",
           "make_end_of_epoch",
           "make_eval_step", "make_loss_on_batches", "make_optimizer", "make_train_step",
           "replicate", "stats_metrics", "train_step_fn"]
