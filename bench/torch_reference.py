"""Benchmark: tsm's compiled train step against PyTorch's step of the same model.

Three steps on the same batch, in ONE process, timed in alternation (one repetition of
each, then the next round; medians over the rounds), so that the load other processes
put on the shared cores falls on all three alike:

* ``tsm``: ``bench/train.py``'s step (``tsm.config`` builders, ``tsm.train`` step:
  triplet loss over every in-batch triplet, margin 0.2, DAMS bookkeeping, Adam 1e-3);
* ``flax``: a plain Flax + optax step with no tsm code (the same architecture written
  here, Flax's own ``nn.Conv`` / ``nn.BatchNorm``, a naive ``[B, B, B]`` all-triplets
  loss, Adam): the part that is XLA's own;
* ``flax-fastconv``: the same plain Flax step with ``nn.Conv(conv_general_dilated=
  tsm.convolution.conv_general_dilated)`` (the lever on its own, beside XLA's own
  convolution);
* ``torch``: PyTorch's eager step (on the GPU when JAX and torch both see one) of the same architecture (NCHW, PyTorch's default
  layout), ``pytorch_metric_learning.losses.TripletMarginLoss(margin=0.2)`` over all
  triplets (its default miner-free form), ``torch.optim.Adam(lr=1e-3)``.

Threads are pinned the same way for all three: the process keeps the CPU affinity it was
started with (run it under ``taskset -c 0,1`` to choose), ``torch.set_num_threads`` and
XLA's intra-op pool both get that many threads.

Setups: ``convnet`` (paper B's MNIST ConvNet, 28 x 28 x 1, 32-d) and ``resnet18``
(CIFAR stem, 32 x 32 x 3, linear head to 128-d), P = 8 classes x K = batch / 8.

Usage:
  taskset -c 0,1 python bench/torch_reference.py [--setups convnet,resnet18]
      [--batch 256] [--rounds 7] [--resnet-rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

# XLA:CPU sizes its intra-op pool from the process's CPU affinity; PyTorch gets the same.
_THREADS = len(os.sched_getaffinity(0))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as bench_train  # pylint: disable=g-import-not-at-top

from tsm.convolution import conv_general_dilated as fast_conv  # pylint: disable=g-import-not-at-top

MARGIN = 0.2


def _have_torch() -> bool:
  try:
    import pytorch_metric_learning  # pylint: disable=unused-import,import-outside-toplevel
    import torch  # pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    return False
  return True


# ------------------------------------------------------------------ plain Flax models


class FlaxConvNet(nn.Module):
  """Paper B's ConvNet with Flax's own layers (no tsm code unless ``conv`` is given)."""
  conv: Any = None  # nn.Conv's conv_general_dilated (None: lax's)

  @nn.compact
  def __call__(self, x, train=True):
    del train
    for f in (32, 64):
      x = nn.Conv(f, (3, 3), padding="SAME", conv_general_dilated=self.conv)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    x = nn.Dense(32)(x)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


class FlaxBlock(nn.Module):
  features: int
  strides: int
  conv: Any = None

  @nn.compact
  def __call__(self, x, train=True):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    conv = functools.partial(nn.Conv, use_bias=False, conv_general_dilated=self.conv)
    s = (self.strides, self.strides)
    y = conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)))(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)))(y)
    y = norm()(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = norm()(conv(self.features, (1, 1), s)(x))
    return nn.relu(x + y)


class FlaxResNet18(nn.Module):
  """ResNet-18, CIFAR stem, linear head to 128-d, with Flax's own layers."""
  conv: Any = None

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                conv_general_dilated=self.conv)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)(x))
    for i in range(4):
      for j in range(2):
        x = FlaxBlock(64 * 2**i, 2 if i and not j else 1, self.conv)(x, train)
    x = nn.Dense(128)(jnp.mean(x, axis=(1, 2)))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def naive_triplet_loss(x, labels, margin):
  """Mean over every valid (a, p, n) of relu(d_ap - d_an + margin), as a [B, B, B] tensor."""
  d = jnp.sqrt(jnp.maximum(jnp.sum((x[:, None] - x[None]) ** 2, -1), 1e-12))
  same = labels[:, None] == labels[None]
  valid = (same & ~jnp.eye(x.shape[0], dtype=bool))[:, :, None] & ~same[:, None, :]
  t = jnp.where(valid, jax.nn.relu(d[:, :, None] - d[:, None, :] + margin), 0.0)
  return jnp.sum(t) / jnp.maximum(jnp.sum(valid), 1)


