"""Checkpoints: last k plus the best; exact resumption of a run killed mid-epoch."""

from __future__ import annotations

import asyncio
import errno
import glob
import logging
import math
import os
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from types import SimpleNamespace

from tsm import checkpoint as checkpoint_lib
from tsm import config as config_lib
from tsm import margins
from tsm import train as train_lib

from fit_helpers import run_config  # noqa: E402
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines


def _state(value: float = 0.0) -> train_lib.TrainState:
  params = {"dense": {"kernel": jnp.full((3, 2), value), "bias": jnp.zeros((2,))}}
  tx = optax.adam(1e-3)
  return train_lib.create_train_state({"params": params}, tx, margins.dams(),
                                      jax.random.PRNGKey(0))


def test_keeps_the_last_k_and_the_best(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(tmp_path, keep=2, best_metric="val_loss",
                                     best_mode="min", async_save=False)
  state = _state()
  assert ckpt.latest_step() is None and ckpt.best_step() is None
  ckpt.save(1, state, {"epoch": 0}, metrics={"val_loss": 0.9})
  ckpt.save(2, state, {"epoch": 1}, metrics={"val_loss": 0.3})   # the best
  ckpt.save(3, state, {"epoch": 1, "step_in_epoch": 4})            # mid-epoch, no metrics
  ckpt.save(4, state, {"epoch": 2}, metrics={"val_loss": float("nan")})   # ranks worst
  ckpt.save(5, state, {"epoch": 3}, metrics={"val_loss": 0.5})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  ckpt.close()
  again = checkpoint_lib.Checkpointer(tmp_path, keep=2, best_metric="val_loss")
  assert again.best_step() == 2 and again.latest_step() == 5
  again.close()


def test_best_mode_max(tmp_path):
  with checkpoint_lib.Checkpointer(tmp_path, keep=1, best_metric="val_map@r",
                                   best_mode="max") as ckpt:
    state = _state()
    for step, value in enumerate([0.2, 0.6, 0.4], start=1):
      ckpt.save(step, state, {"epoch": step}, metrics={"val_map@r": value})
    assert ckpt.best_step() == 2
    assert ckpt.all_steps() == [2, 3]


def test_restore_gives_back_structure_dtypes_and_values(tmp_path):
  state = _state(0.25)
  state = state.replace(step=jnp.asarray(7, jnp.int32),
                        margin_state=state.margin_state._replace(margin=jnp.float32(0.35)))
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, state, {"epoch": 2, "step_in_epoch": 3})
    restored, meta = ckpt.restore(7, _state())
  assert meta == {"epoch": 2, "step_in_epoch": 3}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert isinstance(restored.margin_state, margins.MarginState)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_bad_keep_is_one_line():
  with pytest.raises(ValueError, match="keep=0 must be >= 1"):
    checkpoint_lib.Checkpointer("/nonexistent", keep=0)


# ------------------------------------------------------------- faults and the fallback

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _arrays(value: float) -> dict[str, jax.Array]:
  """A small state of several arrays (orbax reads them concurrently)."""
  return {"kernel": jnp.full((64, 48), value), "bias": jnp.full((48,), -value),
          "head": {"w": jnp.full((48, 8), 2 * value)}, "step": jnp.asarray(int(value))}


def _save_steps(directory, steps=(1, 2, 3)) -> None:
  with checkpoint_lib.Checkpointer(directory, keep=len(steps), async_save=False) as ckpt:
    for step in steps:
      ckpt.save(step, _arrays(float(step)), {"epoch": step})


