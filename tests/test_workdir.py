"""The workdir: one-line filesystem faults, one run per workdir, finished runs."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tsm import workdir as workdir_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(script: str, *args: str, **kwargs) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=_REPO)
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                          env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, **kwargs)


def _snapshot(directory) -> dict[str, bytes]:
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def _one_line(error: BaseException) -> str:
  text = str(error)
  assert text and "\n" not in text, repr(text)
  return text


# ------------------------------------------------------------------ prepare_workdir


def test_prepare_creates_the_directory_and_leaves_nothing_in_it(tmp_path):
  path = tmp_path / "a" / "b" / "run"
  workdir_lib.prepare_workdir(path)
  assert path.is_dir() and os.listdir(path) == []
  workdir_lib.prepare_workdir(path)   # an existing directory is fine
  assert os.listdir(path) == []


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "run"
  path.write_text("not a directory")
  with pytest.raises(workdir_lib.BadWorkdir) as info:
    workdir_lib.prepare_workdir(path)
  assert "is a file" in _one_line(info.value) and str(path) in str(info.value)
  assert path.read_text() == "not a directory"


def test_parent_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "parent").write_text("")
  with pytest.raises(workdir_lib.BadWorkdir) as info:
    workdir_lib.prepare_workdir(tmp_path / "parent" / "run")
  assert "Not a directory" in _one_line(info.value)


@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_unwritable_directory_is_a_bad_workdir(tmp_path, monkeypatch, number):
  # Simulated: the tests may run as root, which ignores permission bits. The real
  # read-only file system is in test_read_only_mount below.
  def refuse(*args, **kwargs):
    raise OSError(number, os.strerror(number), str(tmp_path))
  monkeypatch.setattr(workdir_lib.tempfile, "mkstemp", refuse)
  with pytest.raises(workdir_lib.BadWorkdir) as info:
    workdir_lib.prepare_workdir(tmp_path / "run")
  assert os.strerror(number) in _one_line(info.value)
  assert "--workdir" in str(info.value)


def test_no_permission_to_create_is_a_bad_workdir(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
  monkeypatch.setattr(workdir_lib.os, "makedirs", refuse)
  with pytest.raises(workdir_lib.BadWorkdir, match="Permission denied"):
    workdir_lib.prepare_workdir(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_no_permission_real(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  with pytest.raises(workdir_lib.BadWorkdir, match="Permission denied"):
    workdir_lib.prepare_workdir(locked / "run")


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EIO])
def test_disk_faults_are_io_errors(tmp_path, monkeypatch, number):
  real_fsync = os.fsync

  def fail(fd):
    real_fsync(fd)
    raise OSError(number, os.strerror(number))
  monkeypatch.setattr(workdir_lib.os, "fsync", fail)
  with pytest.raises(workdir_lib.WorkdirIOError) as info:
    workdir_lib.prepare_workdir(tmp_path / "run")
  assert info.value.errno == number
  assert not isinstance(info.value, ValueError)   # exit 1, not the usage error's 2
  assert _one_line(info.value).startswith(f"--workdir {tmp_path / 'run'}: ")
  assert os.strerror(number) in str(info.value)
  assert os.listdir(tmp_path / "run") == []   # the probe is removed


# ------------------------------------------------------- real mounts (private namespace)


def _mount_namespace_available() -> bool:
  if not shutil.which("unshare") or not shutil.which("mount"):
    return False
  try:
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True,
        timeout=20).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


needs_mounts = pytest.mark.skipif(
    not _mount_namespace_available(),
    reason="needs `unshare -m` and mount (root or CAP_SYS_ADMIN) for a private tmpfs")


def _under_mount(directory, shell_setup: str, script: str, *args: str):
  """Runs ``script`` with a tmpfs at ``directory``, in a private mount namespace."""
  command = (f"mount -t tmpfs -o size=256k tmpfs {directory} && {shell_setup} && "
             f'exec "{sys.executable}" -c "$0" "$@"')
  return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command,
                         textwrap.dedent(script), *args],
                        env=dict(os.environ, PYTHONPATH=_REPO), text=True,
                        capture_output=True, timeout=120)


_REPORT = """
import sys
from tsm import workdir
try:
  {call}
  print("OK")
except (workdir.BadWorkdir, workdir.WorkdirIOError) as e:
  print(type(e).__name__, e, sep="|")
