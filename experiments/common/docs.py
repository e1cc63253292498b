"""A study's results page (``docs/results/<study>.md``), written from its workdir.

Every study's page has the same sections, in this order:

* ``# <title>``, then what the study tests (the study's own words, no result);
* ``## Measured results``: the command(s) that produced the workdir, the settings and
  the wall time (from ``study.json`` / ``timing.json``);
* ``## Verdicts``: one bullet per verdict (held, contradicted, unstable, inconclusive)
  naming the claims that reached it, written by :func:`verdict_sentences` from the
  study's ``verdicts.csv``; for a study over several datasets, a claim x dataset table
  of verdicts (:func:`verdict_matrix`); then the rule the verdicts follow, and which
  rule they were decided under (:func:`rule_notes`); then each claim's sentence with a
  link to its paired dot plot (the workdir's ``claims.md``; the figures are copied
  beside the page, :func:`page_figures`);
* ``## Tables``: the tables the study's report wrote (``results.md``, or each dataset's
  ``table.md``), then every claim with its interval, p values and MDE (``verdicts.md``);
* ``## Deviations``: the study's ``deviations.md``.

After its verdict table every study writes, from its ``study.json`` (which records its
claims with their per-seed values), ``summary.md`` (:func:`study_summary`: what was run,
then one sentence per claim: claim, setting, verdict, difference with its interval;
:func:`claim_sentences`) and beside each claim a paired dot plot (``claims/``, linked
from ``claims.md`` and ``report.md``; :func:`write_evidence`, called by
:func:`experiments.common.runs.run_study`). README.md and BUILD_NOTES.md quote the
summaries of the committed runs ``docs/results/frozen_lite0/<study>/study.json`` verbatim
between ``<!-- summary:<study> -->`` and ``<!-- /summary:<study> -->`` lines
(:func:`refresh_quotes`; ``python -m experiments.common.quotes`` refreshes them).

So no sentence about a result is written by hand: the bullets and the verdict table come
from ``verdicts.csv``, the numbers from the report's tables. Each study's ``report.py``
has a ``docs_page(workdir, commands=())`` that assembles its page with :func:`page`, and
a command line (:func:`main`)::

  python -m experiments.margin_scheduler.report runs/margin_study docs/results/margin_study.md
  python -m experiments.loss_comparison.report runs/loss_study docs/results/loss_study.md
  python -m experiments.loss_zoo.report runs/loss_zoo docs/results/loss_zoo.md

``--command='python -m ...'`` (repeatable) names the command(s) shown on the page;
without it the page shows the command recorded in the workdir's ``report.md``, if any.
Several workdirs before ``OUT.md`` (the study on other datasets, with ``--label`` for
each) give one page with a section per workdir (:func:`merge`).

Why one module of this length: a results page is one document whose sections share
the study's records and wording; the verdict statistics and plots live in their own
modules.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

from experiments.common import timing as timing_lib
from experiments.common import verdicts as verdicts_lib
from tsm import reporting

# Verdict buckets in the order the page lists them, with how to read each.
ORDER = (
    (reporting.HELD, "reproduced on these settings"),
    (reporting.CONTRADICTED, "the reverse holds on these settings"),
    (verdicts_lib.UNSTABLE, "the verdict differs in the rerun; neither is given"),
    (reporting.INCONCLUSIVE, "neither the claim nor its reverse is shown on these "
     "settings"),
)


def read_json(path: str) -> Any:
  """The JSON file at ``path``, or None when it does not exist."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_verdicts(workdir: str) -> tuple[list[str], list[list[str]]]:
  """``(header, rows)`` of ``<workdir>/verdicts.csv`` (as the study wrote it).

  Raises:
    FileNotFoundError: the workdir holds no finished study.
  """
  path = os.path.join(workdir, "verdicts.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no verdicts.csv; run the study there first "
                            "(the page is written from a finished study's workdir).")
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def bucket(verdict: str) -> str:
  """The verdict a cell reports: ``"unstable (held here / ...)"`` is ``"unstable"``."""
  return verdicts_lib.UNSTABLE if verdict.startswith(verdicts_lib.UNSTABLE) else verdict


