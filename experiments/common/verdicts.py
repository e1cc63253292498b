"""Claim tables every study shares: per-claim tests, stability marks, deviations.

A study states each paper claim as :class:`Claim` (the arm it favours, the arm it is
compared with, their per-seed values in the same seed order). :func:`verdict_table`
tests every claim of the study with :func:`tsm.reporting.compare` (paired over seeds)
and decides them together with :func:`tsm.reporting.decide` (Holm over the study's
family of claims), one row per claim: mean ± std of each arm over the seeds with a value
in both arms (the pairs the test uses, ``n`` shown), the paired difference in
the claim's favour with its 95 % interval, raw and Holm-adjusted one-sided p, the
minimum detectable effect and the verdict. A claim that holds by construction (it
follows from the loss's form, not from training) keeps its test but is flagged in the
``note`` column; the study reports a fairer companion claim beside it.

Stability: a study rerun with another XLA thread count (or another code version, or on
another machine) writes its own ``verdicts.csv``; :func:`mark_unstable` compares the two
and replaces the verdict of every claim that differs by ``unstable (A here / B there)``.

:func:`deviations_markdown` renders a study's table of deviations from the paper and
its authors' code (setting | paper | authors' code | tsm | why).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Sequence

from tsm import reporting

UNSTABLE = "unstable"
# The claims of a study with their per-seed values (:func:`write_claims`): what its
# summary and per-claim figures are generated from, kept in ``study.json`` too.
CLAIMS_FILE = "claims.json"
HEADER = (("claim", "metric", "A (favoured): mean ± std", "B: mean ± std")
          + tuple(reporting.COMPARISON_HEADER) + ("note",))
RULE = ("Verdicts: paired one-sided tests over seeds of the claim (A better than B) and "
        "of its reverse, each p the larger of the t-test's and the exact sign-flip "
        "permutation test's, Holm-corrected over this study's claims at family-wise "
        "alpha = 0.05 each way (tsm.reporting.compare / decide): 'held' / "
        "'contradicted' when the corrected test rejects, else 'inconclusive'; n seeds "
        "can never go below p = 2^-n. Arm cells and tests use the same seeds: those "
        "with a value in both arms (n). 'A better by' is the mean per-seed difference "
        "in the claim's favour with its two-sided 95 % t interval; MDE is the true "
        "difference the test would detect with 80 % power at this spread (∞: "
        "unreachable with these seeds). 'unstable' marks a claim whose verdict differs "
        "in the rerun named by study.compare_to (another XLA thread count, code version "
        "or machine; neither verdict is given).")


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim "A is better than B on metric".

  Attributes:
    claim: the claim in words.
    metric: the metric's label.
    a: name of the arm the claim favours.
    b: name of the arm it is compared with.
    a_values: A's per-seed values (None: missing), in seed order.
    b_values: B's per-seed values, in the same seed order.
    higher_is_better: whether larger values of the metric are better.
    note: shown beside the verdict (e.g. why the claim holds by construction).
    group: an optional first column (the dataset).
  """
  claim: str
  metric: str
  a: str
  b: str
  a_values: Sequence[float | None]
  b_values: Sequence[float | None]
  higher_is_better: bool = True
  note: str = ""
  group: str = ""


def _key(group: str, claim: str, metric: str) -> tuple[str, str, str]:
  return (group, claim, metric)


def decide_claims(claims: Sequence[Claim], alpha: float = 0.05
                  ) -> list[reporting.Comparison]:
  """Paired comparisons of ``claims``, Holm-decided as one family."""
  comparisons = [reporting.compare(c.a_values, c.b_values, paired=True,
                                   higher_is_better=c.higher_is_better, alpha=alpha)
                 for c in claims]
  return reporting.decide(comparisons, alpha) if comparisons else []


def arm_cells(claim: Claim, digits: int = 4) -> tuple[str, str]:
  """The two arms' cells of a claim's row: ``"name: mean ± std (n=18)"`` of each arm
  over the seeds with a value in both arms, the pairs the test uses
  (:func:`tsm.reporting.complete_pairs`)."""
  xa, xb = reporting.complete_pairs(claim.a_values, claim.b_values)
  return tuple(f"{name}: {reporting.summarize(x).format(digits)} (n={x.size})"
               for name, x in ((claim.a, xa), (claim.b, xb)))


