"""The study summaries that README.md and BUILD_NOTES.md quote, and the command that
checks or refreshes them.

Each study's quoted summary is generated (:func:`experiments.common.docs.study_summary`)
from its run in the papers' protocol (20 seeds, a head on the frozen EfficientNet-Lite0's
cached Fashion-MNIST features), committed as ``docs/results/frozen_lite0/<study>/
study.json`` (its config, runs, and claims with their per-seed values and the rerun's
verdicts), so the quoted text is what the report code writes for that run, unstable
claims marked. Its first line names the run. BUILD_NOTES.md quotes each summary whole;
README.md its headline (:func:`experiments.common.docs.summary_headline`: the claims
that reached a verdict and the counts), so that it stays short.

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
RUNS = os.path.join("docs", "results", "frozen_lite0")
STUDIES = ("margin_study", "loss_study", "loss_zoo")
QUOTING = ("README.md", "BUILD_NOTES.md")
HEADLINE = ("README.md",)   # these quote the headline, the others the whole summary


def label(study: str) -> str:
  """The run's name in its summary's first line."""
  return (f"the papers' protocol on frozen EfficientNet-Lite0 features, checked against "
          f"a rerun with other XLA threads ({RUNS}/{study}/study.json)")


def summaries(root: str | None = None) -> dict[str, str]:
  """``{study: summary}`` of each committed run (under ``root``, default the
  repository)."""
  root = ROOT if root is None else root
  out = {}
  for study in STUDIES:
    path = os.path.join(root, RUNS, study, "study.json")
    record = docs.read_json(path)
    if record is None:
      raise FileNotFoundError(f"{path} is missing; run the study and copy its "
                              f"study.json there ({RUNS}/README.md).")
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
      f"BUILD_NOTES.md from {RUNS}/<study>/study.json.")
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
