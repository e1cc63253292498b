"""``tsm-train``: train one experiment from a config file.

Usage::

  tsm-train --config=experiments/configs/digits_dams.py --workdir=runs/digits_dams \\
      [--config.train.epochs=5 --config.margin.schedule=constant ...]

``--config`` is an ml_collections config file with a ``get_config()``; any field can be
overridden with ``--config.<section>.<field>=<value>``. A rerun with the same
``--workdir`` resumes the run from its latest checkpoint.

A bad config value (or flag, or a dataset that is not prepared) prints one line to stderr
naming the field and the fix, exits with status 2, and creates nothing.
"""

from __future__ import annotations

import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (a .py with get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it "
                               "holds a run of the same config).")

USAGE_ERROR = 2


def _fail(message: str) -> None:
  print(f"tsm-train: error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _one_line(error: BaseException) -> str:
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  return " ".join(lines) or type(error).__name__


def _parse(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors and exit status 2."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).strip().splitlines()[0])
  except (AttributeError, KeyError) as e:
    _fail(f"a --config.* override names no config field: {_one_line(e)}")
  except Exception as e:  # pylint: disable=broad-except  # raised by the config file
    _fail(f"--config failed: {type(e).__name__}: {_one_line(e)}")
  if _CONFIG.value is not None:
    try:   # config_flags reports a file that failed to load only on first use
      _CONFIG.value.keys()
    except Exception as e:  # pylint: disable=broad-except
      found = re.search(r"\[Errno[^\]]*\][^\n]*", str(e))
      _fail(f"--config could not be loaded ({found.group(0) if found else _one_line(e)}); "
            "pass an existing config file such as experiments/configs/digits_dams.py.")
  if len(rest) > 1:
    _fail(f"unexpected arguments {rest[1:]}; pass options as --name=value.")
  if _WORKDIR.value is None:
    _fail("--workdir is required, e.g. --workdir=runs/digits_dams.")
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=experiments/configs/digits_dams.py.")
  return rest


def _main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tsm import fit as fit_lib  # pylint: disable=import-outside-toplevel
  try:
    fit_lib.fit(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    _fail(str(e))


def main(argv: list[str] | None = None) -> None:
  """Console-script entry point (``tsm-train``)."""
  app.run(_main, argv=argv, flags_parser=_parse)


if __name__ == "__main__":
  main()
