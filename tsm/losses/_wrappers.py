"""Loss wrappers: a weighted sum of losses, and the self-supervised (two views) form.

pytorch-metric-learning's ``MultipleLosses`` and ``SelfSupervisedLoss``; the cross-batch
memory is :mod:`tsm.losses._xbm`. ``stacked_views`` makes a loss of two views (VICReg,
the self-supervised form) a loss of the train step's two-view batches
(``tsm.data.MultiViewSampler``).

References:
  pytorch-metric-learning 2.9 ``losses/multiple_losses.py``,
  ``losses/self_supervised_loss.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp

from tsm.losses._base import (LossVariables, ParametricLoss, as_parametric,
                              check_inputs, common_stats)


def _named(items: Sequence[Any] | Mapping[str, Any], what: str) -> dict[str, Any]:
  if isinstance(items, Mapping):
    return dict(items)
  return {f"{what}{i}": item for i, item in enumerate(items)}


def with_miner(loss_fn: Callable[..., tuple[chex.Array, Any]],
               miner: Callable[..., chex.Array]) -> Callable[..., tuple[chex.Array, Any]]:
  """``loss_fn`` over the pairs / triplets ``miner`` selects in each batch (PML's
  ``indices_tuple = miner(embeddings, labels); loss(embeddings, labels,
  indices_tuple)``).

  Args:
    loss_fn: a loss taking ``pair_weights`` / ``triplet_weights``.
    miner: ``(embeddings, labels) -> weights``, a miner of :mod:`tsm.miners`.

  Returns:
    ``(embeddings, labels, margin) -> (loss, stats)``.
  """
  def mined(embeddings, labels, margin):
    weights = jax.lax.stop_gradient(miner(embeddings, labels))
    key = "triplet_weights" if weights.ndim == 3 else "pair_weights"
    return loss_fn(embeddings, labels, margin, **{key: weights})
  return mined


def multiple_losses(losses: Sequence[Any] | Mapping[str, Any], *,
                    weights: Sequence[float] | Mapping[str, float] | None = None,
                    miners: Sequence[Any] | Mapping[str, Any] | None = None,
                    stats_from: str | None = None) -> ParametricLoss:
  """PML's ``MultipleLosses``: ``sum_i weight_i * loss_i``, with each loss's stats.

  Args:
    losses: the losses (functions ``(embeddings, labels, margin) -> (loss, stats)`` or
      :class:`ParametricLoss`), a sequence (named ``loss0``, ``loss1``, ...) or a
      mapping name -> loss.
    weights: one weight per loss, in the same form (default 1 each, as PML).
    miners: optional miners of :mod:`tsm.miners` (``(embeddings, labels) -> weights``),
      a sequence with None for unmined losses, or a mapping over some of the names.
    stats_from: the loss whose ``num_total`` / ``num_active`` / ``num_easy`` the margin
      schedule follows (default: the first).

  Returns:
    A :class:`ParametricLoss`: params and state are dicts by loss name; the stats a
    dict with ``<name>/loss`` and ``<name>/<field>`` for every scalar field of each
    loss's stats, and the contract counts of ``stats_from``.

  Raises:
    ValueError: one line naming what does not match.
  """
  named = _named(losses, "loss")
  if not named:
    raise ValueError("losses is empty; give at least one loss.")
  if weights is None:
    w = {k: 1.0 for k in named}
  else:
    w = _named(weights, "loss")
    if sorted(w) != sorted(named):
      raise ValueError(f"weights has keys {sorted(w)} but losses has {sorted(named)}; "
                       "give one weight per loss.")
  if miners is not None:
    if not isinstance(miners, Mapping) and len(miners) != len(named):
      raise ValueError(f"miners has {len(miners)} entries for {len(named)} losses; give "
                       "one per loss (None for unmined).")
    mined = {k: v for k, v in _named(miners, "loss").items() if v is not None}
    unknown = sorted(set(mined) - set(named))
    if unknown:
      raise ValueError(f"miners names {unknown}, not losses; use names of {sorted(named)}.")
    named = {k: (with_miner(v, mined[k]) if k in mined else v) for k, v in named.items()}
  first = next(iter(named))
  stats_from = first if stats_from is None else stats_from
  if stats_from not in named:
    raise ValueError(f"stats_from={stats_from!r} is not a loss name; use one of "
                     f"{', '.join(named)}.")
  parts = {k: as_parametric(v) for k, v in named.items()}

  def init(rng: chex.PRNGKey, embedding_dim: int) -> LossVariables:
    keys = jax.random.split(rng, len(parts))
    made = {k: p.init(key, embedding_dim) for (k, p), key in zip(parts.items(), keys)}
    return LossVariables(params={k: v.params for k, v in made.items()},
                         state={k: v.state for k, v in made.items()})

  def apply(params, state, embeddings, labels, margin):
    total = 0.0
    stats: dict[str, Any] = {}
    new_state = {}
    for k, part in parts.items():
      value, s, new_state[k] = part.apply(params[k], state[k], embeddings, labels, margin)
      total = total + w[k] * value
      fields = s._asdict() if hasattr(s, "_asdict") else dict(s)
      stats[f"{k}/loss"] = jax.lax.stop_gradient(value).astype(jnp.float32)
      stats.update({f"{k}/{f}": v for f, v in fields.items() if jnp.ndim(v) == 0})
      if k == stats_from:
        stats.update(common_stats(s))
    return total, stats, new_state

  return ParametricLoss(init=init, apply=apply)


def self_supervised_loss(loss_fn: Callable[..., tuple[chex.Array, Any]], *,
                         symmetric: bool = True
                         ) -> Callable[..., tuple[chex.Array, Any]]:
  """PML's ``SelfSupervisedLoss``: a loss over two views of the same inputs.

  Row ``i`` of ``embeddings`` and of ``ref_embeddings`` (an augmentation of the same
  input) form the positive pairs, labels ``arange(B)``. ``symmetric=True`` (PML's
  default): the loss of the ``2B`` rows ``[embeddings; ref_embeddings]`` with labels
  ``[arange(B); arange(B)]``; otherwise the batch against ``ref_embeddings`` as a
  reference set (the loss must take ``ref_embeddings`` / ``ref_labels``).

  Args:
    loss_fn: ``(embeddings, labels, margin, ...) -> (loss, stats)``.
    symmetric: as PML.

  Returns:
    ``(embeddings, ref_embeddings, margin) -> (loss, stats)``.
  """
  def loss(embeddings, ref_embeddings, margin):
    check_inputs(embeddings)
    check_inputs(ref_embeddings, embeddings_name="ref_embeddings")
    if ref_embeddings.shape != embeddings.shape:
      raise ValueError(f"ref_embeddings has shape {tuple(ref_embeddings.shape)} but "
                       f"embeddings has {tuple(embeddings.shape)}; give one view per row.")
    labels = jnp.arange(embeddings.shape[0], dtype=jnp.int32)
    if symmetric:
      return loss_fn(jnp.concatenate([embeddings, ref_embeddings]),
                     jnp.concatenate([labels, labels]), margin)
    return loss_fn(embeddings, labels, margin, ref_embeddings=ref_embeddings,
                   ref_labels=labels)
  return loss


def stacked_views(view_loss: Callable[..., tuple[chex.Array, Any]]
                  ) -> Callable[..., tuple[chex.Array, Any]]:
  """A loss of two views as a loss of one batch holding both, view A rows then view B.

  The train step's two-view batches (``tsm.data.MultiViewSampler`` with 2 views) embed
  to ``[2B, D]``: rows ``[0, B)`` are view A of ``B`` inputs, rows ``[B, 2B)`` view B
  of the same inputs (labels repeated). The returned loss passes the halves to
  ``view_loss`` as ``(embeddings, ref_embeddings)``; the labels are not used (a
  self-supervised loss pairs rows by position).

  Args:
    view_loss: ``(embeddings, ref_embeddings, margin) -> (loss, stats)``, e.g.
      :func:`self_supervised_loss` of a pair loss.

  Returns:
    ``(embeddings [2B, D], labels [2B], margin) -> (loss, stats)``.

  Raises:
    ValueError: (at trace time) the batch has an odd number of rows.
  """
  def loss(embeddings, labels, margin):
    del labels
    check_inputs(embeddings)
    rows = embeddings.shape[0]
    if rows % 2:
      raise ValueError(f"a two-view loss takes a batch of 2B rows (view A, then view B of "
                       f"the same inputs); got {rows} rows. Train with two views "
                       "(tsm.data.MultiViewSampler, data.views=2).")
    half = rows // 2
    return view_loss(embeddings[:half], embeddings[half:], margin)
  return loss
