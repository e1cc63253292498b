"""The loss-zoo study (experiments/loss_zoo): settings, claims, loss fall, a tiny run, resume."""

from __future__ import annotations

import csv
import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from experiments.common import docs
from experiments.common import runs
from experiments.common import tables
from experiments.common import verdicts
from experiments.configs.presets import loss_zoo as presets
from experiments.loss_zoo import report
from experiments.loss_zoo import run as zoo_run
from experiments.loss_zoo import study
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import run_config as fit_run
from tsm import config as config_lib
from tsm import diagnostics
from tsm import reporting


# ----------------------------------------------------------------------------- loss fall


def _fall_reference(losses, fraction):
  """Brute force: walk the epochs, 1-based, -1 when there is no fall or a NaN."""
  losses = [float(v) for v in losses]
  if any(math.isnan(v) for v in losses):
    return -1
  total = max(losses[0] - v for v in losses)
  if total <= 0:
    return -1
  for e, v in enumerate(losses, 1):
    if losses[0] - v >= fraction * total:
      return e
  raise AssertionError("unreachable: the lowest epoch always qualifies")


def test_loss_fall_epochs_hand_case_and_brute_force():
  assert int(diagnostics.loss_fall_epochs(jnp.float32([2.0, 1.2, 1.05, 1.0]), 0.9)) == 3
  assert int(diagnostics.loss_fall_epochs(jnp.float32([2.0, 1.2, 1.05, 1.0]), 0.5)) == 2
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 12))
    losses = np.cumsum(rng.normal(-0.2, 0.5, n)).astype(np.float32) + 5
    fraction = float(rng.choice([0.3, 0.5, 0.9, 1.0]))
    got = int(diagnostics.loss_fall_epochs(jnp.asarray(losses), fraction))
    assert got == _fall_reference(losses, fraction), (losses, fraction)


def test_loss_fall_epochs_is_scale_free_jittable_and_honest():
  losses = jnp.float32([3.0, 2.0, 1.4, 1.1, 1.0, 1.05])
  base = int(diagnostics.loss_fall_epochs(losses))
  assert base == 4
  assert int(diagnostics.loss_fall_epochs(40.0 * losses + 7.0)) == base
  assert int(jax.jit(diagnostics.loss_fall_epochs)(losses, 0.9)) == base
  assert int(diagnostics.loss_fall_epochs(jnp.float32([1.0, 1.0, 1.2]))) == -1  # no fall
  assert int(diagnostics.loss_fall_epochs(losses.at[2].set(jnp.nan))) == -1
  with pytest.raises(ValueError, match="fraction"):
    diagnostics.loss_fall_epochs(losses, 0.0)
  with pytest.raises(ValueError, match="losses"):
    diagnostics.loss_fall_epochs(jnp.zeros((2, 2)))


# ----------------------------------------------------------------------------- settings


def test_runs_differ_only_in_the_loss():
  cfg = presets.study_config(presets.OFFLINE_DATASETS)
  cfg.study.loss_options.ntxent.temperature = 0.2
  for dataset in presets.OFFLINE_DATASETS:
    runs = {loss: study.run_config(cfg, dataset, loss, 3) for loss in study.LOSSES}
    shared = None
    for loss, run in runs.items():
      config_lib.check_config(run)
      d = run.to_dict()
      assert d["loss"]["name"] == loss and d["seed"] == 3 and d["data"]["data_seed"] == 3
      d.pop("loss")
      d["margin"].pop("initial_margin")
      shared = d if shared is None else shared
      assert d == shared, (dataset, loss)
    assert runs["ntxent"].loss.temperature == 0.2
    assert runs["supcon"].loss.temperature is None   # the loss's own default
    assert runs["triplet"].margin.initial_margin == cfg.study.triplet_margin
    assert runs["contrastive"].margin.initial_margin == cfg.study.contrastive_margin


def test_default_losses_are_the_papers_nine_and_any_registered_loss_runs_by_name():
  cfg = presets.study_config(("synthetic",))
  assert tuple(cfg.study.losses) == study.LOSSES == (
      "triplet", "contrastive", "npair", "ntxent", "supcon", "multi_similarity",
      "arcface", "proxy_anchor", "center_contrastive")
  assert len(config_lib.LOSSES) > len(study.LOSSES)   # registering more changes nothing
  cfg.study.losses = ("triplet", "soft_triple")
  cfg.study.loss_options.soft_triple.la = 10.0
  assert study.check_study(cfg) == ["triplet", "soft_triple"]
  run = study.run_config(cfg, "synthetic", "soft_triple", 0)
  config_lib.check_config(run)
  assert run.loss.name == "soft_triple" and run.loss.la == 10.0
  assert run.loss.centers_per_class is None   # the loss's own default