def _claims(header: Sequence[str], rows: Sequence[Sequence[str]]
            ) -> list[tuple[str, str, str, str]]:
  """``(group, claim, metric, verdict cell)`` per row (group ``""`` when ungrouped)."""
  col = list(header).index("verdict")
  grouped = header[0] == "dataset"
  return [((r[0], r[1], r[2]) if grouped else ("", r[0], r[1])) + (r[col],)
          for r in rows]


def verdict_sentences(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """One Markdown bullet per verdict that some claim reached, naming those claims.

  A claim is named with its metric; in a study over several datasets, with the
  datasets where it reached that verdict. Written from the verdict table only.
  """
  out = []
  claims = _claims(header, rows)
  for verdict, reading in ORDER:
    named: dict[tuple[str, str], list[str]] = {}
    for group, claim, metric, cell in claims:
      if bucket(cell) == verdict:
        named.setdefault((claim, metric), []).append(group)
    if not named:
      continue
    items = [f"{claim} ({metric}" + (f"; {', '.join(g for g in groups)}" if any(groups)
                                     else "") + ")"
             for (claim, metric), groups in named.items()]
    total = sum(len(g) for g in named.values())
    out.append(f"* **{verdict}** ({reading}; {total} of {len(claims)}): "
               + "; ".join(items) + ".")
  return out


def _column(header: Sequence[str], row: Sequence[str], name: str) -> str:
  return row[list(header).index(name)] if name in header else ""


def _arm_name(cell: str) -> str:
  """The arm's name in a verdict table's arm cell ``"dams: 0.91 ± 0.01 (n=10)"``."""
  return cell.partition(": ")[0]


def claim_sentences(header: Sequence[str], rows: Sequence[Sequence[str]],
                    setting: str = "") -> list[str]:
  """One Markdown bullet per claim of a verdict table, in its order: the verdict, the
  claim, its metric and setting, and the difference with its interval.

  For example ``* **held**: DAMS beats linear (AUC; digits; 10 epochs): dams better than
  linear by +0.0123 [0.0040, 0.0206] over 10 seeds (one-sided p 0.003, Holm 0.012).``
  Written from the table's cells only (:func:`tsm.reporting.Comparison.cells` and
  :func:`experiments.common.verdicts.arm_cells`), so the numbers are the table's.

  Args:
    header: the verdict table's header (:data:`experiments.common.verdicts.HEADER`, with
      ``dataset`` first in a grouped table).
    rows: its rows (as written to ``verdicts.csv``).
    setting: what the claims were tested on, in words (``""``: nothing added).

  Returns:
    The bullets.
  """
  out = []
  for row in rows:
    claim, metric = _column(header, row, "claim"), _column(header, row, "metric")
    where = "; ".join(x for x in (metric, _column(header, row, "dataset"), setting) if x)
    cell = _column(header, row, "verdict")
    verdict = bucket(cell)
    shown = f"**{verdict}**" + (f" {cell[len(verdict):].strip()}" if verdict != cell else "")
    a = _arm_name(row[list(header).index(verdicts_lib.HEADER[2])])
    b = _arm_name(row[list(header).index(verdicts_lib.HEADER[3])])
    diff = _column(header, row, reporting.COMPARISON_HEADER[0])
    seeds = _column(header, row, "seeds")
    p, holm = (_column(header, row, reporting.COMPARISON_HEADER[i]) for i in (2, 3))
    if diff == "n/a":
      evidence = f"no seed with a value for both {a} and {b}"
    else:
      evidence = (f"{a} better than {b} by {diff} over {seeds} seeds (one-sided p {p}, "
                  f"Holm {holm})")
    note = _column(header, row, "note")
    out.append(f"* {shown}: {claim} ({where}): {evidence}." + (f" {note}" if note else ""))
  return out


def summary_markdown(header: Sequence[str], rows: Sequence[Sequence[str]],
                     setting: str = "", heading: str = "") -> str:
  """A study's ``summary.md``: ``heading`` (a line saying what was run, if given), one
  sentence per claim (:func:`claim_sentences`), then how many claims reached each
  verdict. Quoted verbatim by README.md and BUILD_NOTES.md (:func:`refresh_quotes`)."""
  claims = _claims(header, rows)
  counts = [f"{sum(bucket(c[3]) == v for c in claims)} {v}" for v, _ in ORDER
            if any(bucket(c[3]) == v for c in claims)]
  lines = ([heading, ""] if heading else []) + claim_sentences(header, rows, setting)
  lines += ["", f"{len(claims)} claims: {', '.join(counts)} (paired tests over seeds, "
            "Holm over the study's claims; tsm.reporting)."]
  return "\n".join(lines) + "\n"


def write_summary(workdir: str, setting: str = "") -> str:
  """Writes ``<workdir>/summary.md`` (:func:`summary_markdown` of its ``verdicts.csv``,
  atomically) and returns it."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  header, rows = read_verdicts(workdir)
  text = summary_markdown(header, rows, setting)
  artifacts.write_atomic(os.path.join(workdir, "summary.md"), text)
  return text


def study_setting(config: Mapping[str, Any]) -> str:
  """What a study ran, in words, from its config (as ``study.json`` records it): the
  datasets, the epochs of each and the seeds, e.g. ``"digits, 3 epochs; 6 seeds"``."""
  s = config["study"]
  epochs = [s.get("epochs") or config[d]["train"]["epochs"] for d in s["datasets"]]
  if len(set(epochs)) == 1:
    where = f"{', '.join(s['datasets'])}, {epochs[0]} epochs"
  else:
    where = ", ".join(f"{d} {e} epochs" for d, e in zip(s["datasets"], epochs))
  return f"{where}; {s['seeds']} seeds"


def study_summary(record: Mapping[str, Any], label: str = "") -> str:
  """A study's ``summary.md`` from its ``study.json`` (``record``): the verdict table
  decided again from the recorded claims' per-seed values
  (:func:`experiments.common.verdicts.recorded_verdicts`), under a heading naming what
  was run (:func:`study_setting`, after ``label`` when given).

  Raises:
    ValueError: the record holds no claims (a study written before claims were
      recorded).
  """
  if not record.get("claims"):
    raise ValueError("this study.json records no claims; rerun the study's report "
                     "(the runs are reused) to record them.")
  header, rows = verdicts_lib.recorded_verdicts(record["claims"])
  heading = "Setting: " + (f"{label}: " if label else "") + study_setting(
      record["config"]) + "."
  return summary_markdown(header, rows, heading=heading)


HEADLINE_CLAIMS = 12   # a headline lists the decided claims when there are no more


def summary_headline(summary: str, full: str, limit: int = HEADLINE_CLAIMS) -> str:
  """The short form of a study's ``summary.md`` that README.md quotes: its setting line,
  the claims that reached a verdict (held, contradicted or unstable; each sentence as in
  the summary) when there are at most ``limit`` of them, the count line, and where the
  full summary is (``full``).

  Generated from the summary's own lines, so it says nothing the summary does not; with
  more than ``limit`` decided claims it lists none rather than a chosen few.
  """
  lines = summary.rstrip("\n").split("\n")
  heading = lines[0] if lines and lines[0].startswith("Setting:") else ""
  decided = [l for l in lines if l.startswith("* **")
             and not l.startswith(f"* **{reporting.INCONCLUSIVE}**")]
  if len(decided) > limit:
    decided = []
  out = ([heading, ""] if heading else []) + decided + ([""] if decided else [])
  return "\n".join(out + [lines[-1], "", f"Every claim's sentence: {full}."]) + "\n"


CLAIM_FIGURES = "claims"


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:60] or "claim"


def claim_figure_names(claims: Sequence[Any]) -> list[str]:
  """Each claim's paired dot plot, relative to the workdir:
  ``claims/<nn>_<dataset>_<metric>_<claim>.png``."""
  return [os.path.join(CLAIM_FIGURES, f"{i + 1:02d}_" + _slug(
      "_".join(x for x in (c.group, c.metric, c.claim) if x)) + ".png")
          for i, c in enumerate(claims)]


def claim_lines(header: Sequence[str], rows: Sequence[Sequence[str]],
                figures: Sequence[str]) -> list[str]:
  """:func:`claim_sentences` with a link to each claim's paired dot plot."""
  return [f"{line} [Per seed]({path})."
          for line, path in zip(claim_sentences(header, rows), figures)]


def write_evidence(workdir: str, record: Mapping[str, Any]) -> str:
  """Writes what a finished study shows of each claim, from its ``study.json``
  (``record``): ``summary.md`` (:func:`study_summary`), each claim's paired dot plot
  (:func:`experiments.common.figures.claim_dots`, :func:`claim_figure_names`) and
  ``claims.md`` (each claim's sentence with a link to its plot), which is appended to
  ``report.md`` and shown on the results page. Returns the summary."""
  from experiments.common import figures  # pylint: disable=import-outside-toplevel
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  summary = study_summary(record)
  artifacts.write_atomic(os.path.join(workdir, "summary.md"), summary)
  claims = verdicts_lib.claims_from_record(record["claims"])
  names = claim_figure_names(claims)
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(os.path.join(workdir, CLAIM_FIGURES), ignore_errors=True)  # old claims'
  os.makedirs(os.path.join(workdir, CLAIM_FIGURES))
  for claim, comp, name in zip(claims, verdicts_lib.decide_claims(claims), names):
    figures.claim_dots(os.path.join(workdir, name), claim, comp,
                       record["claims"]["seeds"])
  header, rows = verdicts_lib.recorded_verdicts(record["claims"])
  text = ("## Each claim, per seed\n\nEach claim's per-seed values of both arms joined "
          "by seed, and the paired differences with the mean difference's 95 % "
          "interval.\n\n" + "\n".join(claim_lines(header, rows, names)) + "\n")
  artifacts.write_atomic(os.path.join(workdir, "claims.md"), text)
  report = read_text(workdir, "report.md")
  marker = "\n## Each claim, per seed\n"
  if marker in report:
    report = report[:report.index(marker)]
  artifacts.write_atomic(os.path.join(workdir, "report.md"),
                         report.rstrip("\n") + "\n\n" + text)
  return summary


_QUOTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def summary_markers(name: str) -> tuple[str, str]:
  """The lines that open and close a quoted summary: ``<!-- summary:<name> -->`` and
  ``<!-- /summary:<name> -->``."""
  if not isinstance(name, str) or not _QUOTE_NAME.fullmatch(name):
    raise ValueError(f"summary name {name!r} must be letters, digits, '_', '.' or '-', "
                     "e.g. 'margin_study'.")
  return f"<!-- summary:{name} -->", f"<!-- /summary:{name} -->"


def _quote_span(text: str, name: str, where: str) -> tuple[int, int]:
  """Start and end offsets of the quoted body of ``name`` in ``text`` (between the
  marker lines)."""
  start, end = summary_markers(name)
  pattern = re.compile(rf"^{re.escape(start)}\n(.*?)^{re.escape(end)}$", re.S | re.M)
  found = list(pattern.finditer(text))
  if len(found) != 1:
    how = "has no" if not found else f"has {len(found)}"
    raise ValueError(f"{where} {how} '{start}' ... '{end}' block; put exactly one pair "
                     "of these lines, each on its own line, where the summary belongs.")
  return found[0].start(1), found[0].end(1)


def quoted_summary(text: str, name: str, where: str = "the text") -> str:
  """The summary quoted between ``name``'s markers in ``text`` (:func:`summary_markers`).

  Raises:
    ValueError: ``text`` does not hold exactly one such block (one line naming
      ``where``).
  """
  start, end = _quote_span(text, name, where)
  return text[start:end]


def requote(text: str, summaries: Mapping[str, str], where: str = "the text") -> str:
  """``text`` with the block of each name in ``summaries`` replaced by its summary
  (verbatim, ending in a newline); everything else unchanged."""
  for name, summary in summaries.items():
    start, end = _quote_span(text, name, where)
    body = summary if summary.endswith("\n") else summary + "\n"
    text = text[:start] + body + text[end:]
  return text


def refresh_quotes(path: str, summaries: Mapping[str, str], *, check: bool = False
                   ) -> list[str]:
  """Checks, and unless ``check`` rewrites, the quoted summaries of a Markdown file.

  Args:
    path: the Markdown file (README.md, BUILD_NOTES.md, a results page).
    summaries: ``{study name: summary text}``, e.g. ``{"margin_study":
      summary_markdown(...)}``; each name must have one block in the file.
    check: only compare; leave the file as it is.

  Returns:
    The names whose quoted text differed from their summary (rewritten unless
    ``check``); ``[]`` when the file quotes every summary verbatim.

  Raises:
    ValueError: a name has no block, or more than one, in the file.
  """
  with open(path) as f:
    text = f.read()
  where = os.path.basename(path)
  stale = [name for name, summary in summaries.items()
           if quoted_summary(text, name, where) != (summary if summary.endswith("\n")
                                                    else summary + "\n")]
  if stale and not check:
    from tsm import artifacts  # pylint: disable=import-outside-toplevel
    artifacts.write_atomic(path, requote(text, summaries, where))
  return stale


def verdict_matrix(header: Sequence[str], rows: Sequence[Sequence[str]],
                   label: str = "claim") -> str:
  """A claim x dataset table of verdict cells (Markdown), for a grouped verdict table;
  ``""`` for an ungrouped one."""
  claims = _claims(header, rows)
  groups = list(dict.fromkeys(g for g, _, _, _ in claims))
  if groups == [""]:
    return ""
  cells: dict[tuple[str, str], dict[str, str]] = {}
  for group, claim, metric, cell in claims:
    verdict = bucket(cell)
    shown = f"**{verdict}** ({cell[len(verdict) + 2:-1]})" if verdict != cell else cell
    cells.setdefault((claim, metric), {})[group] = shown
  return reporting.markdown_table(
      [label, "metric"] + groups,
      [[claim, metric] + [by.get(g, "") for g in groups]
       for (claim, metric), by in cells.items()])


def demote(markdown: str, levels: int = 1) -> str:
  """Markdown with every heading ``levels`` deeper (a report's ``##`` under a page's
  ``##``)."""
  return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown,
                flags=re.M)


