"""Study summaries from verdict tables, quoted summaries in Markdown, paired dot plots
(experiments.common: verdicts, docs, figures)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from experiments.common import docs, figures, verdicts
from tsm import reporting

SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]


def _claims():
  rng = np.random.default_rng(3)
  base = rng.normal(0.8, 0.02, 8)
  dams = list(base + 0.03 + rng.normal(0, 0.005, 8))
  linear = list(base)
  dams[2] = None             # a seed missing in A
  linear[5] = float("nan")   # another missing in B
  eer_dams = list(0.2 - (base - 0.8) + rng.normal(0, 0.01, 8))
  eer_lin = list(0.2 - (base - 0.8) + rng.normal(0, 0.01, 8))
  return [verdicts.Claim("DAMS beats linear", "AUC", "dams", "linear", dams, linear,
                         group="digits"),
          verdicts.Claim("DAMS beats linear", "EER", "dams", "linear", eer_dams, eer_lin,
                         higher_is_better=False, note="A companion claim.",
                         group="digits")]


def test_arm_cells_summarise_the_pairs_the_test_uses():
  claims = _claims()
  header, rows = verdicts.verdict_table(claims, grouped=True)
  keep = [i for i in range(8) if i not in (2, 5)]
  a = np.array([claims[0].a_values[i] for i in keep])
  b = np.array([claims[0].b_values[i] for i in keep])
  assert rows[0][3] == f"dams: {a.mean():.4f} ± {a.std(ddof=1):.4f} (n=6)"
  assert rows[0][4] == f"linear: {b.mean():.4f} ± {b.std(ddof=1):.4f} (n=6)"
  assert rows[0][header.index("seeds")] == "6 of 8"
  assert rows[1][header.index("seeds")] == "8"
  assert rows[1][3].endswith("(n=8)")


def test_claim_sentences_carry_the_tables_numbers():
  claims = _claims()
  header, rows = verdicts.verdict_table(claims, grouped=True)
  comps = verdicts.decide_claims(claims)
  sentences = docs.claim_sentences(header, rows, setting="10 epochs")
  assert len(sentences) == 2
  for sentence, comp in zip(sentences, comps):
    assert sentence.startswith(f"* **{comp.verdict}**: DAMS beats linear (")
    assert f"dams better than linear by {comp.format(4)} over {comp.seeds_cell()} seeds" \
        in sentence
    assert f"Holm {comp.cells(4)[3]})" in sentence
  assert "(AUC; digits; 10 epochs)" in sentences[0]
  assert "(EER; digits; 10 epochs)" in sentences[1]
  assert sentences[1].endswith(" A companion claim.")
  # An unstable verdict keeps its detail; a claim without pairs says so.
  unstable = [list(r) for r in rows]
  col = header.index("verdict")
  unstable[0][col] = "unstable (held here / inconclusive in the rerun)"
  unstable[1][header.index(reporting.COMPARISON_HEADER[0])] = "n/a"
  first, second = docs.claim_sentences(header, unstable)
  assert first.startswith("* **unstable** (held here / inconclusive in the rerun): ")
  assert "(AUC; digits)" in first
  assert "no seed with a value for both dams and linear" in second


def test_summary_counts_and_write_summary(tmp_path):
  claims = _claims()
  workdir = str(tmp_path)
  verdicts.write_verdicts(workdir, claims, "Verdicts")
  text = docs.write_summary(workdir, setting="tiny")
  with open(os.path.join(workdir, "summary.md")) as f:
    assert f.read() == text
  header, rows = docs.read_verdicts(workdir)
  assert text.startswith("\n".join(docs.claim_sentences(header, rows, "tiny")) + "\n\n")
  final = [c.verdict for c in verdicts.decide_claims(claims)]
  counts = ", ".join(f"{final.count(v)} {v}" for v in
                     ("held", "contradicted", "unstable", "inconclusive")
                     if final.count(v))
  assert text.endswith(f"2 claims: {counts} (paired tests over seeds, Holm over the "
                       "study's claims; tsm.reporting).\n")


README = """# Title

