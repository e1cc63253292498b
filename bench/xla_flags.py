"""Survey: XLA:CPU's library flags on tsm's train step, each as a ratio to PyTorch's step.

``XLA_FLAGS`` is read once per process, so each setting runs in its own process of
``bench/torch_reference.py --impls tsm,torch`` (tsm's step and PyTorch's, alternating in
that process, medians); the settings' processes run round-robin (default, flag 1, flag 2,
..., default, flag 1, ...) so that a change in the load falls on all of them. The figure
of a setting is its own process's tsm / PyTorch ratio; the first-step loss and the
compiled program's library ops (``_library_ops``) show what the flag changed.

Usage:
  taskset -c 0,1 python bench/xla_flags.py --setup convnet --rounds 5 --repeats 1
      [--flags "--xla_cpu_use_onednn=true;--xla_cpu_experimental_ynn_fusion_type="]
      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# Every library flag of jaxlib 0.10's XLA:CPU with the values it accepts (``strings`` of
# libjax_common.so and a parse test; see BUILD_NOTES "Performance against PyTorch").
DEFAULT_FLAGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_experimental_xnn_fusion_type=individual_dot,individual_convolution",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
)


def run_one(setup: str, rounds: int, flags: str, impls: str) -> dict:
  """One process of torch_reference.py under ``XLA_FLAGS=flags``; its result dict."""
  here = os.path.dirname(os.path.abspath(__file__))
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, os.path.join(here, "torch_reference.py"), "--setups", setup,
           "--impls", impls, "--rounds", str(rounds), "--resnet-rounds", str(rounds),
           "--json", out.name]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
      return {"flags": flags, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    with open(out.name, encoding="utf-8") as f:
      data = json.load(f)
  r = data["results"][0]
  r["flags"] = flags
  r["load_average"] = data["header"]["load_average"]
  return r


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setup", default="convnet", choices=("convnet", "resnet18"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--impls", default="tsm,torch")
  parser.add_argument("--flags", default=None,
                      help="';'-separated XLA_FLAGS settings (an empty one is the default)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  settings = DEFAULT_FLAGS if args.flags is None else tuple(args.flags.split(";"))
  print("load average at start:", [round(x, 2) for x in os.getloadavg()], flush=True)
  results = []
  for rep in range(args.repeats):
    for flags in settings:
      r = run_one(args.setup, args.rounds, flags, args.impls)
      r["repeat"] = rep
      results.append(r)
      if "error" in r:
        print(f"{flags or '(default)'}: REJECTED: {r['error']}", flush=True)
        continue
      med = r["median_s"]
      ratios = " ".join(f"{k} {v:.2f}x" for k, v in r.get("over_torch", {}).items()
                        if k != "torch")
      print(f"{flags or '(default)'}: " + " ".join(f"{k} {1e3 * v:.0f} ms" for k, v in
                                                   med.items())
            + f" | vs torch: {ratios} | loss {r['first_loss']} | ops {r['tsm_library_ops']}"
            f" | load {r['load_average'][0]}", flush=True)
  print("load average at end:", [round(x, 2) for x in os.getloadavg()], flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
