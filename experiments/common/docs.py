"""A study's results page (``docs/results/<study>.md``), written from its workdir.

Every study's page has the same sections, in this order:

* ``# <title>``, then what the study tests (the study's own words, no result);
* ``## Measured results``: the command(s) that produced the workdir, the settings and
  the wall time (from ``study.json`` / ``timing.json``);
* ``## Verdicts``: one bullet per verdict (held, contradicted, unstable, inconclusive)
  naming the claims that reached it, written by :func:`verdict_sentences` from the
  study's ``verdicts.csv``; for a study over several datasets, a claim x dataset table
  of verdicts (:func:`verdict_matrix`); then the rule the verdicts follow;
* ``## Tables``: the tables the study's report wrote (``results.md``, or each dataset's
  ``table.md``), then every claim with its interval, p values and MDE (``verdicts.md``);
* ``## Deviations``: the study's ``deviations.md``.

A study also writes ``summary.md`` (:func:`write_summary`): one sentence per claim
(claim, setting, verdict, difference with its interval; :func:`claim_sentences`), which
README.md and BUILD_NOTES.md quote verbatim between ``<!-- summary:<study> -->`` and
``<!-- /summary:<study> -->`` lines (:func:`refresh_quotes` checks and refreshes them).

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
                     setting: str = "") -> str:
  """A study's ``summary.md``: one sentence per claim (:func:`claim_sentences`), then how
  many claims reached each verdict. Quoted verbatim by README.md and BUILD_NOTES.md
  (:func:`refresh_quotes`)."""
  claims = _claims(header, rows)
  counts = [f"{sum(bucket(c[3]) == v for c in claims)} {v}" for v, _ in ORDER
            if any(bucket(c[3]) == v for c in claims)]
  lines = claim_sentences(header, rows, setting)
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


def timing_sentence(workdir: str) -> str:
  """The study's wall time in words (``study.json``'s timing, else ``timing.json``)."""
  record = read_json(os.path.join(workdir, "study.json")) or {}
  timing = record.get("timing") or read_json(os.path.join(workdir, "timing.json"))
  if not timing or "wall_s" not in timing:
    return ""
  return timing_lib.timing_line(timing).capitalize() + "."


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
  timing = timing_sentence(workdir)
  if timing and not any("wall time" in line for line in settings):
    lines += ["", timing]
  lines += ["", "## Verdicts", "", *verdict_sentences(header, rows), ""]
  matrix = verdict_matrix(header, rows)
  if matrix:
    lines += [matrix]
  lines += [verdicts_lib.RULE + " A verdict speaks for these settings only.", "",
            "## Tables", ""]
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
    text = merge([render(w, commands=args.command if i == 0 else ())
                  for i, w in enumerate(workdirs)], labels)
  except FileNotFoundError as e:
    parser.exit(2, f"{program}: {e}\n")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  artifacts.write_atomic(args.out, text)
  print(args.out)
  return text