"""


@needs_mounts
def test_read_only_mount(tmp_path):
  result = _under_mount(tmp_path, f"mount -o remount,ro {tmp_path}",
                        _REPORT.format(call="workdir.prepare_workdir(sys.argv[1])"),
                        str(tmp_path / "run"))
  assert result.returncode == 0, result.stderr
  kind, message = result.stdout.strip().split("|")
  assert kind == "BadWorkdir" and "Read-only file system" in message
  assert result.stderr == ""


@needs_mounts
def test_disk_full_mount(tmp_path):
  fill = f"(dd if=/dev/zero of={tmp_path}/fill bs=4k 2>/dev/null; true)"
  result = _under_mount(tmp_path, fill,
                        _REPORT.format(call="workdir.prepare_workdir(sys.argv[1])"),
                        str(tmp_path / "run"))
  assert result.returncode == 0, result.stderr
  kind, message = result.stdout.strip().split("|")
  assert kind == "WorkdirIOError" and "No space left on device" in message


@needs_mounts
def test_finished_run_on_a_read_only_mount_reads_without_writing(tmp_path):
  config = {"train": {"epochs": 3, "progress": True}}
  setup = (f"mkdir {tmp_path}/run && echo '{{}}' > {tmp_path}/run/summary.json && "
           f"echo '{json.dumps(config)}' > {tmp_path}/run/config.json && "
           f"mount -o remount,ro {tmp_path}")
  call = ("print(workdir.is_finished(sys.argv[1], {'train': {'epochs': 3}}, "
          "ignore=[('train', 'progress')]))")
  result = _under_mount(tmp_path, setup, _REPORT.format(call=call), str(tmp_path / "run"))
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["True", "OK"]


# -------------------------------------------------------------------------- is_finished


def _finished_run(path, config) -> None:
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config))
  (path / "summary.json").write_text(json.dumps({"test": {"recall@1": 0.5}}))


def test_is_finished(tmp_path):
  config = {"seed": 0, "train": {"epochs": 3, "progress": False}, "data": {"name": "d"}}
  run = tmp_path / "run"
  assert not workdir_lib.is_finished(run, config)          # no directory
  _finished_run(run, config)
  before = {name: os.stat(run / name).st_mtime_ns for name in os.listdir(run)}
  assert workdir_lib.is_finished(run, config)
  assert workdir_lib.is_finished(str(run), json.loads(json.dumps(config)))
  changed = {**config, "train": {"epochs": 4, "progress": False}}
  assert not workdir_lib.is_finished(run, changed)
  progress = {**config, "train": {"epochs": 3, "progress": True}}
  assert not workdir_lib.is_finished(run, progress)
  assert workdir_lib.is_finished(run, progress, ignore=[("train", "progress")])
  assert {name: os.stat(run / name).st_mtime_ns for name in os.listdir(run)} == before


def test_unfinished_or_torn_runs_are_not_finished(tmp_path):
  config = {"seed": 0}
  run = tmp_path / "run"
  _finished_run(run, config)
  (run / "summary.json").unlink()                 # killed before its summary
  assert not workdir_lib.is_finished(run, config)
  (run / "summary.json").write_text('{"test": ')  # torn
  assert not workdir_lib.is_finished(run, config)
  (run / "summary.json").write_text("{}")
  (run / "config.json").unlink()
  assert not workdir_lib.is_finished(run, config)


# ------------------------------------------------------------------------------ the lock


_HOLDER = """
import os, sys
from tsm import workdir
with workdir.WorkdirLock(sys.argv[1]):
  with open(os.path.join(sys.argv[1], "metrics.jsonl"), "w") as f:
    f.write("first run\\n")
  print("locked", flush=True)
  if sys.argv[2] == "die":
    os._exit(0)           # no release: as if killed
  sys.stdin.readline()    # hold until told
"""

_SECOND = """
import os, sys
from tsm import workdir
try:
  with workdir.WorkdirLock(sys.argv[1]):
    with open(os.path.join(sys.argv[1], "metrics.jsonl"), "a") as f:
      f.write("second run\\n")
except workdir.WorkdirBusy as e:
  print(e, file=sys.stderr)
  sys.exit(2)
