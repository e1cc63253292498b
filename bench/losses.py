"""Time and peak memory of the triplet loss + stats + gradient vs brute force.

Usage:
  python bench/losses.py                      # B = 256, 1024, 4096; D = 128
  python bench/losses.py --sizes 256 1024 --repeats 3
  python bench/losses.py --mining semihard --impls tsm tsm-sort --sizes 4096

Every case runs in a fresh subprocess (``--worker``) so that its memory high-water
mark is its own. In the worker:
  * inputs are created and the process's resident size is read as the baseline;
  * the jitted ``value_and_grad`` is lowered and compiled (timed separately:
    "compile s");
  * it runs once to warm up, then ``--repeats`` times; "median s" is the median
    steady-state wall time of one loss + gradient evaluation;
  * "peak MiB" is ``ru_maxrss`` at the end minus the baseline: the whole extra
    memory of the process, compilation included; "XLA MiB" is what the compiled
    executable's buffer plan reserves (``memory_analysis()``: temporaries, arguments
    and outputs), i.e. the memory of one evaluation itself.

Implementations:
  * ``tsm``: ``tsm.losses.triplet_margin_loss`` (auto: sort-free dense loop when every
    anchor has <= ``tsm.mining.DENSE_MAX_POSITIVES`` positives, else sort + search).
  * ``tsm-sort``: the same with the sort path forced.
  * ``brute``: the textbook jnp version over the ``[B, B, B]`` tensor of triplets
    (loss and easy / semi-hard / hard counts), skipped where XLA's buffer plan exceeds
    ``--brute-limit-gib``.
  * ``brute-map``: the same one anchor at a time (``lax.map`` + ``jax.checkpoint``):
    ``O(B^3)`` time, ``O(B^2)`` memory; skipped above ``--brute-map-max-b``.
Both return the loss, the triplet-type counts and the gradient, as a training step
does (returning the loss alone would let XLA drop the counting).

Label regimes: ``pk`` = P x K batches with K = 4 (B / 4 classes, 3 positives per
anchor); ``c4`` = 4 classes (B / 4 positives per anchor).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

GIB = 2**30


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(impl: str, b: int, d: int, regime: str, repeats: int,
            mining_mode: str, limit_gib: float) -> dict:
  import jax
  import jax.numpy as jnp

  from tsm import losses, mining
  from tsm.distances import pairwise_distances

  if impl == "tsm-sort":
    mining.DENSE_MAX_POSITIVES = 0

  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (b, d), jnp.float32)
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  num_classes = b // 4 if regime == "pk" else 4
  labels = jnp.arange(b, dtype=jnp.int32) % num_classes
  margin = jnp.float32(0.2)

  def brute_anchor(dist_row, pos_row, neg_row, margin):
    """Loss sum and easy / semi-hard / hard counts of one anchor, over [B, B]."""
    mask = pos_row[:, None] & neg_row[None, :]
    d_ap, d_an = dist_row[:, None], dist_row[None, :]
    t = d_ap + margin
    total = jnp.sum(jnp.where(mask, jax.nn.relu(t - d_an), 0.0))
    count = lambda m: jnp.sum(mask & m, dtype=jnp.float32)
    return total, jnp.stack([count(d_an >= t), count((d_ap < d_an) & (d_an < t)),
                             count(d_an <= d_ap), count(d_an > -1.0)])

  if impl == "brute":  # the whole [B, B, B] tensor at once
    def loss_fn(x, labels, margin):
      dist = pairwise_distances(x)
      positive, negative = mining.label_masks(labels)
      totals, counts = jax.vmap(brute_anchor, (0, 0, 0, None))(dist, positive,
                                                                negative, margin)
      counts = jnp.sum(counts, axis=0)
      return jnp.sum(totals) / jnp.maximum(counts[3], 1.0), counts
  elif impl == "brute-map":  # one anchor at a time: O(B^3) time, O(B^2) memory
    def loss_fn(x, labels, margin):
      dist = pairwise_distances(x)
      positive, negative = mining.label_masks(labels)
      body = jax.checkpoint(lambda args: brute_anchor(*args, margin))
      totals, counts = jax.lax.map(body, (dist, positive, negative))
      counts = jnp.sum(counts, axis=0)
      return jnp.sum(totals) / jnp.maximum(counts[3], 1.0), counts
  else:
    def loss_fn(x, labels, margin):
      return losses.triplet_margin_loss(x, labels, margin, mining=mining_mode)

  # Stats are returned too (as in training), so XLA cannot drop their computation.
  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  jax.block_until_ready((x, labels))
  baseline = _rss_bytes()
  start = time.perf_counter()
  compiled = fn.lower(x, labels, margin).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  xla_bytes = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
               + analysis.output_size_in_bytes)
  if xla_bytes > limit_gib * GIB:
    return dict(impl=impl, b=b, d=d, regime=regime,
                skipped=f"XLA plans {xla_bytes / GIB:.0f} GiB > {limit_gib:g} GiB")
  jax.block_until_ready(compiled(x, labels, margin))
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    (value, _), _ = jax.block_until_ready(compiled(x, labels, margin))
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return dict(impl=impl, b=b, d=d, regime=regime, compile_s=compile_s,
              median_s=statistics.median(times), min_s=min(times),
              cpu_s=statistics.median(cpu), peak_mib=(_maxrss_bytes() - baseline) / 2**20,
              xla_mib=xla_bytes / 2**20, loss=float(value))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--regimes", nargs="+", default=["pk", "c4"])
  parser.add_argument("--impls", nargs="+",
                      default=["tsm", "tsm-sort", "brute", "brute-map"])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--mining", default="all", choices=["all", "hard", "semihard"],
                      help="mining mode of the tsm implementations (brute is 'all')")
  parser.add_argument("--brute-limit-gib", type=float, default=8.0,
                      help="skip a case whose compiled buffers exceed this")
  parser.add_argument("--brute-map-max-b", type=int, default=1024,
                      help="largest B for brute-map (O(B^3) time)")
  parser.add_argument("--json", default=None, help="also write the results here")
  parser.add_argument("--worker", nargs=4, metavar=("IMPL", "B", "D", "REGIME"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    impl, b, d, regime = args.worker
    print(json.dumps(_worker(impl, int(b), int(d), regime, args.repeats, args.mining,
                             args.brute_limit_gib)))
    return

  print(f"triplet loss + grad, mining={args.mining!r}, D={args.dim}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}")
  header = (f"{'regime':6} {'impl':9} {'B':>5} {'compile s':>9} {'median s':>9} "
            f"{'cpu s':>7} {'peak MiB':>9} {'XLA MiB':>8} {'loss':>8}  note")
  print(header)
  print("-" * len(header))
  results = []
  for regime in args.regimes:
    for b in args.sizes:
      for impl in args.impls:
        if impl == "tsm-sort" and regime == "c4":
          continue  # c4 always takes the sort path.
        note = ""
        if impl == "brute" and 4 * b**3 > 4 * args.brute_limit_gib * GIB:
          note = f"skipped: one B^3 float32 tensor alone is {4 * b**3 / GIB:.0f} GiB"
        if impl == "brute-map" and b > args.brute_map_max_b:
          note = f"skipped: O(B^3) time, ~{(b / args.brute_map_max_b)**3:.0f}x B={args.brute_map_max_b}"
        if note:
          print(f"{regime:6} {impl:9} {b:5d} {'':>9} {'':>9} {'':>7} {'':>9} {'':>8} "
                f"{'':>8}  {note}")
          continue
        cmd = [sys.executable, __file__, "--repeats", str(args.repeats),
               "--mining", args.mining, "--worker",
               impl, str(b), str(args.dim), regime]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
          last = (proc.stderr.strip().splitlines() or ["?"])[-1]
          print(f"{regime:6} {impl:9} {b:5d}  failed: {last[:100]}")
          continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if "skipped" in r:
          print(f"{regime:6} {impl:9} {b:5d} {'':>9} {'':>9} {'':>7} {'':>9} {'':>8} "
                f"{'':>8}  skipped: {r['skipped']}")
          continue
        results.append(r)
        print(f"{regime:6} {impl:9} {b:5d} {r['compile_s']:9.2f} {r['median_s']:9.3f} "
              f"{r['cpu_s']:7.3f} {r['peak_mib']:9.0f} {r['xla_mib']:8.0f} "
              f"{r['loss']:8.4f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"load_average": os.getloadavg(), "results": results}, f, indent=2)
  # Speed-ups over brute force.
  for r in results:
    if r["impl"] != "tsm":
      continue
    for q in results:
      if q["impl"].startswith("brute") and q["b"] == r["b"] and q["regime"] == r["regime"]:
        print(f"speed-up {r['regime']} B={r['b']}: "
              f"{q['median_s'] / r['median_s']:.0f}x over {q['impl']}")


if __name__ == "__main__":
  main()