@pytest.mark.parametrize("field,value,match", [
    ("losses", ("triplet", "softmax"), "study.losses"),
    ("losses", ("triplet", "triplet"), "study.losses"),
    ("seeds", 0, "study.seeds"),
    ("fall_fraction", 1.5, "study.fall_fraction"),
    ("triplet_margin", 0.0, "study.triplet_margin"),
    ("xla_threads", 2, "study.xla_threads"),
])
def test_bad_study_settings_fail_in_one_line(field, value, match):
  cfg = presets.study_config(("synthetic",))
  cfg.study[field] = value
  with pytest.raises(study.StudyError, match=match) as e:
    study.check_study(cfg)
  assert "\n" not in str(e.value)


def test_bad_loss_option_names_the_dataset_and_field():
  cfg = presets.study_config(("synthetic",))
  cfg.study.loss_options.arcface.scale = -1.0
  with pytest.raises(study.StudyError, match=r"synthetic \(arcface\).*loss.scale"):
    runs.plan(cfg, "/nonexistent", study.run_config, study.check_study(cfg))


# ----------------------------------------------------------------------------- claims


def _fake_runs(values, key, seeds):
  return [{"seed": s, "epochs": 10, key: v} for s, v in zip(seeds, values)]


def test_claims_pair_the_favoured_loss_with_each_of_the_seven_by_seed():
  # 10 seeds, one missing: 9 pairs, enough for the exact sign-flip test under Holm.
  seeds = list(range(10))
  rng = np.random.default_rng(1)
  by_loss = {loss: _fake_runs(rng.normal(1.0, 0.01, 10), "intra_var", seeds)
             for loss in ("triplet", "supcon", "npair", "arcface", "multi_similarity",
                          "proxy_anchor")}
  by_loss["triplet"] = _fake_runs(rng.normal(2.0, 0.01, 10), "intra_var", seeds)
  del by_loss["triplet"][2]   # a missing seed pairs as None, not shifted
  claims = report.study_claims({"synthetic": by_loss}, seeds)
  d1 = {(c.a, c.b): c for c in claims
        if c.metric == "intra_var" and c.claim.startswith("D1")}
  # Each favoured loss against each of the paper's seven present outside its group;
  # MultiSimilarity and ProxyAnchor are not in the family.
  assert set(d1) == {(a, b) for a in ("triplet", "supcon") for b in ("npair", "arcface")}
  for (a, b), c in d1.items():
    assert c.claim.endswith(f"(vs {b})")
    want = [next((r["intra_var"] for r in by_loss[b] if r["seed"] == s), None)
            for s in seeds]
    assert list(c.b_values) == want
  assert d1[("triplet", "npair")].a_values[2] is None
  assert d1[("triplet", "npair")].a_values[3] == by_loss["triplet"][2]["intra_var"]
  # D3's group is absent (no contrastive / ntxent run): no D3 claim; D2 is fine-grained
  # only, so not on synthetic.
  assert not [c for c in claims if c.claim.startswith(("D2", "D3"))]
  comps = report.verdicts_lib.decide_claims(claims)
  # One Holm family over every pairwise claim: the adjusted p of the smallest raw p is
  # the raw p times the family's size.
  raw = np.array([c.p_value for c in comps])
  first = int(np.argmin(raw))
  assert comps[first].p_adjusted == pytest.approx(min(1.0, raw[first] * len(comps)))
  verdict = {(c.a, c.b): comp.verdict for c, comp in zip(claims, comps)
             if c.metric == "intra_var"}
  assert verdict[("triplet", "npair")] == verdict[("triplet", "arcface")] == "held"
  assert verdict[("supcon", "npair")] != "held"    # the same distribution
  # Beside the claims: the favoured losses against MultiSimilarity and ProxyAnchor,
  # unadjusted, no verdict column.
  header, rows = report.beside_table({"synthetic": by_loss}, seeds)
  assert "verdict" not in header
  assert {row[4].partition(":")[0] for row in rows} == {"multi_similarity",
                                                         "proxy_anchor"}
  row = next(r for r in rows if r[1] == "D1: triplet keeps more intra-class variance "
             "(vs proxy_anchor)")
  comp = reporting.compare(d1[("triplet", "npair")].a_values,
                           [by_loss["proxy_anchor"][s]["intra_var"] for s in seeds],
                           paired=True)
  assert row[5] == comp.format(4)
  assert row[-1] == comp.cells(4)[2]