def _truncate(path) -> None:
  with open(path, "r+b") as f:
    f.truncate(max(os.path.getsize(path) // 2, 1) - 1)


def _state_files(directory, step):
  root = os.path.join(directory, str(step), "state")
  return sorted(os.path.join(r, n) for r, _, names in os.walk(root) for n in names)


def _assert_tree_equal(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("damage", ["manifest.ocdbt", "_METADATA", "every file"])
def test_restore_latest_falls_back_past_a_truncated_checkpoint(tmp_path, caplog, damage):
  _save_steps(tmp_path)
  for path in _state_files(tmp_path, 3):
    if damage == "every file" or os.path.basename(path) == damage:
      _truncate(path)
  with caplog.at_level(logging.WARNING, logger="tsm.checkpoint"):
    with checkpoint_lib.Checkpointer(tmp_path, keep=3) as ckpt:
      state, meta, step = ckpt.restore_latest(_arrays(0.0))
      assert (step, meta) == (2, {"epoch": 2})
      _assert_tree_equal(state, _arrays(2.0))
      # The unreadable step is out of the way: the resumed run can save step 3 again.
      assert ckpt.all_steps() == [1, 2]
      ckpt.save(3, _arrays(3.0), {"epoch": 3})
      ckpt.wait()
      assert ckpt.all_steps() == [1, 2, 3]
  lines = [r.getMessage() for r in caplog.records if r.name == "tsm.checkpoint"]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert lines[0].startswith(f"checkpoint 3 in {tmp_path} is unreadable (")
  assert "resuming from checkpoint 2" in lines[0]
  kept = [name for name in os.listdir(tmp_path) if name.startswith("3.unreadable-")]
  assert len(kept) == 1 and kept[0] in lines[0]


def test_restore_latest_without_checkpoints_is_none(tmp_path):
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_latest(_arrays(0.0)) is None


def test_restore_latest_of_all_corrupt_checkpoints_is_one_line(tmp_path, caplog):
  _save_steps(tmp_path, (1, 2))
  for step in (1, 2):
    _truncate(os.path.join(tmp_path, str(step), "state", "manifest.ocdbt"))
  before = sorted(os.listdir(tmp_path))
  with caplog.at_level(logging.WARNING, logger="tsm.checkpoint"):
    with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
      with pytest.raises(checkpoint_lib.CheckpointError) as info:
        ckpt.restore_latest(_arrays(0.0))
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"none of the checkpoints in {tmp_path} (steps 1, 2) can be "
                            "restored (step 2: ")
  assert "remove that directory" in message
  assert sorted(os.listdir(tmp_path)) == before   # nothing renamed or removed
  # Nothing logged but, at times, asyncio's "exception was never retrieved" for the failed
  # restore's orphaned reads (when they are collected is up to the event loop): exactly
  # what the commands' checkpoint.quiet_orbax() filter drops, so a user sees one line.
  assert all(r.name == "asyncio" and not checkpoint_lib._ORPHANED_READS.filter(r)
             for r in caplog.records), [r.getMessage()[:200] for r in caplog.records]


def test_restore_of_a_template_that_does_not_fit_is_one_line(tmp_path):
  _save_steps(tmp_path, (1,))
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint_lib.CheckpointError, match="^checkpoint 1 in .* is "
                       "unreadable"):
      ckpt.restore(1, {"other": jnp.zeros(3)})


_RESTORE_LATEST = """
import sys
import jax.numpy as jnp
import numpy as np
from tsm import checkpoint
checkpoint.quiet_orbax()   # as a program's entry point does (tsm-train's)

def arrays(step):   # random values: stored out of line, in ocdbt.process_0/d/
  rng = np.random.default_rng(step)
  return {f"w{i}": jnp.asarray(rng.standard_normal((64, 96), dtype=np.float32))
          for i in range(8)}

for directory in sys.argv[2:]:
  with checkpoint.Checkpointer(directory, keep=3, async_save=True) as ckpt:
    if sys.argv[1] == "save":
      for step in (1, 2, 3):
        ckpt.save(step, arrays(step), {"epoch": step})
    else:
      state, meta, step = ckpt.restore_latest(arrays(0))
      np.testing.assert_array_equal(state["w7"], arrays(2)["w7"])
      print(step, meta["epoch"])
"""


@pytest.mark.slow   # two fresh interpreters importing jax and orbax
def test_failed_restore_leaves_no_noise_at_exit(tmp_path):
  # A restore failing in one array leaves orbax's other reads in flight, which would
  # print "Event loop is closed" tracebacks as they finish and "ImportError:
  # sys.meta_path is None" ones at interpreter shutdown; none may reach stderr.
  def run(action, directories):
    return subprocess.run([sys.executable, "-c", _RESTORE_LATEST, action, *directories],
                          env=dict(os.environ, PYTHONPATH=_REPO), capture_output=True,
                          text=True, timeout=120)
  saved = run("save", [str(tmp_path / "0")])
  assert saved.returncode == 0, saved.stderr
  data = glob.glob(os.path.join(tmp_path, "0", "3", "state", "ocdbt.process_0", "d", "*"))
  assert len(data) > 1   # several arrays read concurrently
  for path in data:
    with open(path, "r+b") as f:
      f.truncate(10)
  # Three restores in one process: the noise depended on timing (about one in three).
  for copy in ("1", "2"):
    shutil.copytree(tmp_path / "0", tmp_path / copy)
  result = run("restore", [str(tmp_path / name) for name in "012"])
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["2", "2"] * 3
  lines = result.stderr.splitlines()
  assert len(lines) == 3, result.stderr
  for line in lines:
    assert "checkpoint 3 in" in line and "resuming from checkpoint 2" in line


def _unraisable(exc: BaseException, obj=None):
  try:
    raise exc
  except BaseException as e:   # pylint: disable=broad-except
    return SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                           err_msg=None, object=obj)