Intro.

<!-- summary:margin_study -->
old text
<!-- /summary:margin_study -->

Between.

<!-- summary:loss_study -->
<!-- /summary:loss_study -->
End.
"""


def test_quoted_summaries_are_checked_and_refreshed(tmp_path):
  path = tmp_path / "README.md"
  path.write_text(README)
  new = {"margin_study": "* **held**: x.\n", "loss_study": "* **inconclusive**: y."}
  assert docs.quoted_summary(README, "margin_study") == "old text\n"
  assert docs.quoted_summary(README, "loss_study") == ""
  # check: reports what is stale, writes nothing.
  assert docs.refresh_quotes(str(path), new, check=True) == ["margin_study", "loss_study"]
  assert path.read_text() == README
  assert docs.refresh_quotes(str(path), new) == ["margin_study", "loss_study"]
  text = path.read_text()
  assert docs.quoted_summary(text, "margin_study") == "* **held**: x.\n"
  assert docs.quoted_summary(text, "loss_study") == "* **inconclusive**: y.\n"
  # Everything outside the blocks is as it was.
  assert text.replace("* **held**: x.\n", "old text\n").replace(
      "* **inconclusive**: y.\n", "") == README
  assert docs.refresh_quotes(str(path), new, check=True) == []
  assert docs.refresh_quotes(str(path), new) == []


@pytest.mark.parametrize("text, message", [
    ("no markers\n", "has no"),
    (README + "<!-- summary:margin_study -->\nx\n<!-- /summary:margin_study -->\n", "has 2"),
    ("<!-- summary:margin_study -->\nunclosed\n", "has no"),
])
def test_quote_blocks_must_be_one_pair(tmp_path, text, message):
  path = tmp_path / "NOTES.md"
  path.write_text(text)
  with pytest.raises(ValueError, match=message) as info:
    docs.refresh_quotes(str(path), {"margin_study": "x\n"})
  assert "NOTES.md" in str(info.value) and "\n" not in str(info.value)
  assert path.read_text() == text
  with pytest.raises(ValueError, match="letters, digits"):
    docs.summary_markers("no spaces")


def _artists(fig, gid):
  return [l for ax in fig.axes for l in ax.lines if (l.get_gid() or "") .startswith(gid)]


@pytest.mark.parametrize("higher", [True, False])
def test_paired_dots_one_line_per_seed_and_the_interval(higher):
  a = [0.9, 0.8, None, 0.85, 0.7]
  b = [0.7, 0.75, 0.6, float("nan"), 0.65]
  seeds = [10, 11, 12, 13, 14]
  comp = reporting.compare(a, b, higher_is_better=higher)
  fig = figures.paired_dots_figure(a, b, seeds, ("dams", "linear"),
                                   (comp.mean_diff, comp.ci_low, comp.ci_high),
                                   higher_is_better=higher, title="claim", ylabel="AUC")
  lines = _artists(fig, "seed:")
  assert sorted(l.get_gid() for l in lines) == ["seed:10", "seed:11", "seed:14"]
  for line in lines:
    i = seeds.index(int(line.get_gid().split(":")[1]))
    assert list(line.get_xdata()) == [0, 1]
    assert list(line.get_ydata()) == [a[i], b[i]]
  (interval,) = _artists(fig, "interval")
  assert list(interval.get_ydata()) == pytest.approx([comp.ci_low, comp.ci_high])
  (mean,) = _artists(fig, "mean")
  assert list(mean.get_ydata()) == pytest.approx([comp.mean_diff])
  (diffs,) = _artists(fig, "differences")
  sign = 1.0 if higher else -1.0
  assert list(diffs.get_ydata()) == pytest.approx(
      [sign * (a[i] - b[i]) for i in (0, 1, 4)])
  # The drawn differences' mean is the interval's centre.
  assert np.mean(diffs.get_ydata()) == pytest.approx(comp.mean_diff)
  assert math.isfinite(comp.ci_low)


def test_paired_dots_writes_a_png_and_refuses_bad_input(tmp_path):
  path = str(tmp_path / "figs" / "claim.png")
  claim = _claims()[0]
  comp = verdicts.decide_claims([claim])[0]
  figures.claim_dots(path, claim, comp, SEEDS)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="one value") as info:
    figures.paired_dots(path, [1.0, 2.0], [1.0], [0, 1], ("a", "b"), (0, 0, 0))
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="interval"):
    figures.paired_dots(path, [1.0], [1.0], [0], ("a", "b"), (0, 0))


# ------------------------------------------------------- what every study writes


def _study_record(workdir, compare_to=None):
  """A study.json as runs.write_study_json writes it after write_verdicts."""
  import json
  claims = _claims()
  verdicts.write_verdicts(workdir, claims, "Verdicts", compare_to, SEEDS)
  with open(os.path.join(workdir, verdicts.CLAIMS_FILE)) as f:
    recorded = json.load(f)   # through JSON, as study.json holds it
  config = {"study": {"datasets": ["digits"], "seeds": 8, "epochs": None},
            "digits": {"train": {"epochs": 3}}}
  return {"config": config, "runs": [], "claims": recorded}


def test_recorded_claims_decide_the_same_verdict_table(tmp_path):
  record = _study_record(str(tmp_path))
  claims = _claims()
  assert record["claims"]["seeds"] == SEEDS
  assert record["claims"]["claims"][0]["a_values"][2] is None      # missing stays None
  assert record["claims"]["claims"][0]["b_values"][5] is None      # NaN -> None
  header, rows = verdicts.recorded_verdicts(record["claims"])
  assert (header, rows) == docs.read_verdicts(str(tmp_path))
  assert (header, rows) == verdicts.verdict_table(claims, grouped=True)
  # A rerun's verdicts are kept with the claims and mark the same rows unstable.
  rerun = tmp_path / "rerun"
  rerun.mkdir()
  with open(rerun / "verdicts.csv", "w", newline="") as f:
    import csv
    w = csv.writer(f)
    w.writerow(header)
    for row in rows:
      row = list(row)
      row[header.index("verdict")] = ("contradicted" if row[2] == "AUC" else
                                      row[header.index("verdict")])
      w.writerow(row)
  marked = _study_record(str(tmp_path), compare_to=str(rerun))
  _, again = verdicts.recorded_verdicts(marked["claims"])
  assert again == docs.read_verdicts(str(tmp_path))[1]
  assert again[0][header.index("verdict")].startswith("unstable (")


def test_study_summary_names_the_run_and_quotes_the_table(tmp_path):
  record = _study_record(str(tmp_path))
  header, rows = docs.read_verdicts(str(tmp_path))
  assert docs.study_setting(record["config"]) == "digits, 3 epochs; 8 seeds"
  text = docs.study_summary(record, "tiny run")
  assert text == docs.summary_markdown(
      header, rows, heading="Setting: tiny run: digits, 3 epochs; 8 seeds.")
  assert text.startswith("Setting: tiny run: digits, 3 epochs; 8 seeds.\n\n* **")
  with pytest.raises(ValueError, match="records no claims"):
    docs.study_summary({"config": record["config"], "claims": None})


def test_write_evidence_writes_summary_dots_and_links(tmp_path):
  workdir = str(tmp_path)
  record = _study_record(workdir)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("# Study\n\nSettings.\n")
  summary = docs.write_evidence(workdir, record)
  with open(os.path.join(workdir, "summary.md")) as f:
    assert f.read() == summary == docs.study_summary(record)
  names = docs.claim_figure_names(_claims())
  assert names == ["claims/01_digits_auc_dams_beats_linear.png",
                   "claims/02_digits_eer_dams_beats_linear.png"]
  for name in names:
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  evidence = docs.read_text(workdir, "claims.md")
  header, rows = docs.read_verdicts(workdir)
  for sentence, name in zip(docs.claim_sentences(header, rows), names):
    assert f"{sentence} [Per seed]({name})." in evidence
  report = docs.read_text(workdir, "report.md")
  assert report.startswith("# Study\n\nSettings.\n\n## Each claim, per seed\n")
  os.makedirs(os.path.join(workdir, "claims", "stale.png"))   # from an earlier report
  docs.write_evidence(workdir, record)   # a resumed study: the section once
  assert sorted(os.listdir(os.path.join(workdir, "claims"))) == [os.path.basename(n) for n in names]
  assert docs.read_text(workdir, "report.md") == report


def test_pages_say_which_rule_decided_their_verdicts():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name in ("margin_study", "loss_study", "loss_zoo",
               *(f"from_scratch/{n}" for n in ("margin_study", "loss_study", "loss_zoo"))):
    with open(os.path.join(root, "docs", "results", f"{name}.md")) as f:
      text = f.read()
    notes = docs.rule_notes(text)
    assert notes, name
    assert docs.mark_rules(text) == text, f"{name}: run docs.mark_rules on it"
    for note in notes:
      assert note.startswith((docs.CURRENT_RULE_NOTE, docs.EARLIER_RULE_NOTE))
  # The floor of the sign-flip test, by hand: 11 claims over 5 seeds and 3 over 10.
  table = ("| claim | seeds | verdict |\n|---|---|---|\n"
           + "".join(f"| c{i} | 5 | held |\n" for i in range(11)))
  text = "Verdicts: paired one-sided t-test only.\n\n" + table
  assert docs.rule_notes(text) == [docs.EARLIER_RULE_NOTE + (
      " Here 11 claims with at most 5 seeds: under the current rule every Holm-adjusted "
      "p is at least min(1, 11 x 2^-5) = 0.344, so none of them could be held or "
      "contradicted under it.")]
  table = ("| claim | seeds | verdict |\n|---|---|---|\n"
           + "".join(f"| c{i} | 9 of 10 | held |\n" for i in range(3)))
  note = docs.rule_notes("Verdicts: paired one-sided t-test only.\n" + table)[0]
  assert "3 x 2^-9) = 0.00586, so the current rule can still reach" in note
  # A page under the current rule says so.
  current = "Verdicts: paired one-sided " + verdicts.RULE[len("Verdicts: paired one-sided "):]
  assert docs.rule_notes(current) == [docs.CURRENT_RULE_NOTE]
  assert docs.mark_rules(current) == current + " " + docs.CURRENT_RULE_NOTE


def test_readme_and_build_notes_quote_the_generated_summaries():
  from experiments.common import quotes
  texts = quotes.summaries()   # from docs/results/frozen_lite0/<study>/study.json
  assert set(texts) == {"margin_study", "loss_study", "loss_zoo"}
  for name in quotes.QUOTING:
    with open(os.path.join(quotes.ROOT, name)) as f:
      text = f.read()
    for study, summary in quotes.quoted_texts(name, texts).items():
      assert docs.quoted_summary(text, study, name) == summary, (
          f"{name}'s {study} quote is stale: python -m experiments.common.quotes")
      assert summary.startswith(f"Setting: {quotes.label(study)}: ")
      assert summary.splitlines()[0].endswith("; 20 seeds."), summary.splitlines()[0]
  assert quotes.main(["--check"]) == 0


def test_the_headline_keeps_the_decided_claims_and_the_counts():
  summary = ("Setting: tiny: digits, 3 epochs; 6 seeds.\n\n"
             "* **held**: A beats B (AUC; digits): +0.1 [0.05, 0.15] over 6 seeds.\n"
             "* **inconclusive**: A beats C (AUC; digits): +0.0 [-0.1, 0.1] over 6 seeds.\n"
             "* **contradicted**: C beats B (EER; digits): -0.2 [-0.3, -0.1] over 6 seeds.\n"
             "\n3 claims: 1 held, 1 contradicted, 1 inconclusive (paired tests).\n")
  head = docs.summary_headline(summary, "the page")
  assert head.splitlines() == [
      "Setting: tiny: digits, 3 epochs; 6 seeds.", "",
      "* **held**: A beats B (AUC; digits): +0.1 [0.05, 0.15] over 6 seeds.",
      "* **contradicted**: C beats B (EER; digits): -0.2 [-0.3, -0.1] over 6 seeds.", "",
      "3 claims: 1 held, 1 contradicted, 1 inconclusive (paired tests).", "",
      "Every claim's sentence: the page."]
  # Every line of the headline but its last is a line of the summary.
  assert all(l in summary.splitlines() for l in head.splitlines()[:-1])
  # More decided claims than the limit: none is listed (no chosen few), the counts stay.
  assert docs.summary_headline(summary, "the page", limit=1).splitlines() == [
      "Setting: tiny: digits, 3 epochs; 6 seeds.", "",
      "3 claims: 1 held, 1 contradicted, 1 inconclusive (paired tests).", "",
      "Every claim's sentence: the page."]


def test_results_page_links_each_claims_plot_copied_beside_it(tmp_path):
  import re
  workdir = str(tmp_path / "work")
  os.makedirs(workdir)
  record = _study_record(workdir)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("# Study\n\nSettings.\n")
  docs.write_evidence(workdir, record)
  out = str(tmp_path / "pages" / "study.md")
  render = lambda w, commands=(): docs.page(w, title="Study", about="About.",  # noqa: E731
                                            tables=[], commands=commands)
  text = docs.main(render, [workdir, out, "--label=tiny run"])
  assert docs.CURRENT_RULE_NOTE in text
  links = re.findall(r"\[Per seed\]\(([^)]+)\)", text)
  assert len(links) == 2
  for link in links:
    assert link.startswith("study/tiny_run/claims/")
    with open(os.path.join(os.path.dirname(out), link), "rb") as f:
      assert f.read(4) == b"\x89PNG"


def test_quotes_command_one_line_exit_2_without_a_committed_run(tmp_path, monkeypatch, capsys):
  from experiments.common import quotes
  monkeypatch.setattr(quotes, "ROOT", str(tmp_path))
  assert quotes.main(["--check"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "margin_study/study.json is missing" in err


def test_the_page_names_the_rerun_and_its_wall_time(tmp_path):
  first, rerun = tmp_path / "first", tmp_path / "rerun"
  first.mkdir()
  rerun.mkdir()
  timing = {"wall_s": 1918.4, "runs": 300, "trained": 300, "workers": 2,
            "xla_threads": 0, "load": 8.84, "invocations": 1}
  (rerun / "study.json").write_text(json.dumps({"timing": timing}))
  (first / "study.json").write_text(json.dumps(
      {"config": {"study": {"compare_to": str(rerun)}}}))
  assert docs.rerun_line(str(first)) == (
      f"- rerun compared with (the stability check), {rerun}: wall time 1918 s for 300 "
      "runs (300 trained) with 2 worker process(es), xla_threads 0, load 8.8")
  (rerun / "study.json").unlink()
  assert docs.rerun_line(str(first)).endswith(": its timing is not recorded")
  (first / "study.json").write_text(json.dumps({"config": {"study": {"compare_to": ""}}}))
  assert docs.rerun_line(str(first)) == ""


def test_a_run_on_a_pretrained_trunk_is_described_by_its_trunk():
  from experiments.common import runs
  from tsm import config as config_lib
  cfg = config_lib.default_config()
  cfg.model.update(trunk="efficientnet_lite0", freeze_trunk=True, head="linear",
                   embedding_dim=128)
  assert runs.describe(cfg).startswith(
      "ImageNet efficientnet_lite0 (frozen: a head on its cached features) + linear "
      "head, 128-d, ")
  cfg.model.freeze_trunk = False
  assert runs.describe(cfg).startswith("ImageNet efficientnet_lite0 + linear head, 128-d")
  cfg.model.trunk = "none"
  assert runs.describe(cfg).startswith(f"model {cfg.model.name} + linear head, 128-d")
