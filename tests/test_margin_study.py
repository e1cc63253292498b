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

import numpy as np
import pytest
from fit_helpers import jax_compilation_cache  # noqa: F401  # pylint: disable=unused-import

from experiments.configs import margin_study_digits
from experiments.margin_scheduler import report
from experiments.margin_scheduler import run as run_lib
from experiments.margin_scheduler import study
from tsm import config as config_lib

SCHEDULES = ("dams", "controller")
SEEDS = 2
EPOCHS = 6


def _tiny_config():
  cfg = margin_study_digits.get_config()
  cfg.model.hidden_sizes = (32,)
  cfg.model.head_hidden = (32, 32)
  cfg.model.embedding_dim = 16
  cfg.train.epochs = EPOCHS
  cfg.train.samples_per_class = 4
  cfg.train.steps_per_epoch = 8
  cfg.train.learning_rate = 1e-2
  cfg.eval.num_pairs = 200
  cfg.eval.val_batches = 2
  cfg.margin.threshold = 0.75    # crossed within a few epochs on digits
  cfg.margin.increment = 0.05
  cfg.margin.target = 0.75
  cfg.margin.gain = 0.5
  cfg.margin.min_margin = 0.1
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
  path = os.path.join(study.run_dir(workdir, name, seed), "metrics.jsonl")
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
  assert "Test metrics" in text and "our controller beats DAMS" in text
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
  assert all(v["verdict"] in ("held", "did not hold", "not distinguishable")
             for v in verdicts)
  hooked = study.hook_epochs(EPOCHS)
  for name in SCHEDULES:
    for seed in range(SEEDS):
      directory = study.run_dir(workdir, name, seed)
      with open(os.path.join(directory, "summary.json")) as f:
        test = json.load(f)["test"]
      for key in ("auc", "eer", "accuracy", "threshold", "tar@far=1e-2", "recall@1",
                  "map@r"):
        assert math.isfinite(test[key]), (name, seed, key)
      with np.load(os.path.join(directory, "pairs.npz")) as z:
        assert z["test_distances"].shape == z["test_same"].shape == (200,)
        assert np.all(np.isfinite(z["test_distances"]))
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
  m = cfg.margin
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
  run_lib.run_study(cfg, workdir)
  out = capsys.readouterr().out
  assert out.count("reused") == len(SCHEDULES) * SEEDS


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
    config_lib.check_config(study.run_config(cfg, name, 3))
  run = study.run_config(cfg, "constant_0.5", 3)
  assert run.margin.schedule == "constant" and run.margin.initial_margin == 0.5
  assert run.seed == 3 and "study" not in run
  cfg.study.schedules = "dams,nope"
  with pytest.raises(config_lib.ConfigError, match="study.schedules"):
    study.check_study(cfg)


def test_verdict_table_best_constant_per_metric():
  def runs(auc, eer):
    return [{"summary": {"test": {"auc": a, "eer": e}}} for a, e in zip(auc, eer)]
  fake = {
      "constant_0.1": runs([0.90, 0.91], [0.20, 0.21]),
      "constant_0.5": runs([0.95, 0.96], [0.30, 0.31]),
      "linear": runs([0.93, 0.93], [0.10, 0.10]),
      "dams": runs([0.97, 0.98], [0.15, 0.16]),
      "controller": runs([0.97, 0.98], [0.15, 0.16]),
  }
  header, rows = report.verdict_table(fake)
  table = {(r[0], r[1]): r for r in rows}
  auc = table[("DAMS beats the best constant margin", "AUC")]
  assert auc[3].startswith("constant_0.5") and auc[-1] == "held"
  eer = table[("DAMS beats the best constant margin", "EER")]
  assert eer[3].startswith("constant_0.1") and eer[-1] == "held"
  assert table[("DAMS beats the linear increase", "EER")][-1] == "did not hold"
  assert table[("our controller beats DAMS", "AUC")][-1] == "not distinguishable"
  assert header[-1] == "verdict"


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
def test_cli_rejects_a_bad_schedule(capsys):
  with pytest.raises(SystemExit) as e:
    run_lib.main(["run", "--config=experiments/configs/margin_study_digits.py",
                  "--workdir=/nonexistent/never", "--config.study.schedules=dams,bogus"])
  assert e.value.code == run_lib.USAGE_ERROR
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "study.schedules" in err
  assert not os.path.exists("/nonexistent/never")
