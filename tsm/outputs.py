"""A finished run's final files, checked: which are missing or damaged.

The standard hooks (:mod:`tsm.hooks`) end a run by writing ``summary.json``,
``pairs.npz``, ``training.png``, ``roc.png`` (when a verification evaluator left its test
pair distances) and, under ``tensorboard/``, the projector's ``projector_config.pbtxt``
with its ``tensors.tsv`` and ``metadata.tsv``. A run killed between those writes, or a
disk that filled up during them, leaves some missing or cut short; :func:`damaged` names
them, so that a rerun rebuilds them from the checkpoint and ``metrics.jsonl``
(``tsm.config.train_and_evaluate``) instead of reporting a run as done without them.

Each check reads only as much as it needs: strict JSON for the summary, the zip directory
for ``pairs.npz``, the PNG signature and the final ``IEND`` chunk for the figures, and
line and column counts for the projector's files.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

SUMMARY = "summary.json"
PAIRS = "pairs.npz"
TRAINING = "training.png"
ROC = "roc.png"
TENSORBOARD = "tensorboard"
PROJECTOR = os.path.join(TENSORBOARD, "projector_config.pbtxt")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _json_ok(path: str) -> bool:
  try:
    with open(path, encoding="utf-8") as f:
      return isinstance(json.load(f, parse_constant=_no_constant), dict)
  except (OSError, ValueError):
    return False


def _no_constant(name: str) -> None:
  raise ValueError(f"{name} is not strict JSON")


def _png_ok(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(len(_PNG_SIGNATURE))
      f.seek(max(os.path.getsize(path) - len(_PNG_END), 0))
      return head == _PNG_SIGNATURE and f.read() == _PNG_END
  except OSError:
    return False


def _npz_names(path: str) -> list[str] | None:
  """The arrays of an ``.npz`` whose zip directory and members read back; else None."""
  try:
    with zipfile.ZipFile(path) as z:
      if z.testzip() is not None:
        return None
      return [n[:-len(".npy")] for n in z.namelist()]
  except (OSError, zipfile.BadZipFile, ValueError):
    return None


def _table_rows(path: str) -> tuple[int, set[int]] | None:
  """``(rows, column counts)`` of a whole ``.tsv`` (ending in a newline), else None."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, ValueError):
    return None
  if not text.endswith("\n"):
    return None
  lines = text[:-1].split("\n")
  return len(lines), {line.count("\t") + 1 for line in lines}


def _projector_damage(workdir: str) -> list[str]:
  """The projector files that are missing or cut short (relative paths)."""
  config = os.path.join(workdir, PROJECTOR)
  try:
    with open(config, encoding="utf-8") as f:
      text = f.read()
  except OSError:
    return [PROJECTOR]
  tensors = re.findall(r'tensor_path: "([^"]+)"', text)
  metadata = re.findall(r'metadata_path: "([^"]+)"', text)
  if not tensors or len(tensors) != len(metadata):
    return [PROJECTOR]
  bad = []
  for tensor, meta in zip(tensors, metadata):
    t = _table_rows(os.path.join(workdir, TENSORBOARD, tensor))
    m = _table_rows(os.path.join(workdir, TENSORBOARD, meta))
    if t is None or len(t[1]) != 1:
      bad.append(os.path.join(TENSORBOARD, tensor))
    if m is None or (t is not None and m[0] != t[0]):
      bad.append(os.path.join(TENSORBOARD, meta))
  return bad


def damaged(workdir: str, *, figures: bool = True, tensorboard: bool = True) -> list[str]:
  """The final files of the finished run in ``workdir`` that are missing or damaged.

  Args:
    workdir: the run directory.
    figures: the run draws ``training.png`` (and ``roc.png`` where ``pairs.npz`` holds
      test pair distances).
    tensorboard: the run writes TensorBoard files (the projector's, where the summary
      has test metrics: the test embeddings).

  Returns:
    Paths relative to ``workdir`` (empty when every expected file is whole).
  """
  bad = []
  if not _json_ok(os.path.join(workdir, SUMMARY)):
    bad.append(SUMMARY)
  names = _npz_names(os.path.join(workdir, PAIRS))
  if names is None:
    bad.append(PAIRS)
  if figures:
    if not _png_ok(os.path.join(workdir, TRAINING)):
      bad.append(TRAINING)
    if (names is None or "test_distances" in names) and not _png_ok(
        os.path.join(workdir, ROC)):
      bad.append(ROC)
  if tensorboard and (SUMMARY in bad or "test" in _summary(workdir)):
    bad.extend(_projector_damage(workdir))
  return bad


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, SUMMARY), encoding="utf-8") as f:
    return json.load(f)


def clear_projector(workdir: str) -> None:
  """Removes the projector's files (its config and the embedding tables it names), so
  that a rebuild writes them afresh instead of adding a second entry."""
  config = os.path.join(workdir, PROJECTOR)
  try:
    with open(config, encoding="utf-8") as f:
      paths = re.findall(r'(?:tensor|metadata)_path: "([^"]+)"', f.read())
  except OSError:
    return
  for path in paths:
    full = os.path.join(workdir, TENSORBOARD, path)
    try:
      os.remove(full)
    except OSError:
      pass
    for directory in (os.path.dirname(full), os.path.dirname(os.path.dirname(full))):
      try:   # <step>/<tag>/ and <step>/, once empty
        os.rmdir(directory)
      except OSError:
        pass
  os.remove(config)
