"""Benchmark: training throughput of the compiled train step, and the data-loading share.

For each setup this builds the state, the jitted ``tsm.train`` step and the real
``tsm.data`` pipeline exactly as ``tsm.fit.fit`` does (P x K sampler, background loader,
``tsm.distributed.shard_batch`` onto a ``("data",)`` mesh over every device when there is
more than one), then measures:

* ``compile s``: ``train_step.lower(state, batch).compile()``, apart from the steps;
* ``step ms`` / ``step ex/s``: the compiled step alone, fed one batch already on the
  devices, ``--steps`` steps in a row and one wait at the end (steady-state throughput);
* ``fed ms`` / ``fed ex/s``: the same step fed by the loader the way ``fit`` feeds it (a new
  loader stream per epoch); each step is waited for before the next batch is asked for,
  while the loader threads keep decoding in the background;
* ``data wait``: the share of that fed time spent blocked on the loader (``next`` on the
  stream, i.e. time the devices sat idle for want of a batch), and ``put``: the share
  spent placing the host batch on the devices (``make_array_from_process_local_data``).

Setups (global batch ``--batch``, P = 8 classes x K = batch / 8):
  ``mlp``: paper B's MLP on the synthetic 128-d set;
  ``convnet``: paper B's MNIST ConvNet on digits resized to 28 x 28;
  ``resnet18``: ResNet-18 (CIFAR stem, linear head to 128-d) on digits at 32 x 32 x 3 with augmentation (random
  crop); run with ``--resnet-steps`` steps only, as it is slow on a CPU.

The report starts with ``jax.devices()[0].device_kind`` and the device count: rerun on
other hardware to compare, e.g. ``python bench/train.py --json bench_train_gpu.json``.

Usage:
  python bench/train.py [--setups mlp,convnet,resnet18] [--batch 256] [--steps 20]
      [--resnet-steps 3] [--prefetch 2] [--no-data-parallel] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from tsm import config as config_lib
from tsm import data as data_lib
from tsm import distributed
from tsm import models
from tsm import train as train_lib
from tsm.data import loader

SETUPS = {
    "mlp": ({"name": "synthetic", "split": "standard"}, {"name": "mlp"}),
    "convnet": ({"name": "digits", "split": "by_image", "image_size": 28},
                {"name": "convnet"}),
    "resnet18": ({"name": "digits", "split": "by_image", "image_size": 32, "channels": 3,
                  "augment": True},
                 {"name": "resnet18", "stem": "cifar", "head": "linear", "embedding_dim": 128}),
}


def make_config(setup: str, batch: int, data_parallel: bool):
  """The full tsm config of a setup (DAMS, triplet loss over all P x K triplets)."""
  data, model = SETUPS[setup]
  cfg = config_lib.default_config()
  cfg.data.update(data)
  cfg.model.update(model)
  cfg.margin.schedule = "dams"
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 8
  if batch % 8:
    raise ValueError(f"--batch={batch} must be a multiple of 8 (P = 8 classes).")
  cfg.train.samples_per_class = batch // 8
  cfg.train.data_parallel = data_parallel
  cfg.train.progress = False
  config_lib.check_config(cfg)
  return cfg


def build_step(cfg):
  """(state, jitted step, splits, sampler, mesh) built from ``cfg`` as ``fit`` builds them."""
  splits = data_lib.load(config_lib.data_spec(cfg), seed=cfg.seed)
  config_lib.check_config_with_data(cfg, splits)
  mesh = train_lib.data_mesh() if distributed.use_mesh(cfg.train.data_parallel) else None
  model = config_lib.build_model(cfg, splits.input_shape)
  variables = models.init_variables(model, jax.random.key(0), splits.input_shape)
  sampler = config_lib.build_sampler(cfg, splits.train.labels, cfg.seed)
  tx = config_lib.build_optimizer(cfg, 1000)
  schedule = config_lib.build_schedule(cfg, sampler.steps_per_epoch)
  state = train_lib.replicate(train_lib.create_train_state(
      variables, tx, schedule, jax.random.key_data(jax.random.key(1))), mesh)
  step_fn = train_lib.make_train_step(model, config_lib.build_loss(cfg), schedule, tx,
                                      mesh=mesh, margin_update=cfg.margin.update_every)
  return state, step_fn, splits, sampler, mesh


def bench_setup(setup: str, batch: int, steps: int, prefetch: int,
                data_parallel: bool) -> dict:
  """Measures one setup; returns a dict of the figures (see the module docstring)."""
  cfg = make_config(setup, batch, data_parallel)
  state, step_fn, splits, sampler, mesh = build_step(cfg)
  if not distributed.divides(batch, mesh):
    raise ValueError(f"--batch={batch} does not split over {jax.device_count()} devices.")

  first = distributed.host_batches(sampler.epoch(0), mesh)[0]
  batch0 = distributed.shard_batch(loader.load_batch(splits.train, first), mesh)
  t = time.perf_counter()
  compiled = step_fn.lower(state, batch0).compile()
  compile_s = time.perf_counter() - t
  state, metrics = compiled(state, batch0)          # warm-up
  jax.block_until_ready(metrics)

  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch0)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t) / steps

  # Loader-fed, as fit: one stream per epoch over this host's share of the batches.
  wait_s = put_s = 0.0
  done, epoch = 0, 1
  t_start = time.perf_counter()
  while done < steps:
    indices = distributed.host_batches(sampler.epoch(epoch), mesh)[:steps - done]
    stream = data_lib.batches(splits.train, indices, augment=bool(cfg.data.augment),
                              seed=(cfg.seed, epoch), prefetch=prefetch)
    while True:
      t0 = time.perf_counter()
      host_batch = next(stream, None)
      t1 = time.perf_counter()
      wait_s += t1 - t0
      if host_batch is None:
        break
      device_batch = jax.block_until_ready(distributed.shard_batch(host_batch, mesh))
      put_s += time.perf_counter() - t1
      state, metrics = compiled(state, device_batch)
      jax.block_until_ready(metrics)
      done += 1
    epoch += 1
  fed_s = (time.perf_counter() - t_start) / steps
  return {
      "setup": setup, "input_shape": list(splits.input_shape), "batch": batch,
      "steps": steps, "devices": 1 if mesh is None else int(mesh.devices.size),
      "compile_s": compile_s, "step_ms": 1e3 * step_s, "step_examples_per_s": batch / step_s,
      "fed_ms": 1e3 * fed_s, "fed_examples_per_s": batch / fed_s,
      "data_wait_share": wait_s / (fed_s * steps), "put_share": put_s / (fed_s * steps),
      "loss": float(metrics["loss"]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default=",".join(SETUPS))
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--resnet-steps", type=int, default=3)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--no-data-parallel", action="store_true")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args()
  for name in args.setups.split(","):
    if name not in SETUPS:
      parser.error(f"--setups: unknown setup {name!r}; use some of {', '.join(SETUPS)}.")
  device = jax.devices()[0]
  header = {"device_kind": device.device_kind, "platform": device.platform,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
  print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
  print(f"{'setup':9s} {'input':12s} {'dev':>3s} {'compile s':>9s} {'step ms':>9s} "
        f"{'step ex/s':>10s} {'fed ms':>9s} {'fed ex/s':>10s} {'data wait':>9s} "
        f"{'put':>6s}", flush=True)
  results = []
  for name in args.setups.split(","):
    steps = args.resnet_steps if name == "resnet18" else args.steps
    r = bench_setup(name, args.batch, steps, args.prefetch, not args.no_data_parallel)
    results.append(r)
    shape = "x".join(str(s) for s in r["input_shape"])
    print(f"{name:9s} {shape:12s} {r['devices']:3d} {r['compile_s']:9.2f} "
          f"{r['step_ms']:9.2f} {r['step_examples_per_s']:10.0f} {r['fed_ms']:9.2f} "
          f"{r['fed_examples_per_s']:10.0f} {100 * r['data_wait_share']:8.1f}% "
          f"{100 * r['put_share']:5.1f}%", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"header": header, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
