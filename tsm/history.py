"""The records of a run: step metrics fetched in blocks, epoch aggregates, log lines.

``metrics.jsonl`` holds a ``{"kind": "step", ...}`` line per optimiser step and a
``{"kind": "epoch", ...}`` line per epoch. Step metrics stay on the device until
:meth:`StepLog.flush` fetches a block of them in one host transfer (never inside the
jitted step); :func:`epoch_record` aggregates an epoch's step records on the host, so a
resumed run computes exactly the record an uninterrupted one does.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np

from tsm import artifacts

# Step metrics that are counts: summed over an epoch (the others are averaged).
_COUNT_PREFIX = "num_"
# Step metrics that are not averaged into the epoch record.
_NOT_AVERAGED = ("margin", "nonfinite", "easy_share")


class NonFiniteError(RuntimeError):
  """A train step produced a non-finite loss or gradient; the message is one line.

  Args:
    step: the step.
    quantity: what is not finite (``"loss"``, ``"gradient"``).
    fix: the advice that ends the message, in the caller's words (a command names its
      own settings); by default in terms of :func:`tsm.fit.fit`'s arguments.
  """

  def __init__(self, step: int, quantity: str, fix: str | None = None,
               skipped: int = 0):
    self.step, self.quantity, self.skipped = step, quantity, skipped
    what = (f"{skipped} steps in a row were skipped, their {quantity} not finite "
            "(diverged)" if skipped else f"the {quantity} is not finite (diverged)")
    super().__init__(
        f"step {step}: {what}; " + (fix or (
            "lower the learning rate or clip the gradient norm, then rerun with "
            "resume_with_changes=True: it continues from the last good checkpoint "
            "(nonfinite='skip' skips such steps instead).")))


class Interrupted(KeyboardInterrupt):
  """Training stopped by a signal; the message is one line naming the step.

  Args:
    step: the last step applied (the checkpoint the same command resumes from, when
      ``saved``).
    signum: the signal: SIGINT (Ctrl-C, "interrupted"), SIGTERM or SIGUSR1 (a
      scheduler's stop or preemption notice, "terminated"); see :mod:`tsm.stopping`.
    saved: whether a checkpoint of ``step`` was written.
  """

  def __init__(self, step: int, signum: int = signal.SIGINT, saved: bool = True):
    self.step, self.signum, self.saved = step, int(signum), saved
    word = "interrupted" if self.signum == signal.SIGINT else "terminated"
    how = ("the same command resumes." if saved else
           "the same command resumes from the last checkpoint.")
    super().__init__(f"{word} at step {step}; {how}")


class StepLog:
  """Step metrics waiting on the device, and the current epoch's fetched records.

  Args:
    log: the run's ``metrics.jsonl``.
    stop_on_nonfinite: raise :class:`NonFiniteError` when a fetched step reports a
      non-finite loss or gradient (its ``nonfinite`` metric).
    max_skipped: without ``stop_on_nonfinite``, raise :class:`NonFiniteError` once that
      many fetched steps in a row were skipped (0: never).
  """

  def __init__(self, log: artifacts.MetricsLog, *, stop_on_nonfinite: bool = True,
               max_skipped: int = 0):
    self.log = log
    self.stop_on_nonfinite = stop_on_nonfinite
    self.max_skipped = int(max_skipped)
    self.skipped_in_a_row = 0
    self.pending: list[tuple[int, int, dict[str, jax.Array]]] = []
    self.epoch_steps: list[dict[str, Any]] = []

  def add(self, epoch: int, step: int, metrics: dict[str, jax.Array]) -> int:
    """Queues one step's metrics (still on the device); returns how many are waiting."""
    self.pending.append((epoch, step, metrics))
    return len(self.pending)

  def start_epoch(self, records: list[dict[str, Any]] | None = None) -> None:
    """Starts an epoch's records: empty, or a resumed epoch's records logged so far."""
    self.epoch_steps = list(records or [])

  def flush(self) -> list[dict[str, Any]]:
    """Fetches the pending step metrics (one host transfer) and appends them to the log.

    Raises:
      NonFiniteError: a fetched step diverged (before anything of it is logged).
    """
    if not self.pending:
      return []
    fetched = jax.device_get([m for _, _, m in self.pending])
    records = [dict({k: float(v) for k, v in m.items()}, kind="step", epoch=epoch,
                    step=step)
               for (epoch, step, _), m in zip(self.pending, fetched)]
    self.pending = []
    for r in records:
      if r.get("nonfinite", 0.0) > 0:
        quantity = ("loss" if not np.isfinite(r["loss"]) else "gradient"
                    if not np.isfinite(r.get("grad_norm", 0.0)) else "update")
        if self.stop_on_nonfinite:
          raise NonFiniteError(r["step"], quantity)
        self.skipped_in_a_row += 1
        if self.max_skipped and self.skipped_in_a_row >= self.max_skipped:
          raise NonFiniteError(r["step"], quantity, skipped=self.skipped_in_a_row)
      else:
        self.skipped_in_a_row = 0
    self.log.append(records)
    self.epoch_steps.extend(records)
    return records


def epoch_record(epoch: int, step: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
  """Aggregates an epoch's step records: counts summed, the other metrics averaged.

  Args:
    epoch: 0-based epoch.
    step: global step at the end of the epoch.
    steps: the epoch's step records.

  Returns:
    ``{"kind": "epoch", "epoch", "step", "margin"`` (the margin the epoch's first step
    trained at), ``"easy_share"`` (summed easy terms over summed terms), the means of
    ``loss``, ``grad_norm``, ``active_ratio``, ... and the sums of the ``num_*`` counts
    over the applied steps (None for a mean where every step was skipped);
    ``num_skipped``: steps skipped for a non-finite loss, gradient or update}.
  """
  record: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": step,
                            "margin": steps[0]["margin"]}
  # The steps that were applied: a skipped step's metrics (NaN) and counts stay out,
  # as its update stayed out of the state.
  kept = [r for r in steps if not r.get("nonfinite", 0.0)]
  keys = [k for k in steps[0] if k not in ("kind", "epoch", "step") + _NOT_AVERAGED]
  for key in keys:
    values = [r[key] for r in kept]
    if not values:
      record[key] = 0.0 if key.startswith(_COUNT_PREFIX) else None
    else:
      record[key] = float(sum(values)) if key.startswith(_COUNT_PREFIX) else float(
          np.mean(values))
  record["easy_share"] = (record["num_easy"] / max(record["num_total"], 1.0)
                          if kept else None)
  record["num_skipped"] = float(len(steps) - len(kept))
  return record


def _number(value: Any, digits: int) -> str:
  """A number with ``digits`` decimals; "—" for a missing or non-finite one."""
  if value is None or not np.isfinite(value):
    return "—"
  return f"{value:.{digits}f}"


def epoch_line(r: dict[str, Any], epochs: int | None = None) -> str:
  """One plain line of an epoch record (for logs and batch jobs)."""
  of = f"/{epochs}" if epochs else ""
  parts = [f"epoch {r['epoch'] + 1}{of}", f"loss {_number(r['loss'], 4)}",
           f"mu {_number(r['margin'], 3)}", f"easy {_number(r['easy_share'], 3)}"]
  for key in ("val_loss", "val_map@r", "val_auc"):
    if key in r:
      parts.append(f"{key} {_number(r[key], 4)}")
  if r.get("num_skipped"):
    parts.append(f"skipped {int(r['num_skipped'])}")
  if "time_s" in r:
    parts.append(f"{r['time_s']:.1f}s")
  return "  ".join(parts)


# The main validation metric, the first of these an epoch record holds (all higher is
# better): the summary line states its value at the selected epoch and its own best.
MAIN_VAL_METRICS = ("val_map@r", "val_recall@1", "val_auc", "val_precision@1")


def selection(epoch_records: list[dict[str, Any]], best_metric: str, best_mode: str,
              best_epoch: int | None) -> dict[str, Any]:
  """How the kept epoch was chosen, beside the main validation metric's own best.

  Args:
    epoch_records: the run's epoch records.
    best_metric: the record key that selected the kept checkpoint.
    best_mode: ``"min"`` or ``"max"``.
    best_epoch: the selected epoch (1-based), or None.

  Returns:
    ``{"best_mode": best_mode}``, plus ``"main_val_metric": {"name", "at_best_epoch",
    "best_epoch", "best_value"}`` when the records hold a :data:`MAIN_VAL_METRICS` key
    other than ``best_metric`` (``at_best_epoch`` None when the selected epoch did not
    evaluate it).
  """
  out: dict[str, Any] = {"best_mode": best_mode}
  name = next((k for k in MAIN_VAL_METRICS if any(k in r for r in epoch_records)), None)
  if name is None or name == best_metric:
    return out
  scored = [(r[name], r["epoch"] + 1) for r in epoch_records
            if name in r and np.isfinite(r[name])]
  if not scored:
    return out
  value, epoch = max(scored, key=lambda ve: (ve[0], -ve[1]))   # the first of equal bests
  at_best = next((r[name] for r in epoch_records
                  if r["epoch"] + 1 == best_epoch and name in r), None)
  out["main_val_metric"] = {"name": name, "at_best_epoch": at_best, "best_epoch": epoch,
                            "best_value": value}
  return out


def selection_rule(metric: str, mode: str | None) -> str:
  """The rule that kept an epoch, in words: ``"lowest val_loss"`` (``metric`` alone
  without a mode)."""
  return f"{'lowest' if mode == 'min' else 'highest'} {metric}" if mode else str(metric)


def summary_rule(summary: dict[str, Any]) -> str:
  """The rule that kept a summary's epoch: ``"lowest val_loss"``, or, when no epoch
  record held the metric (the final state was kept), ``"the last: no epoch record holds
  val_loss"``."""
  metric = summary.get("best_metric")
  if summary.get("best_value") is None:
    return f"the last: no epoch record holds {metric}"
  return selection_rule(metric, summary.get("best_mode"))


def selection_line(summary: dict[str, Any]) -> str:
  """The kept epoch, the rule that kept it with the metric's value, and the main
  validation metric there and at its own best epoch (from a summary)."""
  value = summary.get("best_value")
  line = f"selected epoch {summary.get('best_epoch')}"
  if summary.get("epochs"):
    line += f" of {summary['epochs']}"
  line += (f" by {summary_rule(summary)} ({value:.4f})" if isinstance(value, (int, float))
           else f", {summary_rule(summary)}")
  main = summary.get("main_val_metric")
  if main:
    at = main.get("at_best_epoch")
    name, best = main["name"], f"{main['best_value']:.4f}"
    if main["best_epoch"] == summary.get("best_epoch"):
      line += f"; {name} there {best}, its highest"
    else:
      there = (f"{at:.4f} there, " if isinstance(at, (int, float)) else
               "not evaluated there, ")
      line += f"; {name} {there}highest {best} at epoch {main['best_epoch']}"
  return line


def format_duration(seconds: float) -> str:
  """``"42s"``, ``"3m05s"``, ``"2h07m"``: a duration for a log line."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_summary(summary: dict[str, Any]) -> str:
  """A short human-readable block of a summary's test metrics."""
  head = [f"== {summary.get('dataset', 'data')}"]
  if "split" in summary:
    head[0] += f" ({summary['split']})"
  described = ", ".join(f"{summary[k]} {k.replace('_', ' ')}" if k != "model" else
                        str(summary[k]) for k in ("loss", "margin_schedule", "model")
                        if k in summary)
  if described:
    head.append(described.replace("margin schedule", "margin"))
  margin = ""
  if summary.get("final_margin") is not None:
    margin = f"last epoch's margin {summary['final_margin']:.4g}"
  if summary.get("next_margin") is not None:
    margin += f" (next {summary['next_margin']:.4g})"
  if summary.get("skipped_steps"):
    margin += (("; " if margin else "")
               + f"{int(summary['skipped_steps'])} steps skipped (not finite)")
  lines = [": ".join(head) + (f"; {margin}" if margin else ""), selection_line(summary)]

  def metrics(values: dict[str, Any]) -> str:
    keys = [k for k in values if k.startswith("recall@")] + [
        k for k in ("precision@1", "r_precision", "map@r", "auc", "eer", "tar@far=1e-3",
                    "tar@far=1e-2", "accuracy", "threshold") if k in values] + [
        k for k in values if k.startswith("knn@")]
    return "  ".join(f"{k} {_number(values[k], 4)}" for k in keys)

  test = metrics(summary.get("test", {}))
  if test:
    lines.append("test: " + test)
  # Model-free baselines (evaluation.InputBaseline): "test_pixels", "test_trunk_features".
  for key in sorted(k for k, v in summary.items()
                    if k.startswith("test_") and isinstance(v, dict)):
    if metrics(summary[key]):
      lines.append(f"{key} (no model): " + metrics(summary[key]))
  return "\n".join(lines)
