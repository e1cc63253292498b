"""Benchmark: parameter counts, init time and train-step throughput of tsm.models.

For each model: trunk / head parameter counts, ``init_variables`` wall time (first call,
compilation included), compile time of a jitted train-mode forward + backward (dropout
rng, ``mutable=["batch_stats"]``, a scalar loss on the embeddings), and the steady-state
time per step (median of ``--steps`` steps) with examples per second.

Usage:
  python bench/models.py [--models mlp,convnet,conv1d,resnet18,resnet50,efficientnet_b0]
      [--batch 64] [--dtype float32|bfloat16] [--steps 10] [--no-step]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from tsm import models

SETUPS = {
    "mlp": ((128,), "none", 32),
    "convnet": ((28, 28, 1), "none", 64),
    "conv1d": ((40,), "none", 32),
    "resnet18": ((224, 224, 3), "linear", 128),
    "resnet50": ((224, 224, 3), "paper_a", 128),
    "efficientnet_b0": ((224, 224, 3), "paper_a", 128),
}


def _count(tree) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(SETUPS))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=models.DTYPES)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--no-step", action="store_true", help="only count and init")
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, devices {jax.devices()}, "
        f"load average {os.getloadavg()}")
  for name in args.models.split(","):
    shape, head, emb = SETUPS[name]
    model = models.create_model(name, embedding_dim=emb, input_shape=shape, head=head,
                                dtype=args.dtype)
    t = time.perf_counter()
    variables = jax.block_until_ready(models.init_variables(model, jax.random.key(0), shape))
    init_s = time.perf_counter() - t
    trunk = _count(variables["params"]["trunk"])
    head_params = _count(variables["params"].get("head", {}))
    line = (f"{name:16s} {str(shape):14s} head={head:8s} trunk {trunk:>11,d} "
            f"head {head_params:>10,d} init {init_s:6.1f} s")
    if not args.no_step:
      x = jax.random.normal(jax.random.key(1), (args.batch,) + shape, jnp.float32)

      @jax.jit
      def step(variables, x, rng):
        def loss(params):
          y, updates = model.apply({**variables, "params": params}, x, train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
          return jnp.mean(y @ y.T), updates
        return jax.grad(loss, has_aux=True)(variables["params"])

      t = time.perf_counter()
      jax.block_until_ready(step(variables, x, jax.random.key(2)))
      compile_s = time.perf_counter() - t
      times = []
      for i in range(args.steps):
        t = time.perf_counter()
        jax.block_until_ready(step(variables, x, jax.random.key(3 + i)))
        times.append(time.perf_counter() - t)
      ms = 1e3 * statistics.median(times)
      line += (f" | step compile {compile_s:6.1f} s, {ms:8.2f} ms/step, "
               f"{args.batch / ms * 1e3:9.0f} ex/s (batch {args.batch}, {args.dtype})")
    print(line, flush=True)


if __name__ == "__main__":
  main()
