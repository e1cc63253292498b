"""What the fit loop calls as it runs: progress, log lines, TensorBoard, figures, summary.

:func:`tsm.fit.fit` runs the steps, epochs, evaluators and checkpoints and knows nothing
of how a run is shown or what files it leaves besides ``metrics.jsonl`` and
``checkpoints/``. At fixed points it calls each of its hooks (the periodic actions of
clu): an object with the six methods of :class:`Hook`, in this order::

  on_start(run)            once, before the first step (run: a RunStart)
  on_step(step)            after every optimiser step (no host transfer)
  on_steps(records)        after each block of step records is fetched to the host
  on_epoch_end(record)     after each epoch's record is logged and checkpointed
  on_end(end)              once, after the final evaluation (end: a RunEnd)
  close()                  always, last, also when the run stops early or fails

Subclass :class:`Hook` and override what you need (its methods do nothing); pass
``hooks=[...]`` to ``fit`` (:func:`standard` gives the built-in set, which ``fit`` uses
when ``hooks`` is None). Hooks are called in list order, on every process of a
multi-host run; ``run.primary`` says whether this is process 0, and the built-in hooks
write and print only there.

Built-in:

* :class:`ProgressBar`: a tqdm bar with the last loss and margin (only when stderr is a
  terminal); other hooks print through its :meth:`ProgressBar.write`.
* :class:`LogLines`: a plain line per epoch (``history.epoch_line``), optionally one every
  so many steps, and the summary block at the end.
* :class:`TensorBoard`: scalars per step (``train/``) and per epoch (``epoch/``), and the
  test embeddings for the projector, under ``workdir/tensorboard``.
* :class:`Figures`: ``training.png`` (and ``roc.png`` when a verification evaluator left
  its pair distances), copied into TensorBoard when given a :class:`TensorBoard` hook.
* :class:`SummaryFiles`: ``summary.json`` and ``pairs.npz`` (the arrays the evaluators
  left).

Example, a hook that records the margin of each epoch::

  class Margins(tsm.hooks.Hook):
    def __init__(self):
      self.margins = []
    def on_epoch_end(self, record):
      self.margins.append(record["margin"])

  margins = Margins()
  tsm.fit.fit(..., hooks=tsm.hooks.standard() + [margins])
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tsm import _extras

_extras.require(__name__, "tqdm")   # else one line naming tsm[train]

from tqdm import tqdm

from tsm import artifacts
from tsm import history
from tsm import plotting
from tsm import tensorboard as tensorboard_lib

__all__ = ["Figures", "Hook", "LogLines", "ProgressBar", "RunEnd", "RunStart",
           "SummaryFiles", "TensorBoard", "call", "close", "standard"]


@dataclasses.dataclass(frozen=True)
class RunStart:
  """What hooks learn at the start of a run.

  Attributes:
    workdir: the run directory.
    epochs: epochs of the whole run.
    steps_per_epoch: optimiser steps per epoch.
    initial_step: steps already done (a resumed run), 0 for a fresh one.
    primary: whether this is process 0 (the one that writes files).
    labels: the run's names (``fit``'s ``labels`` as summary entries): ``dataset``,
      ``split``, ``loss``, ... where given.
  """
  workdir: str
  epochs: int
  steps_per_epoch: int
  initial_step: int = 0
  primary: bool = True
  labels: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def total_steps(self) -> int:
    """Optimiser steps of the whole run."""
    return self.epochs * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class RunEnd:
  """What hooks learn at the end of a run that finished its epochs.

  Attributes:
    summary: the summary (what ``summary.json`` holds and ``FitResult.summary`` is).
    epochs: the epoch records of the whole run.
    context: the final evaluation's ``tsm.evaluation.EvalContext`` on the best state
      (its ``artifacts`` and cached embeddings).
  """
  summary: dict[str, Any]
  epochs: list[dict[str, Any]]
  context: Any

  @property
  def step(self) -> int:
    """The global step of the last epoch (0 without epochs)."""
    return self.epochs[-1]["step"] if self.epochs else 0


class Hook(Protocol):
  """What the fit loop calls; every method does nothing unless overridden."""

  def on_start(self, run: RunStart) -> None:
    """Once, before the first step (after a resumed run's checkpoint is restored)."""

  def on_step(self, step: int) -> None:
    """After every optimiser step, with its global step (1-based); no host transfer."""

  def on_steps(self, records: list[dict[str, Any]]) -> None:
    """After a block of step records is fetched and appended to ``metrics.jsonl``.

    Args:
      records: the ``{"kind": "step", "epoch", "step", "loss", "margin", ...}`` records
        (host floats), in step order; never empty.
    """

  def on_epoch_end(self, record: dict[str, Any]) -> None:
    """After an epoch's record (with its evaluations) is logged and checkpointed."""

  def on_end(self, end: RunEnd) -> None:
    """Once, after the final evaluation on the best state."""

  def close(self) -> None:
    """Always, last (also after ``stop_after_steps``, an error or Ctrl-C)."""


class ProgressBar(Hook):
  """A tqdm progress bar over the run's steps, with the last loss and margin.

  Shown only on process 0 and only when stderr is a terminal (a batch job's log gets no
  bar frames). :meth:`write` prints a line above the bar (plain ``print`` without one).

  Args:
    desc: the bar's label; default the run's ``dataset`` label, else ``"train"``.
  """

  def __init__(self, desc: str | None = None):
    self.desc = desc
    self._bar = None
    self.shown = False

  def on_start(self, run: RunStart) -> None:
    self.shown = run.primary and sys.stderr.isatty()
    desc = self.desc if self.desc is not None else str(run.labels.get("dataset", "train"))
    self._bar = tqdm(total=run.total_steps, initial=run.initial_step,
                     disable=not self.shown, dynamic_ncols=True, unit="step", desc=desc)

  def on_step(self, step: int) -> None:
    self._bar.update(1)

  def on_steps(self, records: list[dict[str, Any]]) -> None:
    if self.shown:
      self._bar.set_postfix(loss=f"{records[-1]['loss']:.4f}",
                            mu=f"{records[-1]['margin']:.3f}", refresh=False)

  def write(self, line: str) -> None:
    """Prints ``line`` above the bar, or as a plain flushed line without a bar."""
    if self.shown and self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def on_end(self, end: RunEnd) -> None:
    self.close()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class LogLines(Hook):
  """Plain lines on stdout (process 0): one per epoch, the summary block at the end.

  Args:
    every_steps: also a line every that many steps (``step s/N  loss  mu  easy``;
      0 = none).
    write: how a line is printed; default ``print(line, flush=True)``. Pass a
      :class:`ProgressBar`'s ``write`` to print above its bar.
  """

  def __init__(self, every_steps: int = 0, write: Callable[[str], None] | None = None):
    self.every_steps = int(every_steps)
    self.write = write or (lambda line: print(line, flush=True))
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run

  def on_steps(self, records: list[dict[str, Any]]) -> None:
    if not (self._run.primary and self.every_steps):
      return
    for r in records:
      if r["step"] % self.every_steps == 0:
        self.write(f"step {r['step']}/{self._run.total_steps}  loss {r['loss']:.4f}  "
                   f"mu {r['margin']:.3f}  easy {r['easy_share']:.3f}")

  def on_epoch_end(self, record: dict[str, Any]) -> None:
    if self._run.primary:
      self.write(history.epoch_line(record, self._run.epochs))

  def on_end(self, end: RunEnd) -> None:
    if self._run.primary:
      self.write(history.format_summary(end.summary))


class TensorBoard(Hook):
  """TensorBoard event files under ``<workdir>/<subdir>`` (process 0; ``tsm.tensorboard``).

  Scalars of every fetched step (``train/<metric>``) and of every epoch record
  (``epoch/<key>``); at the end the test split's embeddings and labels for the
  projector. :class:`Figures` adds its images through :meth:`image`.

  Args:
    subdir: the log directory within the workdir.
  """

  def __init__(self, subdir: str = "tensorboard"):
    self.subdir = subdir
    self.writer = None

  def on_start(self, run: RunStart) -> None:
    self.writer = tensorboard_lib.make_writer(os.path.join(run.workdir, self.subdir),
                                              enabled=run.primary)

  def on_steps(self, records: list[dict[str, Any]]) -> None:
    for r in records:
      self.writer.scalars(r["step"], r, prefix="train/")

  def on_epoch_end(self, record: dict[str, Any]) -> None:
    self.writer.scalars(record["step"], record, prefix="epoch/")

  def image(self, tag: str, path: str, step: int) -> None:
    """Adds the image file ``path`` as ``tag`` at ``step`` (a no-op before on_start)."""
    if self.writer is not None:
      self.writer.image(tag, path, step)

  def on_end(self, end: RunEnd) -> None:
    ctx = end.context
    if len(ctx.splits.test):
      self.writer.embeddings(ctx.embeddings("test"), ctx.labels("test"), tag="test",
                             step=end.step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class Figures(Hook):
  """The end-of-run figures (process 0): ``training.png`` and ``roc.png``.

  ``training.png`` is ``tsm.plotting.plot_training`` of the epoch records; ``roc.png``
  the ROC of the test pairs a verification evaluator left (``test_distances``,
  ``test_same``). Nothing is drawn for a run without epochs.

  Args:
    title: the figures' title.
    val_label: legend label of the validation loss (e.g. with its margin).
    easy_threshold: a dotted line on the easy-share panel (DAMS's threshold), or None.
    tensorboard: a :class:`TensorBoard` hook to copy the figures into, or None.
  """

  def __init__(self, title: str = "", *, val_label: str = "validation",
               easy_threshold: float | None = None,
               tensorboard: TensorBoard | None = None):
    self.title = title
    self.val_label = val_label
    self.easy_threshold = easy_threshold
    self.tensorboard = tensorboard
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run

  def on_end(self, end: RunEnd) -> None:
    if not (self._run.primary and end.epochs):
      return
    workdir = self._run.workdir
    path = os.path.join(workdir, "training.png")
    epochs = [{k: np.nan if v is None else v for k, v in r.items()} for r in end.epochs]
    plotting.plot_training(epochs, path, title=self.title, val_label=self.val_label,
                           easy_threshold=self.easy_threshold)
    self._to_board("training", path, end.step)
    found = end.context.artifacts
    if "test_distances" in found:
      path = os.path.join(workdir, "roc.png")
      plotting.plot_roc(found["test_distances"], found["test_same"], path, title=self.title)
      self._to_board("roc", path, end.step)

  def _to_board(self, tag: str, path: str, step: int) -> None:
    if self.tensorboard is not None:
      self.tensorboard.image(tag, path, step)


class SummaryFiles(Hook):
  """``summary.json`` (the summary) and ``pairs.npz`` (the evaluators' arrays), atomically,
  on process 0."""

  def __init__(self):
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run

  def on_end(self, end: RunEnd) -> None:
    if not self._run.primary:
      return
    artifacts.write_json_atomic(os.path.join(self._run.workdir, "summary.json"),
                                end.summary)
    with artifacts.atomic_path(os.path.join(self._run.workdir, "pairs.npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez_compressed(f, **end.context.artifacts)


def standard(*, progress: bool = True, print_every_steps: int = 0,
             tensorboard: bool = True, figures: Figures | None = Figures(),
             summary: bool = True) -> list[Hook]:
  """The built-in hooks ``fit`` uses when given none, each one optional.

  Args:
    progress: a :class:`ProgressBar` (shown only when stderr is a terminal).
    print_every_steps: :class:`LogLines`'s ``every_steps`` (its epoch lines and summary
      block are always there).
    tensorboard: a :class:`TensorBoard` hook (also receives the figures).
    figures: the settings of the :class:`Figures` hook (a copy is made, its
      ``tensorboard`` the TensorBoard hook here), or None for no figures.
    summary: a :class:`SummaryFiles` hook (``summary.json``, ``pairs.npz``).

  Returns:
    The hooks, in the order the loop calls them: summary files, figures, TensorBoard,
    progress bar, log lines.
  """
  hooks: list[Hook] = []
  if summary:
    hooks.append(SummaryFiles())
  board = TensorBoard() if tensorboard else None
  if figures is not None:
    hooks.append(Figures(figures.title, val_label=figures.val_label,
                         easy_threshold=figures.easy_threshold, tensorboard=board))
  if board is not None:
    hooks.append(board)
  bar = ProgressBar() if progress else None
  if bar is not None:
    hooks.append(bar)
  hooks.append(LogLines(print_every_steps, write=None if bar is None else bar.write))
  return hooks


def call(hooks: Sequence[Hook], method: str, *args: Any) -> None:
  """Calls ``method`` of every hook, in order."""
  for hook in hooks:
    getattr(hook, method)(*args)


def close(hooks: Sequence[Hook]) -> None:
  """Closes every hook, in order, even when one raises (the first error is raised)."""
  error = None
  for hook in hooks:
    try:
      hook.close()
    except Exception as e:  # pylint: disable=broad-except
      error = error or e
  if error is not None:
    raise error