def flax_step_fn(model, variables, inputs):
  """A plain jitted Flax + optax step (state donated), and its initial state."""
  tx = optax.adam(1e-3)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  state = (params, stats, tx.init(params))

  def step(state, inputs, labels):
    params, stats, opt = state

    def objective(p):
      if stats:
        emb, upd = model.apply({"params": p, "batch_stats": stats}, inputs, train=True,
                               mutable=["batch_stats"])
        return naive_triplet_loss(emb, labels, MARGIN), upd["batch_stats"]
      return naive_triplet_loss(model.apply({"params": p}, inputs), labels, MARGIN), stats

    (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), new_stats, opt), loss

  del inputs
  return jax.jit(step, donate_argnums=0), state


# ------------------------------------------------------------------ PyTorch models


def torch_model(setup: str):
  """The same architecture in PyTorch (NCHW), L2-normalised output."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn as tnn  # pylint: disable=import-outside-toplevel

  class Normalize(tnn.Module):
    def forward(self, x):
      return tnn.functional.normalize(x, dim=1)

  if setup == "convnet":
    return tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(64 * 7 * 7, 128), tnn.ReLU(), tnn.Linear(128, 32), Normalize())

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = tnn.BatchNorm2d(cout)
      self.c2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = tnn.BatchNorm2d(cout)
      self.down = None
      if stride != 1 or cin != cout:
        self.down = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                   tnn.BatchNorm2d(cout))

    def forward(self, x):
      y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
      return torch.relu(y + (x if self.down is None else self.down(x)))

  layers = [tnn.Conv2d(3, 64, 3, 1, 1, bias=False), tnn.BatchNorm2d(64), tnn.ReLU()]
  cin = 64
  for i in range(4):
    for j in range(2):
      layers.append(Block(cin, 64 * 2**i, 2 if i and not j else 1))
      cin = 64 * 2**i
  layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(512, 128), Normalize()]
  return tnn.Sequential(*layers)


def torch_device() -> str:
  """Where PyTorch runs: the GPU when JAX runs on one and torch sees one, else the CPU.

  ``float(loss)`` at the end of each step waits for the device, as ``float`` does on
  JAX's side, so both sides are timed to the end of their step.
  """
  import torch  # pylint: disable=import-outside-toplevel
  if jax.devices()[0].platform == "gpu" and torch.cuda.is_available():
    return "cuda"
  return "cpu"


def torch_step_fn(setup: str, inputs: np.ndarray, labels: np.ndarray):
  """PyTorch's eager train step (PML triplet loss over all triplets, Adam), on
  :func:`torch_device`."""
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import losses as pml_losses  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import reducers as pml_reducers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  device = torch_device()
  model = torch_model(setup).to(device).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = pml_losses.TripletMarginLoss(
      margin=MARGIN, reducer=pml_reducers.MeanReducer())  # tsm's reduction="mean"
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs, -1, 1))).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


# ------------------------------------------------------------------ the comparison


def _library_ops(hlo: str) -> dict[str, int]:
  """How many of a compiled program's convolutions and dots went to which library.

  Counts the instructions and library-fusion kinds of XLA:CPU's optimised HLO text
  (XNNPACK / YNNPACK / oneDNN fusions and custom calls, plain convolutions and dots), so
  that the effect of an ``XLA_FLAGS`` setting on the program can be seen.
  """
  import re  # pylint: disable=import-outside-toplevel
  keys = {"convolution": r"= \S+ convolution\(", "dot": r"= \S+ dot\(",
          "xnn": r"__xnn_fusion|kind=kCustom.*xnn", "ynn": r"__ynn_fusion",
          "onednn": r"onednn|__onednn"}
  return {k: len(re.findall(v, hlo)) for k, v in keys.items()}



IMPLS = ("tsm", "tsm-bf16", "flax", "flax-fastconv", "torch")


def compare(setup: str, batch: int, rounds: int,
            impls: tuple[str, ...] = ("tsm", "flax", "flax-fastconv", "torch")) -> dict:
  """Times the steps named in ``impls`` (of :data:`IMPLS`) in alternation; medians in s.

  ``tsm-bf16`` is tsm's step with ``model.dtype = "bfloat16"`` (bf16 compute, float32
  parameters, optimiser state and loss) on the same batch.
  """
  cfg = bench_train.make_config(setup, batch, data_parallel=False)
  state, step_fn, splits, sampler, _ = bench_train.build_step(cfg)
  from tsm.data import loader  # pylint: disable=import-outside-toplevel
  host = loader.load_batch(splits.train, sampler.epoch(0)[0])
  inputs = np.asarray(host["inputs"], np.float32)
  if inputs.ndim == 3:
    inputs = inputs[..., None]
  labels = np.asarray(host["labels"], np.int32)
  dev_batch = jax.device_put(host)
  compiled = step_fn.lower(state, dev_batch).compile()
  library_ops = _library_ops(compiled.as_text())

  x_dev, y_dev = jax.device_put(inputs), jax.device_put(labels)
  box = {"tsm": state}

  def run_tsm():
    box["tsm"], m = compiled(box["tsm"], dev_batch)
    return float(m["loss"])

  runners = {}
  if "tsm" in impls:
    runners["tsm"] = run_tsm
  if "tsm-bf16" in impls:
    cfg16 = bench_train.make_config(setup, batch, data_parallel=False)
    cfg16.model.dtype = "bfloat16"
    box["tsm-bf16"], step16, _, _, _ = bench_train.build_step(cfg16)
    compiled16 = step16.lower(box["tsm-bf16"], dev_batch).compile()

    def run_tsm16():
      box["tsm-bf16"], m = compiled16(box["tsm-bf16"], dev_batch)
      return float(m["loss"])
    runners["tsm-bf16"] = run_tsm16
  convs = {k: v for k, v in {"flax": None, "flax-fastconv": fast_conv}.items() if k in impls}
  for name, conv in convs.items():
    flax_model = FlaxConvNet(conv) if setup == "convnet" else FlaxResNet18(conv)
    variables = flax_model.init(jax.random.key(0), jnp.asarray(inputs[:1]), train=False)
    flax_step, box[name] = flax_step_fn(flax_model, variables, inputs)
    flax_compiled = flax_step.lower(box[name], x_dev, y_dev).compile()

    def run_flax(name=name, flax_compiled=flax_compiled):
      box[name], loss = flax_compiled(box[name], x_dev, y_dev)
      return float(loss)
    runners[name] = run_flax
  if _have_torch() and "torch" in impls:
    runners["torch"] = torch_step_fn(setup, inputs, labels)
  times = {k: [] for k in runners}
  losses = {k: f() for k, f in runners.items()}   # warm-up (and first-step losses)
  for _ in range(rounds):
    for name, f in runners.items():
      t = time.perf_counter()
      f()
      times[name].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  out = {"setup": setup, "batch": batch, "rounds": rounds, "input_shape": list(inputs.shape[1:]),
         "median_s": med, "examples_per_s": {k: batch / v for k, v in med.items()},
         "first_loss": losses, "times_s": times, "tsm_library_ops": library_ops}
  if "torch" in med:                                       # > 1: faster than PyTorch
    out["over_torch"] = {k: med["torch"] / v for k, v in med.items()}
    if "tsm" in med:
      out["tsm_over_torch"] = med["torch"] / med["tsm"]
  if "flax" in med and "tsm" in med:
    out["tsm_over_flax"] = med["flax"] / med["tsm"]
  return out


def header() -> dict:
  device = jax.devices()[0]
  info = {"device_kind": device.device_kind, "platform": device.platform,
          "threads": _THREADS, "affinity": sorted(os.sched_getaffinity(0)),
          "jax": jax.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]}
  if _have_torch():
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(_THREADS)
    torch.set_num_interop_threads(1)
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["torch_device"] = torch_device()
  return info


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default="convnet,resnet18")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--resnet-rounds", type=int, default=3)
  parser.add_argument("--impls", default="tsm,flax,flax-fastconv,torch",
                      help=f"comma-separated steps to time, of {','.join(IMPLS)}")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  impls = tuple(args.impls.split(","))
  unknown = sorted(set(impls) - set(IMPLS))
  if unknown:
    parser.error(f"--impls: unknown {unknown}; choose from {','.join(IMPLS)}")
  info = header()
  print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
  if "torch" not in info:
    print("PyTorch / pytorch-metric-learning not installed: timing tsm and plain Flax only.")
  print("XLA_FLAGS=" + os.environ.get("XLA_FLAGS", ""), flush=True)
  print(f"{'setup':9s} {'impl':13s} {'median ms':>10s} {'ex/s':>8s} {'vs torch':>9s}", flush=True)
  results = []
  for setup in args.setups.split(","):
    rounds = args.resnet_rounds if setup == "resnet18" else args.rounds
    r = compare(setup, args.batch, rounds, impls)
    results.append(r)
    for name, s in r["median_s"].items():
      ratio = r["median_s"]["torch"] / s if "torch" in r["median_s"] else float("nan")
      print(f"{setup:9s} {name:13s} {1e3 * s:10.1f} {args.batch / s:8.1f} {ratio:8.2f}x",
            flush=True)
  print("load average at end:", [round(x, 2) for x in os.getloadavg()])
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"header": info, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
