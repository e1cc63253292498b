"""Table plumbing every study's report uses: runs by seed, cells, intervals.

A study's runs are dicts with a ``"seed"``; claims pair two arms seed by seed, so every
per-seed list is indexed by the study's seed list (None where a run is missing).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as sps

from tsm import reporting


def load_json_runs(paths: Sequence[str]) -> list[dict[str, Any]]:
  """The JSON records at ``paths`` that exist, in order (missing runs skipped)."""
  out = []
  for path in paths:
    if os.path.exists(path):
      with open(path) as f:
        out.append(json.load(f))
  return out


def epoch_records(path: str) -> list[dict[str, Any]]:
  """The ``{"kind": "epoch"}`` records of a run's ``metrics.jsonl`` (none if missing)."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  return [r for r in artifacts.MetricsLog(path).read() if r.get("kind") == "epoch"]


def load_npz_runs(paths: Sequence[str]) -> list[dict[str, np.ndarray]]:
  """The arrays of the ``.npz`` files at ``paths`` that exist, in order."""
  out = []
  for path in paths:
    if os.path.exists(path):
      with np.load(path) as z:
        out.append({k: z[k] for k in z.files})
  return out


def by_seed(runs: Sequence[dict[str, Any]], seeds: Sequence[int],
            value: Callable[[dict[str, Any]], float | None]) -> list[float | None]:
  """``value(run)`` of each run at its seed's place in ``seeds`` (None where missing)."""
  seeds = list(seeds)
  out: list[float | None] = [None] * len(seeds)
  for r in runs:
    if r["seed"] in seeds:
      out[seeds.index(r["seed"])] = value(r)
  return out


def run_value(run: dict[str, Any], key: str, never: Sequence[str] = ()) -> float | None:
  """``run[key]`` as a float (None where missing); for the epoch counts named in
  ``never``, -1 ("never reached") counts as ``run["epochs"] + 1``."""
  value = reporting.per_seed([run], key)[0]
  if value is not None and key in never and value < 0:
    value = float(run["epochs"] + 1)
  return value


def seed_values(runs: Sequence[dict[str, Any]], key: str, seeds: Sequence[int],
                never: Sequence[str] = ()) -> list[float | None]:
  """:func:`run_value` of every run, indexed by ``seeds`` (:func:`by_seed`)."""
  return by_seed(runs, seeds, lambda r: run_value(r, key, never))


def mean_interval(values: Sequence[float | None],
                  confidence: float = 0.95) -> tuple[float, float]:
  """Two-sided t interval of the mean of the finite values (NaN under 2 values)."""
  x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if x.size < 2:
    return math.nan, math.nan
  with warnings.catch_warnings():   # equal values: a zero-width interval, as it should be
    warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
    ci = sps.ttest_1samp(x, 0.0).confidence_interval(confidence)
  return float(ci.low), float(ci.high)


def interval_cell(values: Sequence[float | None], digits: int) -> str:
  """``"mean ± std [lo, hi]"`` (the 95 % t interval of the mean; ``"n/a"`` when nothing
  is finite)."""
  text = reporting.summarize(values).format(digits)
  lo, hi = mean_interval(values)
  if math.isfinite(lo):
    text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
  return text


def is_finite_number(text: str) -> bool:
  """Whether a table cell starts with a finite number (``"0.1234 ± 0.0100"``)."""
  try:
    return math.isfinite(float(text.split()[0]))
  except (ValueError, IndexError):
    return False