def read_text(workdir: str, name: str) -> str:
  """``<workdir>/<name>`` (a table the report wrote), or ``""``."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return f.read()


def dataset_tables(workdir: str) -> list[str]:
  """Each dataset's ``<dataset>/table.md`` of a multi-dataset study (the loss studies),
  in the order of ``study.datasets`` in its ``study.json``."""
  record = read_json(os.path.join(workdir, "study.json")) or {}
  datasets = record.get("config", {}).get("study", {}).get("datasets", [])
  return [read_text(workdir, os.path.join(d, "table.md")) for d in datasets]


def recorded_commands(workdir: str) -> list[str]:
  """The command lines in the first code block of ``<workdir>/report.md``, if any."""
  block = re.search(r"^```\n(.*?)^```", read_text(workdir, "report.md"), re.S | re.M)
  return [] if block is None else [l for l in block.group(1).splitlines() if l.strip()]


def report_preamble(workdir: str) -> list[str]:
  """The settings the study's ``report.md`` states under its title: its lines up to the
  first table or section, without the title and the command block."""
  text = re.sub(r"^```\n.*?^```\n?", "", read_text(workdir, "report.md"), count=1,
                flags=re.S | re.M)
  out = []
  for line in text.splitlines():
    if line.startswith("# "):
      continue
    if line.startswith(("## ", "|")):
      break
    out.append(line)
  while out and not out[0].strip():
    out.pop(0)
  while out and not out[-1].strip():
    out.pop()
  return out


def _timing(workdir: str) -> dict[str, Any] | None:
  """The study's timing record (``study.json``'s, else ``timing.json``), or None."""
  record = read_json(os.path.join(workdir, "study.json")) or {}
  timing = record.get("timing") or read_json(os.path.join(workdir, "timing.json"))
  return timing if timing and "wall_s" in timing else None


def timing_sentence(workdir: str) -> str:
  """The study's wall time in words (``study.json``'s timing, else ``timing.json``)."""
  timing = _timing(workdir)
  return "" if timing is None else timing_lib.timing_line(timing).capitalize() + "."


def rerun_line(workdir: str) -> str:
  """The settings line of the rerun the study was compared with (its
  ``study.compare_to``): where it is and its wall time, or ``""`` without one."""
  record = read_json(os.path.join(workdir, "study.json")) or {}
  other = ((record.get("config") or {}).get("study") or {}).get("compare_to") or ""
  if not other:
    return ""
  timing = _timing(other)
  return (f"- rerun compared with (the stability check), {other}: "
          + ("its timing is not recorded" if timing is None
             else timing_lib.timing_line(timing)))


def page(workdir: str, *, title: str, about: str, tables: Sequence[str],
         settings: Sequence[str] | None = None, commands: Sequence[str] = (),
         details: bool = False) -> str:
  """A study's results page (see the module docstring for its sections).

  Args:
    workdir: the finished study's directory.
    title: the page's title.
    about: what the study tests, in the study's own words (no result).
    tables: the report's tables (Markdown) for the ``Tables`` section.
    settings: Markdown lines describing the study's settings (default: what its
      ``report.md`` states under the title, :func:`report_preamble`).
    commands: the command lines that produced the workdir (default: the one recorded
      in its ``report.md``).
    details: fold the full verdict table into a ``<details>`` block (long tables).

  Returns:
    The page's Markdown.
  """
  header, rows = read_verdicts(workdir)
  commands = list(commands) or recorded_commands(workdir)
  lines = [f"# {title}", "", about, "", "## Measured results", ""]
  if commands:
    lines += ["```bash", *commands, "```", ""]
  settings = report_preamble(workdir) if settings is None else list(settings)
  lines += settings
  rerun = rerun_line(workdir)
  if rerun:
    lines += [rerun]
  timing = timing_sentence(workdir)
  if timing and not any("wall time" in line for line in settings):
    lines += ["", timing]
  lines += ["", "## Verdicts", "", *verdict_sentences(header, rows), ""]
  matrix = verdict_matrix(header, rows)
  if matrix:
    lines += [matrix]
  lines += [verdicts_lib.RULE + " A verdict speaks for these settings only. "
            + CURRENT_RULE_NOTE, ""]
  evidence = read_text(workdir, "claims.md").rstrip()
  if evidence:
    lines += [evidence, ""]
  lines += ["## Tables", ""]
  for table in tables:
    if table:
      lines += [demote(table).rstrip(), ""]
  every = demote(read_text(workdir, "verdicts.md")).rstrip()
  if every:
    if details:
      lines += ["<details><summary>Every claim with its interval, p values and MDE"
                "</summary>", "", every, "", "</details>", ""]
    else:
      lines += [every, ""]
  deviations = read_text(workdir, "deviations.md").rstrip()
  if deviations:
    lines += [re.sub(r"^## .*", "## Deviations", deviations, count=1), ""]
  return "\n".join(lines)


# Which rule a page's verdicts were decided under, stated after the page's rule.
CURRENT_RULE_NOTE = ("These verdicts were decided under this rule (the t-test and the "
                     "exact sign-flip test both).")
EARLIER_RULE_NOTE = ("These verdicts were decided under an earlier rule, the paired "
                     "t-test alone (as stated here); the current rule also requires the "
                     "exact sign-flip test, whose one-sided p cannot go below 2^-n with "
                     "n seeds, so regenerating this page from its workdirs can only "
                     "turn some held or contradicted verdicts into inconclusive ones.")
_RULE_PARAGRAPH = re.compile(r"^Verdicts: paired one-sided .*$", re.M)
# What the current rule's paragraph (verdicts_lib.RULE) says and the earlier one's did not.
_CURRENT_MARK = "larger of the t-test's and the exact sign-flip"


def _seed_bound(section: str) -> str:
  """What the sign-flip test's floor allows in a page section decided under the earlier
  rule: from its verdict table (the rows under a header with a ``seeds`` column), the m
  claims and the most seeds n of any claim: every Holm-adjusted p of the current rule is
  at least min(1, m x 2^-n), the Holm factor m times the smallest p the exact sign-flip
  test can give with n seeds ("" when the section has no such table)."""
  lines = section.splitlines()
  for i, line in enumerate(lines):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and "seeds" in cells and "verdict" in cells:
      col = cells.index("seeds")
      rows = [l for l in lines[i + 2:] if l.startswith("|")]
      end = next((j for j, l in enumerate(lines[i + 2:]) if not l.startswith("|")),
                 len(rows))
      rows = lines[i + 2:i + 2 + end]
      seeds = [int(m.group(0)) for r in rows
               if (m := re.search(r"\d+", r.strip().strip("|").split("|")[col]))]
      if not seeds:
        return ""
      m, n = len(rows), max(seeds)
      bound = m * 2.0 ** -n
      reach = ("so none of them could be held or contradicted under it" if bound > 0.05
               else "so the current rule can still reach held or contradicted here")
      return (f" Here {m} claims with at most {n} seeds: under the current rule every "
              f"Holm-adjusted p is at least min(1, {m} x 2^-{n}) = {min(bound, 1.0):.3g}"
              f", {reach}.")
  return ""


def rule_notes(text: str) -> list[str]:
  """Per rule paragraph of a results page, the note that says which rule its verdicts
  were decided under: :data:`CURRENT_RULE_NOTE` where the paragraph names the exact
  sign-flip test, else :data:`EARLIER_RULE_NOTE` (a page from before that rule) with
  what the sign-flip test's floor allows for the claims of that paragraph's section
  (:func:`_seed_bound`)."""
  found = list(_RULE_PARAGRAPH.finditer(text))
  notes = []
  for i, m in enumerate(found):
    if _CURRENT_MARK in m.group(0):
      notes.append(CURRENT_RULE_NOTE)
      continue
    end = found[i + 1].start() if i + 1 < len(found) else len(text)
    notes.append(EARLIER_RULE_NOTE + _seed_bound(text[m.end():end]))
  return notes


def mark_rules(text: str) -> str:
  """A results page with each rule paragraph followed by its :func:`rule_notes` note
  (unchanged where the paragraph already ends with it)."""
  notes = iter(rule_notes(text))
  def note(m: re.Match) -> str:
    line, wanted = m.group(0), next(notes)
    return line if line.endswith(wanted) else f"{line} {wanted}"
  return _RULE_PARAGRAPH.sub(note, text)


def page_figures(text: str, workdir: str, out: str, label: str) -> str:
  """Copies a workdir's per-claim figures (``claims/``) beside the page ``out``, into
  ``<out without .md>/<label>/claims/``, and points the page's links there."""
  import shutil  # pylint: disable=import-outside-toplevel
  source = os.path.join(workdir, CLAIM_FIGURES)
  if not os.path.isdir(source):
    return text
  base = os.path.splitext(out)[0]
  target = os.path.join(base, _slug(label) or "study", CLAIM_FIGURES)
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(source, target)
  rel = os.path.relpath(target, os.path.dirname(os.path.abspath(out)))
  return text.replace(f"]({CLAIM_FIGURES}/", f"]({rel}/")


