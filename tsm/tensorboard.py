"""TensorBoard logs of a run, written without TensorFlow (tensorboardX).

A :class:`TensorBoardWriter` writes, into a run's directory beside ``metrics.jsonl``:

* scalars (per step and per epoch; ``tensorboard --logdir <workdir>``'s Scalars tab),
* images (the run's PNG figures, or arrays; the Images tab),
* hyper-parameters with the metrics to compare runs by (the HParams tab; the hparams
  plugin's ``experiment``, ``session_start_info`` and ``session_end_info`` summaries),
* test embeddings with their labels for the embedding projector
  (``projector_config.pbtxt`` in the log directory, and ``<step>/<tag>/tensors.tsv`` and
  ``metadata.tsv`` beside it; the Projector tab).

tensorboardX writes the event files with protobuf alone. :func:`make_writer` returns a
:class:`NullWriter` (same methods, does nothing) when logging is turned off or on the
processes other than 0 of a multi-host run, so the training loop calls the same methods
either way.

A resumed run passes ``purge_step`` (its first new step): the writer then starts its
event file with TensorBoard's purge marker, and TensorBoard drops the earlier files'
events from that step on (those logged after the last checkpoint by the run that
stopped, which the resumed run logs again), so no step is shown twice.

Example::

  with tsm.tensorboard.make_writer(workdir, enabled=jax.process_index() == 0) as tb:
    tb.scalars(step, {"loss": 0.3, "margin": 0.2}, prefix="train/")
    tb.image("training", os.path.join(workdir, "training.png"), step)
    tb.hparams({"lr": 1e-3, "loss": "triplet"}, {"test/map_r": 0.8}, step=step)
    tb.embeddings(test_embeddings, test_labels, tag="test", step=step)

References:
  tensorboardX, https://github.com/lanpa/tensorboardX
"""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Mapping

import numpy as np
from tsm import _extras

_extras.require(__name__, "tensorboardX")   # else one line naming tsm[train]

import tensorboardX

__all__ = ["NullWriter", "TensorBoardWriter", "clean_tag", "make_writer"]


def clean_tag(name: str) -> str:
  """``name`` as TensorBoard stores it: characters outside ``[A-Za-z0-9_./-]`` become
  ``_`` (``val_map@r`` -> ``val_map_r``), as tensorboardX does when writing."""
  return re.sub(r"[^-/\w\.]", "_", str(name)).lstrip("/")


def _hparam_value(value: Any) -> bool | float | str | None:
  """A value the hparams plugin takes (bool, number, string), others as text."""
  if value is None or isinstance(value, (bool, str)):
    return value
  number = _scalar(value)
  return number if number is not None else str(value)


def _scalar(value: Any) -> float | None:
  """``value`` as a float if it is a real number (or a 0-d / size-1 array), else None."""
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
    array = np.asarray(value)
    if array.size == 1 and np.issubdtype(array.dtype, np.number) and not np.issubdtype(
        array.dtype, np.complexfloating):
      return float(array.reshape(()))
  return None


def _image_array(image: Any) -> np.ndarray:
  """An ``[H, W, C]`` uint8 array from a PNG path or an array (uint8, or float in [0, 1])."""
  if isinstance(image, (str, os.PathLike)):
    if not os.path.exists(image):
      raise ValueError(f"image={str(image)!r} does not exist; pass a PNG file or an array.")
    from PIL import Image  # pylint: disable=import-outside-toplevel  # comes with matplotlib
    with Image.open(image) as im:
      image = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
    raise ValueError(f"image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape "
                     f"{array.shape}; pass an HWC image.")
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)):
      raise ValueError("image has NaN or inf pixels; pass finite values in [0, 1].")
    array = np.round(np.clip(array, 0.0, 1.0) * 255)
  return array.astype(np.uint8)


