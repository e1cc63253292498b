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
#   ... losses.zoo_main(['--losses', 'pml'])   # PML's further losses (PML_LOSSES)
#
# Every case is jitted ``value_and_grad`` (with respect to the embeddings and, where the
# loss has them, the class weights / proxies), four ways: tsm's loss alone (its
# statistics unused, so XLA drops them: what ``jax.grad`` of the loss costs), the
# straightforward version's, tsm's with its statistics returned as in training, and the
# straightforward version's with the two mean pair distances of the statistics
# (``_straightforward_pair_stats``); the time is the median steady-state wall time over
# ``--repeats`` runs after one warm-up, the four runs alternating in one process.
# Labels are P x K with K = 4 (B / 4 classes; the class-vector losses get C = B / 4).
# "brute" is the textbook transcription: ``lax.map`` over anchors (or proxies) of the
# definition's per-pair terms, e.g. NT-Xent builds, per anchor, the [positives x negatives]
# matrix of ``exp(z_an - z_ap)``: O(B^3) time, O(B^2) memory, no log-sum-exp sharing.
# ---------------------------------------------------------------------------------------

ZOO_LOSSES = ("contrastive", "ntxent", "supcon", "npair", "multi_similarity", "arcface",
              "proxy_anchor", "center_contrastive")
# PML's further losses (tsm.config's loss table, and VICReg).
PML_LOSSES = ("proxy_nca", "normalized_softmax", "p2sgrad", "soft_triple", "sphereface",
              "subcenter_arcface", "tuplet_margin", "snr_contrastive", "ranked_list",
              "smooth_ap", "pnp", "tcm", "vicreg", "circle", "lifted_structure",
              "generalized_lifted_structure", "margin", "intra_pair_variance", "nca",
              "angular", "instance", "fast_ap", "histogram", "cosface",
              "large_margin_softmax", "dynamic_soft_margin", "manifold")
