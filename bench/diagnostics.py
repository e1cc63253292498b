"""Benchmark: tsm.diagnostics on a whole training set (default 60,000 x 128, 10 classes).

Times, on the default jax backend, the first call (compilation included) and the mean of
``--repeats`` further calls of

* ``intra_class_variance`` and ``inter_class_distances`` (paper B),
* ``effective_margins`` with ``max_triplets`` = ``--triplets`` (sampled path: a
  60,000-row set has ~3e13 valid triplets), and on a 64-row P x K batch (exact path),
* ``fit_gaussian_mixture`` (2 components) on the effective margins.

Usage:
  python bench/diagnostics.py [--n 60000] [--dim 128] [--classes 10] [--triplets 100000]
      [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from tsm import diagnostics


def _time(fn, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = jax.block_until_ready(fn())
  return first, (time.perf_counter() - t0) / repeats, out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=60_000)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--triplets", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, args.classes, size=args.n).astype(np.int32)
  centres = rng.normal(size=(args.classes, args.dim))
  x = centres[labels] + 0.7 * rng.normal(size=(args.n, args.dim))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  x, labels = jax.device_put(x), jax.device_put(labels)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"N={args.n} D={args.dim} C={args.classes} M={args.triplets}")
  rows = []
  first, mean, var = _time(
      lambda: diagnostics.intra_class_variance(x, labels, args.classes), args.repeats)
  rows.append(("intra_class_variance", first, mean, f"mean {float(var.mean):.4f}"))
  first, mean, inter = _time(
      lambda: diagnostics.inter_class_distances(x, labels, args.classes), args.repeats)
  rows.append(("inter_class_distances", first, mean, f"mean {float(inter.mean):.4f}"))
  first, mean, em = _time(lambda: diagnostics.effective_margins(
      x, labels, max_triplets=args.triplets, seed=0), args.repeats)
  rows.append(("effective_margins (sampled)", first, mean,
               f"T={float(em.num_triplets):.3g} exact={bool(em.exact)}"))
  pk = np.repeat(np.arange(32), 2)
  xb, yb = x[:64], jax.device_put(pk.astype(np.int32))
  first, mean, emb = _time(lambda: diagnostics.effective_margins(
      xb, yb, max_triplets=args.triplets, seed=0), args.repeats)
  rows.append(("effective_margins (P=32,K=2 exact)", first, mean,
               f"T={int(emb.num_triplets)} exact={bool(emb.exact)}"))
  first, mean, mix = _time(lambda: diagnostics.fit_gaussian_mixture(
      em.values, weights=em.mask), args.repeats)
  rows.append(("fit_gaussian_mixture (K=2)", first, mean,
               f"iters {int(mix.num_iters)} means {np.round(np.asarray(mix.means), 3)}"))
  for name, first, mean, note in rows:
    print(f"{name:38s} first {first * 1e3:9.1f} ms   then {mean * 1e3:8.2f} ms   {note}")


if __name__ == "__main__":
  main()
