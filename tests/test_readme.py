"""The README's snippets run as written, from a fresh directory with relative workdirs:
"Your own data and model" (and its rerun resumes), the default run's command, then "Use a
trained model" and the `tsm-embed` line on the run it trained."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet(name: str = "your-own-data") -> str:
  text = README.read_text()
  block = re.search(rf"<!-- {name}:start -->\s*```python\n(.*?)```", text, re.S)
  assert block, f"README lost its {name} snippet markers"
  return block.group(1)


def _default_command() -> list[str]:
  """The README's first command's ``tsm-train`` part, as written."""
  line = next(l for l in README.read_text().splitlines()
              if l.startswith("python3 -m venv") and "tsm-train" in l)
  return line[line.index("tsm-train"):].split()


@pytest.mark.slow
def test_your_own_data_snippet_runs_and_resumes(tmp_path):
  script = tmp_path / "snippet.py"
  script.write_text(_snippet())
  env = dict(os.environ, PYTHONPATH=str(README.parent))
  first = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = tmp_path / "runs" / "my_data"
  for name in ("summary.json", "metrics.jsonl", "training.png", "pairs.npz"):
    assert (workdir / name).exists(), name
  summary = json.loads((workdir / "summary.json").read_text())
  map_r = summary["test"]["map@r"]
  assert 0.0 < map_r <= 1.0
  # The printed line is the summary's number and the embedding shape.
  assert first.stdout.strip().splitlines()[-1] == f"{map_r} (4, 16)"
  epochs = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
            if '"kind": "epoch"' in l]
  assert len(epochs) == 5
  # Rerunning the same call resumes the finished run: no new epoch, the same summary.
  second = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  again = [l for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if '"kind": "epoch"' in l]
  assert len(again) == 5
  assert json.loads((workdir / "summary.json").read_text())["test"] == summary["test"]


@pytest.mark.slow
def test_use_a_trained_model_snippet_and_tsm_embed_run_as_written(tmp_path):
  # A fresh directory holding only what the README's default run needs (its config path
  # is relative to a clone), with relative workdirs throughout.
  (tmp_path / "experiments").symlink_to(README.parent / "experiments")
  env = dict(os.environ, PYTHONPATH=str(README.parent), TSM_HUGEPAGES="0")
  cli = os.path.join(os.path.dirname(sys.executable), "tsm-train")
  command = _default_command()
  assert command[:2] == ["tsm-train", "--config=experiments/configs/digits_dams.py"]
  assert command[2] == "--workdir=runs/digits_dams"
  train = subprocess.run([cli, *command[1:], "--config.train.epochs=2"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  script = tmp_path / "use.py"
  script.write_text(_snippet("use-a-trained-model") +
                    "print(embeddings.shape, ids.shape, distances.shape)\n")
  used = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert used.returncode == 0, used.stderr[-3000:]
  assert (tmp_path / "gallery.npz").exists()
  shapes = used.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"\(\d+, \d+\) \(\d+, 5\) \(\d+, 5\)", shapes), shapes
  # The shell line beside it, as written.
  line = re.search(r"`(tsm-embed --workdir=runs/digits_dams\s+--split=test --out=test.npz)`",
                   README.read_text())
  assert line, "README lost its tsm-embed line"
  embed = os.path.join(os.path.dirname(sys.executable), "tsm-embed")
  out = subprocess.run([embed, *line.group(1).split()[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with np.load(tmp_path / "test.npz") as saved:
    assert saved["embeddings"].shape[0] == int(shapes.split(")")[0].strip("(").split(",")[0])
