"""What the fit loop calls as it runs: progress, log lines, TensorBoard, figures, summary.

Why one module of this length: the hook protocol and its five built-in hooks, each small,
sit together so that one file shows everything the loop can call and in which order.

:func:`tsm.fit.fit` runs the steps, epochs, evaluators and checkpoints and knows nothing
of how a run is shown or what files it leaves besides ``metrics.jsonl`` and
``checkpoints/``. At fixed points it calls each of its hooks (the periodic actions of
clu): an object with the seven methods of :class:`Hook`, in this order::

  on_start(run)              once, before the first step (run: a RunStart)
  on_step(step)              after every optimiser step (no host transfer)
  on_steps(records)          after each block of step records is fetched to the host
  on_epoch_end(record)       after each epoch's record is logged and checkpointed
  on_final_evaluation(step)  once, before the final evaluation of the kept checkpoint
  on_end(end)                once, after the final evaluation (end: a RunEnd)
  close()                    always, last, also when the run stops early or fails

Subclass :class:`Hook` and override what you need (its methods do nothing); pass
``hooks=[...]`` to ``fit`` (:func:`standard` gives the built-in set, which ``fit`` uses
when ``hooks`` is None). Hooks are called in list order, on every process of a
multi-host run; ``run.primary`` says whether this is process 0, and the built-in hooks
write and print only there.

Built-in:

* :class:`ProgressBar`: a tqdm bar with the last loss and margin and the time left (only
  when stderr is a terminal); other hooks print through its :meth:`ProgressBar.write`.
* :class:`LogLines`: the start (or resume) line, a plain line per epoch
  (``history.epoch_line``) with the steps done and the time left, optionally one every
  so many steps, a line when the final evaluation starts, the summary block with the
  rule that selected the kept epoch, and a closing line naming the workdir's files.
* :class:`TensorBoard`: scalars per step (``train/``) and per epoch (``epoch/``), the
  final test metrics (``test/``) with the run's hyper-parameters (the HParams tab), and
  the test embeddings for the projector, under ``workdir/tensorboard``; a resumed run's
  repeated steps are purged.
* :class:`Figures`: ``training.png`` (and ``roc.png`` when a verification evaluator left
  its pair distances), copied into TensorBoard when given a :class:`TensorBoard` hook.
* :class:`SummaryFiles`: ``summary.json`` and ``pairs.npz`` (the arrays the evaluators
  left).

The hooks that write files at the end print a line as they start (``write``, the
progress bar's when there is one), so a long final stage is never silent.

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
import time
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
           "SummaryFiles", "TensorBoard", "WORKDIR_CONTENTS", "call", "close", "standard",
           "workdir_contents"]


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

  def on_final_evaluation(self, step: int | None) -> None:
    """Once, after the last epoch, before the final evaluators run on the kept state.

    Args:
      step: the global step of the kept (best) checkpoint; None when the final state is
        evaluated (no checkpoint carried the best metric).
    """

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


def _printer(write: Callable[[str], None] | None) -> Callable[[str], None]:
  """``write``, or a flushed ``print`` of the line."""
  return write or (lambda line: print(line, flush=True))


# What a run directory holds, in the closing line's order, with what each one is.
WORKDIR_CONTENTS = (
    ("summary.json", "final test metrics"),
    ("metrics.jsonl", "a record per step and per epoch"),
    ("training.png", "curves per epoch"),
    ("roc.png", "test ROC"),
    ("pairs.npz", "test pair distances"),
    ("config.json", "the resolved config"),
    ("tensorboard", "TensorBoard logs"),
    ("checkpoints", "the kept and the latest states"),
)


def workdir_contents(workdir: str) -> str:
  """The run files ``workdir`` holds, each with what it is: ``"summary.json (final test
  metrics), ..."`` (directories with a trailing slash; files the run did not write are
  left out)."""
  parts = []
  for name, what in WORKDIR_CONTENTS:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      parts.append(f"{name}{'/' if os.path.isdir(path) else ''} ({what})")
  return ", ".join(parts)


class LogLines(Hook):
  """Plain lines on stdout (process 0), the same whether or not a bar is shown.

  * at the start: the run's size and workdir, or, for a resumed run, the step and epoch
    it resumes from;
  * one line per epoch (``history.epoch_line``) with the steps done and the estimated
    time left (from this process's pace so far);
  * optionally one every so many steps, also with the time left;
  * when the final evaluation starts: which checkpoint it evaluates;
  * at the end: the summary block (``history.format_summary``: the kept epoch, the rule
    that kept it, and the test metrics), then where everything was written.

  Args:
    every_steps: also a line every that many steps (``step s/N  loss  mu  easy  eta``;
      0 = none).
    write: how a line is printed; default ``print(line, flush=True)``. Pass a
      :class:`ProgressBar`'s ``write`` to print above its bar.
  """

  def __init__(self, every_steps: int = 0, write: Callable[[str], None] | None = None):
    self.every_steps = int(every_steps)
    self.write = _printer(write)
    self._run: RunStart | None = None
    self._t0 = 0.0
    self._pace_from: tuple[float, int] | None = None   # (time, step) after the 1st epoch

  def on_start(self, run: RunStart) -> None:
    self._run = run
    self._t0 = time.monotonic()
    self._pace_from = None
    if not run.primary:
      return
    if run.initial_step:
      epoch, pos = divmod(run.initial_step, run.steps_per_epoch)
      where = (f"epoch {epoch + 1}/{run.epochs}, step {pos}/{run.steps_per_epoch} of it"
               if pos else f"after epoch {epoch}/{run.epochs}")
      self.write(f"resuming from step {run.initial_step}/{run.total_steps} ({where}) in "
                 f"{run.workdir}")
    else:
      self.write(f"training {run.epochs} epochs x {run.steps_per_epoch} steps "
                 f"({run.total_steps} steps) in {run.workdir}")

  def _eta(self, step: int) -> str:
    """``"eta 3m05s"`` at global ``step``: the steps left at this process's pace, from
    the end of its first epoch on (the first holds the compilation), else from its
    start."""
    t0, step0 = self._pace_from or (self._t0, self._run.initial_step)
    if step <= step0:
      t0, step0 = self._t0, self._run.initial_step
    done, left = step - step0, self._run.total_steps - step
    if done <= 0 or left <= 0:
      return ""
    return "eta " + history.format_duration((time.monotonic() - t0) / done * left)

  def on_steps(self, records: list[dict[str, Any]]) -> None:
    if not (self._run.primary and self.every_steps):
      return
    for r in records:
      if r["step"] % self.every_steps == 0:
        self.write("  ".join(filter(None, (
            f"step {r['step']}/{self._run.total_steps}", f"loss {r['loss']:.4f}",
            f"mu {r['margin']:.3f}", f"easy {r['easy_share']:.3f}", self._eta(r["step"])))))

  def on_epoch_end(self, record: dict[str, Any]) -> None:
    if self._run.primary:
      self.write("  ".join(filter(None, (
          history.epoch_line(record, self._run.epochs),
          f"step {record['step']}/{self._run.total_steps}", self._eta(record["step"])))))
    if self._pace_from is None:
      self._pace_from = (time.monotonic(), record["step"])

  def on_final_evaluation(self, step: int | None) -> None:
    if self._run.primary:
      which = ("the final state" if step is None else
               f"the kept checkpoint (epoch {-(-step // self._run.steps_per_epoch)}, "
               f"step {step})")
      self.write(f"final evaluation of {which} ...")

  def on_end(self, end: RunEnd) -> None:
    if self._run.primary:
      self.write(history.format_summary(end.summary))
      took = history.format_duration(time.monotonic() - self._t0)
      self.write(f"done in {took}; {self._run.workdir} holds "
                 f"{workdir_contents(self._run.workdir)}")


class TensorBoard(Hook):
  """TensorBoard event files under ``<workdir>/<subdir>`` (process 0; ``tsm.tensorboard``).

  Scalars of every fetched step (``train/<metric>``) and of every epoch record
  (``epoch/<key>``); at the end the final test metrics (``test/<metric>``, and
  ``<key>/<metric>`` for the summary's other ``test_*`` blocks), the run's
  hyper-parameters with those metrics for the HParams tab, and the test split's
  embeddings and labels for the projector. A resumed run's writer purges the steps after
  its checkpoint, which it logs again, so TensorBoard shows each step once.
  :class:`Figures` adds its images through :meth:`image`.

  Args:
    subdir: the log directory within the workdir.
    hparams: the run's hyper-parameters ``{name: value}`` (a flattened config); default
      the run's labels (dataset, loss, margin schedule, model...).
    write: how the end's line is printed; default ``print``.
  """

  def __init__(self, subdir: str = "tensorboard", *,
               hparams: dict[str, Any] | None = None,
               write: Callable[[str], None] | None = None):
    self.subdir = subdir
    self.hparams = hparams
    self.write = _printer(write)
    self.writer = None
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run
    self.writer = tensorboard_lib.make_writer(
        os.path.join(run.workdir, self.subdir), enabled=run.primary,
        purge_step=run.initial_step + 1 if run.initial_step else None)

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
    if self._run.primary:
      self.write(f"writing the test metrics, hyper-parameters and test embeddings to "
                 f"{os.path.join(self._run.workdir, self.subdir)}")
    metrics = {f"{key}/{name}": value for key, block in end.summary.items()
               if key.startswith("test") and isinstance(block, dict)
               for name, value in block.items()}
    hparams = dict(self._run.labels) if self.hparams is None else self.hparams
    self.writer.hparams(hparams, metrics, step=end.step)
    if len(ctx.splits.test):
      self.writer.embeddings(ctx.embeddings("test"), ctx.labels("test"), tag="test",
                             step=end.step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class Figures(Hook):
  """The end-of-run figures (process 0): ``training.png`` and ``roc.png``.

  ``training.png`` is ``tsm.plotting.plot_training`` of the epoch records, with the kept
  epoch and the rule that kept it (the summary's ``best_epoch``, ``best_metric``,
  ``best_mode``); ``roc.png`` the ROC of the test pairs a verification evaluator left
  (``test_distances``, ``test_same``), titled with the split and the pair counts.
  Nothing is drawn for a run without epochs.

  Args:
    title: the figures' title.
    val_label: name of the validation loss (e.g. with its margin).
    easy_threshold: a dotted line on the easy-share panel (DAMS's threshold), or None.
    tensorboard: a :class:`TensorBoard` hook to copy the figures into, or None.
    write: how the line naming the figures is printed; default ``print``.
  """

  def __init__(self, title: str = "", *, val_label: str = "validation loss",
               easy_threshold: float | None = None,
               tensorboard: TensorBoard | None = None,
               write: Callable[[str], None] | None = None):
    self.title = title
    self.val_label = val_label
    self.easy_threshold = easy_threshold
    self.tensorboard = tensorboard
    self.write = _printer(write)
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run

  def on_end(self, end: RunEnd) -> None:
    if not (self._run.primary and end.epochs):
      return
    workdir = self._run.workdir
    found = end.context.artifacts
    roc = "test_distances" in found
    self.write(f"drawing training.png{' and roc.png' if roc else ''} in {workdir}")
    path = os.path.join(workdir, "training.png")
    summary = end.summary
    # A missing value (a skipped epoch's loss) is a gap in its line.
    epochs = [{k: np.nan if v is None else v for k, v in r.items()} for r in end.epochs]
    plotting.plot_training(epochs, path, title=self.title, val_label=self.val_label,
                           easy_threshold=self.easy_threshold,
                           selected_epoch=summary.get("best_epoch"),
                           selected_by=history.summary_rule(summary),
                           selected_metric=summary.get("best_metric"))
    self._to_board("training", path, end.step)
    if roc:
      path = os.path.join(workdir, "roc.png")
      plotting.plot_roc(found["test_distances"], found["test_same"], path,
                        title=self.title, split="test")
      self._to_board("roc", path, end.step)

  def _to_board(self, tag: str, path: str, step: int) -> None:
    if self.tensorboard is not None:
      self.tensorboard.image(tag, path, step)


class SummaryFiles(Hook):
  """``summary.json`` (the summary) and ``pairs.npz`` (the evaluators' arrays), atomically,
  on process 0.

  Args:
    write: how the line naming the files is printed; default ``print``.
  """

  def __init__(self, write: Callable[[str], None] | None = None):
    self.write = _printer(write)
    self._run: RunStart | None = None

  def on_start(self, run: RunStart) -> None:
    self._run = run

  def on_end(self, end: RunEnd) -> None:
    if not self._run.primary:
      return
    self.write(f"writing summary.json and pairs.npz in {self._run.workdir}")
    artifacts.write_json_atomic(os.path.join(self._run.workdir, "summary.json"),
                                end.summary)
    with artifacts.atomic_path(os.path.join(self._run.workdir, "pairs.npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez_compressed(f, **end.context.artifacts)


def standard(*, progress: bool = True, print_every_steps: int = 0,
             tensorboard: bool = True, figures: Figures | None = Figures(),
             summary: bool = True, hparams: dict[str, Any] | None = None) -> list[Hook]:
  """The built-in hooks ``fit`` uses when given none, each one optional.

  Args:
    progress: a :class:`ProgressBar` (shown only when stderr is a terminal).
    print_every_steps: :class:`LogLines`'s ``every_steps`` (its start, epoch, final
      and closing lines are always there).
    tensorboard: a :class:`TensorBoard` hook (also receives the figures).
    figures: the settings of the :class:`Figures` hook (a copy is made, its
      ``tensorboard`` the TensorBoard hook here), or None for no figures.
    summary: a :class:`SummaryFiles` hook (``summary.json``, ``pairs.npz``).
    hparams: the TensorBoard hook's hyper-parameters (default the run's labels).

  Returns:
    The hooks, in the order the loop calls them: summary files, figures, TensorBoard,
    progress bar, log lines. Every line is printed through the progress bar's ``write``.
  """
  bar = ProgressBar() if progress else None
  write = None if bar is None else bar.write
  hooks: list[Hook] = []
  if summary:
    hooks.append(SummaryFiles(write=write))
  board = TensorBoard(hparams=hparams, write=write) if tensorboard else None
  if figures is not None:
    hooks.append(Figures(figures.title, val_label=figures.val_label,
                         easy_threshold=figures.easy_threshold, tensorboard=board,
                         write=write))
  if board is not None:
    hooks.append(board)
  if bar is not None:
    hooks.append(bar)
  hooks.append(LogLines(print_every_steps, write=write))
  return hooks


def call(hooks: Sequence[Hook], method: str, *args: Any) -> None:
  """Calls ``method`` of every hook that has it, in order (a hook that does not subclass
  :class:`Hook` may leave some out)."""
  for hook in hooks:
    found = getattr(hook, method, None)
    if found is not None:
      found(*args)


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
