"""The fit loop's hooks: the order of the calls, the built-in set, a run without hooks,
and the caller's run directory (lock and config.json)."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import numpy as np
import optax
import pytest

from tsm import artifacts, evaluation, history, hooks, losses, margins, plotting
from tsm import fit as fit_lib
from tsm import workdir as workdir_lib
from tsm.data import samplers

import event_files
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from tensorboardX.proto import plugin_hparams_pb2


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
  kw = {"evaluators": [evaluation.Retrieval("val")],
        "final_evaluators": [evaluation.Retrieval("test")], **kw}
  return fit_lib.fit(_Net(), losses.triplet_margin_loss, margins.constant(0.2),
                     optax.adam(1e-2), data, workdir=str(workdir), epochs=2,
                     sampler=sampler,
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


def test_the_standard_hooks_write_the_run_files_and_figures(tmp_path, capsys,
                                                           monkeypatch):
  drawn = []   # the figures, kept for inspection after they are saved
  original = plotting.save_figure
  monkeypatch.setattr(plotting, "save_figure",
                      lambda fig, path, **kw: (original(fig, path, **kw),
                                               drawn.append((os.path.basename(path), fig))))
  result = _fit(tmp_path, hooks=hooks.standard(progress=False),
                evaluators=[evaluation.Retrieval("val"), evaluation.Verification("val")],
                final_evaluators=[evaluation.Retrieval("test"),
                                  evaluation.Verification("test")])
  for name in ("summary.json", "pairs.npz", "training.png", "roc.png", "tensorboard"):
    assert os.path.exists(tmp_path / name), name
  with open(tmp_path / "summary.json") as f:
    # Strict JSON: a metric the few test pairs cannot resolve (NaN) is null on disk.
    assert json.load(f) == json.loads(artifacts.dumps(result.summary))
  out = capsys.readouterr().out.splitlines()
  assert [l.split()[1] for l in out if l.startswith("epoch ")] == ["1/2", "2/2"]
  assert any(l.startswith("test: ") for l in out)
  # training.png: the kept epoch marked on every panel, with its rule.
  figures = dict(drawn)
  assert set(figures) == {"training.png", "roc.png"}
  s = result.summary   # no evaluator computes val_loss: the final state is kept
  assert (s["best_metric"], s["best_mode"], s["best_value"]) == ("val_loss", "min", None)
  rule = "selected: epoch 2 (the last: no epoch record holds val_loss)"
  assert any(l.startswith("selected epoch 2 of 2, the last: no epoch record holds val_loss")
             for l in out)
  panels = [ax for ax in figures["training.png"].axes if ax.axison]
  assert len(panels) == 5   # training loss, metrics up and down, margin, easy share
  for ax in panels:
    marks = [l for l in ax.lines if l.get_gid() == plotting.SELECTED_GID]
    assert [list(l.get_xdata()) for l in marks] == [[s["best_epoch"]] * 2], ax.get_title()
    assert rule in [t.get_text() for t in ax.get_legend().get_texts()], ax.get_title()
  title = figures["roc.png"]._suptitle.get_text()  # pylint: disable=protected-access
  same = np.load(tmp_path / "pairs.npz")["test_same"]
  assert f"test split: {same.size:,} pairs ({int(same.sum()):,} same-class" in title


def test_log_lines_and_tensorboard_of_a_resumed_run(tmp_path, capsys):
  labels = fit_lib.RunLabels(dataset="points", loss="triplet")
  val_labels = _data()["val"][1]
  batches = samplers.PKSampler(val_labels, 2, 3, seed=0, steps_per_epoch=2).epoch(0)
  evaluators = [evaluation.ValidationLoss(batches), evaluation.Retrieval("val")]
  options = fit_lib.LoopOptions(log_every=1, stop_after_steps=4)   # killed in epoch 2
  assert _fit(tmp_path, options=options, labels=labels, evaluators=evaluators,
              hooks=hooks.standard(progress=False, figures=None)) is None
  first = capsys.readouterr().out.splitlines()
  assert first[0] == f"training 2 epochs x 3 steps (6 steps) in {tmp_path}"
  assert first[1].startswith("epoch 1/2  ") and "  step 3/6  eta " in first[1]
  result = _fit(tmp_path, options=fit_lib.LoopOptions(log_every=1), labels=labels,
                evaluators=evaluators, hooks=hooks.standard(progress=False, figures=None))
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"resuming from step 3/6 (after epoch 1/2) in {tmp_path}"
  assert out[1].startswith("epoch 2/2  ") and out[1].endswith("  step 6/6")  # no time left
  best_step = 3 * result.summary["best_epoch"]
  assert out[2] == (f"final evaluation of the kept checkpoint (epoch "
                    f"{result.summary['best_epoch']}, step {best_step}) ...")
  assert out[3] == f"writing summary.json and pairs.npz in {tmp_path}"
  assert out[4].startswith("writing the test metrics, hyper-parameters and test embeddings")
  s = result.summary
  main = s["main_val_metric"]
  assert main["name"] == "val_map@r"
  records = {r["epoch"] + 1: r["val_map@r"] for r in result.history}
  assert main["best_value"] == max(records.values())
  assert main["at_best_epoch"] == records[s["best_epoch"]]
  selection = next(l for l in out if l.startswith("selected epoch "))
  assert selection.startswith(f"selected epoch {s['best_epoch']} of 2 by lowest val_loss "
                              f"({s['best_value']:.4f}); val_map@r ")
  assert out[-1].startswith("done in ") and out[-1].endswith(
      f"{tmp_path} holds summary.json (final test metrics), metrics.jsonl (a record per "
      "step and per epoch), pairs.npz (test pair distances), tensorboard/ (TensorBoard "
      "logs), checkpoints/ (the kept and the latest states)")

  # TensorBoard: each step once after the resume's purge, the test metrics and hparams.
  logdir = str(tmp_path / "tensorboard")
  assert len(event_files.event_files(logdir)) == 2
  raw = [(step, v.tag) for path in event_files.event_files(logdir)
         for step, v in event_files.values(event_files.read_events(path))]
  assert raw.count((4, "train/loss")) == 2   # step 4 was logged before the kill and again
  seen = [(step, v.tag) for step, v in event_files.values(event_files.shown(logdir))]
  assert len(seen) == len(set(seen))
  assert sorted(step for step, tag in seen if tag == "train/loss") == [1, 2, 3, 4, 5, 6]
  assert sorted(step for step, tag in seen if tag == "epoch/loss") == [3, 6]
  scalars = {v.tag: v.simple_value for step, v in event_files.values(event_files.shown(logdir))
             if step == 6 and v.HasField("simple_value")}
  for name, value in s["test"].items():
    assert scalars[f"test/{name.replace('@', '_')}"] == pytest.approx(value, rel=1e-6), name
  starts = [v for _, v in event_files.values(event_files.shown(logdir))
            if v.tag == "_hparams_/session_start_info"]
  assert len(starts) == 1
  hparams = plugin_hparams_pb2.HParamsPluginData.FromString(
      starts[0].metadata.plugin_data.content).session_start_info.hparams
  assert {k: v.string_value for k, v in hparams.items()} == {"dataset": "points",
                                                             "loss": "triplet"}


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


def _records(val_loss, map_r):
  """Epoch records with a validation loss every epoch and MAP@R where given."""
  out = []
  for e, loss in enumerate(val_loss):
    r = {"kind": "epoch", "epoch": e, "step": 3 * (e + 1), "val_loss": loss}
    if map_r.get(e + 1) is not None:
      r["val_map@r"] = map_r[e + 1]
    out.append(r)
  return out


@pytest.mark.parametrize("best_epoch,expected", [
    (2, "selected epoch 2 of 4 by lowest val_loss (0.4000); val_map@r 0.6000 there, "
        "highest 0.7000 at epoch 4"),
    (3, "selected epoch 3 of 4 by lowest val_loss (0.3500); val_map@r not evaluated "
        "there, highest 0.7000 at epoch 4"),
    (4, "selected epoch 4 of 4 by lowest val_loss (0.3000); val_map@r there 0.7000, its "
        "highest"),
])
def test_the_summary_line_states_the_rule_and_the_main_metrics_own_best(best_epoch,
                                                                        expected):
  losses = {2: [0.5, 0.4, 0.45, 0.6], 3: [0.5, 0.4, 0.35, 0.6], 4: [0.5, 0.4, 0.35, 0.3]}
  records = _records(losses[best_epoch], {2: 0.6, 4: 0.7})
  summary = {"epochs": 4, "best_metric": "val_loss", "best_epoch": best_epoch,
             "best_value": records[best_epoch - 1]["val_loss"]}
  summary.update(history.selection(records, "val_loss", "min", best_epoch))
  assert summary["best_mode"] == "min"
  assert summary["main_val_metric"]["best_epoch"] == 4
  assert history.selection_line(summary) == expected
  # Kept by the main metric itself: nothing to add.
  assert "main_val_metric" not in history.selection(records, "val_map@r", "max", 4)
  assert history.selection_line({"epochs": 4, "best_metric": "val_map@r", "best_mode": "max",
                                 "best_epoch": 4, "best_value": 0.7}) == (
      "selected epoch 4 of 4 by highest val_map@r (0.7000)")


@pytest.mark.parametrize("seconds,text", [(0.4, "0s"), (59.6, "1m00s"), (185, "3m05s"),
                                          (7620, "2h07m")])
def test_durations_for_log_lines(seconds, text):
  assert history.format_duration(seconds) == text
