"""The reliability probes: what users and clusters do to a run, and what tsm answers.

  python bench/reliability_probes.py [SCRATCH_DIR]   # prints a Markdown table

Each probe runs the commands (``tsm-train``, ``tsm-embed``) or a few lines of Python in a
fresh scratch directory, with relative workdirs, and reports the exit status, the lines
on stderr (and the warnings among them), the first of them, and what was kept on disk.
BUILD_NOTES.md ("Runs that survive") holds the table; the tests behind each row are in
tests/test_stopping.py, test_resume_changes.py, test_nonfinite.py, test_run_files.py,
test_identity.py, test_one_liners.py and test_cli_reliability.py. About 10 minutes on two
CPU cores.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
BASE = ["--config=digits_dams", "--config.train.epochs=2", "--config.train.steps_per_epoch=5",
        "--config.train.progress=False", "--config.eval.every_epochs=1"]
ROWS: list[tuple[str, str, str, str, str]] = []


def _run(args, cwd, timeout=600):
  return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def train(cwd, *args):
  return _run([os.path.join(BIN, "tsm-train"), *BASE, *args], cwd)


def embed(cwd, *args):
  return _run([os.path.join(BIN, "tsm-embed"), *args], cwd)


def python(cwd, code):
  return _run([sys.executable, "-c", textwrap.dedent(code)], cwd)


def row(probe, proc, kept=""):
  err = [line for line in proc.stderr.splitlines() if line.strip()]
  warnings = sum("warning" in line for line in err)
  first = err[0] if err else (proc.stdout.strip().splitlines() or [""])[-1]
  first = first.replace("|", "\\|")
  if len(first) > 150:
    first = first[:147] + "..."
  lines = f"{len(err)}" + (f" ({warnings} warning)" if warnings else "")
  ROWS.append((probe, str(proc.returncode), lines, first, kept))
  print(f"{probe}: {proc.returncode}", file=sys.stderr, flush=True)


def steps(workdir):
  names = sorted((n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                  if n.isdigit()), key=int)
  return "checkpoints " + (", ".join(names) or "none")


def signal_probe(cwd, name, signum, args=()):
  workdir = f"sig_{name}"
  proc = subprocess.Popen([os.path.join(BIN, "tsm-train"), *BASE,
                           "--config.train.steps_per_epoch=400",
                           "--config.train.log_every=1", f"--workdir={workdir}", *args],
                          cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  log = os.path.join(cwd, workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.exists(log)
                                        and open(log).read().count("\n") > 10):
    time.sleep(0.2)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  row(f"{name} mid-epoch", subprocess.CompletedProcess([], proc.returncode, out, err),
      steps(os.path.join(cwd, workdir)))
  again = train(cwd, "--config.train.steps_per_epoch=400", "--config.train.log_every=1",
                f"--workdir={workdir}")
  row(f"{name}: the same command", again, "summary.json" if os.path.exists(
      os.path.join(cwd, workdir, "summary.json")) else "no summary")


def main(scratch):
  cwd = scratch
  # 1. Workdirs: relative, ~, symlinked, moved.
  row("relative workdir", train(cwd, "--workdir=runs/rel"), "summary.json")
  home = os.path.expanduser("~/tsm_probe_home")
  shutil.rmtree(home, ignore_errors=True)
  proc = train(cwd, "--workdir=~/tsm_probe_home")
  row("--workdir=~/x", proc, f"{home} exists: {os.path.isdir(home)}; ./~ exists: "
      f"{os.path.exists(os.path.join(cwd, '~'))}")
  shutil.rmtree(home, ignore_errors=True)
  os.makedirs(os.path.join(cwd, "real"))
  os.symlink("real", os.path.join(cwd, "link"))
  row("symlinked workdir", train(cwd, "--workdir=link"), "files in real/")
  shutil.move(os.path.join(cwd, "runs", "rel"), os.path.join(cwd, "moved"))
  row("moved workdir, rerun", train(cwd, "--workdir=moved"), "nothing written")
  row("moved workdir, tsm-embed", embed(cwd, "--workdir=moved", "--split=test",
                                       "--out=e.npz"), "e.npz")
  # 2. Signals.
  signal_probe(cwd, "SIGTERM", signal.SIGTERM)
  signal_probe(cwd, "SIGUSR1", signal.SIGUSR1)
  signal_probe(cwd, "SIGINT", signal.SIGINT)
  # 3. Divergence advice and continuing with changes.
  div = ["--config.train.optimizer=sgd", "--config.train.learning_rate=1e30",
         "--config.train.log_every=1"]
  proc = train(cwd, "--workdir=div", *div)
  row("sgd lr 1e30 (diverges)", proc, steps(os.path.join(cwd, "div")))
  row("same, lr 1e-3 without the flag",
      train(cwd, "--workdir=div", *div[:1], "--config.train.learning_rate=1e-3",
            "--config.train.log_every=1"), "config.json unchanged")
  row("same, lr 1e-3 --resume_with_changes",
      train(cwd, "--workdir=div", *div[:1], "--config.train.learning_rate=1e-3",
            "--config.train.log_every=1", "--resume_with_changes"),
      "changes.jsonl: " + open(os.path.join(cwd, "div", "changes.jsonl")).read().strip()[:60])
  row("optimizer changed --resume_with_changes",
      train(cwd, "--workdir=div", "--config.train.learning_rate=1e-3",
            "--config.train.log_every=1", "--resume_with_changes"), "")
  # 4. nonfinite=skip.
  proc = train(cwd, "--workdir=skip", "--config.train.optimizer=sgd",
               "--config.train.learning_rate=1e37", "--config.train.nonfinite=skip",
               "--config.train.steps_per_epoch=200", "--config.train.log_every=1")
  row("sgd lr 1e37, nonfinite=skip", proc, steps(os.path.join(cwd, "skip")))
  row("fit(nonfinite='skip'), one NaN train row", python(cwd, """
      import numpy as np, optax, flax.linen as nn, tsm
      from tsm import fit, losses, margins, evaluation
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      x = rng.normal(size=(40, 3)).astype(np.float32); x[0] = np.nan
      r = fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2),
                  {"train": (x, y), "val": (x[1:9], y[1:9]), "test": (x[1:9], y[1:9])},
                  workdir="nanrow", epochs=2, evaluators=[evaluation.Retrieval("val")],
                  best_metric="val_map@r", best_mode="max",
                  options=fit.LoopOptions(nonfinite="skip"))
      print("skipped_steps", r.summary["skipped_steps"])
  """), "skipped steps in summary.json, no NaN in the epoch lines")
  # 5. fit reruns that differ.
  row("fit rerun with other arrays", python(cwd, """
      import numpy as np, optax, flax.linen as nn
      from tsm import fit, losses, margins
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      def data(n):
        rng = np.random.default_rng(0); y = np.repeat(np.arange(4), n // 4).astype(np.int32)
        return {"train": (rng.normal(size=(n, 3)).astype(np.float32), y)}
      import sys
      kw = dict(workdir="mixed", epochs=1, hooks=[])
      fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2), data(40), **kw)
      try:
        fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2), data(48), **kw)
      except ValueError as e:
        print(e, file=sys.stderr); sys.exit(2)
  """), "first run's files unchanged")
  row("fit rerun with a new learning rate", python(cwd, """
      import numpy as np, optax, flax.linen as nn
      from tsm import fit, losses, margins
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      import sys
      try:
        fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-3),
                {"train": (rng.normal(size=(40, 3)).astype(np.float32), y)},
                workdir="mixed", epochs=1, hooks=[])
      except ValueError as e:
        print(e, file=sys.stderr); sys.exit(2)
  """), "")
  # 6. Lost and damaged files.
  train(cwd, "--workdir=lost")
  for name in ("training.png", "roc.png"):
    os.remove(os.path.join(cwd, "lost", name))
  tsv = glob.glob(os.path.join(cwd, "lost", "tensorboard", "*", "test", "tensors.tsv"))[0]
  with open(tsv, "r+b") as f:
    f.truncate(100)
  proc = train(cwd, "--workdir=lost")
  row("figures lost, tensors.tsv cut, rerun", proc, "rebuilt: " + ", ".join(
      n for n in ("training.png", "roc.png") if os.path.exists(os.path.join(cwd, "lost", n))))
  row("--rebuild_outputs", train(cwd, "--workdir=lost", "--rebuild_outputs"), "all rebuilt")
  os.remove(os.path.join(cwd, "lost", "summary.json"))
  row("summary.json lost, rerun", train(cwd, "--workdir=lost"), "summary.json rebuilt")
  train(cwd, "--workdir=cut", "--config.train.epochs=3", "--config.train.stop_after_steps=12")
  os.remove(os.path.join(cwd, "cut", "metrics.jsonl"))
  row("metrics.jsonl deleted mid-run", train(cwd, "--workdir=cut", "--config.train.epochs=3"),
      steps(os.path.join(cwd, "cut")))
  with open(os.path.join(cwd, "cut", "config.json"), "w") as f:
    f.write('{"train": ')
  row("config.json corrupt", train(cwd, "--workdir=cut", "--config.train.epochs=3"), "")
  # 8. Silently wrong numbers.
  row("eval.knn_k=100000", train(cwd, "--workdir=knn", "--config.eval.knn_k=100000"),
      f"workdir created: {os.path.exists(os.path.join(cwd, 'knn'))}")
  proc = train(cwd, "--workdir=collapse", "--config.train.optimizer=sgd",
               "--config.train.learning_rate=1e12")
  with open(os.path.join(cwd, "collapse", "summary.json")) as f:
    threshold = json.load(f)["test"]["threshold"]
  row("sgd lr 1e12 (collapse)", proc, f"summary.json threshold {json.dumps(threshold)}")
  row("warmup_steps=100000", train(cwd, "--workdir=warm", "--config.train.warmup_steps=100000"),
      "summary.json")
  python(cwd, "import numpy as np; x = np.random.rand(5, 8, 8, 1).astype('float32'); "
              "x[1] = np.nan; np.save('nan.npy', x)")
  row("tsm-embed NaN input", embed(cwd, "--workdir=moved", "--input=nan.npy", "--out=n.npz"),
      "n.npz")
  train(cwd, "--workdir=early", "--config.train.stop_after_steps=3",
        "--config.checkpoint.every_steps=3")
  row("tsm-embed unfinished run", embed(cwd, "--workdir=early", "--which=last",
                                       "--split=test", "--out=u.npz"), "u.npz")
  row("fit best_metric='val_nonexistent'", python(cwd, """
      import numpy as np, optax, flax.linen as nn
      from tsm import fit, losses, margins, evaluation
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      x = rng.normal(size=(40, 3)).astype(np.float32)
      fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2),
              {"train": (x, y), "val": (x[:8], y[:8])}, workdir="bm", epochs=1, hooks=[],
              evaluators=[evaluation.Retrieval("val")], best_metric="val_nonexistent")
  """), "")
  row("fit without a validation split", python(cwd, """
      import numpy as np, optax, flax.linen as nn
      from tsm import fit, losses, margins
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2),
              {"train": (rng.normal(size=(40, 3)).astype(np.float32), y)}, workdir="noval",
              epochs=1, hooks=[])
  """), "")
  # 9. Tracebacks turned into lines.
  with open(os.path.join(cwd, "corrupt.npz"), "wb") as f:
    f.write(b"PK\x03\x04 not a zip")
  row("tsm-embed --input=corrupt.npz", embed(cwd, "--workdir=moved", "--input=corrupt.npz",
                                            "--out=c.npz"), "no c.npz")
  row("Index.load of a corrupt file", python(cwd, """
      import sys
      from tsm import search
      try:
        search.Index.load("corrupt.npz")
      except ValueError as e:
        print(e, file=sys.stderr); sys.exit(2)
  """), "")
  for name, body in (("returns a dict", 'return {"train": {"epochs": 1}}'),
                     ("returns a partial ConfigDict",
                      "import ml_collections\n  c = ml_collections.ConfigDict()\n"
                      "  c.train = {'epochs': 1}\n  return c"),
                     ("assigns a wrong type",
                      "from tsm import config as c\n  cfg = c.default_config()\n"
                      "  cfg.train.epochs = 'three'\n  return cfg")):
    path = os.path.join(cwd, f"cfg_{len(ROWS)}.py")
    with open(path, "w") as f:
      f.write(f"def get_config():\n  {body}\n")
    row(f"config file {name}", _run([os.path.join(BIN, "tsm-train"), f"--config={path}",
                                     "--workdir=w_cfg"], cwd),
        f"workdir created: {os.path.exists(os.path.join(cwd, 'w_cfg'))}")
  row("model returns a scalar", python(cwd, """
      import sys, numpy as np, optax, flax.linen as nn, jax.numpy as jnp
      from tsm import fit, losses, margins
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return jnp.sum(nn.Dense(4)(x))
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      try:
        fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2),
                {"train": (rng.normal(size=(40, 3)).astype(np.float32), y)},
                workdir="scalar", epochs=1, hooks=[])
      except ValueError as e:
        print(e, file=sys.stderr); sys.exit(2)
  """), "")
  row("NaN in the train inputs (stop)", python(cwd, """
      import sys, numpy as np, optax, flax.linen as nn
      from tsm import fit, losses, margins
      class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False): return nn.Dense(4)(x)
      rng = np.random.default_rng(0); y = np.repeat(np.arange(4), 10).astype(np.int32)
      x = rng.normal(size=(40, 3)).astype(np.float32); x[5] = np.nan
      try:
        fit.fit(Net(), losses.triplet_margin_loss, margins.constant(0.2), optax.adam(1e-2),
                {"train": (x, y)}, workdir="naninput", epochs=1, hooks=[])
      except ValueError as e:
        print(e, file=sys.stderr); sys.exit(2)
  """), "")
  print("| probe | exit | stderr lines | first line | kept |")
  print("|---|---|---|---|---|")
  for r in ROWS:
    print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
  scratch = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tsm-probes-")
  os.makedirs(scratch, exist_ok=True)
  main(scratch)
