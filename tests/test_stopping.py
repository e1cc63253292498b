"""Stop signals (tsm.stopping): a checkpoint of the current step, one line, the exit
status, and a resumed run equal to an uninterrupted one (the CLI's own subprocess test is
in test_cli_reliability.py)."""

from __future__ import annotations

import os
import signal

import flax.linen as nn
import numpy as np
import optax
import pytest

from tsm import evaluation, exit_codes, history, hooks, losses, margins, stopping
from tsm import fit as fit_lib
from tsm.data import samplers

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(4)(x)


def _data():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(48, 3)) + 2 * np.eye(4, 3)[y]).astype(np.float32)
  return {"train": (x[0::2], y[0::2]), "val": (x[1::4], y[1::4]), "test": (x[3::4], y[3::4])}


def _fit(workdir, hook_list=(), epochs=2):
  data = _data()
  sampler = samplers.PKSampler(data["train"][1], 2, 3, seed=0, steps_per_epoch=4)
  return fit_lib.fit(_Net(), losses.triplet_margin_loss, margins.constant(0.2),
                     optax.adam(1e-2), data, workdir=str(workdir), epochs=epochs,
                     sampler=sampler, evaluators=[evaluation.Retrieval("val")],
                     final_evaluators=[evaluation.Retrieval("test")],
                     checkpoint=fit_lib.CheckpointOptions(async_save=False),
                     options=fit_lib.LoopOptions(log_every=3), hooks=list(hook_list))


class _Signal(hooks.Hook):
  """Sends ``signum`` to this process after step ``at`` (``times`` times)."""

  def __init__(self, at, signum, times=1):
    self.at, self.signum, self.times = at, signum, times

  def on_step(self, step):
    if step == self.at:
      for _ in range(self.times):
        os.kill(os.getpid(), self.signum)


def _steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


@pytest.mark.parametrize("signum,word,status", [
    (signal.SIGTERM, "terminated", 143), (signal.SIGUSR1, "terminated", 143),
    (signal.SIGINT, "interrupted", 130)])
def test_a_signal_checkpoints_the_step_and_the_rerun_is_bit_exact(tmp_path, signum, word,
                                                                  status):
  whole = _fit(tmp_path / "whole")
  stopped = tmp_path / "stopped"
  with stopping.handle_signals():
    with pytest.raises(history.Interrupted) as info:
      _fit(stopped, [_Signal(6, signum)])   # mid-epoch: step 2 of the second epoch
  assert str(info.value) == f"{word} at step 6; the same command resumes."
  assert exit_codes.exit_code(info.value) == status
  assert 6 in _steps_on_disk(stopped)
  assert max(r["step"] for r in read_lines(stopped)) == 6   # nothing after the step
  resumed = _fit(stopped)
  assert resumed.summary == whole.summary
  assert read_lines(stopped) == read_lines(tmp_path / "whole")


def test_a_signal_at_an_epochs_last_step_stops_after_its_record(tmp_path):
  with stopping.handle_signals():
    with pytest.raises(history.Interrupted, match="terminated at step 4;"):
      _fit(tmp_path, [_Signal(4, signal.SIGTERM)])
  assert [r["epoch"] for r in read_lines(tmp_path) if r["kind"] == "epoch"] == [0]
  assert _steps_on_disk(tmp_path) == [4]


def test_a_repeated_sigterm_is_ignored_and_a_second_ctrl_c_stops_at_once(tmp_path):
  with stopping.handle_signals():
    with pytest.raises(history.Interrupted, match="terminated at step 6; the same"):
      _fit(tmp_path / "term", [_Signal(6, signal.SIGTERM, times=3)])
    with pytest.raises(history.Interrupted) as info:
      _fit(tmp_path / "int", [_Signal(6, signal.SIGINT, times=2)])
  # The second Ctrl-C raised inside the step: the resume point is the epoch's checkpoint.
  assert "resumes from the last checkpoint" in str(info.value)
  assert _steps_on_disk(tmp_path / "int") == [4]


def test_outside_the_loop_a_signal_raises_at_once_and_the_handlers_are_put_back():
  before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
  with stopping.handle_signals():
    with pytest.raises(stopping.Stop) as info:
      os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.signum == signal.SIGTERM
    assert exit_codes.exit_code(info.value) == 143
  assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before
  assert stopping.requested() is None
