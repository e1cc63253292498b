"""The study summaries that README.md and BUILD_NOTES.md quote, and the command that
checks or refreshes them.

Each study's quoted summary is generated (:func:`experiments.common.docs.study_summary`)
from a small real run of it committed as ``docs/results/tiny/<study>/study.json`` (its
config, runs and claims with their per-seed values), so the quoted text is what the
report code writes for that run. Its first line names the run as a tiny pipeline run:
the paper-scale results are the pages under ``docs/results/``. BUILD_NOTES.md quotes
each summary whole; README.md its headline (:func:`experiments.common.docs.
summary_headline`: the claims that reached a verdict and the counts), so that it stays
short.

  python -m experiments.common.quotes           # rewrite stale quotes
  python -m experiments.common.quotes --check   # exit 1 naming any stale quote
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from experiments.common import docs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join("docs", "results", "tiny")
STUDIES = ("margin_study", "loss_study", "loss_zoo")
QUOTING = ("README.md", "BUILD_NOTES.md")
HEADLINE = ("README.md",)   # these quote the headline, the others the whole summary


def label(study: str) -> str:
  """The run's name in its summary's first line."""
  return (f"tiny pipeline run ({TINY}/{study}/study.json), not a paper-scale result")


def summaries(root: str | None = None) -> dict[str, str]:
  """``{study: summary}`` of each committed tiny run (under ``root``, default the
  repository)."""
  root = ROOT if root is None else root
  out = {}
  for study in STUDIES:
    path = os.path.join(root, TINY, study, "study.json")
    record = docs.read_json(path)
    if record is None:
      raise FileNotFoundError(f"{path} is missing; run the study's tiny run and copy its "
                              "study.json there (see BUILD_NOTES.md).")
    out[study] = docs.study_summary(record, label(study))
  return out


def quoted_texts(name: str, texts: dict[str, str]) -> dict[str, str]:
  """What file ``name`` quotes of each summary: its headline for :data:`HEADLINE`, else
  the whole summary."""
  if name not in HEADLINE:
    return dict(texts)
  return {study: docs.summary_headline(
      text, "BUILD_NOTES.md, \"The studies\"")
          for study, text in texts.items()}


def main(argv: Sequence[str] | None = None) -> int:
  """Checks (``--check``) or refreshes the quoted summaries; returns the exit code."""
  parser = argparse.ArgumentParser(
      prog="python -m experiments.common.quotes",
      description="Checks or refreshes the study summaries quoted in README.md and "
      "BUILD_NOTES.md from docs/results/tiny/<study>/study.json.")
  parser.add_argument("--check", action="store_true",
                      help="only compare; exit 1 naming the stale quotes")
  args = parser.parse_args(argv)
  try:
    texts = summaries()
    stale = {name: docs.refresh_quotes(os.path.join(ROOT, name), quoted_texts(name, texts),
                                       check=args.check)
             for name in QUOTING}
  except (FileNotFoundError, ValueError) as e:
    print(f"quotes: {e}", file=sys.stderr)
    return 2
  for name, studies in stale.items():
    if studies:
      print(f"{name}: {'stale' if args.check else 'refreshed'}: {', '.join(studies)}")
  return 1 if args.check and any(stale.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