def verdict_table(claims: Sequence[Claim], *, alpha: float = 0.05, digits: int = 4,
                  grouped: bool = False) -> tuple[list[str], list[list[str]]]:
  """Header and rows of the verdict table (one row per claim, in order).

  Args:
    claims: the study's family of claims.
    alpha: family-wise level.
    digits: decimals of the means and differences.
    grouped: add a first column with each claim's ``group``.

  Returns:
    ``(header, rows)`` for :func:`tsm.reporting.write_table`.
  """
  header = (["dataset"] if grouped else []) + list(HEADER)
  rows = []
  for c, comp in zip(claims, decide_claims(claims, alpha)):
    row = [c.claim, c.metric, *arm_cells(c, digits)]
    row += comp.cells(digits) + [c.note]
    rows.append(([c.group] if grouped else []) + row)
  return header, rows


def own_verdict(cell: str) -> str:
  """The verdict a study reached on its own runs: ``"unstable (held here / ...)"`` (a
  table already compared with another rerun) reads as ``"held"``."""
  if cell.startswith("unstable (") and " here" in cell:
    return cell[len("unstable ("):cell.index(" here")]
  return cell


def read_verdicts(path: str) -> dict[tuple[str, str, str], str]:
  """``{(group, claim, metric): verdict}`` of a ``verdicts.csv`` written by a study (each
  study's own verdict, whether or not it was compared with a rerun)."""
  out = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      out[_key(row.get("dataset", ""), row["claim"], row["metric"])] = own_verdict(
          row["verdict"])
  return out


def mark_unstable(header: Sequence[str], rows: Sequence[Sequence[str]],
                  other: dict[tuple[str, str, str], str], other_name: str = "rerun"
                  ) -> tuple[list[list[str]], int]:
  """Replaces the verdict of each claim that differs from ``other``'s.

  Args:
    header: the verdict table's header (from :func:`verdict_table`).
    rows: its rows.
    other: the rerun's verdicts (:func:`read_verdicts`); claims it lacks are left as
      they are.
    other_name: how the rerun is named in the cell.

  Returns:
    ``(rows, count)``: the rows with ``"unstable (held here / inconclusive in rerun)"``
    where the verdicts differ, and how many differ.
  """
  col = list(header).index("verdict")
  grouped = header[0] == "dataset"
  out, count = [], 0
  for row in rows:
    row = list(row)
    group, claim, metric = (row[0], row[1], row[2]) if grouped else ("", row[0], row[1])
    there = other.get(_key(group, claim, metric))
    if there is not None and there != row[col] and not row[col].startswith(UNSTABLE):
      row[col] = f"{UNSTABLE} ({row[col]} here / {there} in {other_name})"
      count += 1
    out.append(row)
  return out, count


def stability_rows(header: Sequence[str], rows: Sequence[Sequence[str]],
                   compare_to: str | None) -> tuple[list[list[str]], str]:
  """Applies :func:`mark_unstable` against ``<compare_to>/verdicts.csv`` when given.

  Returns:
    ``(rows, sentence)``: the sentence says what was compared and how many claims are
    unstable (``""`` when there is nothing to compare).

  Raises:
    ValueError: ``compare_to`` has no ``verdicts.csv``.
  """
  if not compare_to:
    return [list(r) for r in rows], ""
  path = os.path.join(compare_to, "verdicts.csv")
  if not os.path.exists(path):
    raise ValueError(f"study.compare_to={compare_to!r} has no verdicts.csv; point it at "
                     "a finished run of the same study.")
  marked, count = mark_unstable(header, rows, read_verdicts(path), "the rerun")
  return marked, (f"Stability: verdicts compared with the rerun in {compare_to}: "
                  f"{count} of {len(rows)} claims differ and are marked unstable.")


DEVIATION_HEADER = ("setting", "paper", "authors' code", "tsm (this study)", "why")


def per_dataset(cfg: Any, build: Any, cell: Any) -> str:
  """A deviations cell read from each dataset's run: ``cell(run)`` of
  ``build(cfg, dataset, first arm, first seed)`` per dataset of ``study.datasets``, as
  ``"synthetic: x, digits: y"``, or ``x`` when every dataset agrees."""
  s = cfg.study
  arm = s.losses[0] if "losses" in s else None
  cells = {d: str(cell(build(cfg, d, arm, s.first_seed))) for d in s.datasets}
  if len(set(cells.values())) == 1:
    return next(iter(cells.values()))
  return ", ".join(f"{d}: {c}" for d, c in cells.items())


def trunk_cell(run: Any) -> str:
  """A run's trunk: its model, and with a pretrained trunk whether it is frozen or
  fine-tuned."""
  m = run.model
  if not m.get("pretrained_path"):
    return f"{m.name}, trained end to end"
  return f"{m.name} ({'frozen' if m.freeze_trunk else 'fine-tuned'}, {m.pretrained_path})"