# dynamic_soft_margin's histogram (its state between steps) is a fixed one here, given to
# both versions; manifold's meta-classes (drawn per step by ``tsm.losses.manifold``) are
# the batch's P x K labels, each of the C = B / 4 proxies the meta-class of K samples.
_SOFT_MARGIN_HISTOGRAM = tuple(float(v) for v in range(1, 11))
# Sub-centres per class of the multi-centre losses (PML's defaults).
_CENTRES = {"soft_triple": 10, "subcenter_arcface": 3}


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

  def ce(z, y):
    """Mean cross-entropy of logits ``z`` [B, C] against labels."""
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])

  def brute_proxy_nca(x, y, w, scale=1.0):
    d = jnp.sum(jnp.square(unit(x)[:, None, :] - unit(w)[None, :, :]), axis=-1)  # [B, C]
    return ce(-scale * d, y), d

  def brute_normalized_softmax(x, y, w, t=0.05):
    z = unit(x) @ unit(w).T / t
    return ce(z, y), z

  def brute_p2sgrad(x, y, w):
    cos = jnp.clip(unit(x) @ unit(w).T, -1.0, 1.0)
    return jnp.mean(jnp.square(cos - jax.nn.one_hot(y, w.shape[0]))), cos

  def brute_soft_triple(x, y, w, m=0.01, la=20.0, gamma=0.1):
    cos = jnp.einsum("bd,ckd->bck", unit(x), unit(w))
    sim = jnp.sum(jax.nn.softmax(cos / gamma, axis=2) * cos, axis=2)
    return ce(la * (sim - m * jax.nn.one_hot(y, w.shape[0])), y), sim

  def brute_sphereface(x, y, w, m=4, scale=1.0):
    cos = unit(x) @ unit(w).T
    c = jnp.take_along_axis(cos, y[:, None], 1)[:, 0]
    theta = jnp.arccos(jnp.clip(c, -1.0 + 1e-7, 1.0 - 1e-7))
    k = jax.lax.stop_gradient(jnp.floor(theta * m / _math.pi))
    psi = (-1.0) ** k * jnp.cos(m * theta) - 2.0 * k
    z = jnp.where(jax.nn.one_hot(y, w.shape[0]) > 0, psi[:, None], cos)
    return ce(scale * jnp.linalg.norm(x, axis=1, keepdims=True) * z, y), z

  def brute_subcenter_arcface(x, y, w, m=_math.radians(28.6), scale=64.0):
    cos = jnp.max(jnp.einsum("bd,ckd->bck", unit(x), unit(w)), axis=2)
    c = jnp.take_along_axis(cos, y[:, None], 1)[:, 0]
    theta = jnp.arccos(jnp.clip(c, -1.0 + 1e-7, 1.0 - 1e-7))
    target = jnp.where(theta <= _math.pi - m, jnp.cos(theta + m),
                       jnp.cos(theta) - m * _math.sin(m))
    z = jnp.where(jax.nn.one_hot(y, w.shape[0]) > 0, target[:, None], cos)
    return ce(scale * z, y), z

  def brute_tuplet(x, y, w, m=_math.radians(5.73), s=64.0):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      c = xn @ xn[a]
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      theta = jnp.arccos(jnp.clip(c, -1.0 + 1e-7, 1.0 - 1e-7))
      diff = s * (c[None, :] - jnp.cos(theta - m)[:, None])   # [p, n]
      per_pos = jnp.log1p(jnp.sum(jnp.where(neg[None, :], jnp.exp(diff), 0.0), axis=1))
      return jnp.sum(jnp.where(pos, per_pos, 0.0)), jnp.sum(pos)
    tot, cnt = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.sum(tot) / jnp.sum(cnt), cnt

  def brute_snr(x, y, w, m=1.0):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):   # PML's SNRDistance: var(x_j - x_a) / var(x_a)
      d = jnp.var(xn - xn[a], axis=1) / jnp.var(xn[a])
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      return jnp.where(pos, jax.nn.relu(d), 0.0), jnp.where(neg, jax.nn.relu(m - d), 0.0)
    lp, ln = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    def mean_nonzero(v):
      return jnp.sum(v) / jnp.maximum(jnp.sum(v > 0), 1)
    return mean_nonzero(lp) + mean_nonzero(ln), lp

  def brute_ranked_list(x, y, w, m=0.2, tn=1.0, imbalance=0.5, tp=0.0):
    xn = unit(x)
    n = x.shape[0]
    a_ = 1.0 + m / 2.0
    sq = jnp.maximum(2.0 - 2.0 * xn @ xn.T, 0.0)
    apart = sq > 1e-6
    d = jnp.sqrt(jnp.where(apart, sq, 1.0))
    pos = (y[:, None] == y[None, :]) & ~jnp.eye(n, dtype=bool)
    neg = y[:, None] != y[None, :]
    sd = jax.lax.stop_gradient(d)
    p_star = pos & apart & (sd > a_ - m)
    n_star = neg & apart & (sd < a_)
    w_p = jnp.where(p_star, jnp.exp(tp * (d - (a_ - m))), 0.0)
    w_n = jnp.where(n_star, jnp.exp(tn * (a_ - d)), 0.0)
    l_p = jnp.sum(w_p * (d - (a_ - m)), 1) / (jnp.sum(w_p, 1) + 1e-5 * n)
    l_n = jnp.sum(w_n * (a_ - d), 1) / (jnp.sum(w_n, 1) + 1e-5 * n)
    return jnp.mean((1.0 - imbalance) * l_p + imbalance * l_n), l_p

  def brute_smooth_ap(x, y, w, t=0.01):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      s_a = xn @ xn[a]
      p_a = y == y[a]
      sig = jax.nn.sigmoid((s_a[None, :] - s_a[:, None]) / t) * (1.0 - jnp.eye(n))
      r_all = 1.0 + jnp.sum(sig, axis=1)
      r_pos = 1.0 + jnp.sum(jnp.where(p_a[None, :], sig, 0.0), axis=1)
      return jnp.sum(jnp.where(p_a, r_pos / r_all, 0.0)) / jnp.sum(p_a)
    ap = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.mean(1.0 - ap), ap

  def brute_pnp(x, y, w, t=0.01):   # variant "O"
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      s_a = xn @ xn[a]
      p_a = y == y[a]
      sig = jax.nn.sigmoid((s_a[None, :] - s_a[:, None]) / t)
      r = jnp.sum(jnp.where(~p_a[None, :], sig, 0.0), axis=1)
      return jnp.sum(jnp.where(p_a, r, 0.0)) / jnp.sum(p_a)
    la = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.mean(la), la

  def brute_tcm(x, y, w, m_plus=0.9, m_minus=0.5):
    xn = unit(x)
    s = xn @ xn.T
    pos = (y[:, None] == y[None, :]) & ~jnp.eye(x.shape[0], dtype=bool)
    neg = y[:, None] != y[None, :]
    sel_p, sel_n = pos & (s <= m_plus), neg & (s >= m_minus)
    lp = jnp.sum(jnp.where(sel_p, m_plus - s, 0.0)) / jnp.maximum(jnp.sum(sel_p), 1)
    ln = jnp.sum(jnp.where(sel_n, s - m_minus, 0.0)) / jnp.maximum(jnp.sum(sel_n), 1)
    return lp + ln, s

  def brute_vicreg(x, y, w, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    z1, z2 = x, jnp.roll(x, 1, axis=1)   # two "views" of the batch
    def var_cov(z):
      std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
      zc = z - jnp.mean(z, axis=0)
      cov = zc.T @ zc / (z.shape[0] - 1)
      off = cov - jnp.diag(jnp.diag(cov))
      return jnp.mean(jax.nn.relu(1.0 - std)) / 2.0, jnp.sum(jnp.square(off)) / z.shape[1]
    (v1, c1), (v2, c2) = var_cov(z1), var_cov(z2)
    return lam * jnp.mean(jnp.square(z1 - z2)) + mu * (v1 + v2) + nu * (c1 + c2), v1

  def dist(xn):
    """Euclidean distances of unit rows (0 on the diagonal, finite gradient)."""
    sq = jnp.maximum(2.0 - 2.0 * xn @ xn.T, 1e-12)
    return jnp.where(jnp.eye(xn.shape[0], dtype=bool), 0.0, jnp.sqrt(sq))

  def masks(y):
    n = y.shape[0]
    pos = (y[:, None] == y[None, :]) & ~jnp.eye(n, dtype=bool)
    return pos, y[:, None] != y[None, :]

  def brute_circle(x, y, w, m=0.4, gamma=80.0):
    xn = unit(x)
    n = x.shape[0]
    def anchor(a):
      s = xn @ xn[a]
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      zp = -gamma * jax.lax.stop_gradient(jax.nn.relu(1.0 + m - s)) * (s - (1.0 - m))
      zn = gamma * jax.lax.stop_gradient(jax.nn.relu(s + m)) * (s - m)
      z = jnp.where(pos[:, None] & neg[None, :], zn[None, :] + zp[:, None], -jnp.inf)
      return jax.nn.softplus(jax.nn.logsumexp(z))   # log(1 + sum exp): exp overflows
    la = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.sum(la) / jnp.maximum(jnp.sum(la > 0), 1), la

  def brute_lifted(x, y, w, neg_margin=1.0, pos_margin=0.0):
    d = dist(unit(x))
    pos, neg = masks(y)
    def anchor(a):   # J_ap over the negatives of both ends: [p, 2 B]
      both = jnp.concatenate([jnp.broadcast_to(neg_margin - d[a], d.shape),
                              neg_margin - d], axis=1)
      keep = jnp.broadcast_to(jnp.concatenate([neg[a], neg[a]]), both.shape)  # N(p) = N(a)
      lse = jax.nn.logsumexp(jnp.where(keep, both, -jnp.inf), axis=1)
      j = lse + d[a] - pos_margin
      return jnp.sum(jnp.where(pos[a], jnp.square(jax.nn.relu(j)) / 2.0, 0.0))
    tot = jax.lax.map(jax.checkpoint(anchor), jnp.arange(x.shape[0]))
    return jnp.sum(tot) / jnp.sum(pos), tot

  def brute_generalized_lifted(x, y, w, neg_margin=1.0, pos_margin=0.0):
    d = dist(unit(x))
    pos, neg = masks(y)
    lp = jax.nn.logsumexp(jnp.where(pos, d - pos_margin, -jnp.inf), axis=1)
    ln = jax.nn.logsumexp(jnp.where(neg, neg_margin - d, -jnp.inf), axis=1)
    la = jax.nn.relu(lp + ln)
    return jnp.mean(la), la

  def brute_margin(x, y, w, m=0.2, beta=1.2):
    d = dist(unit(x))
    pos, neg = masks(y)
    def anchor(a):   # every triplet (a, p, n): [p, n]
      hp = jax.nn.relu(d[a] - beta + m)[:, None]
      hn = jax.nn.relu(beta - d[a] + m)[None, :]
      t = pos[a][:, None] & neg[a][None, :]
      return (jnp.sum(jnp.where(t, hp + hn, 0.0)),
              jnp.sum(t & (hp > 0)) + jnp.sum(t & (hn > 0)))
    tot, cnt = jax.lax.map(jax.checkpoint(anchor), jnp.arange(x.shape[0]))
    return jnp.sum(tot) / jnp.maximum(jnp.sum(cnt), 1), cnt

  def brute_ipv(x, y, w, pos_eps=0.01, neg_eps=0.01):
    xn = unit(x)
    s = xn @ xn.T
    pos, neg = masks(y)
    mu_p = jnp.sum(jnp.where(pos, s, 0.0)) / jnp.sum(pos)
    mu_n = jnp.sum(jnp.where(neg, s, 0.0)) / jnp.sum(neg)
    lp = jnp.where(pos, jnp.square(jax.nn.relu((1.0 - pos_eps) * mu_p - s)), 0.0)
    ln = jnp.where(neg, jnp.square(jax.nn.relu(s - (1.0 + neg_eps) * mu_n)), 0.0)
    return jnp.sum(lp) / jnp.sum(pos) + jnp.sum(ln) / jnp.sum(neg), s

  def brute_nca(x, y, w, scale=1.0):
    xn = unit(x)
    z = -scale * jnp.sum(jnp.square(xn[:, None, :] - xn[None, :, :]), axis=-1)
    pos, _ = masks(y)
    others = ~jnp.eye(x.shape[0], dtype=bool)
    li = (jax.nn.logsumexp(jnp.where(others, z, -jnp.inf), axis=1)
          - jax.nn.logsumexp(jnp.where(pos, z, -jnp.inf), axis=1))
    return jnp.mean(li), li

  def brute_angular(x, y, w, alpha=_math.radians(40.0)):
    xn = unit(x)
    n = x.shape[0]
    t = _math.tan(alpha) ** 2
    sim = xn @ xn.T
    def anchor(a):   # f_apn = 4 t (x_a + x_p) . x_n - 2 (1 + t) x_a . x_p over [p, n]
      f = 4.0 * t * (sim[a][None, :] + sim) - 2.0 * (1.0 + t) * sim[a][:, None]
      pos = (y == y[a]) & (jnp.arange(n) != a)
      neg = y != y[a]
      per = jnp.log1p(jnp.sum(jnp.where(neg[None, :], jnp.exp(f), 0.0), axis=1))
      return jnp.sum(jnp.where(pos, per, 0.0)), jnp.sum(pos)
    tot, cnt = jax.lax.map(jax.checkpoint(anchor), jnp.arange(n))
    return jnp.sum(tot) / jnp.sum(cnt), cnt

  def brute_instance(x, y, w, gamma=64.0):
    xn = unit(x)
    z = gamma * xn @ xn.T
    target = jnp.searchsorted(jnp.unique(y, size=x.shape[0], fill_value=y.max() + 1), y)
    return ce(z, target), z

  def brute_fast_ap(x, y, w, num_bins=10):
    xn = unit(x)
    d = jnp.sum(jnp.square(xn[:, None, :] - xn[None, :, :]), axis=-1)
    pos, neg = masks(y)
    delta = 4.0 / num_bins
    centres = jnp.arange(num_bins + 1) * delta
    pulse = jax.nn.relu(1.0 - jnp.abs(d[:, :, None] - centres) / delta)   # [B, B, L + 1]
    hp = jnp.sum(jnp.where(pos[:, :, None], pulse, 0.0), axis=1)
    hn = jnp.sum(jnp.where(neg[:, :, None], pulse, 0.0), axis=1)
    cp, cn = jnp.cumsum(hp, axis=1), jnp.cumsum(hn, axis=1)
    ap = jnp.sum(hp * cp / jnp.maximum(cp + cn, 1e-12), axis=1) / jnp.sum(pos, axis=1)
    return jnp.mean(1.0 - ap), ap

  def brute_histogram(x, y, w, num_bins=100):
    xn = unit(x)
    s = jnp.clip(xn @ xn.T, -1.0, 1.0)
    pos, neg = masks(y)
    upper = jnp.triu(jnp.ones(pos.shape, bool), 1)
    nodes = -1.0 + jnp.arange(num_bins + 1) * (2.0 / num_bins)
    wgt = jax.nn.relu(1.0 - jnp.abs(s[:, :, None] - nodes) / (2.0 / num_bins))
    hp = jnp.sum(jnp.where((pos & upper)[:, :, None], wgt, 0.0), axis=(0, 1))
    hn = jnp.sum(jnp.where((neg & upper)[:, :, None], wgt, 0.0), axis=(0, 1))
    p_pos, p_neg = hp / jnp.sum(pos & upper), hn / jnp.sum(neg & upper)
    return jnp.sum(p_neg * jnp.cumsum(p_pos)), hp

  def brute_cosface(x, y, w, m=0.35, scale=64.0):
    cos = unit(x) @ unit(w).T
    return ce(scale * (cos - m * jax.nn.one_hot(y, w.shape[0])), y), cos

  def brute_large_margin(x, y, w, m=4, scale=1.0):
    norms = jnp.linalg.norm(x, axis=1, keepdims=True) * jnp.linalg.norm(w, axis=1)
    cos = (x @ w.T) / norms
    c = jnp.take_along_axis(cos, y[:, None], 1)[:, 0]
    theta = jnp.arccos(jnp.clip(c, -1.0 + 1e-7, 1.0 - 1e-7))
    k = jax.lax.stop_gradient(jnp.floor(theta * m / _math.pi))
    psi = (-1.0) ** k * jnp.cos(m * theta) - 2.0 * k
    z = jnp.where(jax.nn.one_hot(y, w.shape[0]) > 0, psi[:, None], cos)
    return ce(scale * norms * z, y), z

  def brute_contrastive(x, y, w, m=1.0):   # Hadsell et al.: y d^2 + (1 - y) relu(m - d)^2
    sq = jnp.sum(x * x, axis=1)
    d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 1e-12))
    pairs = jnp.triu(jnp.ones(d.shape, bool), k=1)
    same = y[:, None] == y[None, :]
    terms = jnp.where(same, jnp.square(d), jnp.square(jax.nn.relu(m - d)))
    return jnp.sum(jnp.where(pairs, terms, 0.0)) / jnp.sum(pairs), d

  def soft_margin_histogram():
    h = jnp.asarray(_SOFT_MARGIN_HISTOGRAM, jnp.float32)
    return h / jnp.sum(h)

  def brute_dynamic_soft_margin(x, y, w, min_val=-2.0, num_bins=10):
    d = dist(unit(x))
    pos, neg = masks(y)
    cdf = jnp.cumsum(soft_margin_histogram())
    delta = 2.0 * abs(min_val) / num_bins
    def anchor(a):   # every triplet (a, p, n): t = d_ap - d_an, [p, n]
      t = d[a][:, None] - d[a][None, :]
      k = jnp.clip(jnp.floor((jax.lax.stop_gradient(t) - min_val) / delta), 0,
                   num_bins - 1).astype(jnp.int32)
      used = pos[a][:, None] & neg[a][None, :]
      return (jnp.sum(jnp.where(used, cdf[k] * t, 0.0)),
              jnp.sum(used, dtype=jnp.float32))
    total, count = jax.lax.map(anchor, jnp.arange(x.shape[0]))
    return jnp.sum(total) / jnp.maximum(jnp.sum(count), 1.0), total

  def brute_manifold(x, y, w, lambda_c=1.0, alpha=0.8, margin=5e-4):
    n, k = x.shape[0], w.shape[0]
    pn = unit(jnp.concatenate([x, w]))
    s = jnp.exp(jnp.maximum(pn @ pn.T, 0.0) / 0.5) * (1.0 - jnp.eye(n + k))
    r = 1.0 / jnp.sqrt(jnp.sum(s, axis=1))
    f = (1.0 - alpha) * jnp.linalg.inv(jnp.eye(n + k) - alpha * r[:, None] * s * r[None, :])
    own = jax.nn.one_hot(y, k) > 0
    def part(fm):   # log(1 + sum exp(v)) over the other proxies with v >= 0
      v = fm - jnp.sum(jnp.where(own, fm, 0.0), axis=1, keepdims=True) + margin
      kept = (jax.lax.stop_gradient(v) >= 0) & ~own
      return jnp.log1p(jnp.sum(jnp.where(kept, jnp.exp(v), 0.0), axis=1))
    intrinsic = part(f[:n, n:])
    context = part(unit(f[:n]) @ unit(f[n:]).T)
    return jnp.mean(intrinsic) + lambda_c * jnp.mean(context), intrinsic

  sg = jax.lax.stop_gradient
  pml = {
      "proxy_nca": (lambda x, y, w: losses.proxy_nca_loss(x, y, w), brute_proxy_nca,
                    True),
      "normalized_softmax": (lambda x, y, w: losses.normalized_softmax_loss(x, y, w),
                             brute_normalized_softmax, True),
      "p2sgrad": (lambda x, y, w: losses.p2sgrad_loss(x, y, w), brute_p2sgrad, True),
      "soft_triple": (lambda x, y, w: losses.soft_triple_loss(x, y, w), brute_soft_triple,
                      True),
      "sphereface": (lambda x, y, w: losses.sphereface_loss(x, y, w), brute_sphereface,
                     True),
      "subcenter_arcface": (lambda x, y, w: losses.subcenter_arcface_loss(x, y, w),
                            brute_subcenter_arcface, True),
      "tuplet_margin": (lambda x, y, w: losses.tuplet_margin_loss(x, y), brute_tuplet,
                        False),
      "snr_contrastive": (lambda x, y, w: losses.snr_contrastive_loss(x, y), brute_snr,
                          False),
      "ranked_list": (lambda x, y, w: losses.ranked_list_loss(x, y, 0.2, tn=1.0),
                      brute_ranked_list, False),
      "smooth_ap": (lambda x, y, w: losses.smooth_ap_loss(x, y), brute_smooth_ap, False),
      "pnp": (lambda x, y, w: losses.pnp_loss(x, y), brute_pnp, False),
      "tcm": (lambda x, y, w: losses.tcm_loss(x, y), brute_tcm, False),
      "vicreg": (lambda x, y, w: losses.vicreg_loss(x, jnp.roll(x, 1, axis=1)),
                 brute_vicreg, False),
      "circle": (lambda x, y, w: losses.circle_loss(x, y), brute_circle, False),
      "lifted_structure": (lambda x, y, w: losses.lifted_structure_loss(x, y),
                           brute_lifted, False),
      "generalized_lifted_structure": (
          lambda x, y, w: losses.generalized_lifted_structure_loss(x, y),
          brute_generalized_lifted, False),
      "margin": (lambda x, y, w: losses.margin_loss(x, y), brute_margin, False),
      "intra_pair_variance": (lambda x, y, w: losses.intra_pair_variance_loss(x, y),
                              brute_ipv, False),
      "nca": (lambda x, y, w: losses.nca_loss(x, y), brute_nca, False),
      "angular": (lambda x, y, w: losses.angular_loss(x, y), brute_angular, False),
      "instance": (lambda x, y, w: losses.instance_loss(x, y), brute_instance, False),
      "fast_ap": (lambda x, y, w: losses.fast_ap_loss(x, y), brute_fast_ap, False),
      "histogram": (lambda x, y, w: losses.histogram_loss(x, y), brute_histogram, False),
      "cosface": (lambda x, y, w: losses.cosface_loss(x, y, w), brute_cosface, True),
      "large_margin_softmax": (lambda x, y, w: losses.large_margin_softmax_loss(x, y, w),
                               brute_large_margin, True),
      "dynamic_soft_margin": (
          lambda x, y, w: losses.dynamic_soft_margin_loss(x, y, soft_margin_histogram()),
          brute_dynamic_soft_margin, False),
      "manifold": (lambda x, y, w: losses.manifold_loss(x, y, w), brute_manifold, True),
  }
  return {**pml,
      "contrastive": (lambda x, y, w: losses.contrastive_loss(x, y, 1.0),
                      brute_contrastive, False),
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


def _straightforward_pair_stats(x, y):
  """The statistics a straightforward version would add to match tsm's: the mean
  Euclidean distance over the positive and over the negative pairs ``i < j`` of the
  batch (the costly part of ``ActivityStats`` / ``PairStats``: a ``[B, B]`` Gram
  product; tsm's counts of active terms, cheap, are left out), without gradient."""
  import jax
  import jax.numpy as jnp
  x = jax.lax.stop_gradient(x)
  sq = jnp.sum(x * x, axis=1)
  d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
  upper = jnp.triu(jnp.ones(d.shape, bool), k=1)
  same = y[:, None] == y[None, :]
  def mean(mask):
    return jnp.sum(jnp.where(mask, d, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
  return mean(same & upper), mean(~same & upper)


def _zoo_time_alternating(fns, args, repeats: int):
  """Compiles each of ``fns``, warms each up, then alternates their runs (so that a
  change of the machine's load hits all alike); returns (compile s of the first, then
  (median s, loss) of each, then each one's run times in round order)."""
  import jax
  start = time.perf_counter()
  compiled = [fns[0].lower(*args).compile()]
  compile_s = time.perf_counter() - start
  compiled += [fn.lower(*args).compile() for fn in fns[1:]]
  for fn in compiled:
    jax.block_until_ready(fn(*args))
  times = [[] for _ in compiled]
  values = [float("nan")] * len(compiled)
  for _ in range(repeats):
    for i, fn in enumerate(compiled):
      start = time.perf_counter()
      (value, _), _ = jax.block_until_ready(fn(*args))
      times[i].append(time.perf_counter() - start)
      values[i] = float(value)
  return compile_s, [(statistics.median(t), v) for t, v in zip(times, values)], times


def _paired_ratio(reference: list[float], timed: list[float]) -> str:
  """``reference / timed`` per round (the two ran back to back), as its median and
  quartiles: steadier than the ratio of two medians when the load drifts."""
  r = sorted(a / b for a, b in zip(reference, timed))
  q = lambda f: r[round(f * (len(r) - 1))]
  return f"{q(0.5):.2f} [{q(0.25):.2f}, {q(0.75):.2f}]"


def zoo_main(argv: list[str] | None = None) -> None:
  """Times each study loss + gradient (B x D) and its brute-force version."""
  parser = argparse.ArgumentParser(description=zoo_main.__doc__)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--losses", nargs="+", default=list(ZOO_LOSSES),
                      choices=ZOO_LOSSES + PML_LOSSES + ("pml",),
                      help="loss names; 'pml': PML's further losses (PML_LOSSES)")
  parser.add_argument("--no-brute", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"loss + grad (jit), D={args.dim}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs; uptime: {uptime}")
  print("tsm s: loss + gradient (the statistics unused, so XLA drops them); brute s: the "
        "straightforward version's; +stats: both also return statistics, tsm its own, "
        "the straightforward version the two mean pair distances of the batch "
        "(_straightforward_pair_stats); ratio: brute s / tsm s; paired: the median and "
        "quartiles of brute / tsm (loss + gradient) over the rounds")
  header = (f"{'loss':28} {'B':>5} {'tsm s':>8} {'brute s':>8} {'ratio':>6} "
            f"{'+stats s':>8} {'brute+st':>8} {'ratio+st':>8} {'compile s':>9} "
            f"{'tsm loss':>10} {'brute loss':>10}  {'paired [IQR]':>17}")
  print(header)
  print("-" * len(header))
  for b in args.sizes:
    cases = _zoo_cases(b, args.dim)
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (b, args.dim), jnp.float32)
    y = jnp.arange(b, dtype=jnp.int32) % (b // 4)
    names = [n for name in args.losses
             for n in (PML_LOSSES if name == "pml" else (name,))]
    for name in names:
      with_stats, brute_fn, with_w = cases[name]
      loss_only = (lambda f: lambda x_, y_, w_: (f(x_, y_, w_)[0], 0.0))(with_stats)
      shape = ((b // 4, _CENTRES[name], args.dim) if name in _CENTRES
               else (b // 4, args.dim))
      w = jax.random.normal(kw, shape, jnp.float32)
      argnums = (0, 2) if with_w else 0
      brute_stats = (lambda f: lambda x_, y_, w_: (f(x_, y_, w_)[0],
                                                   _straightforward_pair_stats(x_, y_)))(
                                                       brute_fn)
      fns = [jax.jit(jax.value_and_grad(f, argnums=argnums, has_aux=True))
             for f in (loss_only, with_stats)
             + (() if args.no_brute else (brute_fn, brute_stats))]
      compile_s, timed, runs = _zoo_time_alternating(fns, (x, y, w), args.repeats)
      (tsm_s, tsm_loss), (stats_s, _) = timed[:2]
      nan = (float("nan"), float("nan"))
      (brute_s, brute_loss), (brute_st_s, _) = timed[2:] if len(timed) > 2 else (nan, nan)
      print(f"{name:28} {b:5d} {tsm_s:8.4f} {brute_s:8.4f} {brute_s / tsm_s:6.2f} "
            f"{stats_s:8.4f} {brute_st_s:8.4f} {brute_st_s / stats_s:8.2f} "
            f"{compile_s:9.2f} {tsm_loss:10.5f} {brute_loss:10.5f}  "
            f"{_paired_ratio(runs[2], runs[0]) if len(runs) > 2 else '':>17}", flush=True)
  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"uptime after: {uptime}")