def test_orphaned_read_hook_drops_only_orbax_reads():
  orbax_file = os.path.join(os.sep, "x", "orbax", "checkpoint", "_src", "serialization.py")
  namespace = {}
  exec(compile("async def _read():\n  pass\n", orbax_file, "exec"), namespace)
  own = namespace["_read"]()
  other = asyncio.sleep(0)
  try:
    closed = asyncio.new_event_loop()
    closed.close()
    try:
      closed.call_soon_threadsafe(print)
    except RuntimeError as e:
      late = SimpleNamespace(exc_type=RuntimeError, exc_value=e,
                             exc_traceback=e.__traceback__, err_msg=None, object=None)
    passed = []
    hook = checkpoint_lib._drop_orphaned_reads(passed.append)   # pylint: disable=protected-access
    hook(_unraisable(ImportError("sys.meta_path is None"), own))
    hook(late)
    assert passed == []
    for kept in (_unraisable(ImportError("sys.meta_path is None"), other),
                 _unraisable(RuntimeError("Event loop is closed")),
                 _unraisable(ValueError("anything else"))):
      hook(kept)
    assert len(passed) == 3
  finally:
    own.close()
    other.close()


def test_importing_and_checkpointing_leave_global_logging_and_hooks_alone(tmp_path):
  script = (
      "import logging, sys\n"
      "hook = sys.unraisablehook\n"
      "import jax.numpy as jnp\n"
      "from tsm import checkpoint\n"
      "names = ('absl', 'asyncio', 'orbax')\n"
      "before = {n: list(logging.getLogger(n).filters) for n in names}\n"
      f"with checkpoint.Checkpointer({str(tmp_path)!r}) as ckpt:\n"
      "  ckpt.save(1, {'w': jnp.ones(3)}, {'epoch': 1})\n"
      "assert {n: list(logging.getLogger(n).filters) for n in names} == before\n"
      "assert before == {n: [] for n in names}, before\n"
      "assert sys.unraisablehook is hook\n"
      "print('clean')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=_REPO), timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr[-2000:]
  assert "did not provide metrics" not in result.stderr


def test_never_retrieved_log_of_orbax_reads_is_dropped(monkeypatch):
  orbax_file = os.path.join(os.sep, "x", "orbax", "checkpoint", "_src", "serialization.py")
  namespace = {}
  exec(compile("def read():\n  raise ValueError('OUT_OF_RANGE')\n", orbax_file, "exec"),
       namespace)

  def record(function, message="Task exception was never retrieved"):
    try:
      function()
    except ValueError as e:
      return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None,
                               (type(e), e, e.__traceback__))

  def elsewhere():
    raise ValueError("a user's own task")
  log_filter = checkpoint_lib._OrphanedReadLogFilter()   # pylint: disable=protected-access
  assert not log_filter.filter(record(namespace["read"]))
  assert log_filter.filter(record(elsewhere))
  assert log_filter.filter(record(namespace["read"], "something else"))
  checkpoint_lib.quiet_orbax()   # what a program's entry point calls (twice: once)
  checkpoint_lib.quiet_orbax()
  installed = [f for f in logging.getLogger("asyncio").filters
               if isinstance(f, checkpoint_lib._OrphanedReadLogFilter)]   # pylint: disable=protected-access
  assert len(installed) == 1
  # A tensorstore future's error (no Python frames): dropped only after a failure.
  native = ValueError('OUT_OF_RANGE: Error reading "w3/0.0" in OCDBT database')
  record_native = logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                    "Future exception was never retrieved", None,
                                    (ValueError, native, None))
  monkeypatch.setattr(checkpoint_lib._OrphanedReadLogFilter, "failures", 0)   # pylint: disable=protected-access
  assert log_filter.filter(record_native)
  monkeypatch.setattr(checkpoint_lib._OrphanedReadLogFilter, "failures", 1)   # pylint: disable=protected-access
  assert not log_filter.filter(record_native)
  assert log_filter.filter(record(elsewhere))