def resolution_cell(run: Any) -> str:
  """A run's input resolution: ``data.image_size`` px and channels, or native."""
  d = run.data
  if d.get("image_size"):
    return f"{d.image_size} px, {d.get('channels') or 'native'} channel(s)"
  return "native"


def dropout_cell(run: Any) -> str:
  """A run's dropout rates (only paper A's head has dropout layers)."""
  rates = (tuple(run.model.get("head_dropout", ()) or ())
           if run.model.get("head") == "paper_a" else ())
  return "none" if not any(rates) else " / ".join(f"{x:g}" for x in rates)


def deviations_markdown(rows: Sequence[Sequence[Any]], title: str) -> str:
  """A study's deviations table as Markdown under ``title``."""
  return f"## {title}\n\n" + reporting.markdown_table(DEVIATION_HEADER, rows)


def write_deviations(workdir: str, rows: Sequence[Sequence[Any]], title: str) -> str:
  """Writes ``<workdir>/deviations.md`` (:func:`deviations_markdown`); returns it."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  md = deviations_markdown(rows, title)
  artifacts.write_atomic(os.path.join(workdir, "deviations.md"), md)
  return md


def write_verdicts(workdir: str, claims: Sequence[Claim], title: str,
                   compare_to: str | None = None,
                   seeds: Sequence[int] | None = None) -> tuple[str, str]:
  """Writes ``verdicts.md`` / ``verdicts.csv`` of a study whose claims are grouped by
  dataset (:func:`verdict_table`, then :func:`stability_rows` against ``compare_to``)
  and ``claims.json`` (:func:`write_claims`; ``seeds``: the seeds of the values).

  Returns:
    ``(markdown, stability sentence)``.
  """
  header, rows = verdict_table(claims, grouped=True)
  rows, sentence = stability_rows(header, rows, compare_to)
  md = reporting.write_table(header, rows, os.path.join(workdir, "verdicts.md"),
                             os.path.join(workdir, "verdicts.csv"), title=title)
  write_claims(workdir, claims, seeds, grouped=True, compare_to=compare_to)
  return md, sentence


def _number(v: Any) -> float | None:
  """A per-seed value as JSON keeps it: None for missing or non-finite."""
  if v is None:
    return None
  v = float(v)
  return v if math.isfinite(v) else None


def claims_record(claims: Sequence[Claim], seeds: Sequence[int] | None, *,
                  grouped: bool, rerun: dict[tuple[str, str, str], str] | None = None
                  ) -> dict[str, Any]:
  """What :data:`CLAIMS_FILE` holds: the seeds, whether the verdict table has a dataset
  column, every claim (its fields, per-seed values in seed order, None where missing)
  and the rerun's verdicts it was compared with (``[group, claim, metric, verdict]``)."""
  n = max((len(c.a_values) for c in claims), default=0)
  return {
      "seeds": list(range(n)) if seeds is None else [int(s) for s in seeds],
      "grouped": bool(grouped),
      "claims": [{**dataclasses.asdict(c),
                  "a_values": [_number(v) for v in c.a_values],
                  "b_values": [_number(v) for v in c.b_values]} for c in claims],
      "rerun": [list(k) + [v] for k, v in (rerun or {}).items()],
  }


def claims_from_record(record: dict[str, Any]) -> list[Claim]:
  """The claims of a :func:`claims_record` (as read back from JSON)."""
  return [Claim(**c) for c in record["claims"]]


def recorded_verdicts(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
  """The verdict table of a :func:`claims_record`, decided again from its per-seed
  values (:func:`verdict_table`) and marked unstable against its rerun's verdicts."""
  header, rows = verdict_table(claims_from_record(record), grouped=record["grouped"])
  rerun = {_key(g, c, m): v for g, c, m, v in record.get("rerun", [])}
  if rerun:
    rows, _ = mark_unstable(header, rows, rerun, "the rerun")
  return header, rows


def write_claims(workdir: str, claims: Sequence[Claim], seeds: Sequence[int] | None, *,
                 grouped: bool, compare_to: str | None = None) -> dict[str, Any]:
  """Writes ``<workdir>/claims.json`` (:func:`claims_record`; the rerun's verdicts read
  from ``<compare_to>/verdicts.csv`` when given) and returns it."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  rerun = None
  if compare_to and os.path.exists(os.path.join(compare_to, "verdicts.csv")):
    rerun = read_verdicts(os.path.join(compare_to, "verdicts.csv"))
  record = claims_record(claims, seeds, grouped=grouped, rerun=rerun)
  artifacts.write_json_atomic(os.path.join(workdir, CLAIMS_FILE), record)
  return record
