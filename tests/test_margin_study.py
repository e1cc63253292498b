"""Tests of the margin-scheduler study (experiments/margin_scheduler).

One tiny study (digits, DAMS and the controller, 2 seeds, a few short epochs, in this
process) serves the end-to-end checks: every output exists, every number is finite, and
the margins logged in ``metrics.jsonl`` follow each rule applied to the logged easy
shares (the threshold and target are lowered so that the share crosses them).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np
import pytest
from fit_helpers import jax_compilation_cache  # noqa: F401  # pylint: disable=unused-import

from experiments.configs import margin_study_digits
from experiments.margin_scheduler import report
from experiments.margin_scheduler import run as run_lib
from experiments.margin_scheduler import study
from experiments.common import grid
from experiments.common import verdicts as verdicts_lib
from experiments.configs.presets import paper_a
from scipy import stats as sps
from tsm import cli as cli_lib
from tsm import config as config_lib
from tsm import reporting

DATASET = "digits"
SCHEDULES = ("dams", "controller")
SEEDS = 2
EPOCHS = 6


def _tiny_config():
  cfg = margin_study_digits.get_config()
  run = cfg[DATASET]
  run.model.hidden_sizes = (32,)
  run.model.head_hidden = (32, 32)
  run.model.embedding_dim = 16
  run.train.epochs = EPOCHS
  run.train.samples_per_class = 4
  run.train.steps_per_epoch = 8
  run.train.learning_rate = 1e-2
  run.eval.num_pairs = 200
  run.eval.val_batches = 2
  run.margin.threshold = 0.75    # crossed within a few epochs on digits
  run.margin.increment = 0.05
  run.margin.target = 0.75
  run.margin.gain = 0.5
  run.margin.min_margin = 0.1
  cfg.study.schedules = ",".join(SCHEDULES)
  cfg.study.seeds = SEEDS
  cfg.study.workers = 1
  cfg.study.compilation_cache = ""   # the module fixture's cache is used
  cfg.study.em_examples = 200
  cfg.study.em_triplets = 2000
  return cfg


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("margin_study"))
  cfg = _tiny_config()
  text = run_lib.run_study(cfg, workdir)
  return cfg, workdir, text


def _epochs(workdir, name, seed):
  path = os.path.join(study.run_dir(workdir, DATASET, name, seed), "metrics.jsonl")
  with open(path) as f:
    return [r for r in map(json.loads, f) if r["kind"] == "epoch"]


def _finite_cells(path):
  """Every numeric cell of a CSV (``mean ± std`` split, bold marks removed)."""
  values = []
  with open(path) as f:
    for row in list(csv.reader(f))[1:]:
      for cell in row:
        for part in cell.replace("*", "").replace(":", " ").split():
          try:
            values.append(float(part.strip("+")))
          except ValueError:
            pass
  return values


@pytest.mark.slow
def test_outputs_exist_and_are_finite(tiny_study):
  cfg, workdir, text = tiny_study
  for name in ("report.md", "results.md", "results.csv", "verdicts.md", "verdicts.csv",
               "effective_margins.md", "effective_margins.csv", "per_seed.csv",
               "margin.png", "easy_share.png", "effective_margins.png", "roc.png",
               "study.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  # One study.json: the study config as run, the runs' summaries, the wall times.
  with open(os.path.join(workdir, "study.json")) as f:
    record = json.load(f)
  assert record["config"] == json.loads(cfg.to_json())
  assert sorted(record["runs"]) == sorted(SCHEDULES) and record["timing"]["runs"] == len(
      SCHEDULES) * SEEDS
  assert not os.path.exists(os.path.join(workdir, "study_config.json"))
  assert "Test metrics" in text and "our controller beats DAMS" in text
  assert "Deviations from paper A" in text and "loss reduction" in text
  for csv_name in ("results.csv", "per_seed.csv", "effective_margins.csv"):
    values = _finite_cells(os.path.join(workdir, csv_name))
    assert values and all(math.isfinite(v) for v in values), csv_name
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["schedule"] for r in rows] == list(SCHEDULES)
  assert all(r["seeds"] == str(SEEDS) for r in rows)
  with open(os.path.join(workdir, "verdicts.csv")) as f:
    verdicts = list(csv.DictReader(f))
  assert {v["metric"] for v in verdicts} == {"AUC", "EER"}
  assert all(v["verdict"] in reporting.VERDICTS for v in verdicts)
  assert all(v["seeds"] == str(SEEDS) for v in verdicts)
  hooked = study.hook_epochs(EPOCHS)
  for name in SCHEDULES:
    for seed in range(SEEDS):
      directory = study.run_dir(workdir, DATASET, name, seed)
      with open(os.path.join(directory, "summary.json")) as f:
        test = json.load(f)["test"]
      for key in ("auc", "eer", "accuracy", "threshold", "tar@far=1e-2", "recall@1",
                  "map@r"):
        assert math.isfinite(test[key]), (name, seed, key)
      with np.load(os.path.join(directory, "config.json").replace(
          "config.json", "pairs.npz")) as z:
        assert z["test_distances"].shape == z["test_same"].shape
        assert np.all(np.isfinite(z["test_distances"]))
      with open(os.path.join(directory, "config.json")) as f:
        saved = json.load(f)
      # study.vary_data: the run's data are drawn from its seed; the authors' loss.
      assert saved["data"]["data_seed"] == seed
      assert saved["loss"]["reduction"] == "mean_nonzero"
      for epoch in hooked:
        with np.load(os.path.join(directory, "effective_margins",
                                  f"epoch{epoch:03d}.npz")) as z:
          assert z["values"].size > 0 and np.all(np.isfinite(z["values"]))
          assert np.all(np.isfinite(z["means"])) and np.all(z["stds"] > 0)
      records = _epochs(workdir, name, seed)
      assert len(records) == EPOCHS
      for r in records:
        assert ("em_share_above_margin" in r) == (r["epoch"] in hooked)
        # The hook's margin is the one the epoch trained with.
        if "em_margin" in r:
          assert r["em_margin"] == pytest.approx(r["margin"])


@pytest.mark.slow
def test_adaptive_margins_follow_their_rules(tiny_study):
  """Logged margins = each rule applied to the logged easy shares, and the share crosses."""
  cfg, workdir, _ = tiny_study
  m = cfg[DATASET].margin
  crossed = {"dams": set(), "controller": set()}
  for seed in range(SEEDS):
    for name in SCHEDULES:
      records = _epochs(workdir, name, seed)
      assert records[0]["margin"] == pytest.approx(m.initial_margin)
      for prev, nxt in zip(records, records[1:]):
        assert nxt["margin"] == pytest.approx(prev["margin_next"], abs=1e-6)
      for r in records:
        mu, share = r["margin"], r["easy_share"]
        if name == "dams":
          if abs(share - m.threshold) < 1e-6:
            continue   # float32 vs float64 at the boundary
          expected = mu + m.increment if share >= m.threshold else mu
          crossed["dams"].add(share >= m.threshold)
        else:
          error = share - m.target
          if abs(abs(error) - m.deadband) < 1e-6:
            continue
          expected = (min(max(mu + m.gain * error, m.min_margin), 2.0)
                      if abs(error) > m.deadband else mu)
          crossed["controller"].add(error > 0)
        assert r["margin_next"] == pytest.approx(expected, abs=1e-5), (name, seed, r)
  # Both branches of each rule occurred (the share crossed the threshold / target).
  assert crossed["dams"] == {True, False}
  assert crossed["controller"] == {True, False}


@pytest.mark.slow
def test_rerun_reuses_finished_runs(tiny_study, capsys):
  cfg, workdir, _ = tiny_study
  with open(os.path.join(workdir, "report.md")) as f:
    timing = [l for l in f if l.startswith("- wall time")]
  run_lib.run_study(cfg, workdir)
  out = capsys.readouterr().out
  assert out.count("reused") == len(SCHEDULES) * SEEDS
  with open(os.path.join(workdir, "report.md")) as f:   # the training's wall time kept
    assert [l for l in f if l.startswith("- wall time")] == timing
  assert f"({len(SCHEDULES) * SEEDS} trained)" in timing[0]


@pytest.mark.slow
def test_final_mu_is_the_margin_the_last_epoch_trained_at(tiny_study):
  cfg, workdir, _ = tiny_study
  runs = report.load_runs(workdir, DATASET, SCHEDULES, range(SEEDS))
  for name in SCHEDULES:
    for run in runs[name]:
      last = _epochs(workdir, name, run["seed"])[-1]
      assert run["summary"]["final_mu"] == last["margin"]
      assert run["summary"]["next_mu"] == last["margin_next"]
  with open(os.path.join(workdir, "results.csv")) as f:
    header = next(csv.reader(f))
  assert "final mu" in header and "next mu" in header


@pytest.mark.slow
def test_compare_to_marks_differing_verdicts_unstable(tiny_study, tmp_path):
  """A rerun whose verdicts differ: those claims read 'unstable', the others stay."""
  cfg, workdir, _ = tiny_study
  other = tmp_path / "rerun"
  other.mkdir()
  with open(os.path.join(workdir, "verdicts.csv")) as f:
    rows = list(csv.reader(f))
  flipped = rows[1][rows[0].index("verdict")]
  rows[1][rows[0].index("verdict")] = "held" if flipped != "held" else "contradicted"
  with open(other / "verdicts.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  runs = report.load_runs(workdir, DATASET, SCHEDULES, range(SEEDS))
  header, marked, sentence = report.verdict_table(runs, SCHEDULES, range(SEEDS),
                                                  compare_to=str(other))
  col = header.index("verdict")
  assert marked[0][col].startswith("unstable (" + flipped + " here")
  assert all(not r[col].startswith("unstable") for r in marked[1:])
  assert "1 of" in sentence


def test_schedules_and_stepwise_stages():
  cfg = margin_study_digits.get_config()
  assert study.schedule_names(cfg) == [
      "constant_0.1", "constant_0.2", "constant_0.5", "constant_1.0", "linear",
      "exponential", "stepwise", "dams", "controller"]
  assert study.stepwise_stages(0.2, 1.0, 20, 4) == ((5, 10, 15), pytest.approx(
      (0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0)))
  boundaries, values = study.stepwise_stages(0.2, 1.0, 3, 4)   # fewer epochs than stages
  assert boundaries == (1, 2) and values == pytest.approx((0.6, 1.0))
  for name in study.schedule_names(cfg):
    config_lib.check_config(study.run_config(cfg, DATASET, name, 3))
  run = study.run_config(cfg, DATASET, "constant_0.5", 3)
  assert run.margin.schedule == "constant" and run.margin.initial_margin == 0.5
  assert run.seed == 3 and "study" not in run
  cfg.study.schedules = "dams,nope"
  with pytest.raises(grid.StudyError, match="study.schedules"):
    study.check_study(cfg)


def test_study_defaults_follow_the_authors_code():
  cfg = margin_study_digits.get_config()
  assert cfg.study.seeds == 10 and cfg.study.vary_data
  run = study.run_config(cfg, DATASET, "dams", 4)
  assert run.loss.reduction == "mean_nonzero" and run.loss.mining == "all"
  assert run.data.data_seed == 4   # vary_data: the data follow the seed
  cfg.study.vary_data = False
  assert (study.run_config(cfg, DATASET, "dams", 4).data.data_seed
          == cfg[DATASET].data.data_seed)
  images = paper_a.images("lfw")
  assert not images.data.augment   # the authors' code: resize + normalise only


def test_epochs_knob_and_axes():
  cfg = margin_study_digits.get_config()
  cfg.study.epochs = 7
  cfg.study.schedules = "stepwise,dams"
  cfg.study.reductions = "mean_nonzero, mean"
  cfg.study.minings = "all,semihard"
  arms = study.check_study(cfg)
  assert [a.name for a in arms] == [
      "stepwise", "dams", "stepwise+semihard", "dams+semihard", "stepwise+mean",
      "dams+mean", "stepwise+mean+semihard", "dams+mean+semihard"]
  run = study.run_config(cfg, DATASET, arms[-1], 1)
  assert (run.train.epochs, run.loss.reduction, run.loss.mining) == (7, "mean", "semihard")
  # The stepwise stages follow study.epochs, not train.epochs.
  assert study.run_config(cfg, DATASET, arms[0], 0).margin.boundaries == (
      study.stepwise_stages(0.2, 1.0, 7, cfg.study.stepwise_stages)[0])
  assert study.run_dir("w", DATASET, arms[-1], 1) == os.path.join(
      "w", DATASET, "dams+mean+semihard", "seed1")


@pytest.mark.parametrize("field,value", [
    ("reductions", "mean,median"), ("minings", ""), ("reductions", "mean,mean"),
    ("epochs", 0),
    ("em_triplets", 0), ("seeds", 0), ("nope", 1)])
def test_bad_study_fields_name_the_field(field, value):
  cfg = margin_study_digits.get_config()
  with cfg.unlocked():
    cfg.study[field] = value
  with pytest.raises(grid.StudyError, match=f"study.{field}") as e:
    study.check_study(cfg)
  assert "\n" not in str(e.value)


def _fake_runs(values):
  """``{arm: runs}`` from ``{arm: (val AUCs, test AUCs, val EERs, test EERs)}``."""
  return {name: [{"seed": k, "summary": {"val": {"auc": va[k], "eer": ve[k]},
                                         "test": {"auc": ta[k], "eer": te[k]}}}
                 for k in range(len(va))]
          for name, (va, ta, ve, te) in values.items()}


def test_verdicts_pick_the_constant_on_validation_and_test_paired():
  rng = np.random.default_rng(0)
  n = 10
  base = rng.normal(0.9, 0.01, n)
  fake = _fake_runs({
      # constant_0.1 wins on validation, constant_0.5 on test: the claim must use 0.1.
      "constant_0.1": (base + 0.05, base, base * 0 + 0.2, base * 0 + 0.2 + rng.normal(
          0, 0.01, n)),
      "constant_0.5": (base, base + 0.03, base * 0 + 0.3, base * 0 + 0.1 + rng.normal(
          0, 0.01, n)),
      "linear": (base, base + 0.02 + rng.normal(0, 0.01, n), base * 0 + 0.2,
                 base * 0 + 0.2 + rng.normal(0, 0.01, n)),
      "dams": (base, base + 0.02 + rng.normal(0, 0.01, n), base * 0 + 0.2,
               base * 0 + 0.2 + rng.normal(0, 0.01, n)),
  })
  header, rows, sentence = report.verdict_table(fake, list(fake), range(n))
  assert sentence == ""
  table = {(r[0], r[1]): r for r in rows}
  auc = table[("DAMS beats the best constant margin (chosen on validation)", "AUC")]
  assert auc[3].startswith("constant_0.1")   # chosen on val.auc, not test.auc
  eer = table[("DAMS beats the best constant margin (chosen on validation)", "EER")]
  assert eer[3].startswith("constant_0.1")   # lowest validation EER
  # Raw p = the larger of scipy's one-sided paired t-test and its exact sign-flip
  # permutation test; Holm over the 4 claims.
  ps = []
  for claim, metric in table:
    b = "constant_0.1" if "constant" in claim else "linear"
    key = {"AUC": "auc", "EER": "eer"}[metric]
    a_vals = [r["summary"]["test"][key] for r in fake["dams"]]
    b_vals = [r["summary"]["test"][key] for r in fake[b]]
    alt = "greater" if metric == "AUC" else "less"
    p = max(sps.ttest_rel(a_vals, b_vals, alternative=alt).pvalue,
            sps.permutation_test((np.subtract(a_vals, b_vals),), np.mean,
                                 permutation_type="samples", alternative=alt,
                                 n_resamples=np.inf).pvalue)
    ps.append(p)
    row = table[(claim, metric)]
    assert float(row[header.index("p (one-sided)")]) == pytest.approx(p, rel=2e-3,
                                                                         abs=1e-3)
  p_sorted = sorted(ps)
  holm_min = min(1.0, 4 * p_sorted[0])
  assert min(float(r[header.index("p (Holm)")]) for r in rows) == pytest.approx(
      holm_min, rel=2e-3, abs=1e-3)
  assert auc[header.index("verdict")] == "held"   # +0.02 over 0.01 noise, 10 seeds


def test_verdict_rows_pair_by_seed_when_a_run_is_missing():
  fake = _fake_runs({"constant_0.2": ([0.9] * 4, [0.90, 0.91, 0.92, 0.93], [0.2] * 4,
                                      [0.2] * 4),
                     "dams": ([0.9] * 4, [0.95, 0.97, 0.96, 0.99], [0.2] * 4,
                              [0.1, 0.11, 0.12, 0.1])})
  del fake["dams"][1]   # seed 1 of dams did not finish
  claims = report.claims(fake, list(fake), range(4))
  assert claims[0].a_values[1] is None and claims[0].b_values[1] == 0.91
  header, rows, _ = report.verdict_table(fake, list(fake), range(4))
  # The test and both arms' cells over the 3 complete pairs; the dropped seed shown.
  assert rows[0][header.index("seeds")] == "3 of 4"
  assert rows[0][2].endswith("(n=3)") and rows[0][3].endswith("(n=3)")


def test_deviations_cover_the_required_settings():
  rows = report.deviations(margin_study_digits.get_config())
  settings = {r[0] for r in rows}
  for needed in ("loss reduction", "mining", "augmentation", "normalisation",
                 "learning rate", "epochs", "head dropout", "trunk", "split"):
    assert needed in settings
  assert all(len(r) == len(verdicts_lib.DEVIATION_HEADER) and all(r) for r in rows)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
def test_cli_rejects_a_bad_schedule(capsys, monkeypatch):
  argv = ["run", "--config=experiments/configs/margin_study_digits.py",
          "--workdir=/nonexistent/never", "--config.study.schedules=dams,bogus"]
  # ml_collections defines the --config.* override flags from sys.argv.
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit) as e:
    run_lib.main(argv)
  assert e.value.code == cli_lib.USAGE_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "study.schedules" in err
  assert "bogus" in err and "Unknown command line flag" not in err
  assert not os.path.exists("/nonexistent/never")



@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
def test_cli_overrides_a_run_setting_through_the_dataset_section(capsys, monkeypatch):
  """The study config's shape: a run setting is ``--config.<dataset>.<section>.<field>``;
  a bad one fails in one line naming the dataset, the arm and the field."""
  argv = ["run", "--config=experiments/configs/margin_study_digits.py",
          "--workdir=/nonexistent/never", f"--config.{DATASET}.margin.threshold=1.5"]
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit) as e:
    run_lib.main(argv)
  assert e.value.code == cli_lib.USAGE_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"{DATASET} (" in err and "margin.threshold" in err
  assert not os.path.exists("/nonexistent/never")


def test_study_config_has_every_study_shape():
  """A study section and one run-config section per dataset, the grid fields shared
  with the loss studies."""
  from experiments.common import runs  # pylint: disable=import-outside-toplevel
  cfg = margin_study_digits.get_config()
  assert sorted(cfg.keys()) == sorted(("study",) + tuple(cfg.study.datasets))
  assert tuple(cfg.study.datasets) == (DATASET,)
  assert set(runs.grid_fields(seeds=1)) <= set(cfg.study.keys())
  config_lib.check_config(cfg[DATASET])
  cfg.study.datasets = (DATASET, DATASET + "_copy")
  with cfg.unlocked():
    cfg[DATASET + "_copy"] = cfg[DATASET]
  with pytest.raises(grid.StudyError, match="study.datasets"):
    study.check_study(cfg)

def test_results_mark_no_best_and_dash_unresolvable_tar():
  def run(seed, auc, tar):
    return {"seed": seed, "summary": {"test": {"auc": auc, "tar@far=1e-3": tar,
                                               "tar@far=1e-2": tar, "num_different": 500}}}
  fake = {"dams": [run(0, 0.9, 0.0), run(1, 0.92, 0.0)],
          "linear": [run(0, 0.8, 0.0), run(1, 0.82, 0.0)]}
  header, rows = report.results_table(fake)
  far3, far2 = header.index("TAR@FAR=1e-3"), header.index("TAR@FAR=1e-2")
  for row in rows:
    # 500 negatives cannot resolve FAR 1e-3 (10/FAR = 10,000) nor 1e-2 (1,000).
    assert row[far3].startswith("— (500 different pairs")
    assert row[far2].startswith("— (500 different pairs")
    assert not any("**" in cell for cell in row)
  assert rows[0][header.index("AUC")] == "0.9100 ± 0.0141"
