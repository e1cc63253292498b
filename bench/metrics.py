"""Benchmark: all retrieval metrics of 100,000 embeddings (D = 128, 100 classes), self mode.

Runs ``tsm.metrics.retrieval_metrics`` (recall@1/5/10, precision@1, R-precision, MAP@R; MAP@R
needs the ~1,000 nearest neighbours of every query) once in a fresh subprocess and reports

* wall time and process CPU time (user + system, all threads) of the call, first call
  included (compilation counted);
* peak memory: ``ru_maxrss`` (peak resident set size) of the subprocess after the call,
  minus its ``ru_maxrss`` just before it (after importing jax and tsm, loading the
  embeddings from a .npy file and initialising the backend). ``ru_maxrss`` is a high-water
  mark, so the difference is exactly how far the call raised the process's peak above
  everything before it; the embeddings themselves (N x D x 4 bytes = 51 MB) are in the
  baseline. The absolute peak is printed too.

Usage:
  python bench/metrics.py [--n 100000] [--dim 128] [--classes 100] [--chunk-size N]
      [--method auto|blocks|top_k] [--distance euclidean]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import jax, jax.numpy as jnp
from tsm.metrics import retrieval_metrics
x = np.load(sys.argv[1]); y = np.load(sys.argv[2]); args = json.loads(sys.argv[3])
jnp.zeros(8).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF)
wall = time.perf_counter()
metrics = retrieval_metrics(x, y, ks=(1, 5, 10), distance=args["distance"],
                            chunk_size=args["chunk_size"], method=args["method"])
wall = time.perf_counter() - wall
end = resource.getrusage(resource.RUSAGE_SELF)
cpu = (end.ru_utime - base.ru_utime) + (end.ru_stime - base.ru_stime)
print(json.dumps({"metrics": metrics, "wall_s": wall, "cpu_s": cpu,
                  "baseline_maxrss_mib": base.ru_maxrss / 1024,
                  "peak_maxrss_mib": end.ru_maxrss / 1024,
                  "backend": jax.default_backend(), "devices": str(jax.devices()),
                  "cpu_count": len(__import__("os").sched_getaffinity(0))}))
"""


def make_embeddings(n: int, dim: int, classes: int, seed: int = 0):
  """L2-normalised Gaussian clusters with random labels (metrics well inside (0, 1))."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n).astype(np.int32)
  centers = rng.standard_normal((classes, dim)).astype(np.float32)
  x = centers[labels] + 2.5 * rng.standard_normal((n, dim)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x, labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--chunk-size", type=int, default=None)
  parser.add_argument("--method", default="auto")
  parser.add_argument("--distance", default="euclidean")
  args = parser.parse_args()
  x, labels = make_embeddings(args.n, args.dim, args.classes)
  with tempfile.TemporaryDirectory() as tmp:
    xp, yp = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
    np.save(xp, x)
    np.save(yp, labels)
    del x, labels
    child_args = json.dumps({"chunk_size": args.chunk_size, "method": args.method,
                             "distance": args.distance})
    out = subprocess.run([sys.executable, "-c", _CHILD, xp, yp, child_args],
                         check=True, capture_output=True, text=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["peak_increase_mib"] = result["peak_maxrss_mib"] - result["baseline_maxrss_mib"]
  print(f"N={args.n} D={args.dim} classes={args.classes} chunk_size={args.chunk_size} "
        f"method={args.method} backend={result['backend']} cores={result['cpu_count']}")
  print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
  print(f"wall {result['wall_s']:.1f} s, process CPU {result['cpu_s']:.1f} s, peak RSS "
        f"{result['peak_maxrss_mib']:.0f} MiB (baseline {result['baseline_maxrss_mib']:.0f} "
        f"MiB, increase {result['peak_increase_mib']:.0f} MiB)")
  print("load average at end:", open("/proc/loadavg").read().split()[:3])


if __name__ == "__main__":
  main()
