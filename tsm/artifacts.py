"""Files a training run writes: the metrics log, atomic JSON, the training figure.

* ``metrics.jsonl``: one JSON object a line, ``{"kind": "step" | "epoch", ...}``,
  appended in blocks (one host transfer per block, never inside the jitted step). On
  resume the file is cut back to its length at the restored checkpoint, so a resumed run
  writes exactly the lines an uninterrupted run writes.
* ``summary.json``, ``config.json``, figures, indexes: written to a temporary file and
  renamed, so a reader never sees half a file (:func:`write_atomic`,
  :func:`write_json_atomic`, and :func:`atomic_path` for writers that want a file name).
  The temporary file is created with mode ``0o666`` minus the umask, like ``open``, so
  every file of a run is as readable as the user's other files (0644 under umask 022);
  ``tempfile.mkstemp`` would make them 0600.
* ``training.png``: loss, validation metrics, margin, easy-triplet share and the
  easy / semi-hard / hard shares per epoch (matplotlib, Agg, via ``tsm.plotting``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterable, Iterator, Sequence


def _create_temporary(path: str) -> str:
  """Creates an empty file beside ``path`` (mode 0o666 minus the umask); returns its name.

  ``os.open`` applies the umask like ``open`` does; ``O_EXCL`` makes the name ours alone.
  """
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  while True:
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{name}")
    try:
      os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return tmp
    except FileExistsError:
      continue


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary file name beside ``path``; renames it to ``path`` on success.

  For writers that take a file name (``fig.savefig``, ``np.savez``): what they write
  appears at ``path`` all at once, with the umask's permissions, and on any error the
  temporary file is removed and ``path`` is left as it was. The directory of ``path`` is
  created if missing.

  Args:
    path: the final file.

  Yields:
    The temporary file's name (it exists, empty; write over it).
  """
  tmp = _create_temporary(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see atomic_path).

  Args:
    path: the final file.
    data: its whole content.
  """
  if not isinstance(data, (str, bytes)):
    raise ValueError(f"data must be str or bytes, got {type(data).__name__}; encode it "
                     "first (write_json_atomic for objects).")
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())  # the rename must not land before the data on a crash


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """Append-only JSON-lines log that can be cut back to a saved length.

  Args:
    path: the ``.jsonl`` file (created on the first append).
    write: False for the other processes of a multi-host run: nothing is written, the
      length the file would have is tracked in memory (``size``, ``truncate``,
      ``append``), and ``read`` returns the records within that length of the file that
      process 0 writes (the workdir is shared).
  """

  def __init__(self, path: str, *, write: bool = True):
    self.path = path
    self.write = write
    self._size = self._file_size()

  def _file_size(self) -> int:
    return os.path.getsize(self.path) if os.path.exists(self.path) else 0

  def size(self) -> int:
    """Current length of the file in bytes (0 when it does not exist)."""
    return self._file_size() if self.write else self._size

  def truncate(self, size: int) -> None:
    """Cuts the file back to ``size`` bytes (a length :meth:`size` returned earlier)."""
    self._size = int(size)
    if self.write and os.path.exists(self.path):
      with open(self.path, "r+b") as f:
        f.truncate(size)

  def append(self, records: Iterable[dict[str, Any]]) -> None:
    """Appends one line per record and flushes."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    self._size += len(lines.encode())
    if lines and self.write:
      with open(self.path, "a") as f:
        f.write(lines)
        f.flush()

  def read(self) -> list[dict[str, Any]]:
    """Every record, in order."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read() if self.write else f.read(self._size)
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _numeric_keys(records: Sequence[dict[str, Any]], prefix: str) -> list[str]:
  """Keys starting with ``prefix`` whose values are numbers in some record, in order."""
  keys: dict[str, None] = {}
  for r in records:
    for k, v in r.items():
      if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool):
        keys[k] = None
  return list(keys)


def plot_training(epochs: Sequence[dict[str, Any]], path: str, title: str = "", *,
                  val_label: str = "validation",
                  easy_threshold: float | None = None) -> None:
  """Draws the per-epoch training figure to ``path`` (PNG).

  Panels: loss (train, and ``val_loss`` when present); validation metrics (the headline
  ``val_*`` keys present: MAP@R, Recall@1, AUC, EER, active ratio; skipped when there is
  none); the margin, drawn as steps since it holds for a whole epoch; and the easy /
  semi-hard / hard shares of the triplets when the records carry ``num_easy``,
  ``num_semihard``, ``num_hard`` and ``num_total`` (or ``num_triplets``), else the easy
  share alone.

  Args:
    epochs: the ``"epoch"`` records of ``metrics.jsonl``.
    path: output file.
    title: figure title.
    val_label: legend label of the validation loss (e.g. its margin).
    easy_threshold: optional horizontal line on the easy-share panel (DAMS's threshold).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  from tsm import plotting  # pylint: disable=import-outside-toplevel

  x = [r["epoch"] + 1 for r in epochs]
  nan = float("nan")
  losses = {"train": [r["loss"] for r in epochs]}
  if any("val_loss" in r for r in epochs):
    losses[val_label] = [r.get("val_loss", nan) for r in epochs]
  # The headline validation metrics (all of them would crowd the panel; metrics.jsonl and
  # TensorBoard have every one).
  shown = ("val_map@r", "val_recall@1", "val_auc", "val_eer", "val_active_ratio")
  val_keys = [k for k in _numeric_keys(epochs, "val_") if k in shown]
  shares = plotting.triplet_shares(epochs)
  panels = ["loss"] + (["val"] if val_keys else []) + ["margin", "shares"]
  cols = 2 if len(panels) == 4 else len(panels)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(12.5 if cols == 2 else 4.6 * cols, 3.6 * rows),
                           constrained_layout=True, squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  axes = dict(zip(panels, axes.flat))
  plotting.plot_curves(axes["loss"], x, losses, title="loss (train: at the epoch's margin)")
  if len(losses) > 1:
    plotting.legend_outside(axes["loss"])
  if val_keys:
    plotting.plot_curves(axes["val"], x,
                         {k[len("val_"):]: [r.get(k, nan) for r in epochs] for k in val_keys},
                         title="validation metrics")
    plotting.legend_outside(axes["val"])
  plotting.plot_steps(axes["margin"], x, {"margin": [r["margin"] for r in epochs]},
                      title="margin $\\mu$ (held for the whole epoch)", legend=None)
  threshold_note = "" if easy_threshold is None else f" (dotted: DAMS threshold {easy_threshold:g})"
  if shares is not None:
    plotting.plot_triplet_shares(axes["shares"], x, shares, threshold=easy_threshold,
                                 title="triplets by kind, at the epoch's margin")
  else:
    plotting.plot_curves(axes["shares"], x,
                         {"easy share": [r.get("easy_share", nan) for r in epochs]},
                         title="easy share" + threshold_note, hline=easy_threshold)
    axes["shares"].set_ylim(-0.02, 1.02)
  if title:
    fig.suptitle(title)
  plotting.save_figure(fig, path, dpi=100)


def write_outputs(workdir: str, summary: dict[str, Any], epoch_records: list[Any],
                   ctx: Any, board: Any, figure: dict[str, Any]) -> None:
  """A finished run's files: summary.json, pairs.npz (the arrays the evaluators left in
  ``ctx.artifacts``), training.png, roc.png, and their TensorBoard copies (``board``)."""
  import numpy  # pylint: disable=import-outside-toplevel
  from tsm import plotting  # pylint: disable=import-outside-toplevel
  write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  with atomic_path(os.path.join(workdir, "pairs.npz")) as tmp:
    with open(tmp, "wb") as f:
      numpy.savez_compressed(f, **ctx.artifacts)
  step = epoch_records[-1]["step"] if epoch_records else 0
  if not figure.pop("skip", False) and epoch_records:
    path = os.path.join(workdir, "training.png")
    plot_training(epoch_records, path, **figure)
    board.image("training", path, step)
    if "test_distances" in ctx.artifacts:
      path = os.path.join(workdir, "roc.png")
      plotting.plot_roc(ctx.artifacts["test_distances"], ctx.artifacts["test_same"], path,
                        title=figure.get("title", ""))
      board.image("roc", path, step)
  if len(ctx.splits.test):
    board.embeddings(ctx.embeddings("test"), ctx.labels("test"), tag="test", step=step)
