"""``tsm-embed``: embeddings of a trained run, written to an ``.npz`` file.

Usage::

  tsm-embed --workdir=runs/digits_dams --split=test --out=test_embeddings.npz
  tsm-embed --workdir=runs/fashion --input=/usr/share/fashion-mnist --out=test.npz
  tsm-embed --workdir=runs/fashion --input=queries.npy --out=queries.npz --which=last

Exactly one of ``--split`` (a split of the run's own dataset, as training split it) and
``--input`` (a file or directory) says what to embed. ``--input`` takes:

* ``PATH.npy``: an ``[N, ...]`` array (no labels);
* ``PATH.npz``: the array ``inputs`` (or ``images`` / ``x``, or the only array) and,
  when present, ``labels`` (or ``y``);
* an IDX file (``*-ubyte``, optionally ``.gz``): images, no labels;
* an IDX directory (the four MNIST-style files): its official test set, with labels.

Integer arrays are raw images (0..255) and get the run's preprocessing; float arrays are
taken as model inputs (``tsm.export.Loaded.prepare``).

The output holds ``embeddings`` (float32 ``[N, D]``) and, when known, ``labels``
(int ``[N]``); it is written atomically (a half-written file never appears).

Exit status: 0 done; 2 a bad argument, path, workdir or input (one line naming it and
the fix); 1 an unreadable checkpoint or a failed write.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

import numpy as np

from tsm import hugepages
from tsm.exit_codes import IO_ERROR, USAGE_ERROR

PROGRAM = "tsm-embed"
_INPUT_KEYS = ("inputs", "images", "x")
_LABEL_KEYS = ("labels", "y")


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (``tsm-embed: error: ...``, exit 2)."""

  def error(self, message: str) -> NoReturn:
    _fail(message)


def _fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
  print(f"{PROGRAM}: error: {message}", file=sys.stderr)
  sys.exit(status)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog=PROGRAM,
      description="Embed a split of a trained run's dataset, or a file, with the run's "
                  "best (or last) checkpoint; write embeddings and labels to an .npz.",
      epilog="example: tsm-embed --workdir=runs/digits_dams --split=test "
             "--out=embeddings.npz")
  parser.add_argument("--workdir", required=True,
                      help="run directory of tsm-train (config.json, checkpoints/).")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--split", choices=("train", "val", "test"),
                    help="a split of the run's own dataset.")
  what.add_argument("--input", help="a .npy / .npz file, an IDX file or an IDX directory.")
  parser.add_argument("--out", required=True, help="output file, FILE.npz.")
  parser.add_argument("--which", choices=("best", "last"), default="best",
                      help="checkpoint: best by train.best_metric (default) or last.")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="examples per forward pass (default: the run's eval.batch_size).")
  return parser


