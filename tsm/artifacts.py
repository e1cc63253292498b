"""Files a training run writes: the metrics log, atomic JSON, the training figure.

* ``metrics.jsonl``: one JSON object a line, ``{"kind": "step" | "epoch", ...}``,
  appended in blocks (one host transfer per block, never inside the jitted step). On
  resume the file is cut back to its length at the restored checkpoint, so a resumed run
  writes exactly the lines an uninterrupted run writes.
* ``summary.json``, ``config.json``: written to a temporary file and renamed, so a reader
  never sees half a file.
* ``training.png``: loss, margin and easy-triplet share per epoch (matplotlib, Agg).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Sequence


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` via a temporary file and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


class MetricsLog:
  """Append-only JSON-lines log that can be cut back to a saved length.

  Args:
    path: the ``.jsonl`` file (created on the first append).
  """

  def __init__(self, path: str):
    self.path = path

  def size(self) -> int:
    """Current length of the file in bytes (0 when it does not exist)."""
    return os.path.getsize(self.path) if os.path.exists(self.path) else 0

  def truncate(self, size: int) -> None:
    """Cuts the file back to ``size`` bytes (a length :meth:`size` returned earlier)."""
    if os.path.exists(self.path):
      with open(self.path, "r+b") as f:
        f.truncate(size)

  def append(self, records: Iterable[dict[str, Any]]) -> None:
    """Appends one line per record and flushes."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if lines:
      with open(self.path, "a") as f:
        f.write(lines)
        f.flush()

  def read(self) -> list[dict[str, Any]]:
    """Every record, in order."""
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


def plot_training(epochs: Sequence[dict[str, Any]], path: str, title: str = "", *,
                  val_label: str = "validation",
                  easy_threshold: float | None = None) -> None:
  """Draws loss (train, validation), margin and easy share per epoch to ``path`` (PNG).

  Args:
    epochs: the ``"epoch"`` records of ``metrics.jsonl``.
    path: output file; written via a temporary file and a rename.
    title: figure title.
    val_label: legend label of the validation loss (e.g. its margin).
    easy_threshold: optional horizontal line on the easy-share panel (DAMS's tau).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  x = [r["epoch"] + 1 for r in epochs]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
  ax = axes[0]
  ax.plot(x, [r["loss"] for r in epochs], "o-", label="train")
  if any("val_loss" in r for r in epochs):
    ax.plot([r["epoch"] + 1 for r in epochs if "val_loss" in r],
            [r["val_loss"] for r in epochs if "val_loss" in r], "s--", label=val_label)
  ax.set_title("loss (train: at the epoch's margin)")
  ax.legend()
  ax = axes[1]
  ax.plot(x, [r["margin"] for r in epochs], "o-", color="C2")
  ax.set_title("margin $\\mu$ (in force during the epoch)")
  ax = axes[2]
  ax.plot(x, [r["easy_share"] for r in epochs], "o-", color="C3")
  if easy_threshold is not None:
    ax.axhline(easy_threshold, color="0.4", ls=":", label=f"threshold {easy_threshold:g}")
    ax.legend(loc="lower right")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("easy share")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
