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
from typing import Any, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

USAGE_ERROR = 2


def _one_line(error: BaseException) -> str:
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  return " ".join(lines) or type(error).__name__


class ConfigCommand:
  """``--config=FILE --workdir=DIR [--config.a.b=value ...]`` parsing, shared by
  ``tsm-train`` and the study scripts under ``experiments/``.

  Every usage error (a bad flag, an override naming no field, a config file that does not
  load, a missing ``--workdir``) prints one line ``PROGRAM: error: ...`` to stderr and exits
  with status 2 before anything is created.

  Args:
    program: name used in error lines.
    example_config: a config file named in the "is required" hints.
    example_workdir: a workdir named in the "is required" hints.
    flag_values: where to define the two flags; a private ``FlagValues`` by default, so a
      script's flags never collide with ``tsm-train``'s (``tsm-train`` passes absl's global
      ``flags.FLAGS`` to keep absl's own logging flags).
    config_help: help text of ``--config``.
    workdir_help: help text of ``--workdir``.
  """

  def __init__(self, program: str, example_config: str, example_workdir: str, *,
               flag_values: flags.FlagValues | None = None,
               config_help: str = "Config file (a .py with get_config()).",
               workdir_help: str = "Output directory (resumed if it exists)."):
    self.program = program
    self.example_config = example_config
    self.example_workdir = example_workdir
    self.flag_values = flags.FlagValues() if flag_values is None else flag_values
    self._config = config_flags.DEFINE_config_file(
        "config", None, config_help, flag_values=self.flag_values, lock_config=True)
    self._workdir = flags.DEFINE_string("workdir", None, workdir_help,
                                        flag_values=self.flag_values)

  @property
  def config(self) -> Any:
    return self._config.value

  @property
  def workdir(self) -> str:
    return self._workdir.value

  def fail(self, message: str) -> NoReturn:
    """Prints ``PROGRAM: error: message`` to stderr and exits with status 2."""
    print(f"{self.program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)

  def parse(self, argv: Sequence[str]) -> list[str]:
    """absl flag parsing with one-line errors and exit status 2; returns the rest."""
    try:
      rest = self.flag_values(list(argv))
    except flags.Error as e:
      self.fail(str(e).strip().splitlines()[0])
    except (AttributeError, KeyError) as e:
      self.fail(f"a --config.* override names no config field: {_one_line(e)}")
    except Exception as e:  # pylint: disable=broad-except  # raised by the config file
      self.fail(f"--config failed: {type(e).__name__}: {_one_line(e)}")
    if self.config is not None:
      try:   # config_flags reports a file that failed to load only on first use
        self.config.keys()
      except Exception as e:  # pylint: disable=broad-except
        found = re.search(r"\[Errno[^\]]*\][^\n]*", str(e))
        self.fail(f"--config could not be loaded "
                  f"({found.group(0) if found else _one_line(e)}); pass an existing "
                  f"config file such as {self.example_config}.")
    if len(rest) > 1:
      self.fail(f"unexpected arguments {rest[1:]}; pass options as --name=value.")
    if self.workdir is None:
      self.fail(f"--workdir is required, e.g. --workdir={self.example_workdir}.")
    if self.config is None:
      self.fail(f"--config is required, e.g. --config={self.example_config}.")
    return rest


_COMMAND = ConfigCommand(
    "tsm-train", "experiments/configs/digits_dams.py", "runs/digits_dams",
    flag_values=flags.FLAGS,
    config_help="Experiment config file (a .py with get_config()).",
    workdir_help="Run directory (created; resumed if it holds a run of the same config).")


def _main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  from tsm import history  # pylint: disable=import-outside-toplevel
  try:
    config_lib.train_and_evaluate(_COMMAND.config, _COMMAND.workdir)
  except config_lib.ConfigError as e:
    _COMMAND.fail(str(e))
  except history.NonFiniteError as e:
    print(f"tsm-train: {e}", file=sys.stderr)
    sys.exit(3)


def main(argv: list[str] | None = None) -> None:
  """Console-script entry point (``tsm-train``)."""
  app.run(_main, argv=argv, flags_parser=_COMMAND.parse)


if __name__ == "__main__":
  main()
