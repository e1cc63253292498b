"""tsm.reporting: summaries, verdicts and tables against hand-computed cases."""

import csv
import math

import pytest

from tsm import reporting


def test_summarize_hand_computed():
  s = reporting.summarize([1.0, 2.0, 3.0, None, float("nan")])
  assert s.n == 3 and s.mean == pytest.approx(2.0) and s.std == pytest.approx(1.0)
  assert s.format(2) == "2.00 ± 1.00"
  assert reporting.summarize([5.0]).format(1) == "5.0"
  empty = reporting.summarize([None])
  assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "n/a"


@pytest.mark.parametrize("a, b, higher, expected", [
    ([0.9, 0.92, 0.94], [0.80, 0.81, 0.82], True, "held"),        # diff .11 > spread .03
    ([0.80, 0.81, 0.82], [0.9, 0.92, 0.94], True, "did not hold"),
    ([0.80, 0.90, 1.00], [0.85, 0.86, 0.87], True, "not distinguishable"),
    ([0.10, 0.11, 0.12], [0.30, 0.31, 0.32], False, "held"),       # lower is better (EER)
    ([0.5], [0.4], True, "held"),                                  # one seed: the sign
    ([None], [0.4], True, "not distinguishable"),
])
def test_verdict(a, b, higher, expected):
  assert reporting.verdict(a, b, higher_is_better=higher) == expected


def test_verdict_boundary_is_not_distinguishable():
  # means 1 apart, stds 0.707 each: the difference is inside the spread.
  a, b = [1.5, 2.5], [0.5, 1.5]
  sa, sb = reporting.summarize(a), reporting.summarize(b)
  assert sa.mean - sb.mean == pytest.approx(1.0)
  assert sa.std + sb.std == pytest.approx(2 * math.sqrt(0.5))
  assert reporting.verdict(a, b) == "not distinguishable"


def test_best_index():
  s = [reporting.summarize(v) for v in ([1.0], [3.0], [None], [2.0])]
  assert reporting.best_index(s, higher_is_better=True) == 1
  assert reporting.best_index(s, higher_is_better=False) == 0
  assert reporting.best_index([reporting.summarize([None])], higher_is_better=True) is None


def test_write_table(tmp_path):
  md = reporting.write_table(["a", "b|c"], [[1, "x"], [2, "y"]], str(tmp_path / "t.md"),
                             str(tmp_path / "t.csv"), title="T")
  assert md.splitlines()[0] == "## T"
  assert "| a | b\\|c |" in md and "| 2 | y |" in md
  with open(tmp_path / "t.csv") as f:
    assert list(csv.reader(f)) == [["a", "b|c"], ["1", "x"], ["2", "y"]]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]


def test_per_seed():
  results = [{"test": {"map@r": 0.5}}, {"test": {}}, {"test": {"map@r": 0.7}}]
  assert reporting.per_seed(results, "test.map@r") == [0.5, None, 0.7]
