"""bench/accelerator.py: its figures from the benches' JSON files, its table, its errors.

The whole ``--quick`` run (every bench, the default run and a two-epoch study) is run by
``.ci/run`` as its own step; these tests check the parts that turn results into a report.
"""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "accelerator.py")
_spec = importlib.util.spec_from_file_location("bench_accelerator", _PATH)
accelerator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accelerator)

ENV = {"device_kind": "NVIDIA H100", "platform": "gpu", "platform_version": "cuda 12",
       "device_count": 1, "jax": "0.10.2", "jaxlib": "0.10.2", "cpu": "Xeon",
       "cpu_count": 16, "load_average": [0.5, 0.5, 0.5], "torch": "2.13.0",
       "torch_device": "cuda"}


def _write(folder, name, obj):
  with open(os.path.join(folder, name), "w") as f:
    json.dump(obj, f)


def _bench_folder(folder, train_ms=100.0, torch_ms=50.0):
  _write(folder, "train_step.json", {
      "header": {"torch_device": "cuda"},
      "results": [{"setup": "convnet", "batch": 256,
                   "median_s": {"tsm": train_ms / 1e3, "torch": torch_ms / 1e3}}]})
  _write(folder, "loss_1024.json", [{"batch": 1024, "regime": "pk",
                                     "median_s": {"tsm": 0.01, "pml": 1.0}}])
  _write(folder, "retrieval.json", {"header": {"n": 50000, "baseline": "numpy"},
                                    "median_s": {"tsm": 2.0, "numpy": 8.0}})
  _write(folder, "default_run.json", {"status": "ok", "wall_s": 12.5, "command": []})
  _write(folder, "study.json", {"status": "over 150 s", "wall_s": 150.0, "command": []})


def test_figures_read_each_bench_with_its_baseline_and_direction(tmp_path):
  _bench_folder(str(tmp_path))
  rows = {r["name"]: r for r in accelerator.figures(str(tmp_path))}
  step = rows["train step convnet, batch 256"]
  assert step["value"] == pytest.approx(256 / 0.1) and step["unit"] == "ex/s"
  assert step["baseline"] == pytest.approx(256 / 0.05)
  assert step["baseline_name"] == "PyTorch (cuda)" and step["better"] == "higher"
  loss = rows["triplet loss + grad, B = 1024 pk"]
  assert loss["value"] == pytest.approx(10.0) and loss["baseline"] == pytest.approx(1000.0)
  assert loss["better"] == "lower"
  assert rows["retrieval metrics, N = 50,000"]["baseline_name"] == "numpy"
  assert rows["README default run (whole command)"]["value"] == 12.5
  # A step that ran out of time gives no figure.
  assert not any(name.startswith("two-epoch") for name in rows)


def test_ratios_are_times_better_whichever_way_is_better():
  faster = {"value": 2.0, "better": "lower"}
  assert accelerator._ratio(faster, 8.0) == pytest.approx(4.0)    # 2 s against 8 s
  higher = {"value": 300.0, "better": "higher"}
  assert accelerator._ratio(higher, 100.0) == pytest.approx(3.0)  # 300 ex/s against 100
  assert accelerator._ratio(higher, None) is None


def test_table_has_cpu_column_and_names_unmeasured_steps(tmp_path):
  gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
  gpu.mkdir()
  cpu.mkdir()
  _bench_folder(str(gpu), train_ms=10.0)
  _bench_folder(str(cpu), train_ms=200.0)
  text = accelerator.table(ENV, accelerator.figures(str(gpu)),
                           {"train_step": "ok", "study": "over 150 s"},
                           accelerator.figures(str(cpu)))
  assert "NVIDIA H100 x 1 (gpu, cuda 12)" in text and "PyTorch 2.13.0 on cuda" in text
  row = next(line for line in text.splitlines() if line.startswith("| train step"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[4] == "5.00x"     # 10 ms per step against PyTorch's 50 ms
  assert cells[6] == "20.00x"    # 10 ms against the CPU's 200 ms
  assert "Steps not measured: study (over 150 s)." in text


def test_unknown_step_and_missing_cpu_folder_are_one_line_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    accelerator.main(["--only", "train_stepp", "--out", str(tmp_path)])
  assert info.value.code == 2
  assert "unknown step 'train_stepp'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    accelerator.main(["--cpu", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
  assert "no accelerator.json there" in capsys.readouterr().err
  assert not os.listdir(tmp_path)
