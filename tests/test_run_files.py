"""A finished run's final files: each is checked on rerun and rebuilt when missing or
damaged, ``--rebuild_outputs`` writes them all again; a damaged ``metrics.jsonl`` is one
line."""

from __future__ import annotations

import json
import os

import pytest

from tsm import outputs
from tsm import workdir as workdir_lib

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import run_config
from fit_helpers import tiny_config

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20 + b"IEND\xaeB`\x82"


def _whole_run(path, test=True):
  os.makedirs(path / "tensorboard" / "00006" / "test")
  (path / "summary.json").write_text(json.dumps({"test": {"auc": 0.5}} if test else {}))
  import numpy as np  # pylint: disable=import-outside-toplevel
  np.savez(path / "pairs.npz", test_distances=np.zeros(3), test_same=np.ones(3, bool))
  (path / "training.png").write_bytes(PNG)
  (path / "roc.png").write_bytes(PNG)
  (path / "tensorboard" / "projector_config.pbtxt").write_text(
      'embeddings {\ntensor_name: "test:00006"\ntensor_path: "00006/test/tensors.tsv"\n'
      'metadata_path: "00006/test/metadata.tsv"\n}\n')
  (path / "tensorboard" / "00006" / "test" / "tensors.tsv").write_text("1\t2\n3\t4\n")
  (path / "tensorboard" / "00006" / "test" / "metadata.tsv").write_text("0\n1\n")


def test_a_whole_run_has_no_damaged_files(tmp_path):
  _whole_run(tmp_path)
  assert outputs.damaged(str(tmp_path)) == []


@pytest.mark.parametrize("name,damage,expected", [
    ("training.png", "remove", ["training.png"]),
    ("roc.png", "truncate", ["roc.png"]),
    ("summary.json", "nan", ["summary.json"]),
    ("pairs.npz", "truncate", ["pairs.npz"]),
    ("tensorboard/00006/test/tensors.tsv", "truncate",
     ["tensorboard/00006/test/tensors.tsv"]),
    ("tensorboard/projector_config.pbtxt", "remove", ["tensorboard/projector_config.pbtxt"]),
])
def test_each_missing_or_damaged_file_is_named(tmp_path, name, damage, expected):
  _whole_run(tmp_path)
  path = tmp_path / name
  if damage == "remove":
    path.unlink()
  elif damage == "nan":
    path.write_text('{"auc": NaN}')
  else:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 1])
  found = outputs.damaged(str(tmp_path))
  assert found[:len(expected)] == expected and set(found) <= set(expected) | {"roc.png"}


def test_a_run_without_tensorboard_or_figures_expects_none(tmp_path):
  _whole_run(tmp_path)
  for name in ("training.png", "roc.png", "tensorboard/projector_config.pbtxt"):
    (tmp_path / name).unlink()
  assert outputs.damaged(str(tmp_path), figures=False, tensorboard=False) == []


def test_clear_projector_leaves_no_entry_behind(tmp_path):
  _whole_run(tmp_path)
  outputs.clear_projector(str(tmp_path))
  assert os.listdir(tmp_path / "tensorboard") == []


@pytest.mark.slow
def test_lost_final_files_are_rebuilt_from_the_checkpoint(tmp_path, capsys):
  cfg = tiny_config(epochs=2, steps_per_epoch=3)
  first = run_config(cfg, tmp_path)
  projector = tmp_path / "tensorboard" / "00006" / "test" / "tensors.tsv"
  whole = {n: (tmp_path / n).read_bytes() for n in ("summary.json", "pairs.npz")}
  table = projector.read_text()
  (tmp_path / "training.png").unlink()
  projector.write_text(table[:40])
  capsys.readouterr()
  again = run_config(tiny_config(epochs=2, steps_per_epoch=3), tmp_path)
  out = capsys.readouterr().out
  assert "writing training.png (missing or damaged), tensorboard/00006/test/tensors.tsv" in out
  assert again == first
  assert outputs.damaged(str(tmp_path)) == []
  assert projector.read_text() == table
  assert {n: (tmp_path / n).read_bytes() for n in whole} == whole
  with open(tmp_path / "tensorboard" / "projector_config.pbtxt") as f:
    assert f.read().count("embeddings {") == 1


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "truncate", "garble"])
def test_a_damaged_metrics_log_is_one_line(tmp_path, damage):
  cfg = tiny_config(epochs=3, steps_per_epoch=3, stop_after_steps=7)
  cfg.train.tensorboard = False
  assert run_config(cfg, tmp_path) is None
  log = tmp_path / "metrics.jsonl"
  if damage == "delete":
    log.unlink()
  elif damage == "truncate":
    log.write_bytes(log.read_bytes()[:200])
  else:
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + '{"kind": "st\n' + "".join(lines[3:]))
  cfg.train.stop_after_steps = 0
  with pytest.raises(workdir_lib.DamagedRun, match="metrics.jsonl is damaged") as info:
    run_config(cfg, tmp_path)
  assert "\n" not in str(info.value) and "train the run again" in str(info.value)
