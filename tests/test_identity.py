"""``fit`` records what identifies a run (run.json) and refuses a rerun on the same
workdir that differs, naming what differs, unless it is a declared continuation."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import numpy as np
import optax
import pytest

from tsm import identity, losses, margins
from tsm import fit as fit_lib

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines


class _Net(nn.Module):
  features: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.features)(x)


def _data(n=40, shift=0.0):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), n // 4).astype(np.int32)
  x = rng.normal(size=(n, 3)).astype(np.float32) + shift
  return {"train": (x, y), "val": (x[:8], y[:8]), "test": (x[:8], y[:8])}


def _fit(workdir, model=None, loss=losses.triplet_margin_loss, tx=None, data=None,
         epochs=1, **kw):
  return fit_lib.fit(model or _Net(), loss, margins.constant(0.2), tx or optax.adam(1e-2),
                     data or _data(), workdir=str(workdir), epochs=epochs, hooks=[],
                     checkpoint=fit_lib.CheckpointOptions(async_save=False), **kw)


@pytest.mark.parametrize("change,named", [
    (dict(data=_data(48)), "data.train.examples differs (40 there, 48 now)"),
    (dict(data=_data(shift=1.0)), "data.test.inputs"),
    (dict(model=_Net(8)), "model.parameters"),
    (dict(loss=functools.partial(losses.triplet_margin_loss, reduction="sum")), "loss"),
    (dict(seed=1), "seed differs (0 there, 1 now)"),
])
def test_a_rerun_of_another_run_is_refused_naming_what_differs(tmp_path, change, named):
  _fit(tmp_path)
  summary = (tmp_path / "metrics.jsonl").read_bytes()
  with pytest.raises(identity.OtherRun) as info:
    _fit(tmp_path, **change)
  assert named in str(info.value) and "\n" not in str(info.value)
  assert "resume_with_changes" not in str(info.value)   # these cannot change
  assert (tmp_path / "metrics.jsonl").read_bytes() == summary   # nothing written


def test_a_new_learning_rate_needs_resume_with_changes_and_is_recorded(tmp_path):
  first = _fit(tmp_path)
  with pytest.raises(identity.OtherRun, match="its optimizer differs .*resume_with_changes"):
    _fit(tmp_path, tx=optax.adam(1e-3))
  again = _fit(tmp_path, tx=optax.adam(1e-3), epochs=2, resume_with_changes=True)
  change = [r for r in read_lines(tmp_path) if r["kind"] == "change"]
  assert len(change) == 1 and set(change[0]["changes"]) == {"optimizer", "epochs"}
  assert change[0]["step"] == first.history[-1]["step"]
  assert len(again.history) == 2
  with open(tmp_path / "run.json") as f:
    assert json.load(f)["epochs"] == 2


def test_the_same_run_passes_and_the_record_is_stable(tmp_path):
  _fit(tmp_path)
  before = (tmp_path / "run.json").read_text()
  _fit(tmp_path)
  assert (tmp_path / "run.json").read_text() == before


def test_fewer_epochs_than_trained_are_refused(tmp_path):
  _fit(tmp_path, epochs=2)
  with pytest.raises(ValueError, match="epochs=1 is below the 2 epochs"):
    _fit(tmp_path, epochs=1, resume_with_changes=True)


def test_the_optimizer_fingerprint_sees_its_settings():
  prints = {identity.optimizer_fingerprint(tx) for tx in (
      optax.adam(1e-2), optax.adam(1e-3), optax.sgd(1e-2), optax.sgd(1e-2, momentum=0.9),
      optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)))}
  assert len(prints) == 5
  assert identity.optimizer_fingerprint(optax.adam(1e-2)) == identity.optimizer_fingerprint(
      optax.adam(1e-2))
