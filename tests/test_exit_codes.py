"""tsm.exit_codes: one status per kind of fault, subclasses before their bases."""

import errno

import pytest

from tsm import checkpoint, config, exit_codes, history, workdir


@pytest.mark.parametrize("error, status", [
    (config.ConfigError("x"), 2),
    (workdir.BadWorkdir("x"), 2),
    (workdir.WorkdirBusy("x"), 2),
    (workdir.WorkdirIOError("x"), 1),
    (checkpoint.CheckpointError("x"), 1),
    (OSError(errno.ENOSPC, "No space left on device"), 1),
    (history.NonFiniteError(5, "loss"), 3),
    (history.Interrupted(7), 130),
    (KeyboardInterrupt(), 130),
    (ValueError("x"), None),      # unforeseen: the command shows its traceback
    (SystemExit(0), None),
])
def test_exit_code(error, status):
  assert exit_codes.exit_code(error) == status


def test_the_commands_use_the_one_map():
  from tsm import cli, embed_cli  # pylint: disable=import-outside-toplevel
  assert (cli.USAGE_ERROR, cli.IO_ERROR, cli.NONFINITE_ERROR, cli.INTERRUPTED) == (2, 1, 3, 130)
  assert (embed_cli.USAGE_ERROR, embed_cli.IO_ERROR) == (2, 1)
