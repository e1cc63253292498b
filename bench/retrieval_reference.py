"""Benchmark: tsm's retrieval metrics against pytorch-metric-learning's AccuracyCalculator.

Both compute P@1, R-precision and MAP@R of the same embeddings in self mode (every
embedding a query, the others its gallery; PML with ``k="max_bin_count"`` and faiss-cpu's
exact ``IndexFlatL2``, its default), in ONE process, timed in alternation (each round:
tsm cold, PML, tsm warm, PML; medians), with both libraries limited to the same threads
(faiss via ``faiss.omp_set_num_threads``, torch via ``torch.set_num_threads``, every BLAS
and OpenMP pool via ``threadpoolctl``, XLA via the process's CPU affinity). "Cold" is a
call with an empty compilation cache, as a user's first call at the end of training: the
process's first call (tsm enables no persistent compilation cache), then one after
``jax.clear_caches()`` each round; "warm" a repeated call. Both ratios are against the
median PML call. The numbers of the two must agree; the report prints both and the largest
difference. The data: ``bench/metrics.py``'s L2-normalised Gaussian clusters.

Without PyTorch / pytorch-metric-learning / faiss the naive baseline is
``--baseline numpy``: the metrics from a full ``argsort`` of each chunk of exact distance
rows (numpy), which needs no extra package.

With ``--gallery N`` it measures a gallery of N embeddings (e.g. 1,000,000) written to
a ``.npy`` file in chunks and memory-mapped back (``np.load(mmap_mode="r")``), searched by
``--n`` separate queries of the same distribution (every metric needs the R ~ N / classes
nearest gallery items of each query), once for tsm and once for the baseline, in the
same process, each in a fresh child process so that its peak resident memory (``VmHWM``
of ``/proc/self/status``, reported with the child's own value after loading; not
``ru_maxrss``, which Linux carries over from the parent) is its own. Pages of the
memory-mapped gallery that are read count as resident.

Usage:
  taskset -c 0,1 python bench/retrieval_reference.py [--n 50000] [--dim 128]
      [--classes 100] [--rounds 3] [--baseline pml|numpy] [--json out.json]
  taskset -c 0,1 python bench/retrieval_reference.py --gallery 1000000 --n 1000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import threadpoolctl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics as bench_metrics  # pylint: disable=g-import-not-at-top

from tsm.metrics import retrieval_metrics  # pylint: disable=g-import-not-at-top

NAMES = ("precision@1", "r_precision", "map@r")
_THREADS = len(os.sched_getaffinity(0))


def _cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    return next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")


def pml_metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """PML's AccuracyCalculator (faiss-cpu, k = "max_bin_count"), self mode."""
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning.utils import accuracy_calculator  # pylint: disable=import-outside-toplevel
  calc = accuracy_calculator.AccuracyCalculator(
      include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
      k="max_bin_count")
  out = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))
  return {"precision@1": float(out["precision_at_1"]),
          "r_precision": float(out["r_precision"]),
          "map@r": float(out["mean_average_precision_at_r"])}


def numpy_metrics(x: np.ndarray, labels: np.ndarray, chunk: int = 512) -> dict[str, float]:
  """Naive baseline: full argsort of exact squared distances, chunk by chunk (numpy)."""
  counts = np.bincount(labels)[labels] - 1
  sq = np.sum(x.astype(np.float64) ** 2, 1)
  totals = np.zeros(3)
  for s in range(0, x.shape[0], chunk):
    q = x[s:s + chunk].astype(np.float64)
    d = sq[s:s + chunk, None] + sq[None] - 2 * q @ x.T.astype(np.float64)
    d[np.arange(q.shape[0]), np.arange(s, s + q.shape[0])] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    rel = labels[order] == labels[s:s + chunk, None]
    r = counts[s:s + chunk]
    within = np.arange(rel.shape[1]) < r[:, None]
    hits = rel & within
    cum = np.cumsum(hits, 1)
    totals += [rel[:, 0].sum(), (hits.sum(1) / r).sum(),
               (np.sum(hits * cum / np.arange(1, rel.shape[1] + 1), 1) / r).sum()]
  return dict(zip(NAMES, (totals / x.shape[0]).tolist()))


