"""Tables and verdicts over seeds, shared by the studies under ``experiments/``.

A study trains each variant (a loss, a margin schedule, ...) under several seeds; this
module turns the per-seed numbers into mean ± std cells, writes them as Markdown and CSV,
and decides paper claims from the numbers.

Verdict rule (one rule for every study). A claim "A is better than B on metric m" is
decided from the per-seed values of A and B:

* ``"held"`` when A's mean is better than B's by more than the seed spread,
* ``"did not hold"`` when B's mean is better than A's by more than the seed spread,
* ``"not distinguishable"`` otherwise,

where the seed spread is ``std_A + std_B`` (sample standard deviations, ddof=1, over
seeds): two means closer than the sum of their standard deviations are inside each
other's one-sigma bands. With one seed the spread is 0 and the verdict is the sign of the
difference (reported with ``n=1`` so a reader sees it). This is a descriptive rule, not a
significance test; the tables show every mean and std so a reader can apply another.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

HELD = "held"
NOT_HELD = "did not hold"
UNCLEAR = "not distinguishable"


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean and sample standard deviation of one quantity over seeds."""
  mean: float
  std: float
  n: int

  def format(self, digits: int = 4) -> str:
    if self.n == 0 or not math.isfinite(self.mean):
      return "n/a"
    if self.n == 1:
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(values: Iterable[float | None]) -> Summary:
  """Mean and sample std (ddof=1; 0 for one value) of the finite values given.

  Args:
    values: per-seed values; ``None`` and non-finite entries are dropped.

  Returns:
    A :class:`Summary` (``n == 0`` and NaN mean when nothing finite was given).
  """
  x = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))],
                 dtype=np.float64)
  if x.size == 0:
    return Summary(float("nan"), float("nan"), 0)
  std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
  return Summary(float(np.mean(x)), std, int(x.size))


def verdict(a: Iterable[float | None], b: Iterable[float | None], *,
            higher_is_better: bool = True) -> str:
  """Decides "A is better than B" from per-seed values (rule in the module docstring).

  Args:
    a: per-seed values of the variant the claim favours.
    b: per-seed values of the variant it is compared with.
    higher_is_better: whether larger values of the metric are better.

  Returns:
    ``"held"``, ``"did not hold"`` or ``"not distinguishable"`` (also when either side has
    no finite value).
  """
  sa, sb = summarize(a), summarize(b)
  if sa.n == 0 or sb.n == 0:
    return UNCLEAR
  diff = sa.mean - sb.mean if higher_is_better else sb.mean - sa.mean
  spread = sa.std + sb.std
  if diff > spread:
    return HELD
  if -diff > spread:
    return NOT_HELD
  return UNCLEAR


def best_index(summaries: Sequence[Summary], *, higher_is_better: bool) -> int | None:
  """Index of the best mean among ``summaries`` (None if none is finite)."""
  means = [s.mean if s.n else float("nan") for s in summaries]
  finite = [i for i, m in enumerate(means) if math.isfinite(m)]
  if not finite:
    return None
  key = (lambda i: means[i]) if higher_is_better else (lambda i: -means[i])
  return max(finite, key=key)


def _atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
  def line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
  out += [line(r) for r in rows]
  return "\n".join(out) + "\n"


def write_table(header: Sequence[str], rows: Sequence[Sequence[Any]], md_path: str,
                csv_path: str, *, title: str | None = None) -> str:
  """Writes one table as Markdown and CSV (atomically) and returns the Markdown.

  Args:
    header: column names.
    rows: rows of cells (strings or numbers).
    md_path: Markdown file to write.
    csv_path: CSV file to write.
    title: optional heading line above the Markdown table.

  Returns:
    The Markdown text written.
  """
  md = (f"## {title}\n\n" if title else "") + markdown_table(header, rows)
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(header)
  writer.writerows(rows)
  _atomic_write(md_path, md)
  _atomic_write(csv_path, buf.getvalue())
  return md


def per_seed(results: Sequence[Mapping[str, Any]], key: str) -> list[float | None]:
  """Values of a dotted key (``"test.map@r"``) across per-seed result dicts."""
  out = []
  for r in results:
    value: Any = r
    for part in key.split("."):
      value = value.get(part) if isinstance(value, Mapping) else None
    out.append(None if value is None else float(value))
  return out
