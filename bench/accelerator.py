"""One script for a new machine: every bench, the default run and a short study, one table.

Runs, on whatever device JAX sees (a GPU, a TPU, or the CPU):

* the benches of ``bench/report.py`` (train step against PyTorch, the triplet loss against
  pytorch-metric-learning, the loss at B = 4096, retrieval against PML + faiss), the
  pretrained trunk's forward (``bench/trunk_features.py``) and the loader-fed train step
  (``bench/train.py``);
* the README's default run (``tsm-train --config=experiments/configs/digits_dams.py``),
  timed as a whole command;
* a two-epoch margin study on digits (two arms, two seeds; one with ``--quick``), timed as
  a whole command;

each as its own subprocess with a time limit (a step that fails or runs out of time is
reported as such and the others go on), and writes ``accelerator.json`` (the environment:
device kind and count, jax / jaxlib / CUDA versions, PyTorch and whether it sees the
device, CPU count and load; every figure with its unit and baseline) and
``accelerator.md`` (one table). ``--cpu DIR`` names the folder of an earlier run of this
script on a CPU (same mode) and adds each figure's CPU value and the ratio.

PyTorch baselines run where ``import torch`` works in this Python (the benches time both
sides in one process, alternating); on a GPU they run on the GPU when torch sees one
(``torch.cuda.is_available()``), otherwise on the CPU, and the table says which.

``--quick`` shrinks every size so that the whole script runs in a few minutes on 2 CPU
cores (a check that it works; its figures are not comparable with the full mode's).

Usage:
  python bench/accelerator.py --out accel_gpu                     # ~8 min on one GPU
  python bench/accelerator.py --out accel_cpu --quick             # a few minutes on 2 cores
  python bench/accelerator.py --out accel_gpu --cpu accel_cpu     # with the CPU column
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (script, full-mode arguments, quick-mode arguments); each writes --json FILE.
BENCHES = {
    "train_step": ("torch_reference.py",
                   ["--setups", "convnet,resnet18", "--rounds", "7", "--resnet-rounds", "3"],
                   ["--setups", "convnet", "--batch", "64", "--rounds", "2"]),
    "loss_1024": ("loss_reference.py", ["--sizes", "1024", "--regimes", "pk", "--rounds", "5"],
                  ["--sizes", "256", "--regimes", "pk", "--rounds", "2"]),
    "loss_4096": ("losses.py", ["--sizes", "4096", "--impls", "tsm", "--repeats", "3"],
                  ["--sizes", "512", "--impls", "tsm", "--repeats", "1"]),
    "retrieval": ("retrieval_reference.py", ["--n", "50000", "--rounds", "3"],
                  ["--n", "2000", "--rounds", "1"]),
    "trunk": ("trunk_features.py", ["--sides", "224", "--batch", "64", "--rounds", "3"],
              ["--sides", "32", "--batch", "8", "--rounds", "1"]),
    "fed_step": ("train.py", ["--setups", "mlp,convnet", "--steps", "20"],
                 ["--setups", "mlp", "--batch", "64", "--steps", "3"]),
}
DEFAULT_RUN = ["--config=experiments/configs/digits_dams.py"]
DEFAULT_RUN_QUICK = DEFAULT_RUN + ["--config.train.epochs=2"]
STUDY = ["-m", "experiments.margin_scheduler.run",
         "--config=experiments/configs/margin_study_digits.py",
         "--config.study.schedules=constant_0.2,dams", "--config.study.epochs=2",
         "--config.study.workers=1"]
STUDY_SEEDS, STUDY_SEEDS_QUICK = "--config.study.seeds=2", "--config.study.seeds=1"


def environment() -> dict[str, Any]:
  """What the figures were measured on."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  env: dict[str, Any] = {
      "device_kind": device.device_kind, "platform": device.platform,
      "device_count": jax.device_count(), "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "platform_version": getattr(device.client, "platform_version", None),
      "cpu": _cpu_model(), "cpu_count": len(os.sched_getaffinity(0)),
      "load_average": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
  }
  try:
    import torch  # pylint: disable=import-outside-toplevel
    env["torch"] = torch.__version__
    env["torch_device"] = "cuda" if torch.cuda.is_available() else "cpu"
  except ImportError:
    env["torch"] = None
  return env


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _run(cmd: list[str], log: str, timeout: float) -> tuple[str, float]:
  """Runs ``cmd`` from the repository root; (status, wall seconds). Output goes to ``log``."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  start = time.perf_counter()
  with open(log, "w") as out:
    try:
      done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                            timeout=timeout, check=False)
      status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
      status = f"over {timeout:.0f} s"
  return status, time.perf_counter() - start


def _load(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def figures(out: str) -> list[dict[str, Any]]:
  """Every figure of a run's folder: name, value, unit, and the baseline where there is one.

  ``better`` says which way is better (``"higher"`` or ``"lower"``); ``baseline`` is the
  PyTorch / PML figure measured in the same process.
  """
  rows: list[dict[str, Any]] = []

  def add(name, value, unit, better, baseline=None, baseline_name=None):
    rows.append({"name": name, "value": value, "unit": unit, "better": better,
                 "baseline": baseline, "baseline_name": baseline_name})

  train = _load(os.path.join(out, "train_step.json"))
  for r in (train or {}).get("results", []):
    med = r["median_s"]
    add(f"train step {r['setup']}, batch {r['batch']}", r["batch"] / med["tsm"], "ex/s",
        "higher", r["batch"] / med["torch"] if "torch" in med else None,
        f"PyTorch ({train['header'].get('torch_device', 'cpu')})")
  for r in _load(os.path.join(out, "loss_1024.json")) or []:
    med = r["median_s"]
    add(f"triplet loss + grad, B = {r['batch']} {r['regime']}", 1e3 * med["tsm"], "ms",
        "lower", 1e3 * med["pml"] if "pml" in med else None, "PML")
  big = _load(os.path.join(out, "loss_4096.json"))
  for r in (big or {}).get("results", []):
    add(f"triplet loss + grad, B = {r['b']} {r['regime']} {r['impl']}", r["median_s"], "s",
        "lower")
  ret = _load(os.path.join(out, "retrieval.json"))
  if ret:
    b = ret["header"]["baseline"]
    add(f"retrieval metrics, N = {ret['header']['n']:,}", ret["median_s"]["tsm"], "s", "lower",
        ret["median_s"][b], "PML + faiss" if b == "pml" else "numpy")
  trunk = _load(os.path.join(out, "trunk.json"))
  for i, r in enumerate((trunk or {}).get("tsm", [])):
    theirs = (trunk.get("torch") or [None] * (i + 1))[i]
    add(f"Lite0 forward {r['side']} px, batch {trunk['batch']}", r["images_per_s"], "images/s",
        "higher", theirs["images_per_s"] if theirs else None, "PyTorch")
  fed = _load(os.path.join(out, "fed_step.json"))
  for r in (fed or {}).get("results", []):
    add(f"loader-fed step {r['setup']}, batch {r['batch']}", r["fed_examples_per_s"], "ex/s",
        "higher")
  for name, label in (("default_run", "README default run (whole command)"),
                      ("study", "two-epoch margin study on digits, 2 arms (whole command)")):
    timing = _load(os.path.join(out, f"{name}.json"))
    if timing and timing["status"] == "ok":
      add(label, timing["wall_s"], "s", "lower")
  return rows


def _ratio(row: dict[str, Any], other: float | None) -> float | None:
  """How many times better ``row``'s value is than ``other`` (> 1: better)."""
  if not other or not row["value"]:
    return None
  return row["value"] / other if row["better"] == "higher" else other / row["value"]


