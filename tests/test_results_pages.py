"""Each study's results page (docs/results/<study>.md) is written from its workdir.

A tiny study of each kind runs (the configs of test_margin_study.py, test_loss_study.py
and test_loss_zoo_study.py); its page is rendered by the study's ``report`` command and
checked against the files the study wrote: the settings are report.md's, the wall time
is study.json's, every verdict row of verdicts.csv is named under its verdict, the
counts add up, the tables are the report's own, and a verdict changed in verdicts.csv
changes the page (nothing on it is written by hand).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import

import test_loss_study
import test_loss_zoo_study
import test_margin_study
from experiments.common import docs
from experiments.common import verdicts as verdicts_lib
from experiments.loss_comparison import report as loss_report
from experiments.loss_comparison import run as loss_run
from experiments.loss_zoo import report as zoo_report
from experiments.loss_zoo import run as zoo_run
from experiments.margin_scheduler import report as margin_report
from experiments.margin_scheduler import run as margin_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("## Measured results", "## Verdicts", "## Tables", "## Deviations")


def _rows(workdir):
  with open(os.path.join(workdir, "verdicts.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _bullets(text):
  """``{verdict: (count, total, bullet text)}`` of the page's verdict bullets."""
  out = {}
  for m in re.finditer(r"^\* \*\*(\w+)\*\* \([^;]*; (\d+) of (\d+)\): (.*)$", text, re.M):
    out[m.group(1)] = (int(m.group(2)), int(m.group(3)), m.group(4))
  return out


def _check_page(workdir, text, tables):
  # The page's sections, in order.
  positions = [text.index(s) for s in SECTIONS]
  assert positions == sorted(positions), positions
  # The settings are the ones report.md states.
  for line in docs.report_preamble(workdir):
    if line.strip():
      assert line in text, line
  # Every verdict row is named under its own verdict, and the counts add up.
  rows = _rows(workdir)
  bullets = _bullets(text)
  assert sum(n for n, _, _ in bullets.values()) == len(rows)
  assert {total for _, total, _ in bullets.values()} == {len(rows)}
  for row in rows:
    verdict = docs.bucket(row["verdict"])
    assert verdict in bullets, (verdict, bullets.keys())
    assert f"{row['claim']} ({row['metric']}" in bullets[verdict][2], row
  for verdict, (n, _, _) in bullets.items():
    assert n == sum(docs.bucket(r["verdict"]) == verdict for r in rows)
  # The report's own tables, under the page's headings.
  for table in tables:
    body = table.split("\n", 2)[2] if table.startswith("## ") else table
    assert body.strip() in text
  assert verdicts_lib.RULE in text
  # The wall time is study.json's.
  with open(os.path.join(workdir, "study.json")) as f:
    timing = json.load(f)["timing"]
  assert f"wall time {timing['wall_s']:.0f} s for {timing['runs']} runs" in text


def _flip_one_verdict_changes_the_page(workdir, render):
  path = os.path.join(workdir, "verdicts.csv")
  with open(path, newline="") as f:
    original = f.read()
  rows = list(csv.reader(original.splitlines()))
  col = rows[0].index("verdict")
  rows[1][col] = "contradicted" if rows[1][col] != "contradicted" else "held"
  try:
    with open(path, "w", newline="") as f:
      csv.writer(f).writerows(rows)
    bullets = _bullets(render(workdir))
    claim = rows[1][rows[0].index("claim")]
    assert claim in bullets[rows[1][col]][2]
  finally:
    with open(path, "w", newline="") as f:
      f.write(original)


@pytest.fixture(scope="module")
def margin_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("margin_study"))
  cfg = test_margin_study._tiny_config()  # pylint: disable=protected-access
  margin_run.run_study(cfg, workdir, command="python -m experiments.margin_scheduler.run --tiny")
  return workdir


