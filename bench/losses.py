"""Time and peak memory of the triplet loss + stats + gradient vs brute force.

Usage:
  python bench/losses.py                      # B = 256, 1024, 4096; D = 128
  python bench/losses.py --sizes 256 1024 --repeats 3
  python bench/losses.py --mining semihard --impls tsm tsm-sort --sizes 4096
  # paper A's band modes beside "all" (one row per mode; brute force is "all" only):
  python bench/losses.py --sizes 1024 --impls tsm tsm-sort \
      --mining all semihard hard easy

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


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


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
  parser.add_argument("--mining", nargs="+", default=["all"],
                      choices=["all", "semihard", "hard", "easy", "batch_hard",
                               "batch_semihard"],
                      help="mining modes of the tsm implementations (brute is 'all')")
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
    print(json.dumps(_worker(impl, int(b), int(d), regime, args.repeats, args.mining[0],
                             args.brute_limit_gib)))
    return

  # The machine is shared: the load, before and after, says how far to trust the times.
  print(f"triplet loss + grad, D={args.dim}, {os.cpu_count()} CPUs, median of "
        f"{args.repeats} runs; uptime: {_uptime()}")
  header = (f"{'regime':6} {'impl':9} {'mining':14} {'B':>5} {'compile s':>9} "
            f"{'median s':>9} "
            f"{'cpu s':>7} {'peak MiB':>9} {'XLA MiB':>8} {'loss':>8}  note")
  print(header)
  print("-" * len(header))
  results = []
  cases = [(impl, mode) for impl in args.impls
           for mode in (args.mining if impl.startswith("tsm") else ["all"])]
  for regime in args.regimes:
    for b in args.sizes:
      for impl, mode in cases:
        if impl == "tsm-sort" and regime == "c4":
          continue  # c4 always takes the sort path.
        note = ""
        if impl == "brute" and 4 * b**3 > 4 * args.brute_limit_gib * GIB:
          note = f"skipped: one B^3 float32 tensor alone is {4 * b**3 / GIB:.0f} GiB"
        if impl == "brute-map" and b > args.brute_map_max_b:
          note = f"skipped: O(B^3) time, ~{(b / args.brute_map_max_b)**3:.0f}x B={args.brute_map_max_b}"
        if note:
          print(f"{regime:6} {impl:9} {mode:14} {b:5d} {'':>9} {'':>9} {'':>7} {'':>9} "
                f"{'':>8} {'':>8}  {note}")
          continue
        cmd = [sys.executable, __file__, "--repeats", str(args.repeats),
               "--mining", mode, "--worker",
               impl, str(b), str(args.dim), regime]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
          last = (proc.stderr.strip().splitlines() or ["?"])[-1]
          print(f"{regime:6} {impl:9} {mode:14} {b:5d}  failed: {last[:100]}")
          continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if "skipped" in r:
          print(f"{regime:6} {impl:9} {mode:14} {b:5d} {'':>9} {'':>9} {'':>7} {'':>9} "
                f"{'':>8} {'':>8}  skipped: {r['skipped']}")
          continue
        r["mining"] = mode
        results.append(r)
        print(f"{regime:6} {impl:9} {mode:14} {b:5d} {r['compile_s']:9.2f} "
              f"{r['median_s']:9.3f} "
              f"{r['cpu_s']:7.3f} {r['peak_mib']:9.0f} {r['xla_mib']:8.0f} "
              f"{r['loss']:8.4f}", flush=True)
  print(f"uptime after: {_uptime()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"load_average": os.getloadavg(), "results": results}, f, indent=2)
  # Speed-ups over brute force.
  for r in results:
    if r["impl"] != "tsm" or r["mining"] != "all":
      continue
    for q in results:
      if q["impl"].startswith("brute") and q["b"] == r["b"] and q["regime"] == r["regime"]:
        print(f"speed-up {r['regime']} B={r['b']}: "
              f"{q['median_s'] / r['median_s']:.0f}x over {q['impl']}")


if __name__ == "__main__":
  main()


# ---------------------------------------------------------------------------------------
# The loss zoo's losses: each loss + its gradient vs brute force.
#
# Usage (this section has its own entry point; the triplet section keeps its own CLI):
#   PYTHONPATH=$PWD python -c "from bench import losses; losses.zoo_main()" [--sizes 1024]
#       [--dim 128] [--repeats 5] [--losses ntxent supcon ...] [--no-brute]
#
# Every case is jitted ``value_and_grad`` (with respect to the embeddings and, where the
# loss has them, the class weights / proxies), the stats returned as in training; the
# time is the median steady-state wall time over ``--repeats`` runs after one warm-up.
# Labels are P x K with K = 4 (B / 4 classes; the class-vector losses get C = B / 4).
# "brute" is the textbook transcription: ``lax.map`` over anchors (or proxies) of the
# definition's per-pair terms, e.g. NT-Xent builds, per anchor, the [positives x negatives]
# matrix of ``exp(z_an - z_ap)``: O(B^3) time, O(B^2) memory, no log-sum-exp sharing.
# ---------------------------------------------------------------------------------------

ZOO_LOSSES = ("ntxent", "supcon", "npair", "multi_similarity", "arcface", "proxy_anchor",
              "center_contrastive")


def _zoo_cases(b: int, d: int):
  """name -> (tsm fn, brute fn, needs class vectors); fns map (x, y, w) to (loss, aux)."""
  import math as _math

  import jax
  import jax.numpy as jnp

  from tsm import losses

  def unit(v):
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

  def brute_ntxent(x, y, w, t=0.07):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      z = xn @ xn[a] / t
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      ratio = jnp.where(neg[None, :], jnp.exp(z[None, :] - z[:, None]), 0.0)  # [p, n]
      per_pos = jnp.log1p(jnp.sum(ratio, axis=1))
      return jnp.sum(jnp.where(pos & jnp.any(neg), per_pos, 0.0)), jnp.sum(pos)
    tot, cnt = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.sum(tot) / jnp.sum(cnt), cnt

  def brute_supcon(x, y, w, t=0.1):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      z = xn @ xn[a] / t
      pos = (y == y[a]) & (jnp.arange(n) != a)
      others = jnp.arange(n) != a
      ratio = jnp.where(others[None, :], jnp.exp(z[None, :] - z[:, None]), 0.0)  # [p, j]
      per_pos = jnp.log(jnp.sum(ratio, axis=1))
      la = jnp.sum(jnp.where(pos, per_pos, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
      return la, la > 0
    la, nz = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.sum(jnp.where(nz, la, 0.0)) / jnp.maximum(jnp.sum(nz), 1), nz

  def brute_npair(x, y, w):
    xn = unit(x)
    n = x.shape[0]
    idx = jnp.arange(n)
    same = y[:, None] == y[None, :]
    rank = jnp.sum(same & (idx[None, :] < idx[:, None]), axis=1)
    first, second = rank == 0, rank == 1
    def anchor(a):
      s = xn @ xn[a]
      target = jnp.sum(jnp.where(second & (y == y[a]), s, 0.0))
      denom = jnp.sum(jnp.where(second, jnp.exp(s), 0.0))
      return jnp.where(first[a], jnp.log(denom) - target, 0.0)
    la = jax.lax.map(anchor, idx)
    return jnp.sum(la) / jnp.sum(first), la

  def brute_ms(x, y, w, alpha=2.0, beta=50.0, base=0.5):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      s = xn @ xn[a]
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      return (jnp.log1p(jnp.sum(jnp.where(pos, jnp.exp(-alpha * (s - base)), 0.0))) / alpha
              + jnp.log1p(jnp.sum(jnp.where(neg, jnp.exp(beta * (s - base)), 0.0))) / beta)
    la = jax.lax.map(anchor, jnp.arange(n))
    return jnp.mean(la), la

  def brute_arcface(x, y, w, m=_math.radians(28.6), scale=64.0):
    wn = unit(w)
    xn = unit(x)
    def sample(i):
      c = wn @ xn[i]
      theta = jnp.arccos(jnp.clip(c[y[i]], -1.0 + 1e-7, 1.0 - 1e-7))
      target = jnp.where(theta <= _math.pi - m, jnp.cos(theta + m),
                         jnp.cos(theta) - m * _math.sin(m))
      logits = scale * c.at[y[i]].set(target)
      return jax.nn.logsumexp(logits) - logits[y[i]]
    li = jax.lax.map(sample, jnp.arange(x.shape[0]))
    return jnp.mean(li), li

  def brute_proxy_anchor(x, y, w, delta=0.1, alpha=32.0):
    wn = unit(w)
    xn = unit(x)
    def proxy(c):
      s = xn @ wn[c]
      pos = y == c
      pos_t = jnp.log1p(jnp.sum(jnp.where(pos, jnp.exp(-alpha * (s - delta)), 0.0)))
      neg_t = jnp.log1p(jnp.sum(jnp.where(~pos, jnp.exp(alpha * (s + delta)), 0.0)))
      return pos_t, neg_t, jnp.any(pos)
    pt, nt, has = jax.lax.map(proxy, jnp.arange(w.shape[0]))
    return jnp.sum(pt) / jnp.sum(has) + jnp.mean(nt), has

  def brute_center(x, y, w, scale=16.0):
    wn = unit(w)  # the bank: every class has a centre here
    xn = unit(x)
    def sample(i):
      logits = scale * (wn @ xn[i])
      return jax.nn.logsumexp(logits) - logits[y[i]]
    li = jax.lax.map(sample, jnp.arange(x.shape[0]))
    return jnp.mean(li), li

  sg = jax.lax.stop_gradient
  return {
      "ntxent": (lambda x, y, w: losses.ntxent_loss(x, y), brute_ntxent, False),
      "supcon": (lambda x, y, w: losses.supcon_loss(x, y), brute_supcon, False),
      "npair": (lambda x, y, w: losses.npair_loss(x, y), brute_npair, False),
      "multi_similarity": (lambda x, y, w: losses.multi_similarity_loss(x, y), brute_ms,
                           False),
      "arcface": (lambda x, y, w: losses.arcface_loss(x, y, w), brute_arcface, True),
      "proxy_anchor": (lambda x, y, w: losses.proxy_anchor_loss(x, y, w),
                       brute_proxy_anchor, True),
      # The bank is state, not a parameter: no gradient with respect to it.
      "center_contrastive": (
          lambda x, y, w: losses.center_contrastive_loss(x, y, sg(unit(w))),
          lambda x, y, w: brute_center(x, y, sg(w)), False),
  }


def _zoo_time(fn, args, repeats: int) -> tuple[float, float, float]:
  """(compile s, median s, loss) of a jitted value_and_grad over ``args``."""
  import jax
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    (value, _), _ = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times), float(value)


def zoo_main(argv: list[str] | None = None) -> None:
  """Times each study loss + gradient (B x D) and its brute-force version."""
  parser = argparse.ArgumentParser(description=zoo_main.__doc__)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--losses", nargs="+", default=list(ZOO_LOSSES), choices=ZOO_LOSSES)
  parser.add_argument("--no-brute", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"loss + grad (jit), D={args.dim}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs; uptime: {uptime}")
  header = (f"{'loss':18} {'B':>5} {'tsm s':>9} {'brute s':>9} {'ratio':>7} "
            f"{'compile s':>9} {'tsm loss':>10} {'brute loss':>10}")
  print(header)
  print("-" * len(header))
  for b in args.sizes:
    cases = _zoo_cases(b, args.dim)
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (b, args.dim), jnp.float32)
    y = jnp.arange(b, dtype=jnp.int32) % (b // 4)
    w = jax.random.normal(kw, (b // 4, args.dim), jnp.float32)
    for name in args.losses:
      tsm_fn, brute_fn, with_w = cases[name]
      argnums = (0, 2) if with_w else 0
      fast = jax.jit(jax.value_and_grad(tsm_fn, argnums=argnums, has_aux=True))
      compile_s, tsm_s, tsm_loss = _zoo_time(fast, (x, y, w), args.repeats)
      brute_s, brute_loss = float("nan"), float("nan")
      if not args.no_brute:
        slow = jax.jit(jax.value_and_grad(brute_fn, argnums=argnums, has_aux=True))
        _, brute_s, brute_loss = _zoo_time(slow, (x, y, w), args.repeats)
      print(f"{name:18} {b:5d} {tsm_s:9.4f} {brute_s:9.4f} {brute_s / tsm_s:7.1f} "
            f"{compile_s:9.2f} {tsm_loss:10.5f} {brute_loss:10.5f}", flush=True)
  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"uptime after: {uptime}")