def tsm_metrics(x: np.ndarray, labels: np.ndarray, gallery=None,
                gallery_labels=None) -> dict[str, float]:
  m = retrieval_metrics(x, labels, gallery, gallery_labels, ks=(1,))
  return {k: m[k] for k in NAMES}


def pml_gallery_metrics(x, labels, gallery, gallery_labels) -> dict[str, float]:
  """PML's AccuracyCalculator with a separate reference set (faiss-cpu)."""
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning.utils import accuracy_calculator  # pylint: disable=import-outside-toplevel
  calc = accuracy_calculator.AccuracyCalculator(
      include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
      k="max_bin_count")
  out = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)),
                          torch.from_numpy(np.asarray(gallery)),
                          torch.from_numpy(np.asarray(gallery_labels, np.int64)),
                          ref_includes_query=False)
  return {"precision@1": float(out["precision_at_1"]),
          "r_precision": float(out["r_precision"]),
          "map@r": float(out["mean_average_precision_at_r"])}


_GALLERY_CHILD = r"""
import json, os, sys, time
import numpy as np
def hwm_mib():  # VmHWM: peak resident size of this process image (reset by exec, unlike
  # ru_maxrss, which would carry the parent's peak from generating the gallery)
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
sys.path.insert(0, sys.argv[1])
import retrieval_reference as rr
impl, xp, yp, qp, qlp = sys.argv[2:7]
g = np.load(xp, mmap_mode="r"); gl = np.load(yp); q = np.load(qp); ql = np.load(qlp)
if impl == "pml":
  import faiss, torch
  faiss.omp_set_num_threads(rr._THREADS); torch.set_num_threads(rr._THREADS)
  fn = rr.pml_gallery_metrics
else:
  import jax, jax.numpy as jnp
  jnp.zeros(8).block_until_ready()
  fn = rr.tsm_metrics
base = hwm_mib()
t = time.perf_counter()
m = fn(q, ql, g, gl)
wall = time.perf_counter() - t
print(json.dumps({"metrics": m, "wall_s": wall, "baseline_maxrss_mib": base,
                  "peak_maxrss_mib": hwm_mib()}))
"""


