"""Benchmark: tsm's triplet loss + gradient against pytorch-metric-learning's, same batch.

``tsm.losses.triplet_margin_loss(mining="all")`` (jitted ``value_and_grad``) and
``pytorch_metric_learning.losses.TripletMarginLoss`` (every valid triplet, its default, with
``MeanReducer``: the mean over all of them, as tsm's ``reduction="mean"``, not PML's default
mean over the non-zero ones;
forward + ``backward``) on the same L2-normalised ``[B, D]`` batch, margin 0.2, timed in
alternation in ONE process (medians), both limited to the process's CPU affinity. The
two losses must agree (printed). Label regimes as ``bench/losses.py``: ``pk`` = B / 4
classes of 4 (3 positives per anchor: tsm's sort-free P x K path), ``c4`` = 4 classes
(B / 4 positives per anchor: tsm's general sort path).

Usage:
  taskset -c 0,1 python bench/loss_reference.py [--sizes 256 1024] [--dim 128]
      [--regimes pk c4] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

_THREADS = len(os.sched_getaffinity(0))


def make_batch(b: int, d: int, regime: str, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  classes = b // 4 if regime == "pk" else 4
  return x, (np.arange(b) % classes).astype(np.int32)


def tsm_runner(x: np.ndarray, labels: np.ndarray):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tsm import losses  # pylint: disable=import-outside-toplevel

  def loss(e, y):
    return losses.triplet_margin_loss(e, y, jnp.float32(0.2), mining="all")[0]
  fn = jax.jit(jax.value_and_grad(loss)).lower(x, labels).compile()
  xd, yd = jax.device_put(x), jax.device_put(labels)

  def run():
    value, grad = fn(xd, yd)
    jax.block_until_ready(grad)
    return float(value)
  return run


def pml_runner(x: np.ndarray, labels: np.ndarray):
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import losses as pml_losses  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import reducers as pml_reducers  # pylint: disable=import-outside-toplevel
  loss_fn = pml_losses.TripletMarginLoss(
      margin=0.2, reducer=pml_reducers.MeanReducer())  # tsm's reduction="mean"
  y = torch.from_numpy(labels.astype(np.int64))

  def run():
    e = torch.from_numpy(x).requires_grad_(True)
    value = loss_fn(e, y)
    value.backward()
    return float(value.detach())
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--regimes", nargs="+", default=["pk", "c4"])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--trace", default=None,
                      help="write a jax.profiler trace of tsm's runs per case under this dir")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(_THREADS)
    have_pml = True
  except ImportError:
    have_pml = False
  print(f"device_kind={jax.devices()[0].device_kind} threads={_THREADS} "
        f"load_average={[round(v, 2) for v in os.getloadavg()]}", flush=True)
  if not have_pml:
    print("PyTorch / pytorch-metric-learning not installed: timing tsm only.")
  print(f"{'B':>5s} {'regime':6s} {'tsm ms':>9s} {'pml ms':>9s} {'speed-up':>9s} "
        f"{'tsm loss':>10s} {'pml loss':>10s}", flush=True)
  rows = []
  for b in args.sizes:
    for regime in args.regimes:
      x, labels = make_batch(b, args.dim, regime)
      runners = {"tsm": tsm_runner(x, labels)}
      if have_pml:
        runners["pml"] = pml_runner(x, labels)
      values = {k: f() for k, f in runners.items()}  # warm-up
      times = {k: [] for k in runners}
      for _ in range(args.rounds):
        for k, f in runners.items():
          t = time.perf_counter()
          f()
          times[k].append(time.perf_counter() - t)
      med = {k: statistics.median(v) for k, v in times.items()}
      if args.trace:   # one traced run per case: TensorBoard / Perfetto per-op timing
        with jax.profiler.trace(os.path.join(args.trace, f"{regime}_B{b}")):
          runners["tsm"]()
      pml_ms = 1e3 * med.get("pml", float("nan"))
      row = {"batch": b, "regime": regime, "median_s": med, "loss": values,
             "speedup": med.get("pml", float("nan")) / med["tsm"]}
      rows.append(row)
      print(f"{b:5d} {regime:6s} {1e3 * med['tsm']:9.2f} {pml_ms:9.2f} "
            f"{row['speedup']:8.1f}x {values['tsm']:10.6f} "
            f"{values.get('pml', float('nan')):10.6f}", flush=True)
  print("load average at end:", [round(v, 2) for v in os.getloadavg()])
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
