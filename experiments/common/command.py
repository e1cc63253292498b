"""The command line every study shares: ``--help``, flags, exit statuses, the report.

``python -m experiments.<study>.run --config=... --workdir=...`` parses its two flags with
:class:`tsm.cli.ConfigCommand` and runs the study's ``run_study(cfg, workdir)``. Every
foreseeable fault is one line on stderr and an exit status from :mod:`tsm.cli`: 2 for a
bad setting (:class:`~experiments.common.grid.StudyError`), a workdir in use or a bad
path, 1 for an I/O fault, 130 for Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from experiments.common import grid
from tsm import cli as cli_lib

HELP_FLAGS = ("--help", "-h", "--helpfull", "-help")


def parse_command(cli: Any, argv: Sequence[str], usage: str) -> None:
  """``cli.parse(argv)`` (a ``tsm.cli.ConfigCommand``), with ``--help`` / ``-h``.

  ``ConfigCommand`` parses into a private ``FlagValues`` that has no ``--help``: here
  ``--help`` prints ``usage`` (the command's docstring) and the two flags' help, and
  exits with status 0 before anything else is read.
  """
  if any(a in HELP_FLAGS for a in list(argv)[1:]):
    print(usage.strip("\n"))
    print()
    print(cli.flag_values.get_help())
    raise SystemExit(0)
  cli.parse(argv)


def cli_main(run: Callable[[], Any], program: str = "study") -> Any:
  """Runs a study command's body with every foreseeable fault as one line: status 2 for a
  workdir in use or a bad path, 1 for an I/O fault, 130 for Ctrl-C (143 for SIGTERM,
  SIGUSR1) outside the grid."""
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  try:
    from tsm import checkpoint  # pylint: disable=import-outside-toplevel
    checkpoint.quiet_orbax()   # a command's entry point: its failures are one line each
    # A study's process stops at Ctrl-C: its background threads' noise may go.
    with cli_lib.quiet_interrupts():
      return run()
  except (workdir_lib.BadWorkdir, workdir_lib.WorkdirBusy) as e:
    print(f"{program}: error: {e}", file=sys.stderr)
    raise SystemExit(cli_lib.USAGE_ERROR) from None
  except workdir_lib.WorkdirIOError as e:
    print(f"{program}: error: {e}", file=sys.stderr)
    raise SystemExit(cli_lib.IO_ERROR) from None
  except KeyboardInterrupt as e:
    raise grid.stopped(e) from None


def main(argv: Sequence[str] | None, *, program: str, usage: str, example_config: str,
         default_workdir: str, run_study: Callable[[Any, str, list[str]], Any],
         show: Callable[[Any, str], None]) -> None:
  """A study's command-line entry point.

  Args:
    argv: the command line (None: ``sys.argv``, after :func:`tsm.hugepages.reexec`).
    program: the command's name in its messages (``"loss study"``).
    usage: the command's help text (its ``run.py`` docstring).
    example_config: a config file named in the flags' help.
    default_workdir: the workdir the flags' help suggests.
    run_study: ``run_study(cfg, workdir, argv)`` -> what ``show`` prints.
    show: ``show(result, workdir)`` prints the study's result.
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  from tsm import hugepages  # pylint: disable=import-outside-toplevel
  if argv is None:
    hugepages.reexec()  # Before anything is allocated (see tsm.hugepages).
  argv = list(sys.argv if argv is None else argv)
  cli = cli_lib.ConfigCommand(
      program, example_config, default_workdir,
      config_help=f"Study config file (a .py with get_config()), e.g. {example_config}.",
      workdir_help="Study directory (created; finished runs in it are reused).")
  parse_command(cli, argv, usage)
  # "--workdir=~/..." reaches the program unexpanded (the shell expands ~ only at a
  # word's start): the home directory is meant, never a directory named "~".
  cfg, workdir = cli.config, os.path.expanduser(cli.workdir)
  logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
  try:
    out = cli_main(lambda: run_study(cfg, workdir, argv), program)
  except grid.StudyError as e:
    cli.fail(str(e))
  show(out, workdir)


def show_verdicts(out: dict[str, Any], workdir: str) -> None:
  """Prints a loss study's verdict table and where its report is."""
  import os  # pylint: disable=import-outside-toplevel
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(workdir, 'report.md')} in {out['wall_seconds']:.1f} s")
