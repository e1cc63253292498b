"""The README's "Your own data and model" snippet runs as written, and resumes."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
  text = README.read_text()
  block = re.search(r"<!-- your-own-data:start -->\s*```python\n(.*?)```", text, re.S)
  assert block, "README lost its 'Your own data and model' snippet markers"
  return block.group(1)


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