def test_half_written_temporary_directories_are_ignored_and_removed(tmp_path):
  _save_steps(tmp_path, (1,))
  # What a save killed mid-write leaves (orbax's names, with and without a timestamp).
  for name in ("2.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1700000000"):
    os.makedirs(tmp_path / name / "state.orbax-checkpoint-tmp" / "d")
    (tmp_path / name / "state.orbax-checkpoint-tmp" / "d" / "x").write_bytes(b"\0" * 9)
  with checkpoint_lib.Checkpointer(tmp_path, cleanup_tmp=False) as reader:
    assert reader.all_steps() == [1]     # ignored by a reader, and left in place
  assert len(os.listdir(tmp_path)) == 3
  with checkpoint_lib.Checkpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.all_steps() == [1]
    state, _, step = ckpt.restore_latest(_arrays(0.0))
    assert step == 1
    ckpt.save(2, _arrays(2.0), {"epoch": 2})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    _assert_tree_equal(ckpt.restore(2, _arrays(0.0))[0], _arrays(2.0))


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_save_errors_are_one_checkpoint_error(tmp_path, monkeypatch, number):
  # Simulated at orbax's entry point (the real disk-full and read-only file systems are
  # in the mount tests below, which need root).
  ckpt = checkpoint_lib.Checkpointer(tmp_path, async_save=False)

  def fail(*args, **kwargs):
    raise OSError(number, os.strerror(number), str(tmp_path / "1.orbax-checkpoint-tmp"))
  monkeypatch.setattr(ckpt._manager, "save", fail)   # pylint: disable=protected-access
  with pytest.raises(checkpoint_lib.CheckpointError) as info:
    ckpt.save(1, _arrays(1.0), {"epoch": 1})
  assert "\n" not in str(info.value)
  assert str(info.value).startswith(f"could not write checkpoint 1 in {tmp_path}: "
                                    f"{os.strerror(number)}")
  ckpt.close()


def test_background_save_error_surfaces_at_wait_and_close_still_releases(tmp_path,
                                                                        monkeypatch):
  ckpt = checkpoint_lib.Checkpointer(tmp_path, async_save=True)
  manager = ckpt._manager   # pylint: disable=protected-access
  ckpt.save(1, _arrays(1.0), {"epoch": 1})
  ckpt.wait()
  tensorstore_text = ('RESOURCE_EXHAUSTED: Error writing "kernel/0.0" in OCDBT database '
                      'at local file "x": Failed to write 205644 bytes to file 11: No '
                      'space left on device [tensorstore_spec=\'{"driver": "zarr"}\']')
  real_wait, calls = manager.wait_until_finished, []

  def failed_background_save():
    calls.append(1)
    if len(calls) == 1:
      raise ValueError(tensorstore_text)
    real_wait()
  closed = []
  real_close = manager.close
  monkeypatch.setattr(manager, "wait_until_finished", failed_background_save)
  monkeypatch.setattr(manager, "close", lambda: (closed.append(1), real_close()))
  with pytest.raises(checkpoint_lib.CheckpointError) as info:
    ckpt.close()
  assert str(info.value) == (
      f"could not write checkpoint 1 in {tmp_path}: No space left on device; free space "
      "or fix the directory's permissions, then rerun to resume from the last "
      "checkpoint.")
  assert info.value.cause == "No space left on device"
  assert closed == [1]
  ckpt.close()   # a second close does nothing
  assert closed == [1]


def _mount_namespace_available() -> bool:
  if not shutil.which("unshare"):
    return False
  try:
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                          capture_output=True, timeout=20).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


_SAVE_ON_MOUNTS = """
import sys
import jax
from tsm import checkpoint
checkpoint.quiet_orbax()   # as a program's entry point does (tsm-train's)
big = {"w": jax.random.normal(jax.random.PRNGKey(0), (256, 256)), "b": jax.numpy.arange(4)}
for directory, mode in [(sys.argv[1], "sync"), (sys.argv[2], "async"), (sys.argv[3], "sync")]:
  try:
    ckpt = checkpoint.Checkpointer(directory, async_save=mode == "async")
    ckpt.save(1, big, {"epoch": 1})
    ckpt.close()
    print("saved")
  except checkpoint.CheckpointError as e:
    print(e)
"""


@pytest.mark.slow   # a fresh interpreter importing jax and orbax
@pytest.mark.skipif(not _mount_namespace_available(),
                    reason="needs `unshare -m` and mount (root or CAP_SYS_ADMIN)")
