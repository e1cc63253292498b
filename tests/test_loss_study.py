"""The loss study (experiments/loss_comparison): a tiny end-to-end run and its outputs."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest


from experiments.common import grid
from experiments.common import measure as analysis
from experiments.common import runs
from experiments.common import tables
from experiments.configs.presets import paper_b as study_config
from experiments.loss_comparison import report
from experiments.loss_comparison import run as study_run
from experiments.loss_comparison import study
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from tsm import losses
from tsm import reporting

VERDICTS = set(reporting.VERDICTS)
# The contrastive loss's negative-term active count, once tsm's PairStats records it.
NEGATIVE_COUNT = "num_negative_active" in losses.PairStats._fields


def _measured(key):
  return key != "mean_negative_active_ratio" or NEGATIVE_COUNT
FIGURES = ("curves.png", "intra_class_variance.png", "pca.png", "effective_margins.png")


def tiny_study(**study):
  cfg = study_config.study_config(("digits",))
  cfg.study.update(dict(seeds=2, epochs=2, workers=1, compilation_cache="",
                        em_triplets=2000), **study)
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
  labels = {label: key for key, label, _ in report.ROWS}
  for row in body:
    for loss, cell in zip(("contrastive", "triplet"), row[1:3]):
      if loss == "contrastive" and not _measured(labels[row[0]]):
        assert cell == "n/a", (row[0], cell)   # NaN, never a plausible number
        continue
      assert tables.is_finite_number(cell), (row[0], cell)
      assert "±" in cell   # two seeds: mean ± std
  with open(os.path.join(workdir, "digits", "table.md")) as f:
    assert f.read().count("\n|") == len(report.ROWS) + 2   # + header rule


@pytest.mark.slow
def test_figures_verdicts_and_report_are_written(study_dir):
  workdir, _ = study_dir
  for name in FIGURES:
    assert os.path.getsize(os.path.join(workdir, "digits", name)) > 1000, name
  rows = _csv(os.path.join(workdir, "verdicts.csv"))
  header = rows[0]
  assert header[:3] == ["dataset", "claim", "metric"] and header[-2:] == ["verdict", "note"]
  # Every claim measured on digits (by-image split: k-NN too), in CLAIMS order.
  assert [r[2] for r in rows[1:]] == [key for _, key, _, _ in study.CLAIMS
                                      if _measured(key)]
  assert all(r[0] == "digits" and r[header.index("verdict")] in VERDICTS
             for r in rows[1:])
  assert all(r[header.index("seeds")] == "2" for r in rows[1:])
  notes = {r[2]: r[-1] for r in rows[1:]}
  assert "by construction" in notes["mean_active_ratio"]
  assert "scale" in notes["mean_grad_norm"] and notes["recall@1"] == ""
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "Paper B's claims" in text and "digits: contrastive vs triplet" in text


@pytest.mark.slow
def test_each_run_is_analysed_once_and_checkpointed_at_the_end(study_dir):
  workdir, _ = study_dir
  for loss in ("contrastive", "triplet"):
    rundir = runs.run_dir(workdir, "digits", loss, 0)
    with open(os.path.join(rundir, "analysis.json")) as f:
      result = json.load(f)
    assert result["loss"] == loss and result["epochs"] == 2
    with open(os.path.join(rundir, "config.json")) as f:
      assert json.load(f)["data"]["data_seed"] == 0   # study.vary_data: seed 0's data
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
  """Loss, active ratio and gradient norm come out of the train step per step, and
  fit's epoch records (the study's curves) are their per-epoch means."""
  workdir, _ = study_dir
  for loss in ("contrastive", "triplet"):
    rundir = runs.run_dir(workdir, "digits", loss, 1)
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
    ("xla_threads", 2, "study.xla_threads"),
    ("compare_to", "/nonexistent/study", "study.compare_to"),
])
def test_bad_study_settings_fail_in_one_line_before_running(tmp_path, field, value,
                                                             message):
  cfg = tiny_study()
  cfg.study[field] = value
  workdir = str(tmp_path / "w")
  with pytest.raises(grid.StudyError, match=message) as e:
    study_run.run_study(cfg, workdir)
  assert "\n" not in str(e.value)
  assert not os.path.exists(workdir)


def test_run_config_follows_the_sampling_choice():
  cfg = study_config.study_config(("synthetic",))
  run = study.run_config(cfg, "synthetic", "contrastive", 3)
  assert (run.seed, run.loss.name, run.train.sampling) == (3, "contrastive", "pairs")
  assert run.margin.initial_margin == 1.0 and run.train.batch_size == 64
  cfg.study.sampling = "pk"
  cfg.study.mining = "semihard"
  run = study.run_config(cfg, "synthetic", "triplet", 0)
  assert (run.train.sampling, run.loss.mining) == ("pk", "semihard")
  assert study.run_config(cfg, "synthetic", "contrastive", 0).loss.mining == "all"
  gpu = study_config.study_config(("cifar10",))
  assert not study.run_config(gpu, "cifar10", "triplet", 0).model.freeze_trunk
  gpu.cifar10.model.pretrained_path = "/weights/resnet18.npz"   # paper B: frozen trunk
  assert study.run_config(gpu, "cifar10", "triplet", 0).model.freeze_trunk


def test_study_defaults_and_the_epochs_knob():
  cfg = study_config.study_config(("synthetic", "digits"))
  assert cfg.study.seeds == 10 and cfg.study.vary_data
  run = study.run_config(cfg, "synthetic", "triplet", 7)
  assert run.data.data_seed == 7 and run.train.epochs == 100
  cfg.study.epochs = 3
  assert study.run_config(cfg, "digits", "contrastive", 0).train.epochs == 3
  cfg.study.vary_data = False
  assert study.run_config(cfg, "synthetic", "triplet", 7).data.data_seed == 0


def _record(loss, grad, active, **extra):
  return dict(kind="epoch", loss=loss, grad_norm=grad, active_ratio=active, **extra)


def test_companions_of_the_by_construction_claims_by_hand():
  # Triplet records carry the triplet loss's counts (num_triplets), as fit writes them.
  triplet = [_record(2.0, 1.0, 0.5, num_triplets=96.0),
             _record(1.0, 0.8, 0.25, num_triplets=96.0)]
  out = analysis.curve_summary(triplet, 4.0, 0.1)
  # Every triplet term holds a negative: its negative-term ratio is its active ratio.
  assert out["mean_negative_active_ratio"] == (0.5 + 0.25) / 2
  assert out["mean_grad_norm_per_loss"] == (1.0 / 2.0 + 0.8 / 1.0) / 2
  pairs = [_record(1.0, 0.3, 0.9, num_negative=40.0, num_negative_active=10.0),
           _record(0.0, 0.0, 0.5, num_negative=50.0, num_negative_active=5.0)]
  out = analysis.curve_summary(pairs, 2.0, 0.1)
  assert out["mean_negative_active_ratio"] == (10 / 40 + 5 / 50) / 2
  assert out["mean_grad_norm_per_loss"] == 0.3   # a zero-loss epoch has no ratio
  # Without the stats' negative-active count the companion is NaN, not a guess.
  out = analysis.curve_summary([_record(1.0, 0.3, 0.9)], 2.0, 0.1)
  assert math.isnan(out["mean_negative_active_ratio"])


def test_claims_pair_by_seed_and_use_one_holm_family():
  def runs(values, key="intra_var"):
    return [{"seed": s, key: v, "epochs": 5} for s, v in values]
  by_dataset = {
      "a": {"triplet": runs([(0, 0.30), (1, 0.32), (2, 0.31)]),
            "contrastive": runs([(0, 0.10), (2, 0.12)])},   # seed 1 missing
      "b": {"triplet": runs([(0, 0.2), (1, 0.2), (2, 0.2)]),
            "contrastive": runs([(0, 0.2), (1, 0.2), (2, 0.2)])},
  }
  claims = report.study_claims(by_dataset, [0, 1, 2])
  assert [(c.group, c.metric) for c in claims] == [("a", "intra_var"), ("b", "intra_var")]
  assert claims[0].b_values == [0.10, None, 0.12]
  verdicts = report.decided(by_dataset, [0, 1, 2])
  assert verdicts["b"]["intra_var"] == reporting.INCONCLUSIVE   # identical arms
  assert verdicts["a"]["recall@1"] == report.NOT_MEASURED
  comps = reporting.decide([reporting.compare(c.a_values, c.b_values) for c in claims])
  assert verdicts["a"]["intra_var"] == comps[0].verdict


def test_deviations_cover_paper_b_settings():
  rows = report.deviations(study_config.study_config(study_config.OFFLINE_DATASETS))
  settings = {r[0] for r in rows}
  for needed in ("sampling", "outliers (label -1) as anchors", "positive = anchor allowed",
                 "loss reduction", "learning rate", "epochs", "dropout", "trunk", "split",
                 "augmentation / normalisation"):
    assert needed in settings
  assert all(all(cell for cell in r) for r in rows)


@pytest.mark.parametrize("change, setting, before, after", [
    (lambda c: setattr(c.digits.train, "learning_rate", 3e-4), "learning rate",
     "adam 0.001", "synthetic: adam 0.001, digits: adam 0.0003"),
    (lambda c: setattr(c.study, "epochs", 3), "epochs",
     "100", "3"),
    (lambda c: (setattr(c.digits.model, "head", "paper_a"),
                setattr(c.digits.model, "head_dropout", (0.5, 0.3))), "dropout",
     "none", "synthetic: none, digits: 0.5 / 0.3"),
    (lambda c: setattr(c.digits.loss, "positive_margin", 0.2),
     "contrastive margins (positive / negative)", "0 / 1",
     "synthetic: 0 / 1, digits: 0.2 / 1"),
    (lambda c: setattr(c.study, "datasets", ("digits",)), "datasets",
     "synthetic, digits", "digits"),
])
def test_deviations_follow_the_config(change, setting, before, after):
  cfg = study_config.study_config(("synthetic", "digits"))
  row = lambda c: next(r for r in report.deviations(c) if r[0] == setting)  # noqa: E731
  assert row(cfg)[3] == before
  change(cfg)
  assert row(cfg)[3] == after
  if setting in ("learning rate", "dropout"):
    assert row(cfg)[4] != "same"


def test_by_construction_claims_are_flagged_beside_companions():
  seeds = list(range(6))
  def runs(var, dist, **extra):
    return [{"seed": s, "epochs": 5, "intra_var": var + 0.01 * s, "inter_dist": dist,
             "inter_dist_sq": dist ** 2, **extra} for s in seeds]
  by_dataset = {"digits": {"triplet": runs(0.2, 1.4),
                           "contrastive": runs(0.05, 1.2, margin=1.0,
                                               positive_margin=0.0)}}
  claims = {c.metric: c for c in report.study_claims(by_dataset, seeds)}
  assert "positive margin 0" in claims["intra_var"].note
  assert "margin 1 < √2" in claims["inter_dist"].note
  for companion in ("intra_var_ratio", "inter_dist_per_spread"):
    assert claims[companion].note == ""
  np.testing.assert_allclose(claims["intra_var_ratio"].a_values,
                             [(0.2 + 0.01 * s) / 1.4 ** 2 for s in seeds])
  np.testing.assert_allclose(claims["inter_dist_per_spread"].b_values,
                             [1.2 / math.sqrt(0.05 + 0.01 * s) for s in seeds])
  # A non-zero positive margin and a margin >= √2: nothing holds by construction there.
  for r in by_dataset["digits"]["contrastive"]:
    r.update(margin=1.5, positive_margin=0.1)
  claims = {c.metric: c for c in report.study_claims(by_dataset, seeds)}
  assert claims["intra_var"].note == claims["inter_dist"].note == ""
  assert "raw gradient norms" in study.GRAD_NOTE and "step size" not in study.GRAD_NOTE
  assert all("step size" not in c[0] for c in study.CLAIMS)