@pytest.mark.slow
def test_margin_study_page_comes_from_its_workdir(margin_dir, tmp_path):
  out = tmp_path / "docs" / "margin_study.md"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.margin_scheduler.report", margin_dir, str(out)],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  # The page, its links pointing at each claim's plot copied beside it.
  label = os.path.basename(os.path.normpath(margin_dir))
  assert text == docs.page_figures(margin_report.docs_page(margin_dir), margin_dir,
                                   str(out), label)
  assert "[Per seed](claims/" not in text and "[Per seed](margin_study/" in text
  for link in re.findall(r"\[Per seed\]\(([^)]+)\)", text):
    assert (out.parent / link).is_file(), link
  assert text.startswith("# Margin-scheduler study (paper A)\n")
  # The command recorded in report.md, unless the caller names one.
  assert "```bash\npython -m experiments.margin_scheduler.run --tiny\n```" in text
  assert "```bash\npython -m x\n```" in margin_report.docs_page(margin_dir,
                                                                 commands=["python -m x"])
  _check_page(margin_dir, text, [docs.read_text(margin_dir, "results.md"),
                                 docs.read_text(margin_dir, "effective_margins.md")])
  _flip_one_verdict_changes_the_page(margin_dir, margin_report.docs_page)


@pytest.mark.slow
def test_loss_study_page_comes_from_its_workdir(tmp_path):
  workdir = str(tmp_path / "loss_study")
  loss_run.run_study(test_loss_study.tiny_study(), workdir)
  text = loss_report.docs_page(workdir, commands=["python -m experiments.loss_comparison"
                                                  ".run --tiny"])
  assert text.startswith("# Loss study: contrastive vs triplet (paper B)\n")
  _check_page(workdir, text, [docs.read_text(workdir, os.path.join("digits", "table.md"))])
  # One dataset: the verdicts name it, and the claim x dataset table has its column.
  assert "| claim | metric | digits |" in text
  _flip_one_verdict_changes_the_page(workdir, loss_report.docs_page)


@pytest.mark.slow
def test_loss_zoo_page_comes_from_its_workdir(tmp_path):
  workdir = str(tmp_path / "loss_zoo")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    zoo_run.run_study(test_loss_zoo_study.tiny_study(), workdir)
  text = zoo_report.docs_page(workdir)
  assert text.startswith("# Loss zoo: variance and greediness of nine losses\n")
  datasets = sorted({r["dataset"] for r in _rows(workdir)})
  _check_page(workdir, text, [docs.read_text(workdir, os.path.join(d, "table.md"))
                              for d in datasets])
  assert "<details><summary>Every claim" in text


def test_a_workdir_without_verdicts_is_one_line_exit_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    docs.main(margin_report.docs_page, [str(tmp_path), str(tmp_path / "out.md")],
              program="report")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "no verdicts.csv" in err
  assert not (tmp_path / "out.md").exists()


def test_verdict_sentences_and_matrix_from_a_table():
  header = ["dataset", "claim", "metric", "verdict"]
  rows = [["a", "x wins", "AUC", "held"], ["b", "x wins", "AUC", "inconclusive"],
          ["a", "y wins", "EER", "unstable (held here / inconclusive in the rerun)"]]
  lines = docs.verdict_sentences(header, rows)
  assert lines == [
      "* **held** (reproduced on these settings; 1 of 3): x wins (AUC; a).",
      "* **unstable** (the verdict differs in the rerun; neither is given; 1 of 3): "
      "y wins (EER; a).",
      "* **inconclusive** (neither the claim nor its reverse is shown on these settings; "
      "1 of 3): x wins (AUC; b)."]
  matrix = docs.verdict_matrix(header, rows)
  assert "| x wins | AUC | held | inconclusive |" in matrix
  assert "| y wins | EER | **unstable** (held here / inconclusive in the rerun) |  |" in matrix
  assert docs.verdict_matrix(header[1:], [r[1:] for r in rows]) == ""


def test_pages_of_several_workdirs_merge_under_their_labels():
  one = "# T\n\nabout\n\n## Measured results\n\nA\n\n## Verdicts\n\nB\n"
  two = "# T\n\nabout\n\n## Measured results\n\nC\n\n## Verdicts\n\nD\n"
  assert docs.merge([one], ["x"]) == one
  merged = docs.merge([one, two], ["mnist1d", "Fashion-MNIST"])
  assert merged.startswith("# T\n\nabout\n\n## mnist1d\n\n### Measured results\n\nA")
  assert "## Fashion-MNIST\n\n### Measured results\n\nC\n\n### Verdicts\n\nD" in merged