def merge(pages: Sequence[str], labels: Sequence[str]) -> str:
  """Pages of several workdirs of one study as one page: the first page's title and
  introduction, then per workdir a ``## <label>`` section holding that page's sections
  one level deeper."""
  if len(pages) == 1:
    return pages[0]
  first = pages[0]
  head = first[:first.index("\n## ")].rstrip()
  parts = [head, ""]
  for text, label in zip(pages, labels):
    body = text[text.index("\n## ") + 1:]
    parts += [f"## {label}", "", demote(body).rstrip(), ""]
  return "\n".join(parts)


def main(render: Callable[..., str], argv: Sequence[str] | None = None,
         program: str = "report") -> str:
  """``python -m experiments.<study>.report WORKDIR [WORKDIR ...] OUT.md [--command=...]``.

  Several workdirs (the study on other datasets or settings) give one page with a
  section per workdir (:func:`merge`), headed by ``--label`` (one per workdir; default:
  the workdir's name); ``--command`` then applies to the first workdir.

  Args:
    render: the study's ``docs_page(workdir, commands=...)``.
    argv: the arguments (default: ``sys.argv[1:]``).
    program: the program's name in ``--help``.

  Returns:
    The page's Markdown (also written to ``OUT.md``, atomically).
  """
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog=program, description="Writes the study's results page from a finished "
      "study's workdir (its verdicts.csv, tables and study.json).")
  parser.add_argument("paths", nargs="+", metavar="WORKDIR ... OUT.md",
                      help="the finished study's directory (or several), then the page "
                      "to write, e.g. docs/results/<study>.md")
  parser.add_argument("--command", action="append", default=[],
                      help="a command line shown on the page (repeatable)")
  parser.add_argument("--label", action="append", default=[],
                      help="the section heading of each workdir (with several)")
  args = parser.parse_args(argv)
  if len(args.paths) < 2:
    parser.error("give a study's workdir and the page to write")
  *workdirs, args.out = args.paths
  labels = args.label or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    parser.error(f"{len(workdirs)} workdirs need {len(workdirs)} --label values")
  try:
    text = merge([page_figures(render(w, commands=args.command if i == 0 else ()), w,
                               args.out, label)
                  for i, (w, label) in enumerate(zip(workdirs, labels))], labels)
  except FileNotFoundError as e:
    parser.exit(2, f"{program}: {e}\n")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  artifacts.write_atomic(args.out, text)
  print(args.out)
  return text
