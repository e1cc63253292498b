"""The loss study (experiments/loss_comparison): a tiny end-to-end run and its outputs."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from experiments.loss_comparison import report
from experiments.loss_comparison import run as study_run
from experiments.loss_comparison import study_config
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from tsm import reporting

VERDICTS = {reporting.HELD, reporting.NOT_HELD, reporting.UNCLEAR, report.NOT_MEASURED}
FIGURES = ("curves.png", "intra_class_variance.png", "pca.png", "effective_margins.png")


def tiny_study(**study):
  cfg = study_config.study_config(("digits",))
  cfg.study.update(dict(seeds=2, epochs=2, processes=1, cache_dir="",
                        max_triplets=2000), **study)
  cfg.digits.model.hidden_sizes = (32,)
  cfg.digits.model.embedding_dim = 16
  cfg.digits.train.steps_per_epoch = 8
  return cfg


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("loss_study"))
  out = study_run.run_study(tiny_study(), workdir)
  return workdir, out


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


@pytest.mark.slow
def test_table_has_every_row_with_finite_numbers(study_dir):
  workdir, out = study_dir
  assert len(out["runs"]) == 4 and not any(r["reused"] for r in out["runs"])
  rows = _csv(os.path.join(workdir, "digits", "table.csv"))
  header, body = rows[0], rows[1:]
  assert header[:3] == ["quantity", "contrastive (ours)", "triplet (ours)"]
  assert [r[0] for r in body] == [label for _, label, _ in report.ROWS]
  for row in body:
    for cell in row[1:3]:
      assert report.is_finite_number(cell), (row[0], cell)
      assert "±" in cell   # two seeds: mean ± std
  with open(os.path.join(workdir, "digits", "table.md")) as f:
    assert f.read().count("\n|") == len(report.ROWS) + 2   # + header rule


@pytest.mark.slow
def test_figures_verdicts_and_report_are_written(study_dir):
  workdir, _ = study_dir
  for name in FIGURES:
    assert os.path.getsize(os.path.join(workdir, "digits", name)) > 1000, name
  rows = _csv(os.path.join(workdir, "verdicts.csv"))
  assert rows[0] == ["paper B's claim", "metric", "digits"]
  assert [r[1] for r in rows[1:]] == [key for _, key, _, _ in report.CLAIMS]
  assert all(r[2] in VERDICTS for r in rows[1:])
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "paper B's claim" in text and "digits: contrastive vs triplet" in text


@pytest.mark.slow
def test_each_run_is_analysed_once_and_checkpointed_at_the_end(study_dir):
  workdir, _ = study_dir
  for loss in ("contrastive", "triplet"):
    rundir = report.run_dir(workdir, "digits", loss, 0)
    with open(os.path.join(rundir, "analysis.json")) as f:
      result = json.load(f)
    assert result["loss"] == loss and result["epochs"] == 2
    assert result["sampling"] == {"triplet": "triplets", "contrastive": "pairs"}[loss]
    assert len(result["curves"]["grad_norm"]) == 2
    assert result["eff_margin_count"] > 0 and len(result["gmm"]["means"]) == 2
    steps = os.listdir(os.path.join(rundir, "checkpoints"))
    assert steps == ["16"]   # checkpoint.every_epochs = 0: the last epoch only
  # A rerun reuses every finished run.
  out = study_run.run_study(tiny_study(), workdir)
  assert all(r["reused"] for r in out["runs"])


@pytest.mark.slow
def test_epoch_curves_are_the_means_of_the_jitted_steps_metrics(study_dir):
  """Issue 5 item 2: loss, active ratio and gradient norm come out of the train step per
  step, and fit's epoch records (the study's curves) are their per-epoch means."""
  workdir, _ = study_dir
  for loss in ("contrastive", "triplet"):
    rundir = report.run_dir(workdir, "digits", loss, 1)
    with open(os.path.join(rundir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    with open(os.path.join(rundir, "analysis.json")) as f:
      curves = json.load(f)["curves"]
    for key in ("loss", "active_ratio", "grad_norm"):
      for epoch in range(2):
        steps = [r[key] for r in records if r["kind"] == "step" and r["epoch"] == epoch]
        assert len(steps) == 8 and all(math.isfinite(v) for v in steps)
        assert min(steps) >= 0 and (key != "active_ratio" or max(steps) <= 1)
        assert curves[key][epoch] == pytest.approx(sum(steps) / len(steps), rel=1e-6)


@pytest.mark.parametrize("field,value,message", [
    ("sampling", "hard", "study.sampling"),
    ("seeds", 0, "study.seeds"),
    ("losses", ("arcface",), "study.losses"),
    ("datasets", ("mnist1d",), "study.datasets"),
])
def test_bad_study_settings_fail_in_one_line_before_running(tmp_path, field, value,
                                                             message):
  cfg = tiny_study()
  cfg.study[field] = value
  workdir = str(tmp_path / "w")
  with pytest.raises(study_run.StudyError, match=message) as e:
    study_run.run_study(cfg, workdir)
  assert "\n" not in str(e.value)
  assert not os.path.exists(workdir)


def test_run_config_follows_the_sampling_choice():
  cfg = study_config.study_config(("synthetic",))
  run = study_run.run_config(cfg, "synthetic", "contrastive", 3)
  assert (run.seed, run.loss.name, run.train.sampling) == (3, "contrastive", "pairs")
  assert run.margin.initial_margin == 1.0 and run.train.batch_size == 64
  cfg.study.sampling = "pk"
  cfg.study.mining = "semihard"
  run = study_run.run_config(cfg, "synthetic", "triplet", 0)
  assert (run.train.sampling, run.loss.mining) == ("pk", "semihard")
  assert study_run.run_config(cfg, "synthetic", "contrastive", 0).loss.mining == "all"
  gpu = study_config.study_config(("cifar10",))
  assert not study_run.run_config(gpu, "cifar10", "triplet", 0).model.freeze_trunk
  gpu.cifar10.model.pretrained_path = "/weights/resnet18.npz"   # paper B: frozen trunk
  assert study_run.run_config(gpu, "cifar10", "triplet", 0).model.freeze_trunk
