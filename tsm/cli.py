"""``tsm-train``: train one experiment from a config file.

Usage::

  tsm-train --config=experiments/configs/digits_dams.py --workdir=runs/digits_dams \\
      [--config.train.epochs=5 --config.margin.schedule=constant ...]
  tsm-train --config=digits_dams --workdir=runs/digits_dams   # a bundled config by name
  tsm-train --help          # usage, the bundled training and study configs
  tsm-train --list_fields   # every config field with its default and meaning
  tsm-train --list_fields --config=digits_dams   # its values beside the defaults

``--config`` is an ml_collections config file with a ``get_config()``, or the NAME of a
config bundled with tsm (``experiments/configs/NAME.py``, installed with the wheel, so a
``pip install`` without a clone has them too); any field can be overridden with
``--config.<section>.<field>=<value>``. The study configs (``margin_study_*``,
``loss_study_*``, ``loss_zoo_*``) are not for ``tsm-train``: each names its study's
command (``python -m experiments.<study>.run``). A rerun with the same
``--workdir`` resumes the run from its latest checkpoint; a finished run is reported
again without writing anything (its missing or damaged final files are written again;
``--rebuild_outputs`` writes them all again). ``--resume_with_changes`` continues a run
with its optimiser settings or its epochs changed (``tsm.config.RESUMABLE_FIELDS``; each
continuation is recorded in the workdir's ``changes.jsonl`` and ``metrics.jsonl``).

Exit status (:mod:`tsm.exit_codes`): 0 done; 2 a bad config value, flag, path or a workdir
in use (one line naming the field or the path and the fix; nothing created); 1 an I/O
fault (a full disk, an unreadable checkpoint); 3 the loss or the gradient became
non-finite (the last good checkpoint stays the resume point); 130 interrupted (Ctrl-C;
the same command resumes); 143 terminated (SIGTERM or SIGUSR1: the current step is
checkpointed and the same command resumes).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import sys
import threading
from typing import Any, Iterator, NoReturn, Sequence

from tsm import _extras

_extras.require(__name__, "absl", "ml_collections")   # else one line naming tsm[train]

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tsm import hugepages
# The statuses are tsm.exit_codes'; named here too for the scripts that import them from
# the command module.
from tsm.exit_codes import (  # noqa: F401  # pylint: disable=unused-import
    INTERRUPTED, IO_ERROR, NONFINITE_ERROR, USAGE_ERROR, exit_code)

CONFIG_DIR = "experiments/configs"
# The end of a diverged run's message, in the config's words.
NONFINITE_FIX = ("lower train.learning_rate or set train.grad_clip_norm, then rerun with "
                 "--resume_with_changes: it continues from the last good checkpoint "
                 "(train.nonfinite=skip skips such steps instead).")
# The bundled configs: beside the tsm package both in a clone and in an installed wheel
# (pyproject.toml ships the ``experiments`` package). Found by path, not by import, so a
# user's own ``experiments`` directory on sys.path cannot stand in for it.
BUNDLED_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), *CONFIG_DIR.split("/"))


def bundled_configs() -> dict[str, str]:
  """The bundled experiment configs: ``{NAME: path of experiments/configs/NAME.py}``."""
  try:
    names = sorted(os.listdir(BUNDLED_CONFIG_DIR))
  except OSError:   # an install without the experiments package
    return {}
  return {n[:-3]: os.path.join(BUNDLED_CONFIG_DIR, n) for n in names
          if n.endswith(".py") and not n.startswith("_")}


# A study config's docstring names its command, e.g. "python -m experiments.loss_zoo.run".
_STUDY_COMMAND = re.compile(r"python -m (experiments\.\w+\.run)\b")


def describe_config(path: str) -> tuple[str, str | None]:
  """A config file's one-line description and, for a study config, its command.

  Read from the file's docstring without importing it: the description is its first
  paragraph (a sentence); a study config names ``python -m experiments.<study>.run`` there.

  Args:
    path: a config file.

  Returns:
    ``(description, command)``: ``command`` is ``"python -m experiments.<study>.run"``
    for a study config, None for a training config (``tsm-train``'s).
  """
  try:
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, SyntaxError, ValueError):
    return "", None
  found = _STUDY_COMMAND.search(doc)
  description = " ".join(doc.strip().split("\n\n")[0].split())   # the first paragraph
  return description, found and f"python -m {found.group(1)}"


def resolve_config(value: str) -> str:
  """``--config``'s value with a bundled config NAME replaced by its file.

  A value that names an existing path, ends in ``.py`` or holds a path separator is a
  file and is returned unchanged (as is anything after ``:``, ml_collections' config
  argument); a bare NAME becomes ``experiments/configs/NAME.py`` of the bundled configs.

  Args:
    value: the ``--config`` value, e.g. ``digits_dams`` or ``path/to/config.py``.

  Returns:
    The config file to load (with its ``:argument``, if any).

  Raises:
    ValueError: a bare name that is no bundled config (one line listing the names).
  """
  name, colon, argument = value.partition(":")
  if (not name or os.path.exists(name) or name.endswith(".py") or "/" in name
      or os.sep in name):
    return value
  configs = bundled_configs()
  if name not in configs:
    known = ", ".join(configs) or f"none: {BUNDLED_CONFIG_DIR} is missing"
    raise ValueError(f"--config={name} is neither a file nor a bundled config ({known}); "
                     "pass a config file path or one of those names.")
  return configs[name] + colon + argument


def _one_line(error: BaseException) -> str:
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
  return " ".join(lines) or type(error).__name__


def _flag_error(text: str) -> str:
  """One line of an absl flag error; for a config file that raised while it loaded,
  the raising line of the file and the exception (config_flags puts the whole traceback
  in the message, after "Error whilst parsing config file:")."""
  lines = [line for line in text.strip().splitlines() if line.strip()]
  if "Error whilst parsing config file" not in lines[0] or len(lines) < 2:
    return lines[0]
  head = lines[0].split(": Error whilst parsing config file")[0]
  frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
  mine = [f for f in frames if f"{os.sep}site-packages{os.sep}" not in f[0]]
  where = f" at {mine[-1][0]} line {mine[-1][1]}" if mine else ""
  return f"{head}: the config file raised{where}: {lines[-1].strip()}"


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
    study_configs: whether the command runs study configs (False for ``tsm-train``: a
      study config gets one line naming its own command).
  """

  def __init__(self, program: str, example_config: str, example_workdir: str, *,
               flag_values: flags.FlagValues | None = None,
               config_help: str = "Config file (a .py with get_config()).",
               workdir_help: str = "Output directory (resumed if it exists).",
               study_configs: bool = True):
    self.program = program
    self.study_configs = study_configs
    self.config_help, self.workdir_help = config_help, workdir_help
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

  def _resolve_config(self, args: list[str]) -> list[str]:
    """``args`` with ``--config=NAME`` (or ``--config NAME``) of a bundled config
    replaced by the file's path."""
    out = list(args)
    for i, a in enumerate(out[1:], start=1):
      try:
        if a.startswith("--config="):
          out[i] = "--config=" + resolve_config(a.split("=", 1)[1])
          self._check_kind(a.split("=", 1)[1], out[i].split("=", 1)[1])
        elif a == "--config" and i + 1 < len(out):
          value = out[i + 1]
          out[i + 1] = resolve_config(value)
          self._check_kind(value, out[i + 1])
      except ValueError as e:
        self.fail(str(e))
    return out

  def _check_kind(self, given: str, path: str) -> None:
    """A study config passed to a command that runs single trainings fails with one line
    naming the study's command."""
    command = None if self.study_configs else describe_config(path.split(":", 1)[0])[1]
    if command:
      self.fail(f"--config={given} is a study config, which {self.program} does not run; "
                f"run it with {command} --config={given} --workdir=DIR, or pass a "
                "training config (see --help).")

  def _check_get_config(self, args: Sequence[str]) -> None:
    """A config file that exists but defines no ``get_config`` gets its own line."""
    for a in args[1:]:
      if a.startswith("--config="):
        path = a.split("=", 1)[1].split(":", 1)[0]
        if os.path.isfile(path):
          with open(path, encoding="utf-8", errors="replace") as f:
            if not re.search(r"^def get_config\(", f.read(), re.M):
              self.fail(f"--config={path} defines no get_config(); a config file is a "
                        f".py with def get_config() returning the config, such as "
                        f"{self.example_config}.")

  def fail(self, message: str) -> NoReturn:
    """Prints ``PROGRAM: error: message`` to stderr and exits with status 2."""
    print(f"{self.program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)

  def usage(self) -> str:
    """The ``--help`` text: the flags, the bundled training configs and the study configs
    (each with its description; the study configs under their command)."""
    training: list[str] = []
    studies: dict[str, list[str]] = {}
    for name, path in bundled_configs().items():
      description, command = describe_config(path)
      if command:
        studies.setdefault(command, []).append(f"    {name:34s} {description}")
      else:
        training.append(f"  {name:36s} {description}")
    listed = "\n".join(training) or f"  (none: {BUNDLED_CONFIG_DIR} is missing)"
    text = (f"usage: {self.program} --config=FILE --workdir=DIR "
            "[--config.SECTION.FIELD=VALUE ...]\n\n"
            f"  --config   {self.config_help}\n"
            f"  --workdir  {self.workdir_help}\n"
            "  --config.SECTION.FIELD=VALUE  override one field of the config, e.g. "
            "--config.train.epochs=5\n"
            "  --list_fields  print every field with its default and meaning (with "
            "--config=X: X's values beside the defaults), and exit\n"
            + "".join(f"  --{name}  {self.flag_values[name].help}\n"
                      for name in ("resume_with_changes", "rebuild_outputs")
                      if name in self.flag_values) + "\n"
            f"training configs (--config=NAME, or the file {CONFIG_DIR}/NAME.py; each "
            f"with its command in its docstring):\n{listed}\n")
    if studies:
      text += ("\nstudy configs (many trainings and a report each; "
               + ("run with their study's command, not tsm-train):\n"
                  if not self.study_configs else "run with their study's command):\n"))
      text += "\n".join(f"  {command} --config=NAME --workdir=DIR\n" + "\n".join(lines)
                         for command, lines in sorted(studies.items()))
      text += "\n"
    return text + (f"\nexample: {self.program} --config={self.example_config} "
                   f"--workdir={self.example_workdir}")

  def _list_fields(self, cfg: Any) -> NoReturn:
    """Prints every config field with its meaning (``cfg``'s value beside the default
    where they differ, or the defaults alone) and exits 0."""
    from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
    if cfg is None:
      print("config fields (default, meaning); override with --config.SECTION.FIELD=VALUE")
    else:
      print("config fields (this config's value, the default where it differs, meaning); "
            "override with --config.SECTION.FIELD=VALUE")
    print(config_lib.describe_fields(cfg))
    sys.exit(0)

  def parse(self, argv: Sequence[str]) -> list[str]:
    """absl flag parsing with one-line errors and exit status 2; returns the rest.

    ``--help`` / ``-h`` print :meth:`usage` and ``--list_fields`` every config field,
    then exit 0.
    """
    args = list(argv)
    if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in args[1:]):
      print(self.usage())
      sys.exit(0)
    list_fields = "--list_fields" in args[1:]
    if list_fields:
      args = [a for a in args if a != "--list_fields"]
      if not any(a == "--config" or a.startswith("--config=") for a in args[1:]):
        self._list_fields(None)
    args = self._resolve_config(args)
    self._check_get_config(args)
    try:
      rest = self.flag_values(args)
    except flags.Error as e:
      self.fail(_flag_error(str(e)))
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
    if list_fields and self.config is not None:
      self._list_fields(self.config)
    if len(rest) > 1:
      self.fail(f"unexpected arguments {rest[1:]}; pass options as --name=value.")
    if self.workdir is None:
      self.fail(f"--workdir is required, e.g. --workdir={self.example_workdir}.")
    if self.config is None:
      self.fail(f"--config is required, e.g. --config={self.example_config}.")
    return rest


_COMMAND = ConfigCommand(
    "tsm-train", "digits_dams", "runs/digits_dams",
    flag_values=flags.FLAGS,
    config_help="Experiment config file (a .py with get_config()).",
    workdir_help="Run directory (created; resumed if it holds a run of the same config).",
    study_configs=False)


_RESUME_WITH_CHANGES = flags.DEFINE_bool(
    "resume_with_changes", False,
    "Continue the run in --workdir with its optimiser settings or epochs changed "
    "(train.learning_rate, train.epochs, ...; recorded in changes.jsonl).")
_REBUILD_OUTPUTS = flags.DEFINE_bool(
    "rebuild_outputs", False,
    "Write a finished run's summary, figures and TensorBoard files again from its "
    "checkpoint and metrics.jsonl.")


def _main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  run_command(_COMMAND, lambda: config_lib.train_and_evaluate(
      _COMMAND.config, _COMMAND.workdir, resume_with_changes=_RESUME_WITH_CHANGES.value,
      rebuild_outputs=_REBUILD_OUTPUTS.value))


def silence_background_threads() -> None:
  """Drops the log lines and thread tracebacks of libraries' background threads."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  for name in ("absl", "orbax", "jax", "asyncio"):
    std_logging.getLogger(name).setLevel(std_logging.CRITICAL)
  threading.excepthook = lambda args: None


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
  """While the block runs, Ctrl-C, SIGTERM and SIGUSR1 stop the run as
  :mod:`tsm.stopping` says (a checkpoint of the current step inside the fit loop, else
  KeyboardInterrupt at once), and the first of them silences the background threads.

  After a stop signal the process is stopping: orbax's background save threads may fail
  as it winds down, and their log lines and thread tracebacks would bury the one line
  the command prints (the checkpoints stay intact). Only default handlers are replaced,
  and they are put back when the block ends; an ignored SIGINT (a shell's background
  job) stays ignored.
  """
  from tsm import stopping  # pylint: disable=import-outside-toplevel
  with stopping.handle_signals(on_first=silence_background_threads):
    yield


def stopped_word(error: BaseException) -> str:
  """``"terminated"`` for a stop by SIGTERM or SIGUSR1, ``"interrupted"`` otherwise."""
  return ("terminated" if getattr(error, "signum", signal.SIGINT) != signal.SIGINT
          else "interrupted")


def run_command(command: ConfigCommand, job: Any) -> Any:
  """Runs ``job()`` with every foreseeable fault as one line and its exit status.

  Args:
    command: the command (its ``fail`` prints ``PROGRAM: error: ...``, exit 2).
    job: the work, a callable without arguments.

  Returns:
    ``job()``'s result.
  """
  from tsm import history  # pylint: disable=import-outside-toplevel
  from tsm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  try:
    from tsm import checkpoint  # pylint: disable=import-outside-toplevel
    checkpoint.quiet_orbax()   # a command's entry point: its failures are one line each
    # A command's process stops at Ctrl-C: its background threads' noise may go.
    with quiet_interrupts():
      return job()
  except BaseException as e:  # pylint: disable=broad-exception-caught
    status = exit_code(e)
    if status is None:   # unforeseen: its traceback
      raise
    if status == USAGE_ERROR:
      command.fail(str(e))
    if isinstance(e, history.NonFiniteError):
      fix = (NONFINITE_FIX.split(" (train.nonfinite")[0] + "." if e.skipped
             else NONFINITE_FIX)   # already skipping: only the first advice applies
      e = history.NonFiniteError(e.step, e.quantity, fix=fix, skipped=e.skipped)
    if isinstance(e, history.Interrupted):
      message = str(e)
    elif isinstance(e, KeyboardInterrupt):
      message = f"{stopped_word(e)}; the same command resumes."
    elif isinstance(e, OSError) and not isinstance(e, workdir_lib.WorkdirIOError):
      # A write outside the checkpointer (a full disk, a lost mount).
      where = f": {e.filename}" if e.filename else ""
      message = f"error: {e.strerror or e}{where}; fix it and rerun the same command to resume."
    else:
      message = f"error: {e}"
    print(f"{command.program}: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
  """Console-script entry point (``tsm-train``)."""
  if argv is None:
    hugepages.reexec()
  app.run(_main, argv=argv, flags_parser=_COMMAND.parse)


if __name__ == "__main__":
  main()
