"""The fit loop's hooks: the order of the calls, the built-in set, a run without hooks,
and the caller's run directory (lock and config.json)."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import numpy as np
import optax
import pytest

from tsm import evaluation, hooks, losses, margins
from tsm import fit as fit_lib
from tsm import workdir as workdir_lib
from tsm.data import samplers

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(4)(x)


def _data():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(48, 3)) + 2 * np.eye(4, 3)[y]).astype(np.float32)
  return {"train": (x[0::2], y[0::2]), "val": (x[1::4], y[1::4]), "test": (x[3::4], y[3::4])}


def _fit(workdir, **kw):
  data = _data()
  sampler = samplers.PKSampler(data["train"][1], 2, 3, seed=0, steps_per_epoch=3)
  return fit_lib.fit(_Net(), losses.triplet_margin_loss, margins.constant(0.2),
                     optax.adam(1e-2), data, workdir=str(workdir), epochs=2,
                     sampler=sampler, evaluators=[evaluation.Retrieval("val")],
                     final_evaluators=[evaluation.Retrieval("test")],
                     checkpoint=fit_lib.CheckpointOptions(async_save=False), **kw)


class _Recorder(hooks.Hook):
  def __init__(self):
    self.calls = []

  def on_start(self, run):
    self.calls.append(("start", run.initial_step, run.total_steps, run.labels))

  def on_step(self, step):
    self.calls.append(("step", step))

  def on_steps(self, records):
    self.calls.append(("steps", [r["step"] for r in records]))

  def on_epoch_end(self, record):
    self.calls.append(("epoch", record["epoch"]))

  def on_end(self, end):
    self.calls.append(("end", end.summary["epochs"], end.step))

  def close(self):
    self.calls.append(("close",))


def test_a_hook_is_called_in_the_documented_order(tmp_path):
  recorder = _Recorder()
  result = _fit(tmp_path, options=fit_lib.LoopOptions(log_every=2),
                labels=fit_lib.RunLabels(dataset="points"), hooks=[recorder])
  assert recorder.calls == [
      ("start", 0, 6, {"dataset": "points"}),
      ("step", 1), ("step", 2), ("steps", [1, 2]), ("step", 3), ("steps", [3]),
      ("epoch", 0),
      ("step", 4), ("step", 5), ("steps", [4, 5]), ("step", 6), ("steps", [6]),
      ("epoch", 1),
      ("end", 2, 6), ("close",)]
  assert result.summary["dataset"] == "points"


def test_without_hooks_the_loop_writes_only_its_records(tmp_path):
  _fit(tmp_path, hooks=[])
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.jsonl", "run.json"]


def test_the_standard_hooks_write_the_run_files(tmp_path, capsys):
  result = _fit(tmp_path, hooks=hooks.standard(progress=False))
  for name in ("summary.json", "pairs.npz", "training.png", "tensorboard"):
    assert os.path.exists(tmp_path / name), name
  with open(tmp_path / "summary.json") as f:
    assert json.load(f) == json.loads(json.dumps(result.summary))
  out = capsys.readouterr().out.splitlines()
  assert [l.split()[1] for l in out if l.startswith("epoch ")] == ["1/2", "2/2"]
  assert out[-1].startswith("test: ")


def test_standard_hooks_compose_as_documented():
  kinds = [type(h).__name__ for h in hooks.standard()]
  assert kinds == ["SummaryFiles", "Figures", "TensorBoard", "ProgressBar", "LogLines"]
  figures = hooks.Figures("a title", easy_threshold=0.9)
  chosen = hooks.standard(tensorboard=False, figures=figures, progress=False)
  assert [type(h).__name__ for h in chosen] == ["SummaryFiles", "Figures", "LogLines"]
  assert chosen[1].title == "a title" and chosen[1].easy_threshold == 0.9
  assert chosen[1].tensorboard is None and figures.tensorboard is None
  built = hooks.standard()
  assert built[1].tensorboard is built[2]   # the figures go into that run's TensorBoard


def test_run_directory_locks_and_writes_the_config(tmp_path):
  with fit_lib.run_directory(str(tmp_path), config={"lr": 0.1}):
    with open(tmp_path / "config.json") as f:
      assert json.load(f) == {"lr": 0.1}
    with pytest.raises(workdir_lib.WorkdirBusy):
      with fit_lib.run_directory(str(tmp_path)):
        pass
  with fit_lib.run_directory(str(tmp_path)):   # released
    pass


def test_loop_options_name_a_bad_value(tmp_path):
  with pytest.raises(ValueError, match="nonfinite='ignore'"):
    _fit(tmp_path, options=fit_lib.LoopOptions(nonfinite="ignore"))
  assert not os.path.exists(tmp_path / "metrics.jsonl")


class _CtrlC(hooks.Hook):
  def on_step(self, step):
    if step == 2:
      raise KeyboardInterrupt


def test_ctrl_c_in_the_loop_leaves_global_state_alone(tmp_path):
  import logging  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  from tsm import history  # pylint: disable=import-outside-toplevel
  names = ("absl", "orbax", "jax", "asyncio")
  levels = {n: logging.getLogger(n).level for n in names}
  excepthook = threading.excepthook
  with pytest.raises(history.Interrupted, match="interrupted at step 2"):
    _fit(tmp_path, hooks=[_CtrlC()])
  assert threading.excepthook is excepthook
  assert {n: logging.getLogger(n).level for n in names} == levels


def test_the_commands_quiet_interrupts_put_the_handler_back():
  import signal  # pylint: disable=import-outside-toplevel
  from tsm import cli  # pylint: disable=import-outside-toplevel
  before = signal.getsignal(signal.SIGINT)
  with cli.quiet_interrupts():
    during = signal.getsignal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before
  if before is signal.default_int_handler:
    assert during is not before