"""


def test_second_process_on_a_held_workdir_fails_and_changes_nothing(tmp_path):
  first = _python(_HOLDER, str(tmp_path), "hold", stdin=subprocess.PIPE)
  try:
    assert first.stdout.readline().strip() == "locked"
    before = _snapshot(tmp_path)
    second = _python(_SECOND, str(tmp_path))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert err.count("\n") == 1, err
    assert f"process {first.pid} on {socket.gethostname()}" in err
    assert "use another --workdir" in err
    assert _snapshot(tmp_path) == before
    assert before["metrics.jsonl"] == b"first run\n"
    # In-process too (a second open file, so flock conflicts within one process).
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"process {first.pid} "):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  finally:
    first.communicate(input="\n", timeout=60)
  assert first.returncode == 0
  assert (tmp_path / workdir_lib.LOCK_NAME).read_text() == ""   # released cleanly
  with workdir_lib.WorkdirLock(tmp_path) as lock:                # free again
    assert lock.took_over is None
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = _python(_HOLDER, str(tmp_path), "die")
  out, err = dead.communicate(timeout=60)
  assert out.strip() == "locked" and dead.returncode == 0, err
  assert (tmp_path / ".lock").read_text().split()[0] == str(dead.pid)   # left behind
  with caplog.at_level(logging.WARNING, logger="tsm.workdir"):
    with workdir_lib.WorkdirLock(tmp_path) as lock:
      assert lock.took_over.split()[0] == str(dead.pid)
      assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
  notes = [r.getMessage() for r in caplog.records]
  assert len(notes) == 1 and f"process {dead.pid} " in notes[0]
  assert "no longer running" in notes[0]


def test_lock_killed_holder_is_taken_over(tmp_path):
  holder = _python(_HOLDER, str(tmp_path), "hold", stdin=subprocess.PIPE)
  assert holder.stdout.readline().strip() == "locked"
  holder.send_signal(signal.SIGKILL)
  holder.communicate(timeout=60)
  with workdir_lib.WorkdirLock(tmp_path) as lock:
    assert lock.took_over.split()[0] == str(holder.pid)


def test_hand_written_record_of_a_missing_pid_is_taken_over(tmp_path):
  (tmp_path / ".lock").write_text("999999999 otherhost 2026-01-01T00:00:00\n")
  with workdir_lib.WorkdirLock(tmp_path) as lock:
    assert lock.took_over.startswith("999999999 otherhost")


def test_lock_in_a_missing_directory_is_a_bad_workdir(tmp_path):
  with pytest.raises(workdir_lib.BadWorkdir, match="lock file"):
    workdir_lib.WorkdirLock(tmp_path / "missing").acquire()


def _no_flock(monkeypatch):
  def unsupported(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(workdir_lib.fcntl, "flock", unsupported)


def test_without_flock_a_live_recorded_pid_is_busy(tmp_path, monkeypatch):
  _no_flock(monkeypatch)
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (tmp_path / ".lock").write_text(f"{sleeper.pid} {socket.gethostname()} now\n")
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"process {sleeper.pid} "):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  # The same pid, now dead: taken over.
  with workdir_lib.WorkdirLock(tmp_path) as lock:
    assert lock.took_over.split()[0] == str(sleeper.pid)
  # Another host's pid cannot be checked: busy.
  (tmp_path / ".lock").write_text("1 some-other-host now\n")
  with pytest.raises(workdir_lib.WorkdirBusy, match="process 1 on some-other-host"):
    workdir_lib.WorkdirLock(tmp_path).acquire()


def test_first_difference_names_the_key_path():
  saved = {"seed": 0, "train": {"epochs": 3, "progress": True}, "data": {"name": "d"}}
  assert workdir_lib.first_difference(saved, json.loads(json.dumps(saved))) is None
  now = {**saved, "train": {"epochs": 4, "progress": False}}
  assert workdir_lib.first_difference(saved, now) == "train.epochs (3 there, 4 now)"
  assert workdir_lib.first_difference(saved, now, ignore=[("train", "epochs")]) == (
      "train.progress (True there, False now)")
  assert workdir_lib.first_difference(
      saved, now, ignore=[("train", "epochs"), ("train", "progress")]) is None
  # A field added since (with the value None) agrees with its absence.
  assert workdir_lib.first_difference(saved, {**saved, "data": {"name": "d", "trunk": None}}
                                      ) is None
  assert workdir_lib.first_difference(saved, {**saved, "seed": 1}) == "seed (0 there, 1 now)"
  assert workdir_lib.first_difference({"a": {"b": {"c": 1}}}, {"a": {"b": {"c": 2}}},
                                      ignore=[("a", "b", "c")]) is None


def test_run_difference_and_is_finished_agree(tmp_path):
  config = {"seed": 0, "train": {"epochs": 3, "progress": False}}
  run = tmp_path / "run"
  assert workdir_lib.run_difference(run, config) is None   # nothing there
  _finished_run(run, config)
  changed = {**config, "train": {"epochs": 5, "progress": False}}
  assert workdir_lib.run_difference(run, config) is None
  assert workdir_lib.is_finished(run, config)
  assert workdir_lib.run_difference(run, changed) == "train.epochs (3 there, 5 now)"
  assert not workdir_lib.is_finished(run, changed)