def read_input(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """``(inputs, labels or None)`` of an ``--input`` path (see the module docstring).

  Args:
    path: a ``.npy`` / ``.npz`` file, an IDX file or an IDX directory.

  Returns:
    The ``[N, ...]`` inputs and the ``[N]`` int labels (None when the file has none).

  Raises:
    ValueError: the path is missing or holds no usable array (one line).
  """
  # pylint: disable=import-outside-toplevel
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  from tsm.data import idx as idx_lib  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise ValueError(f"--input={path} does not exist; pass a .npy, .npz, IDX file or IDX "
                     "directory.")
  labels = None
  if os.path.isdir(path):
    files = idx_lib.find_idx_files(path)
    inputs = idx_lib.read_idx(files["test_images"])
    labels = idx_lib.read_idx(files["test_labels"])
  elif path.endswith(".npy"):
    try:
      inputs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"--input={path} is not a readable .npy file ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                       "write it again with numpy.save.") from None
  elif path.endswith(".npz"):
    z = artifacts.read_npz(path)
    keys = list(z)
    key = next((k for k in _INPUT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
      raise ValueError(f"--input={path} holds {keys}; name the inputs array one of "
                       f"{', '.join(_INPUT_KEYS)}.")
    inputs = z[key]
    label_key = next((k for k in _LABEL_KEYS if k in keys), None)
    labels = None if label_key is None else z[label_key]
  else:
    inputs = idx_lib.read_idx(path)
  if inputs.ndim < 2 or inputs.shape[0] == 0:
    raise ValueError(f"--input={path} holds an array of shape {inputs.shape}; pass "
                     "[N, ...] examples with N >= 1.")
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (inputs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"--input={path}: labels of shape {labels.shape} and dtype "
                       f"{labels.dtype} do not fit {inputs.shape[0]} examples; store "
                       "[N] integer labels.")
  return inputs, labels


def _warn_unfinished(workdir: str, config) -> None:
  """One warning line when the run in ``workdir`` has not finished its epochs."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return
  try:
    records = artifacts.MetricsLog(os.path.join(workdir, "metrics.jsonl")).read()
  except (OSError, ValueError):
    records = []
  steps = max((r.get("step", 0) for r in records), default=0)
  epochs = sum(r.get("kind") == "epoch" for r in records)
  print(f"{PROGRAM}: warning: the run in {workdir} has not finished ({epochs} of "
        f"{int(config.train.epochs)} epochs, step {steps}); its checkpoint of that point "
        "is used (rerun tsm-train on it to finish it).", file=sys.stderr)


def run(argv: Sequence[str]) -> str:
  """Parses ``argv`` (without the program name), embeds, writes; returns the out path."""
  args = _parser().parse_args(list(argv))
  if not args.out.endswith(".npz"):
    _fail(f"--out={args.out} must end in .npz, e.g. --out=embeddings.npz.")
  if args.batch_size is not None and args.batch_size < 1:
    _fail(f"--batch_size={args.batch_size} must be positive; pass e.g. 256.")
  if not os.path.isdir(args.workdir):
    _fail(f"--workdir={args.workdir} does not exist; pass the --workdir of a tsm-train "
          "run.")
  if args.input is not None and not os.path.exists(args.input):
    _fail(f"--input={args.input} does not exist; pass a .npy, .npz, IDX file or IDX "
          "directory.")
  # pylint: disable=import-outside-toplevel
  from tsm import artifacts
  from tsm import checkpoint as checkpoint_lib
  from tsm import export
  try:
    if args.input is not None:   # read (and check) the input before restoring anything
      inputs, labels = read_input(args.input)
    loaded = export.load(args.workdir, which=args.which)
    batch_size = args.batch_size or int(loaded.config.eval.batch_size)
    if args.split is not None:
      inputs = getattr(loaded.splits, args.split)
      labels = np.asarray(inputs.labels)
      if len(labels) == 0:
        _fail(f"--split={args.split} of workdir {args.workdir} is empty; pick another "
              "split.")
    _warn_unfinished(args.workdir, loaded.config)
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind == "f":
      bad = int(np.count_nonzero(~np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1)))
      if bad:
        print(f"{PROGRAM}: warning: {bad} of the {len(inputs)} input rows hold NaN or inf; "
              "their embeddings are NaN.", file=sys.stderr)
    embeddings = loaded.embed(inputs, batch_size=batch_size)
  except ValueError as e:
    _fail(str(e).strip().splitlines()[0])
  except checkpoint_lib.CheckpointError as e:
    _fail(str(e), IO_ERROR)
  out = {"embeddings": np.asarray(embeddings, np.float32)}
  if labels is not None:
    out["labels"] = np.asarray(labels).astype(np.int64)
  try:
    with artifacts.atomic_path(args.out) as tmp:
      with open(tmp, "wb") as f:   # a file object: np.savez adds no second ".npz"
        np.savez(f, **out)
  except OSError as e:
    _fail(f"cannot write --out={args.out}: {e.strerror or e}.", IO_ERROR)
  return args.out


def main(argv: Sequence[str] | None = None) -> None:
  """Console-script entry point (``tsm-embed``)."""
  if argv is None:
    hugepages.reexec()  # Before anything is allocated (see tsm.hugepages).
  from tsm import checkpoint  # pylint: disable=import-outside-toplevel
  checkpoint.quiet_orbax()   # a command's entry point: a bad checkpoint is one line
  out = run(sys.argv[1:] if argv is None else argv)
  with np.load(out) as z:
    shape = z["embeddings"].shape
    labelled = "with labels" if "labels" in z else "without labels"
  print(f"{PROGRAM}: wrote {shape[0]} embeddings of dimension {shape[1]} ({labelled}) to "
        f"{out}")


if __name__ == "__main__":
  main()
