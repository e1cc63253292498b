"""Checkpoints of the training state with orbax: the last k, plus the best one.

One ``orbax.checkpoint.CheckpointManager`` under ``<workdir>/checkpoints`` holds every
checkpoint. Each step directory has two items:

* ``state``: the whole ``TrainState`` pytree (params, batch statistics, optimiser state,
  margin state, step, RNG key), saved with ``StandardSave`` and restored into the
  shardings of a template state (so a replicated state on a mesh comes back replicated);
* ``meta``: a small JSON dict written by the fit loop (epoch, position within the epoch,
  byte length of ``metrics.jsonl`` at save time, ...), which is what makes a rerun resume
  at exactly the step it stopped at.

Which checkpoints survive is orbax's own preservation policy:
``AnyPreservationPolicy([LatestN(keep), BestN(n=1)])``. Checkpoints saved with
validation metrics take part in the "best" ranking (by ``best_metric``, ``"min"`` or
``"max"``); mid-epoch checkpoints are saved without metrics and are kept only while they
are among the last ``keep``.

References:
  orbax-checkpoint 0.12 ``CheckpointManager``, ``CheckpointManagerOptions``,
  ``checkpoint_managers.{AnyPreservationPolicy, LatestN, BestN}``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_STATE = "state"
_META = "meta"


class _NoMetricsWarningFilter(logging.Filter):
  """Drops orbax's warning for checkpoints saved (on purpose) without metrics."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsWarningFilter())


def _metric_key(best_metric: str, best_mode: str):
  """Returns orbax's ``best_fn``: the metric as a float, NaN ranked worst."""
  worst = math.inf if best_mode == "min" else -math.inf

  def best_fn(metrics: dict[str, Any]) -> float:
    value = float(metrics.get(best_metric, worst))
    return worst if math.isnan(value) else value

  return best_fn


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs; keeps the last ``keep`` and the best.

  Args:
    directory: where the step directories go (created on the first save).
    keep: how many of the most recent checkpoints to keep (>= 1).
    best_metric: name of the validation metric that ranks checkpoints saved with
      metrics, e.g. ``"val_loss"`` or ``"map@r"``.
    best_mode: ``"min"`` or ``"max"``: whether a lower or a higher ``best_metric`` is
      better.
    async_save: write in a background thread (the device-to-host copy still happens
      before ``save`` returns, so the caller may donate the state right after).
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2,
               best_metric: str = "val_loss", best_mode: str = "min",
               async_save: bool = True):
    if keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {keep}; keep at least one.")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}.")
    self.best_metric = best_metric
    self.best_mode = best_mode
    best_fn = _metric_key(best_metric, best_mode)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=best_mode == "min",
                                  n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode, preservation_policy=policy,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), item_names=(_STATE, _META),
        options=options)

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves ``state`` and ``meta`` as checkpoint ``step``.

    Args:
      step: the global optimiser step (unique, increasing).
      state: the train state pytree.
      meta: JSON-serialisable dict (python scalars, lists, dicts).
      metrics: validation metrics for the best-checkpoint ranking, or None for a
        checkpoint that only serves resumption.
    """
    self._manager.save(
        int(step),
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                   _META: ocp.args.JsonSave(meta)}),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=True)

  def latest_step(self) -> int | None:
    """The most recent saved step, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best ``best_metric`` among those saved with metrics, or None."""
    self._manager.wait_until_finished()
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    """Every step on disk, ascending."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``template``.

    Args:
      step: a step from ``all_steps()``.
      template: a state pytree (concrete or ``jax.ShapeDtypeStruct`` leaves).

    Returns:
      ``(state, meta)``.
    """
    self._manager.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract),
                                             _META: ocp.args.JsonRestore()}))
    return restored[_STATE], dict(restored[_META])

  def wait(self) -> None:
    """Blocks until background writes are done."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