class TensorBoardWriter:
  """Writes scalars, images and projector embeddings to ``logdir``.

  Args:
    logdir: the run's directory (created if missing); event files are named
      ``events.out.tfevents.*``.
    flush_secs: pending events are written at least this often (and on :meth:`flush`,
      :meth:`close`).
    purge_step: a resumed run's first new step: TensorBoard hides the events of this
      directory's earlier event files from that step on; None for a fresh run.
  """

  def __init__(self, logdir: str, *, flush_secs: int = 30, purge_step: int | None = None):
    if not isinstance(logdir, (str, os.PathLike)) or not str(logdir):
      raise ValueError(f"logdir={logdir!r} must be a directory name; pass the run's workdir.")
    os.makedirs(logdir, exist_ok=True)
    self.logdir = str(logdir)
    # A resumed run's file is named for its purge step, so it never replaces an earlier
    # file started in the same second (the names hold the time in seconds).
    self._writer = tensorboardX.SummaryWriter(
        logdir=self.logdir, flush_secs=flush_secs,
        purge_step=None if purge_step is None else int(purge_step),
        filename_suffix="" if purge_step is None else f".from-step-{int(purge_step)}")

  def scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
    """One scalar per real-number entry of ``values`` at ``step``.

    Entries that are not numbers (``"kind": "epoch"``, lists, None) are skipped, so a
    ``metrics.jsonl`` record can be passed as is; so are NaN and infinities (a skipped
    step's loss), which tensorboardX would warn about one by one.

    Args:
      step: global step (x axis).
      values: ``{name: number}``. TensorBoard tags allow ``[A-Za-z0-9_./-]``; tensorboardX
        replaces other characters by ``_`` (``val_map@r`` is shown as ``val_map_r``).
      prefix: prepended to each name (``"train/"``, ``"epoch/"``): TensorBoard groups
        tags by the part before the first slash.
    """
    for name, value in values.items():
      number = _scalar(value)
      if number is not None and math.isfinite(number):
        self._writer.add_scalar(f"{prefix}{name}", number, global_step=int(step))

  def image(self, tag: str, image: Any, step: int) -> None:
    """An image at ``step``.

    Args:
      tag: image name.
      image: a PNG (or any Pillow-readable) file name, or an ``[H, W]`` / ``[H, W, C]``
        array (uint8, or float in [0, 1]; C = 1, 3 or 4).
      step: global step.
    """
    self._writer.add_image(tag, _image_array(image), global_step=int(step),
                           dataformats="HWC")

  def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], *,
               step: int = 0) -> None:
    """The run's hyper-parameters and final metrics for the HParams tab.

    Writes the hparams plugin's three summaries (the experiment: which hyper-parameters
    and metrics there are; the session start: this run's values; the session end) into
    this log directory, and each metric as a scalar (the plugin reads the metrics'
    values from the scalars of the same tag). Unlike tensorboardX's ``add_hparams`` it
    writes into the run's own directory, not a new one beside it.

    Args:
      hparams: ``{name: value}``; booleans, numbers and strings as they are, None left
        out, anything else (a tuple) as its text.
      metrics: ``{tag: number}``, e.g. ``{"test/map@r": 0.8}`` (tags cleaned as
        :func:`clean_tag`); entries that are not numbers are left out.
      step: global step of the metrics' scalars.
    """
    from tensorboardX import summary as summary_lib  # pylint: disable=import-outside-toplevel
    values = {clean_tag(k): _hparam_value(v) for k, v in hparams.items()}
    numbers = {clean_tag(k): _scalar(v) for k, v in metrics.items()}
    numbers = {k: v for k, v in numbers.items() if v is not None}
    experiment, start, end = summary_lib.hparams(
        {k: v for k, v in values.items() if v is not None}, numbers)
    writer = self._writer._get_file_writer()  # pylint: disable=protected-access
    for proto in (experiment, start, end):
      writer.add_summary(proto, global_step=int(step))
    self.scalars(step, numbers)

  def embeddings(self, embeddings: Any, labels: Any, *, tag: str = "test",
                 step: int = 0) -> None:
    """Embeddings and their labels for the embedding projector.

    Writes ``<logdir>/<step:05d>/<tag>/tensors.tsv`` and ``metadata.tsv`` and appends the
    embedding to ``<logdir>/projector_config.pbtxt``. Call it once per (tag, step).

    Args:
      embeddings: ``[N, D]`` float array.
      labels: ``[N]`` labels (one metadata column).
      tag: embedding name.
      step: global step.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] < 1:
      raise ValueError(f"embeddings must be a [N, D] array with N >= 1, got shape {x.shape}; "
                       "pass one embedding per row.")
    if labels.shape[0] != x.shape[0]:
      raise ValueError(f"labels has {labels.shape[0]} entries for {x.shape[0]} embeddings; "
                       "pass one label per row.")
    self._writer.add_embedding(x, metadata=[str(v) for v in labels.tolist()], tag=tag,
                               global_step=int(step))

  def flush(self) -> None:
    """Writes pending events to disk."""
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()

  def __enter__(self) -> TensorBoardWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class NullWriter:
  """The writer's methods, doing nothing (logging off, or a process other than 0)."""

  logdir = None

  def scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
    del step, values, prefix

  def image(self, tag: str, image: Any, step: int) -> None:
    del tag, image, step

  def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], *,
              step: int = 0) -> None:
    del hparams, metrics, step

  def embeddings(self, embeddings: Any, labels: Any, *, tag: str = "test",
                 step: int = 0) -> None:
    del embeddings, labels, tag, step

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass

  def __enter__(self) -> NullWriter:
    return self

  def __exit__(self, *exc) -> None:
    pass


def make_writer(logdir: str, *, enabled: bool = True, flush_secs: int = 30,
                purge_step: int | None = None) -> TensorBoardWriter | NullWriter:
  """A :class:`TensorBoardWriter` on ``logdir``, or a :class:`NullWriter` when disabled.

  Args:
    logdir: the run's directory.
    enabled: False (logging turned off, or ``jax.process_index() != 0``) gives a
      :class:`NullWriter`, which writes nothing.
    flush_secs, purge_step: see :class:`TensorBoardWriter`.

  Returns:
    The writer.
  """
  return (TensorBoardWriter(logdir, flush_secs=flush_secs, purge_step=purge_step)
          if enabled else NullWriter())