def gallery_bench(args) -> dict:
  """tsm and the baseline on a memory-mapped gallery, each in a child process."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((args.classes, args.dim)).astype(np.float32)

  def draw(n):
    y = rng.integers(0, args.classes, n).astype(np.int32)
    x = centers[y] + 2.5 * rng.standard_normal((n, args.dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y

  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    paths = [os.path.join(tmp, f) for f in ("g.npy", "gl.npy", "q.npy", "ql.npy")]
    g = np.lib.format.open_memmap(paths[0], "w+", np.float32, (args.gallery, args.dim))
    gl = np.empty(args.gallery, np.int32)
    for s in range(0, args.gallery, 100_000):
      g[s:s + 100_000], gl[s:s + 100_000] = draw(min(100_000, args.gallery - s))
    g.flush()
    del g
    np.save(paths[1], gl)
    q, ql = draw(args.n)
    np.save(paths[2], q)
    np.save(paths[3], ql)
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(args.rounds):
      for impl in ("tsm", args.baseline):
        res = subprocess.run([sys.executable, "-c", _GALLERY_CHILD, here, impl] + paths,
                             check=True, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                 [os.path.dirname(here), os.environ.get("PYTHONPATH", "")])))
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out.setdefault(impl, []).append(r)
        print(f"{impl:6s} {r['wall_s']:8.1f} s  peak RSS {r['peak_maxrss_mib']:.0f} MiB "
              f"(after loading {r['baseline_maxrss_mib']:.0f} MiB)  " +
              "  ".join(f"{k}={v:.6f}" for k, v in r["metrics"].items()), flush=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--baseline", default="pml", choices=("pml", "numpy"))
  parser.add_argument("--gallery", type=int, default=None,
                      help="memory-mapped gallery of this many embeddings; --n queries")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  baseline = pml_metrics
  if args.baseline == "pml":
    try:
      import faiss  # pylint: disable=import-outside-toplevel
      import torch  # pylint: disable=import-outside-toplevel
      faiss.omp_set_num_threads(_THREADS)
      torch.set_num_threads(_THREADS)
    except ImportError:
      print("pytorch-metric-learning / faiss not installed: using the numpy baseline.")
      args.baseline, baseline = "numpy", numpy_metrics
  else:
    baseline = numpy_metrics
  threadpoolctl.threadpool_limits(_THREADS)  # every BLAS / OpenMP pool in the process
  pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpoolctl.threadpool_info()})
  info = {"device_kind": jax.devices()[0].device_kind, "cpu": _cpu_model(),
          "threads": _THREADS, "blas_openmp_pools": pools,
          "n": args.n, "dim": args.dim, "classes": args.classes, "baseline": args.baseline,
          "load_average": [round(v, 2) for v in os.getloadavg()]}
  print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
  if args.gallery:
    if args.baseline == "numpy":
      raise SystemExit("--gallery needs --baseline pml (PyTorch, PML and faiss-cpu).")
    out = gallery_bench(args)
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"header": info, "gallery": args.gallery, "runs": out}, f, indent=2)
    return
  x, labels = bench_metrics.make_embeddings(args.n, args.dim, args.classes)
  jax.numpy.zeros(8).block_until_ready()  # the backend is up, as after training
  # Each round: tsm cold, baseline, tsm warm, baseline. "Cold" is a call with an empty
  # compilation cache: the process's first call (tsm enables no persistent compilation
  # cache), then after jax.clear_caches(); "warm" repeats the call with its programs cached.
  runs = {"tsm_cold": [], "tsm": [], args.baseline: []}
  results = {}
  for r in range(args.rounds):
    for name, fn in (("tsm_cold", tsm_metrics), (args.baseline, baseline), ("tsm", tsm_metrics),
                     (args.baseline, baseline)):
      if name == "tsm_cold" and r:
        jax.clear_caches()
      t = time.perf_counter()
      results[name] = fn(x, labels)
      runs[name].append(time.perf_counter() - t)
      print(f"  round {r} {name:8s} {runs[name][-1]:7.2f} s  load "
            f"{os.getloadavg()[0]:.1f}", flush=True)
  med = {k: statistics.median(v) for k, v in runs.items()}
  diff = max(abs(results[t][k] - results[args.baseline][k])
             for t in ("tsm_cold", "tsm") for k in NAMES)
  # Per round, each tsm call against the mean of the two baseline calls of its round.
  base_round = [statistics.mean(runs[args.baseline][2 * r:2 * r + 2])
                for r in range(args.rounds)]
  spread = {k: [t / b for t, b in zip(runs[k], base_round)] for k in ("tsm_cold", "tsm")}
  for name in ("tsm_cold", "tsm", args.baseline):
    print(f"{name:8s} median {med[name]:7.2f} s  (" +
          ", ".join(f"{t:.1f}" for t in runs[name]) + ")  " +
          "  ".join(f"{k}={results[name][k]:.6f}" for k in NAMES), flush=True)
  cold, warm = med["tsm_cold"] / med[args.baseline], med["tsm"] / med[args.baseline]
  print(f"tsm cold / {args.baseline} = {cold:.3f} (rounds "
        f"{', '.join(f'{v:.2f}' for v in spread['tsm_cold'])}; first call in the process "
        f"{runs['tsm_cold'][0]:.1f} s)\n"
        f"tsm warm / {args.baseline} = {warm:.3f} (rounds "
        f"{', '.join(f'{v:.2f}' for v in spread['tsm'])})\n"
        f"largest metric difference (cold and warm tsm against {args.baseline}) {diff:.2e}; "
        f"load average at end "
        f"{[round(v, 2) for v in os.getloadavg()]}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"header": info, "median_s": med, "times_s": runs, "metrics": results,
                 "time_ratio": warm, "cold_ratio": cold, "round_ratios": spread,
                 "max_abs_diff": diff}, f, indent=2)


if __name__ == "__main__":
  main()