def table(env: dict[str, Any], rows: list[dict[str, Any]], steps: dict[str, str],
          cpu_rows: list[dict[str, Any]] | None) -> str:
  """The Markdown report: environment, then one row per figure."""
  lines = [f"Device: {env['device_kind']} x {env['device_count']} ({env['platform']}"
           f"{', ' + env['platform_version'] if env.get('platform_version') else ''}); "
           f"jax {env['jax']}, jaxlib {env['jaxlib']}; CPU {env['cpu']} x {env['cpu_count']}, "
           f"load {env['load_average'][0]}; PyTorch "
           f"{env['torch'] + ' on ' + env['torch_device'] if env.get('torch') else 'absent'}.",
           ""]
  cpu = {r["name"]: r["value"] for r in cpu_rows or []}
  head = ["figure", "value", "unit", "baseline", "vs baseline"]
  if cpu_rows is not None:
    head += ["CPU value", "vs CPU"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    vs = _ratio(r, r["baseline"])
    cells = [r["name"], f"{r['value']:.4g}", r["unit"],
             f"{r['baseline_name']} {r['baseline']:.4g}" if r["baseline"] else "-",
             f"{vs:.2f}x" if vs else "-"]
    if cpu_rows is not None:
      c = cpu.get(r["name"])
      vc = _ratio(r, c)
      cells += [f"{c:.4g}" if c else "-", f"{vc:.2f}x" if vc else "-"]
    lines.append("| " + " | ".join(cells) + " |")
  failed = {k: v for k, v in steps.items() if v != "ok"}
  lines += ["", "\"vs\" columns: how many times better (> 1: this device or tsm is better).",
            "Steps not measured: " + (", ".join(f"{k} ({v})" for k, v in failed.items())
                                      if failed else "none") + "."]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="accelerator_out", help="folder for the JSON and table")
  parser.add_argument("--quick", action="store_true",
                      help="small sizes: a check that everything runs (minutes on 2 cores)")
  parser.add_argument("--cpu", default=None,
                      help="folder of an earlier run on a CPU: adds the CPU column")
  parser.add_argument("--only", default=None,
                      help="comma-separated steps to run (default: all): "
                           + ",".join([*BENCHES, "default_run", "study"]))
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds per step (default: 150 full, 240 quick)")
  args = parser.parse_args(argv)
  names = [*BENCHES, "default_run", "study"]
  chosen = names if args.only is None else args.only.split(",")
  unknown = [n for n in chosen if n not in names]
  if unknown:
    parser.error(f"--only: unknown step {unknown[0]!r}; use some of {', '.join(names)}.")
  cpu_rows = None
  if args.cpu is not None:
    cpu_env = _load(os.path.join(args.cpu, "accelerator.json"))
    if cpu_env is None:
      parser.error(f"--cpu {args.cpu}: no accelerator.json there; run this script with "
                   f"--out {args.cpu} on a CPU first.")
    cpu_rows = cpu_env["figures"]
  timeout = args.timeout or (240.0 if args.quick else 150.0)
  os.makedirs(args.out, exist_ok=True)
  env = environment()
  print(f"device {env['device_kind']} x {env['device_count']}, jax {env['jax']}, "
        f"PyTorch {env.get('torch')}; writing {args.out}/", flush=True)
  steps: dict[str, str] = {}
  with tempfile.TemporaryDirectory() as scratch:
    for name in chosen:
      log = os.path.join(args.out, f"{name}.log")
      if name in BENCHES:
        script, full, quick = BENCHES[name]
        cmd = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full),
               "--json", os.path.abspath(os.path.join(args.out, f"{name}.json"))]
      elif name == "default_run":
        cmd = [sys.executable, "-m", "tsm.cli", *(DEFAULT_RUN_QUICK if args.quick
                                                   else DEFAULT_RUN),
               f"--workdir={os.path.join(scratch, 'default_run')}"]
      else:
        cmd = [sys.executable, *STUDY, STUDY_SEEDS_QUICK if args.quick else STUDY_SEEDS,
               f"--workdir={os.path.join(scratch, 'study')}"]
      status, wall = _run(cmd, log, timeout)
      steps[name] = status
      if name in ("default_run", "study"):
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
          json.dump({"status": status, "wall_s": wall, "command": cmd}, f, indent=2)
      print(f"{name:12s} {status:10s} {wall:7.1f} s  (log: {log})", flush=True)
  rows = figures(args.out)
  report = {"environment": env, "quick": args.quick, "steps": steps, "figures": rows}
  with open(os.path.join(args.out, "accelerator.json"), "w") as f:
    json.dump(report, f, indent=2)
  text = table(env, rows, steps, cpu_rows)
  with open(os.path.join(args.out, "accelerator.md"), "w") as f:
    f.write(text)
  print(text, end="")
  return 0 if all(v == "ok" for v in steps.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