def test_disk_full_and_read_only_file_system_are_one_line(tmp_path):
  # Private tmpfs mounts: 64 KiB ones (the state is 256 KiB of random floats) for a sync
  # and an async save, and a read-only one.
  full, ro = tmp_path / "full", tmp_path / "ro"
  full.mkdir()
  ro.mkdir()
  command = (f"mount -t tmpfs -o size=64k tmpfs {full} && "
             f"mount -t tmpfs -o ro,size=64k tmpfs {ro} && "
             f'exec "{sys.executable}" -c "$0" "$@"')
  result = subprocess.run(
      ["unshare", "-m", "--propagation", "private", "sh", "-c", command, _SAVE_ON_MOUNTS,
       str(full / "sync"), str(full / "async"), str(ro / "checkpoints")],
      env=dict(os.environ, PYTHONPATH=_REPO), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3, result.stdout
  for line, mode in zip(lines, ("sync", "async")):
    assert line.startswith(f"could not write checkpoint 1 in {full}/{mode}: No space left "
                           "on device; free space"), line
  assert lines[2] == (f"cannot open the checkpoint directory {ro}/checkpoints: Read-only "
                      f"file system: {ro}/checkpoints.")
  assert result.stderr == ""   # no orbax log tracebacks, no writes ending after the loop


# ------------------------------------------------------------------ resumption of a fit


def _resume_config() -> config_lib.ml_collections.ConfigDict:
  cfg = config_lib.default_config()
  cfg.data.name = "digits"
  cfg.data.val_fraction = 0.2
  cfg.data.augment = True            # augmentation must resume exactly too
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (32,)
  cfg.model.head = "paper_a"          # dropout: per-step keys must resume exactly
  cfg.model.head_hidden = (16, 16)
  cfg.model.embedding_dim = 8
  cfg.margin.schedule = "dams"
  cfg.margin.threshold = 0.3          # so that the margin moves during the run
  cfg.train.epochs = 3
  cfg.train.classes_per_batch = 4
  cfg.train.samples_per_class = 4
  cfg.train.steps_per_epoch = 7
  cfg.train.log_every = 3
  cfg.train.progress = False
  cfg.eval.every_epochs = 2
  cfg.eval.num_pairs = 100
  cfg.checkpoint.every_steps = 3
  return cfg


def _final_state(workdir):
  import orbax.checkpoint as ocp   # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  with warnings.catch_warnings():   # no template: orbax reads the saved shardings
    warnings.simplefilter("ignore", UserWarning)
    return step, ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step),
                                                               "state"))


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
  whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
  summary_whole = run_config(_resume_config(), whole)

  killed = _resume_config()
  killed.train.stop_after_steps = 11       # epoch 1, step 4 of 7: after the checkpoint at 9
  assert run_config(killed, broken) is None
  assert not os.path.exists(os.path.join(broken, "summary.json"))
  # The killed process wrote step lines past its last checkpoint (step 9): 11 steps, 1 epoch.
  assert [r["step"] for r in read_lines(broken) if r["kind"] == "step"][-1] == 11
  killed.train.stop_after_steps = 5        # a second kill, inside the resumed run
  assert run_config(killed, broken) is None
  summary_broken = run_config(_resume_config(), broken)

  lines_whole, lines_broken = read_lines(whole), read_lines(broken)
  steps = [r["step"] for r in lines_broken if r["kind"] == "step"]
  assert steps == list(range(1, 22))       # no duplicated or missing line
  assert lines_broken == lines_whole
  assert summary_broken == summary_whole
  margins_seen = {r["margin"] for r in lines_whole if r["kind"] == "step"}
  assert len(margins_seen) > 1             # DAMS moved the margin during the run
  step_whole, state_whole = _final_state(whole)
  step_broken, state_broken = _final_state(broken)
  assert step_whole == step_broken == 21
  flat_whole = jax.tree_util.tree_leaves_with_path(state_whole)
  flat_broken = jax.tree_util.tree_leaves_with_path(state_broken)
  assert [p for p, _ in flat_whole] == [p for p, _ in flat_broken]
  for (path, a), (_, b) in zip(flat_whole, flat_broken):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  assert math.isclose(float(state_whole["margin_state"]["margin"]),
                      summary_whole["final_margin"], rel_tol=1e-6)

  # A rerun of a finished workdir trains no further and reports the same summary.
  assert run_config(_resume_config(), broken) == summary_whole
  assert read_lines(broken) == lines_whole