def test_by_construction_comparisons_are_flagged_beside_their_companions():
  seeds = list(range(6))
  runs = {loss: [{"seed": s, "epochs": 10, "intra_var": 0.1 + 0.01 * s,
                  "inter_dist": 1.2, "inter_dist_sq": 1.5} for s in seeds]
          for loss in ("contrastive", "ntxent", "npair", "triplet")}
  claims = report.study_claims({"synthetic": runs}, seeds, contrastive_margin=1.0)
  by = {(c.claim, c.a, c.b): c for c in claims}
  var = by[("D3: contrastive ends with lower intra-class variance (vs npair)",
            "contrastive", "npair")]
  assert "holds by construction" in var.note and "positive margin 0" in var.note
  assert "ratio companion" in var.note
  companion = by[("D3: companion: contrastive ends with lower intra-class variance per "
                  "squared class distance (vs npair)", "contrastive", "npair")]
  assert "by construction" not in companion.note
  np.testing.assert_allclose(companion.a_values, [r["intra_var"] / 1.5
                                                  for r in runs["contrastive"]])
  assert "by construction" not in by[(
      "D3: ntxent ends with lower intra-class variance (vs npair)", "ntxent", "npair")
                                     ].note
  d4 = by[("D4: npair has a larger mean class separation (vs contrastive)", "npair",
           "contrastive")]
  assert "margin 1 < √2" in d4.note
  assert "by construction" not in by[(
      "D4: npair has a larger mean class separation (vs triplet)", "npair", "triplet")
                                     ].note
  wide = report.study_claims({"synthetic": runs}, seeds, contrastive_margin=1.5)
  assert "by construction" not in next(
      c.note for c in wide if c.claim.startswith("D4: npair has a larger mean class "
                                                 "separation (vs contrastive)"))
  # Raw gradient norms are never called step sizes.
  assert all("step size" not in c[1] for c in study.CLAIMS)
  assert any("raw gradient norms" in c[1] for c in study.CLAIMS)


def test_d2_only_on_fine_grained_sets_and_never_epochs_count_as_e_plus_1():
  seeds = [0, 1, 2]
  runs = {loss: [{"seed": s, "epochs": 10, "recall@1": 0.5 + 0.01 * s,
                  "loss_fall_epochs": -1 if loss == "ntxent" else 4} for s in seeds]
          for loss in ("triplet", "ntxent", "npair")}
  claims = report.study_claims({"cars196": runs, "synthetic": runs}, seeds)
  d2 = [c for c in claims if c.claim.startswith("D2")]
  assert {c.group for c in d2} == {"cars196"} and {c.a for c in d2} == {"triplet"}
  fall = [c for c in claims if c.metric == "loss_fall_epochs" and c.a == "ntxent"]
  assert fall and list(fall[0].a_values) == [11.0, 11.0, 11.0]
  assert not fall[0].higher_is_better


def test_table_cell_interval_matches_scipy():
  values = [0.5, 0.7, 0.65, None, 0.6]
  x = np.asarray([0.5, 0.7, 0.65, 0.6])
  lo, hi = sps.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sps.sem(x))
  got = tables.mean_interval(values)
  np.testing.assert_allclose(got, (lo, hi), rtol=1e-12)
  assert tables.interval_cell(values, 3) == (f"{x.mean():.3f} ± {x.std(ddof=1):.3f} "
                                    f"[{lo:.3f}, {hi:.3f}]")
  assert tables.interval_cell([None, math.nan], 3) == "n/a"
  assert math.isnan(tables.mean_interval([1.0])[0])


# ----------------------------------------------------------------------------- tiny run

LOSSES = ("triplet", "ntxent")


