"""Figure plumbing every study's report uses (drawing itself is :mod:`tsm.plotting`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def subplots(ncols: int, width: float = 5.0, height: float = 3.8):
  """``(fig, axes[1, ncols])`` on the Agg backend, each panel ``width x height``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def curve_matrix(runs: Sequence[dict[str, Any]], key: str) -> np.ndarray:
  """``[runs, epochs]`` of the per-epoch curve ``key`` of each run's ``"curves"``, cut to
  the shortest run (None as NaN)."""
  length = min(len(r["curves"][key]) for r in runs)
  return np.asarray([[np.nan if v is None else v for v in r["curves"][key][:length]]
                     for r in runs], np.float64)
