"""A study's wall time over its invocations, and the sentence its report states it in.

A resumed study sums the invocations that trained; one that reuses every run (a rebuilt
report) adds nothing, so a report always states what the training took.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

TIMING_FILE = "timing.json"


def study_timing(workdir: str, *, seconds: float, runs: int, trained: int, workers: int,
                 xla_threads: int) -> dict[str, Any]:
  """Records one invocation of a study in ``<workdir>/timing.json``; the study's timing.

  An invocation that reuses every run (a rebuilt report) adds nothing to the wall time;
  an interrupted and resumed study sums the invocations that trained.

  Args:
    workdir: the study directory.
    seconds: this invocation's wall time up to the end of the grid (the report comes
      after).
    runs: runs in the study.
    trained: runs this invocation trained (the others were reused).
    workers: worker processes.
    xla_threads: the grid's ``xla_threads``.

  Returns:
    ``{"wall_s", "runs", "trained", "invocations", "workers", "xla_threads", "load"}``:
    totals over the invocations that trained (``invocations`` counts them; ``load`` is
    the 1-minute load average at the end of the last one). When none trained (the file
    was lost), this invocation's own figures.
  """
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, TIMING_FILE)
  history: list[dict[str, Any]] = []
  try:
    with open(path) as f:
      history = list(json.load(f)["invocations"])
  except (OSError, ValueError, KeyError, TypeError):
    history = []   # none yet, or unreadable: start again (the reports say so)
  history.append({"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "seconds": round(float(seconds), 1), "runs": int(runs),
                  "trained": int(trained), "workers": int(workers),
                  "xla_threads": int(xla_threads), "load": round(os.getloadavg()[0], 2)})
  artifacts.write_json_atomic(path, {"invocations": history})
  training = [h for h in history if h["trained"]] or history[-1:]
  last = training[-1]
  return {"wall_s": sum(h["seconds"] for h in training), "runs": int(runs),
          "trained": sum(h["trained"] for h in training), "invocations": len(training),
          "workers": last["workers"], "xla_threads": last["xla_threads"],
          "load": last["load"]}


def timing_line(timing: dict[str, Any]) -> str:
  """:func:`study_timing`'s result in words, for a study's report."""
  invocations = timing.get("invocations", 1)
  return (f"wall time {timing['wall_s']:.0f} s for {timing['runs']} runs "
          f"({timing['trained']} trained"
          + (f", over {invocations} invocations" if invocations > 1 else "")
          + f") with {timing['workers']} worker process(es), xla_threads "
          f"{timing['xla_threads']}, load {timing['load']:.1f}")