def tiny_study(**fields):
  cfg = presets.study_config(("synthetic",))
  cfg.study.update(dict(losses=LOSSES, seeds=2, epochs=2, workers=1, compilation_cache="",
                        em_triplets=500), **fields)
  cfg.synthetic.model.hidden_sizes = (16,)
  cfg.synthetic.model.embedding_dim = 8
  cfg.synthetic.train.steps_per_epoch = 4
  return cfg


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("loss_zoo"))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = zoo_run.run_study(tiny_study(), workdir)
  return workdir, out


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


@pytest.mark.slow
def test_tiny_study_writes_table_figures_and_verdicts(zoo_dir):
  workdir, out = zoo_dir
  assert len(out["runs"]) == 4 and not any(r["reused"] for r in out["runs"])
  rows = _csv(os.path.join(workdir, "synthetic", "table.csv"))
  assert rows[0][:2] == ["loss", "seeds"] and [r[0] for r in rows[1:]] == list(LOSSES)
  labels = rows[0][2:]
  assert labels == [label for _, label, _ in report.COLUMNS]
  for row in rows[1:]:
    assert row[1] == "2"
    for label, text in zip(labels, row[2:]):
      if label.startswith("loss decay"):
        continue   # may be "never" (then epochs + 1): still a number
      assert tables.is_finite_number(text), (row[0], label, text)
      assert "±" in text and "[" in text, (label, text)   # two seeds: std and interval
  for name in ("curves.png", "intra_class_variance.png", "centroid_distances.png"):
    assert os.path.getsize(os.path.join(workdir, "synthetic", name)) > 1000, name
  verdict_rows = _csv(os.path.join(workdir, "verdicts.csv"))
  claims = [r[1] for r in verdict_rows[1:]]
  assert any(c.startswith("D1: triplet") for c in claims)
  assert any(c.startswith("D3: ntxent") for c in claims)
  assert all(r[-2] in reporting.VERDICTS for r in verdict_rows[1:])
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "D2 (fine-grained Recall@1) is not tested" in text and "Deviations" in text
  # After the verdict table: the summary and a paired dot plot per claim, linked.
  with open(os.path.join(workdir, "study.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "summary.md")) as f:
    assert f.read() == docs.study_summary(record)
  names = docs.claim_figure_names(
      verdicts.claims_from_record(record["claims"]))
  assert len(names) == len(verdict_rows) - 1
  for name in names:
    assert os.path.getsize(os.path.join(workdir, name)) > 1000
    assert f"[Per seed]({name})" in text


@pytest.mark.slow
def test_run_records_match_fit_metrics_and_centroid_distances(zoo_dir):
  workdir, _ = zoo_dir
  rundir = runs.run_dir(workdir, "synthetic", "ntxent", 0)
  with open(os.path.join(rundir, study.RESULT_FILE)) as f:
    zoo = json.load(f)
  epochs = [r for r in read_lines(rundir) if r["kind"] == "epoch"]
  assert zoo["curves"]["neg_active_ratio"] == [r["neg_active_ratio"] for r in epochs]
  np.testing.assert_allclose(zoo["curves"]["grad_norm_per_loss"],
                             [r["grad_norm"] / r["loss"] for r in epochs])
  assert zoo["loss_fall_epochs"] == _fall_reference(zoo["curves"]["loss"], 0.9)
  with np.load(os.path.join(rundir, "zoo.npz")) as z:
    d = z["centroid_distances"]
  assert d.shape == (45,)   # the 10 classes of the synthetic set: every pair once
  np.testing.assert_allclose(d.mean(), zoo["inter_dist"], rtol=1e-5)
  np.testing.assert_allclose(d.std(ddof=1), zoo["inter_dist_std_over_pairs"], rtol=1e-4)
  np.testing.assert_allclose(zoo["separation"],
                             zoo["inter_dist"] / math.sqrt(zoo["intra_var"]), rtol=1e-6)


@pytest.mark.slow
def test_rerun_reuses_every_run(zoo_dir):
  workdir, out = zoo_dir
  with open(os.path.join(workdir, "study.json")) as f:
    timing = json.load(f)["timing"]
  again = zoo_run.run_study(tiny_study(), workdir)
  assert all(r["reused"] for r in again["runs"])
  with open(os.path.join(workdir, "study.json")) as f:   # the training's wall time kept
    assert json.load(f)["timing"] == timing
  assert timing["trained"] == len(out["runs"])
  assert [r["recall@1"] for r in again["runs"]] == [r["recall@1"] for r in out["runs"]]


# ----------------------------------------------------------------------------- resume


def _resume_config(loss):
  cfg = config_lib.default_config()
  cfg.data.name = "digits"
  cfg.data.val_fraction = 0.0
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (16,)
  cfg.model.embedding_dim = 8
  cfg.loss.name = loss
  cfg.train.epochs = 2
  cfg.train.classes_per_batch = 4
  cfg.train.samples_per_class = 4
  cfg.train.steps_per_epoch = 5
  cfg.train.log_every = 1
  cfg.train.progress = False
  cfg.train.tensorboard = False
  cfg.train.best_metric = "val_loss"
  cfg.eval.every_epochs = 1_000_000
  cfg.checkpoint.every_steps = 3
  cfg.checkpoint.async_save = False
  return cfg


def _final_state(workdir):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return step, ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step),
                                                               "state"))


