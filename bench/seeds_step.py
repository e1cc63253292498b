"""Benchmark: one training step of a frozen-features study's arm, S seeds together.

Builds the run of one arm of a study config (its model, loss, margin schedule,
optimiser and sampler settings; :func:`experiments.common.runs.dataset_run`) on random
"cached features" of the trunk's size (nothing is read: no feature cache is needed),
trains it with :func:`tsm.seeds.train_seeds` (S seeds in one compiled step) for one
epoch (compiling) and then ``--epochs`` epochs in the same call, and prints the time per step and per
seed-step with the machine's load average. A study's training time is then about
arms x epochs x steps per epoch x the time per step (S = the study's seeds), plus its
evaluation; measured on a shared machine it is an upper bound.

Usage:
  python bench/seeds_step.py --config=experiments/configs/margin_study_fashion_mnist_frozen_lite0.py \
      [--seeds 20] [--epochs 2] [--examples 3000] [--study loss_zoo --arm triplet] [--features 1280]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _study_config(path: str):
  spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a study config file")
  parser.add_argument("--seeds", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=2, help="timed epochs")
  parser.add_argument("--examples", type=int, default=3000, help="training rows")
  parser.add_argument("--arm", default=None,
                      help="the arm (a loss of a loss study, a schedule of the margin "
                      "study) whose run is built by the study's run_config; default: the "
                      "dataset section as it is")
  parser.add_argument("--study", default="margin_scheduler",
                      choices=("margin_scheduler", "loss_comparison", "loss_zoo"),
                      help="the study whose run_config builds --arm's run")
  parser.add_argument("--features", type=int, default=1280, help="feature size")
  args = parser.parse_args()

  from experiments.common import runs  # pylint: disable=import-outside-toplevel
  from tsm import config as config_lib, models, seeds as seeds_lib  # noqa: E401

  cfg = _study_config(args.config)
  dataset = cfg.study.datasets[0]
  run = runs.dataset_run(cfg, dataset, 0)
  if args.arm:
    study = importlib.import_module(f"experiments.{args.study}.study")
    run = study.run_config(cfg, dataset, args.arm, 0)
  run.train.steps_per_epoch = None   # one pass over the random rows
  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.examples, args.features)).astype(np.float32)
  y = np.arange(args.examples) % 10
  model = config_lib.build_model(run, (args.features,))
  loss = config_lib.build_loss(run, 10)
  seeds = list(range(args.seeds))
  samplers = [config_lib.build_sampler(run, y, s) for s in seeds]
  steps = samplers[0].steps_per_epoch
  schedule = config_lib.build_schedule(run, steps)
  tx = config_lib.build_optimizer(run, (args.epochs + 1) * steps)
  init = functools.partial(models.init_variables, model)
  ends = []   # one call: its first epoch compiles, the others are timed
  t0 = time.time()
  seeds_lib.train_seeds(model, loss, schedule, tx, x, y, samplers, seeds=seeds,
                        epochs=1 + args.epochs, init_fn=init,
                        on_epoch=lambda *_: ends.append(time.time()))
  t1, t2 = ends[0], ends[-1]
  per_step = (t2 - t1) / (args.epochs * steps)
  print(f"{os.path.basename(args.config)}: {run.loss.name}, batch "
        f"{samplers[0].epoch(0).shape[1]}, {args.seeds} seeds together: first epoch "
        f"(compiling) {t1 - t0:.1f} s; {args.epochs} x {steps} steps in {t2 - t1:.1f} s = "
        f"{per_step * 1e3:.1f} ms a step, {per_step / args.seeds * 1e3:.1f} ms a "
        f"seed-step; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
  main()
