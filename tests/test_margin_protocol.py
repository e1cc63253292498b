"""Tests of paper A's protocol in the margin study: the mu_last grid chosen on validation,
claim A1's statistic and test, the seeds-together run path, the frozen-features configs.

The end-to-end check (a tiny digits study run both ways, seeds together and one run per
seed, giving the same ``study.json`` records) is slow; the rest use fake runs and
hand-made embeddings.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
import pytest
from scipy import stats as sps

from experiments.common import grid
from experiments.common import runs
from experiments.common import together
from experiments.configs import loss_study_fashion_mnist_frozen_lite0 as loss_frozen
from experiments.configs import loss_zoo_fashion_mnist_frozen_lite0 as zoo_frozen
from experiments.configs import margin_study_fashion_mnist_frozen_lite0 as margin_frozen
from experiments.configs import margin_study_fashion_mnist_frozen_lite0_gpu as margin_gpu
from experiments.loss_comparison import run as loss_run
from experiments.loss_zoo import run as zoo_run
from experiments.margin_scheduler import report
from experiments.margin_scheduler import study

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_margin_study  # noqa: E402  # pylint: disable=wrong-import-position


def _fake_runs(values):
  """{arm: {"val.auc", "test.auc", "val.eer", "test.eer", "share"}: per-seed lists}."""
  out = {}
  for name, v in values.items():
    n = len(v["test.auc"])
    out[name] = [{"seed": k, "summary": {
        "val": {"auc": v["val.auc"][k], "eer": v.get("val.eer", [0.1] * n)[k]},
        "test": {"auc": v["test.auc"][k], "eer": v.get("test.eer", [0.1] * n)[k]},
        "em_last": {"share_above_margin": v["share"][k] if "share" in v else None}}}
        for k in range(n)]
  return out


# ----------------------------------------------------------------------------- mu_last grid


def test_final_margins_grid_gives_one_arm_per_end_margin():
  cfg = test_margin_study._tiny_config()
  cfg.study.schedules = "all"
  cfg.study.final_margins = (0.5, 1.0)
  names = study.schedule_names(cfg)
  assert names == ["constant_0.1", "constant_0.2", "constant_0.5", "constant_1.0",
                   "linear_to_0.5", "linear_to_1.0", "exponential_to_0.5",
                   "exponential_to_1.0", "stepwise_to_0.5", "stepwise_to_1.0", "dams",
                   "controller"]
  assert study.schedule_margin("linear_to_0.5", cfg) == {"schedule": "linear",
                                                         "final_margin": 0.5}
  assert study.schedule_margin("exponential_to_1.0", cfg)["final_margin"] == 1.0
  step = study.schedule_margin("stepwise_to_0.5", cfg)
  # 4 stages over the 6 epochs from mu0 = 0.2 to 0.5: 0.3, 0.4, 0.5 after the first.
  assert step["boundaries"] == (2, 3, 4) or len(step["boundaries"]) == 3
  np.testing.assert_allclose(step["values"], (0.3, 0.4, 0.5), atol=1e-9)
  assert [study.family(n) for n in ("constant_0.1", "linear_to_0.5", "dams")] == [
      "constant", "linear", "dams"]
  # Every run's margin section as the schedule says; the other fields shared.
  run = study.run_config(cfg, "digits", "linear_to_0.5", 0)
  assert (run.margin.schedule, run.margin.final_margin) == ("linear", 0.5)
  # Without a grid: the schedules and their end margin as before.
  cfg.study.final_margins = ()
  assert "linear" in study.schedule_names(cfg)
  assert study.schedule_margin("linear", cfg)["final_margin"] == 1.0


def test_mu_last_is_chosen_on_validation_and_reported():
  rng = np.random.default_rng(1)
  n = 8
  base = rng.normal(0.9, 0.005, n)
  fake = _fake_runs({
      "constant_0.2": {"val.auc": base, "test.auc": base},
      # linear_to_0.5 wins on validation, linear_to_1.0 on test: the claim uses 0.5.
      "linear_to_0.5": {"val.auc": base + 0.04, "test.auc": base + 0.01},
      "linear_to_1.0": {"val.auc": base, "test.auc": base + 0.05},
      "dams": {"val.auc": base, "test.auc": base + 0.03 + rng.normal(0, 0.002, n)},
  })
  claims = report.claims(fake, list(fake), range(n))
  linear = [c for c in claims if "linear" in c.claim and c.metric == "AUC"]
  assert len(linear) == 1
  assert linear[0].claim == "DAMS beats the linear increase (mu_last chosen on validation)"
  assert linear[0].b == "linear_to_0.5"
  assert list(linear[0].b_values) == list(base + 0.01)
  header, rows = report.selection_table(fake, list(fake))
  by = {(r[0], r[1]): r for r in rows}
  assert by[("linear", "AUC")][2] == "linear_to_0.5"
  assert "linear_to_1.0" in by[("linear", "AUC")][3]
  assert ("constant", "AUC") not in by   # one constant arm: nothing chosen
  assert header[2] == "chosen on validation"


def test_lower_validation_eer_chooses_the_end_margin():
  fake = _fake_runs({
      "stepwise_to_0.3": {"val.auc": [0.9] * 3, "test.auc": [0.9] * 3,
                          "val.eer": [0.2, 0.2, 0.2]},
      "stepwise_to_1.0": {"val.auc": [0.8] * 3, "test.auc": [0.9] * 3,
                          "val.eer": [0.1, 0.1, 0.1]},
      "dams": {"val.auc": [0.9] * 3, "test.auc": [0.9] * 3},
  })
  claims = {c.metric: c.b for c in report.claims(fake, list(fake), range(3))}
  assert claims == {"AUC": "stepwise_to_0.3", "EER": "stepwise_to_1.0"}


# ----------------------------------------------------------------------------- claim A1


class _Split:
  def __init__(self, labels, index=None):
    self.labels = labels
    self.index = np.arange(labels.size) if index is None else index

  def subset(self, index):
    return _Split(self.labels[index], self.index[index])


class _Ctx:
  def __init__(self, emb, labels, margin, epoch):
    self.emb, self.epoch = emb, epoch
    self.record = {"margin": margin}
    self.state = None
    self._train = _Split(labels)

  def split(self, name):
    assert name == "train"
    return self._train

  def embed_fn(self, state, split):
    del state
    return self.emb[split.index]


def test_a1_statistic_matches_a_brute_force_count(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 6)
  emb = rng.normal(size=(labels.size, 5)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  margin = 0.3
  cfg = ml_collections.ConfigDict({"seed": 3, "loss": {"distance": "euclidean"},
                                   "train": {"epochs": 4}})
  evaluator = study.EffectiveMarginEvaluator(str(tmp_path), cfg, num_examples=1000,
                                             num_triplets=4096)   # above the 2,160 valid: exact
  out = evaluator(_Ctx(emb, labels, margin, epoch=3))["em"]
  # Every valid triplet (a, p, n): same label a != p, different label n.
  d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  values = [d[a, n] - d[a, p] for a in range(labels.size) for p in range(labels.size)
            for n in range(labels.size) if a != p and labels[a] == labels[p]
            and labels[n] != labels[a]]
  assert len(values) == 4 * 6 * 5 * 18
  assert out["share_above_margin"] == pytest.approx(np.mean(np.asarray(values) > margin),
                                                    abs=1e-6)
  assert out["margin"] == margin
  assert os.path.exists(tmp_path / "effective_margins" / "epoch003.npz")
  assert evaluator(_Ctx(emb, labels, margin, epoch=2)) == {}   # not a recorded epoch


def test_a1_claim_is_a_one_sample_test_against_the_threshold():
  shares = {"constant_0.2": [0.62, 0.58, 0.71, 0.66, 0.60, 0.69, 0.64, 0.57],
            "constant_1.0": [0.20, 0.25, 0.18, 0.22, 0.30, 0.21, 0.19, 0.24]}
  fake = _fake_runs({name: {"val.auc": [0.9] * 8, "test.auc": [0.9] * 8, "share": s}
                     for name, s in shares.items()})
  header, rows, _ = report.verdict_table(fake, list(fake), range(8), threshold=0.5)
  a1 = {r[2].split(":")[0]: r for r in rows if r[0].startswith("A1")}
  assert set(a1) == {"constant_0.2", "constant_1.0"}
  assert a1["constant_0.2"][0] == "A1: effective margins pass mu (share of triplets " \
                                  "above mu > 0.5)"
  ps = {}
  for name, s in shares.items():
    diff = np.asarray(s) - 0.5
    ps[name] = max(sps.ttest_1samp(diff, 0.0, alternative="greater").pvalue,
                   sps.permutation_test((diff,), np.mean, permutation_type="samples",
                                        alternative="greater",
                                        n_resamples=np.inf).pvalue)
    row = a1[name]
    assert float(row[header.index("p (one-sided)")]) == pytest.approx(ps[name],
                                                                      rel=2e-3, abs=1e-3)
  verdict = header.index("verdict")
  # 8 seeds all above 0.5: the sign-flip p is 2^-8; Holm over this family of 2 claims
  # (plus the DAMS claims, absent here: no dams arm).
  assert a1["constant_0.2"][verdict] == "held"
  assert a1["constant_1.0"][verdict] == "contradicted"


def test_a1_is_left_out_when_no_run_recorded_it():
  fake = _fake_runs({"constant_0.2": {"val.auc": [0.9] * 3, "test.auc": [0.9] * 3}})
  assert report.a1_claims(fake, ["constant_0.2"], range(3), 0.5) == []


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize("field,value,message", [
    ("final_margins", (0.5, 0.5), "distinct positive"),
    ("final_margins", (0.0,), "distinct positive"),
    ("a1_threshold", 1.5, r"must be in \(0, 1\)"),
    ("a1_threshold", 0.0, r"must be in \(0, 1\)"),
])
def test_bad_protocol_fields_are_one_line(field, value, message):
  cfg = test_margin_study._tiny_config()
  with cfg.study.unlocked():
    cfg.study[field] = value
  with pytest.raises(grid.StudyError, match=message) as info:
    study.check_study(cfg)
  assert "\n" not in str(info.value) and f"study.{field}" in str(info.value)


def test_together_reason_names_what_differs():
  cfg = test_margin_study._tiny_config()
  a = study.run_config(cfg, "digits", "dams", 0)
  b = study.run_config(cfg, "digits", "dams", 1)
  assert together.reason([a, b]) is None
  c = study.run_config(cfg, "digits", "constant_0.2", 1)
  assert "differ in more than seed" in together.reason([a, c])
  a.data.augment = True
  assert together.reason([a]) == "data.augment is on"


def test_runs_of_one_arm_are_grouped_in_seed_order():
  tasks = [{"dataset": "d", "arm": arm, "seed": seed}
           for seed in (0, 1, 2) for arm in ("x", "y")]
  groups = runs.by_arm(tasks)
  assert [[(t["arm"], t["seed"]) for t in g] for g in groups] == [
      [("x", 0), ("x", 1), ("x", 2)], [("y", 0), ("y", 1), ("y", 2)]]


# ----------------------------------------------------------------------------- configs


def test_frozen_margin_configs_follow_paper_a_protocol():
  for module, size, cap in ((margin_frozen, 128, margin_frozen.NUM_EXAMPLES),
                            (margin_gpu, 224, None)):
    cfg = module.get_config()
    arms = study.check_study(cfg)
    assert len(arms) == 4 + 3 * 3 + 2
    run = cfg.fashion_mnist
    assert (run.model.trunk, run.model.freeze_trunk, run.model.head) == (
        "efficientnet_lite0", True, "paper_a")
    assert tuple(run.model.head_dropout) == (0.5, 0.3)
    assert (run.model.head_hidden, run.model.embedding_dim) == ((512, 256), 128)
    assert (run.train.optimizer, run.train.learning_rate, run.train.epochs) == (
        "adam", 1e-4, 50)
    assert (run.train.classes_per_batch, run.train.samples_per_class) == (10, 6)
    assert (run.train.best_metric, run.eval.val_margin) == ("val_loss", 1.0)
    assert (run.data.image_size, run.data.num_examples) == (size, cap)
    assert cfg.study.seeds == 20 and cfg.study.seeds_together is True
    assert tuple(cfg.study.final_margins) == (0.3, 0.5, 1.0)
    # One step count for every seed; about one pass over each seed's training images.
    train = (cap or 60_000) * (1 - run.data.val_fraction)
    assert abs(run.train.steps_per_epoch - train / 60) <= 1
    tasks = runs.plan(cfg, "/nonexistent", study.run_config, arms)
    assert len(tasks) == 20 * len(arms)
    for group in runs.by_arm(tasks):
      assert together.reason([t["config"] for t in group]) is None


@pytest.mark.parametrize("module,spec", [(loss_frozen, loss_run.SPEC),
                                         (zoo_frozen, zoo_run.SPEC)])
def test_frozen_loss_configs_share_the_followup_head(module, spec):
  cfg = module.get_config()
  losses = spec.study.check_study(cfg)
  assert cfg.study.seeds == 20
  tasks = runs.plan(cfg, "/nonexistent", spec.study.run_config, losses)
  shared = None
  for task in tasks:
    run = task["config"]
    assert (run.model.trunk, run.model.freeze_trunk, run.model.head,
            run.model.embedding_dim) == ("efficientnet_lite0", True, "linear", 128)
    assert (run.train.optimizer, run.train.learning_rate) == ("adam", 1e-4)
    rows = (run.train.batch_size if run.train.sampling != "pk" else
            run.train.classes_per_batch * run.train.samples_per_class)
    assert rows == 512
    mine = (run.train.epochs, run.data.num_examples, run.data.image_size,
            run.train.learning_rate, run.model.head)
    shared = shared or mine
    assert mine == shared   # identical for every loss


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_seeds_together_write_the_study_json_of_separate_runs(tmp_path):
  from experiments.margin_scheduler import run as run_lib  # pylint: disable=import-outside-toplevel
  cfg = test_margin_study._tiny_config()
  cfg.study.schedules = "constant_0.2,dams"
  cfg.study.epochs = 3
  cfg.digits.train.learning_rate = 1e-3   # round-off stays far below the tolerance
  out = {}
  for mode in (True, False):
    cfg.study.seeds_together = mode
    workdir = str(tmp_path / str(mode))
    run_lib.run_study(cfg, workdir)
    with open(os.path.join(workdir, "study.json")) as f:
      out[mode] = json.load(f)["runs"]
  assert set(out[True]) == set(out[False]) == {"constant_0.2", "dams"}

  def same(a, b, where):
    if isinstance(a, dict):
      assert set(a) == set(b), where
      for k in a:
        same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
      assert len(a) == len(b), where
      for i, (x, y) in enumerate(zip(a, b)):
        same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
      assert a == pytest.approx(b, rel=1e-3, abs=1e-4), where
    else:
      assert a == b, where

  same(out[True], out[False], "runs")
  for name in ("constant_0.2", "dams"):
    for seed in (0, 1):
      d = {m: study.run_dir(str(tmp_path / str(m)), "digits", name, seed)
           for m in (True, False)}
      epochs = {m: [json.loads(line) for line in open(os.path.join(d[m], "metrics.jsonl"))]
                for m in d}
      assert [r["kind"] for r in epochs[True]] == [r["kind"] for r in epochs[False]]
      assert sorted(os.listdir(os.path.join(d[True], "effective_margins"))) == sorted(
          os.listdir(os.path.join(d[False], "effective_margins")))