@pytest.mark.slow
@pytest.mark.parametrize("loss,leaf", [("arcface", "class_weights"),
                                       ("center_contrastive", "centers")])
def test_killed_run_of_a_loss_with_parameters_resumes_exactly(tmp_path, loss, leaf):
  whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
  summary_whole = fit_run(_resume_config(loss), whole)
  killed = _resume_config(loss)
  killed.train.stop_after_steps = 7      # epoch 1, step 2 of 5: after the checkpoint at 6
  assert fit_run(killed, broken) is None
  assert not os.path.exists(os.path.join(broken, "summary.json"))
  summary_broken = fit_run(_resume_config(loss), broken)
  assert read_lines(broken) == read_lines(whole)
  assert summary_broken == summary_whole
  step_whole, state_whole = _final_state(whole)
  step_broken, state_broken = _final_state(broken)
  assert step_whole == step_broken == 10
  flat_whole = jax.tree_util.tree_leaves_with_path(state_whole)
  flat_broken = jax.tree_util.tree_leaves_with_path(state_broken)
  paths = [jax.tree_util.keystr(p) for p, _ in flat_whole]
  assert paths == [jax.tree_util.keystr(p) for p, _ in flat_broken]
  # The loss's own parameters / state are in the checkpoint (the centre bank starts at
  # zero, so a non-zero bank was updated by training).
  ours = [i for i, p in enumerate(paths) if leaf in p]
  assert ours, paths
  for i in ours:
    assert np.any(np.asarray(flat_whole[i][1]) != 0)
  for (path, a), (_, b) in zip(flat_whole, flat_broken):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_command_line_bad_setting_exits_2_before_running(tmp_path, capsys):
  workdir = tmp_path / "zoo"
  with pytest.raises(SystemExit) as e:
    zoo_run.main(["loss_zoo", f"--config={zoo_run.EXAMPLE_CONFIG}",
                  f"--workdir={workdir}", "--config.study.losses=('triplet','hinge')"])
  assert e.value.code == 2
  assert "study.losses" in capsys.readouterr().err
  assert not workdir.exists()


@pytest.mark.parametrize("change, setting, before, after", [
    (lambda c: setattr(c.mnist1d.train, "learning_rate", 3e-4), "learning rate",
     "adam 0.001", "synthetic: adam 0.001, mnist1d: adam 0.0003"),
    (lambda c: setattr(c.study, "epochs", 3), "epochs", "synthetic: 30, mnist1d: 20", "3"),
    (lambda c: (setattr(c.mnist1d.model, "head", "paper_a"),
                setattr(c.mnist1d.model, "head_dropout", (0.5, 0.3))), "dropout",
     "none", "synthetic: none, mnist1d: 0.5 / 0.3"),
    (lambda c: setattr(c.synthetic.model, "pretrained_path", "/w/mlp.npz"), "trunk",
     "synthetic: mlp, trained end to end, mnist1d: conv1d, trained end to end",
     "synthetic: mlp (frozen, /w/mlp.npz), mnist1d: conv1d, trained end to end"),
    (lambda c: setattr(c.study, "losses", ("triplet", "contrastive")), "losses",
     "9: " + ", ".join(study.LOSSES), "2: triplet, contrastive"),
])
def test_deviations_follow_the_config(change, setting, before, after):
  cfg = presets.study_config(("synthetic", "mnist1d"))
  row = lambda c: next(r for r in report.deviations(c) if r[0] == setting)  # noqa: E731
  assert row(cfg)[3] == before
  change(cfg)
  assert row(cfg)[3] == after
  if setting == "losses":
    assert "beside" not in row(cfg)[4]
