"""One bench report: every performance figure of tsm, beside its baseline.

Runs (or, with ``--from DIR``, reads the JSON files of an earlier run of) the benches and
prints one table: per figure, tsm's number, the baseline's number, the ratio and the
target, with the device kind and the load average. Baselines:

* train step (``bench/torch_reference.py``): PyTorch's CPU step of the same model with
  pytorch-metric-learning's all-triplets loss, and a plain Flax step (XLA's own part);
* triplet loss + gradient (``bench/loss_reference.py``): pytorch-metric-learning's
  ``TripletMarginLoss``; B = 4096 (``bench/losses.py``): the target time, and tsm's
  general sort path beside its P x K path;
* retrieval metrics (``bench/retrieval_reference.py``): pytorch-metric-learning's
  ``AccuracyCalculator`` with faiss-cpu; the memory-mapped 1,000,000 gallery likewise.

No accelerator is lent to this task: the figures are CPU figures (2 shared cores); on a
GPU / TPU machine rerun the same command, the device kind heads the report.

Usage:
  taskset -c 0,1 python bench/report.py --out bench_out      # runs everything (~1 h on 2 loaded cores)
  python bench/report.py --from bench_out                     # prints the table again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

RUNS = {  # json name: bench command (arguments after the script)
    "train.json": ["torch_reference.py", "--setups", "convnet,resnet18", "--rounds", "7",
                   "--resnet-rounds", "3"],
    "loss1024.json": ["loss_reference.py", "--sizes", "1024", "--regimes", "pk",
                      "--rounds", "5"],
    "loss4096.json": ["losses.py", "--sizes", "4096", "--impls", "tsm", "tsm-sort",
                      "--repeats", "3"],
    "retrieval50k.json": ["retrieval_reference.py", "--n", "50000", "--rounds", "3"],
    "retrieval1m.json": ["retrieval_reference.py", "--gallery", "1000000", "--n", "1000",
                         "--rounds", "1"],
}


def run_all(out: str) -> None:
  os.makedirs(out, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
  for name, cmd in RUNS.items():
    print("running", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, cmd[0])] + cmd[1:] +
                   ["--json", os.path.join(out, name)], check=True, env=env)


def _load(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def rows(folder: str) -> list[tuple[str, str, str, str, str]]:
  """(figure, tsm, baseline, ratio, target) rows from the JSON files in ``folder``."""
  out = []
  train = _load(os.path.join(folder, "train.json"))
  if train:
    for r in train["results"]:
      med = r["median_s"]
      base = med.get("torch")
      out.append((f"train step {r['setup']} B={r['batch']} (ex/s)",
                  f"{r['batch'] / med['tsm']:.1f}",
                  f"torch {r['batch'] / base:.1f}" if base else "torch n/a",
                  f"{base / med['tsm']:.2f}x" if base else "",
                  ">= 1x" if r["setup"] == "convnet" else "as close as possible"))
      out.append((f"  plain Flax step {r['setup']} (XLA's own)",
                  f"{r['batch'] / med['flax']:.1f}",
                  f"torch {r['batch'] / base:.1f}" if base else "",
                  f"{base / med['flax']:.2f}x" if base else "", ""))
      if "flax-fastconv" in med:
        out.append((f"  plain Flax + tsm.convolution {r['setup']}",
                    f"{r['batch'] / med['flax-fastconv']:.1f}",
                    f"flax {r['batch'] / med['flax']:.1f}",
                    f"{med['flax'] / med['flax-fastconv']:.2f}x", ""))
  loss = _load(os.path.join(folder, "loss1024.json"))
  for r in loss or []:
    med = r["median_s"]
    out.append((f"triplet loss+grad B={r['batch']} {r['regime']} (ms)",
                f"{1e3 * med['tsm']:.1f}",
                f"PML {1e3 * med['pml']:.0f}" if "pml" in med else "PML n/a",
                f"{r['speedup']:.1f}x" if "pml" in med else "", ">= 50x"))
  big = _load(os.path.join(folder, "loss4096.json"))
  for r in (big or {}).get("results", []):
    out.append((f"triplet loss+grad B={r['b']} {r['regime']} {r['impl']} (s)",
                f"{r['median_s']:.3f} (cpu {r['cpu_s']:.3f})", "target 0.5",
                f"{0.5 / r['median_s']:.2f}x", "<= 0.5 s, O(B^2)"))
  ret = _load(os.path.join(folder, "retrieval50k.json"))
  if ret:
    h = ret["header"]
    b = h["baseline"]
    out.append((f"retrieval N={h['n']} warm (s)", f"{ret['median_s']['tsm']:.1f}",
                f"{b} {ret['median_s'][b]:.1f}", f"{ret['time_ratio']:.2f} of the time",
                f"<= 0.5, |diff| {ret['max_abs_diff']:.1e}"))
    if "cold_ratio" in ret:
      out.append((f"retrieval N={h['n']} cold (s)", f"{ret['median_s']['tsm_cold']:.1f}",
                  f"{b} {ret['median_s'][b]:.1f}", f"{ret['cold_ratio']:.2f} of the time",
                  "<= 0.6, compilation included"))
  big = _load(os.path.join(folder, "retrieval1m.json"))
  if big:
    runs = big["runs"]
    t = min(r["wall_s"] for r in runs["tsm"])
    line = [f"retrieval gallery {big['gallery']:,} mmap, {big['header']['n']} queries (s)",
            f"{t:.1f} (peak {max(r['peak_maxrss_mib'] for r in runs['tsm']):.0f} MiB)"]
    if "pml" in runs:
      p = min(r["wall_s"] for r in runs["pml"])
      line += [f"PML {p:.1f} (peak {max(r['peak_maxrss_mib'] for r in runs['pml']):.0f} MiB)",
               f"{t / p:.2f} of the time"]
    else:
      line += ["", ""]
    out.append(tuple(line) + ("bounded memory",))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="bench_out", help="where the runs write JSON")
  parser.add_argument("--from", dest="folder", default=None,
                      help="only print the table of an earlier run's folder")
  args = parser.parse_args()
  folder = args.folder or args.out
  if args.folder is None:
    run_all(folder)
  import jax  # pylint: disable=import-outside-toplevel
  print(f"device_kind={jax.devices()[0].device_kind} devices={jax.device_count()} "
        f"cpus={len(os.sched_getaffinity(0))} load_average="
        f"{[round(v, 2) for v in os.getloadavg()]} (no accelerator is lent to this task)")
  table = rows(folder)
  widths = [max(len(r[i]) for r in table + [("figure", "tsm", "baseline", "ratio", "target")])
            for i in range(5)]
  for r in [("figure", "tsm", "baseline", "ratio", "target")] + table:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
  main()
