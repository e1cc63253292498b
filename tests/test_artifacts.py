"""tsm.artifacts: atomic writes that honour the umask (figures saved through them too)."""

import json
import os

import numpy as np
import pytest

from tsm import artifacts


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
  old = os.umask(request.param)
  yield request.param
  os.umask(old)


def _mode(path):
  return os.stat(path).st_mode & 0o777


def test_write_atomic_honours_umask(tmp_path, umask):
  want = 0o666 & ~umask  # what open() gives a new file
  artifacts.write_atomic(str(tmp_path / "a.txt"), "text")
  artifacts.write_atomic(str(tmp_path / "b.bin"), b"\x00\x01")
  artifacts.write_json_atomic(str(tmp_path / "sub" / "c.json"), {"b": 1, "a": [1.5]})
  with artifacts.atomic_path(str(tmp_path / "d.npz")) as tmp:
    np.savez(tmp, x=np.arange(3))
  for name in ("a.txt", "b.bin", "sub/c.json", "d.npz"):
    assert _mode(tmp_path / name) == want, name
  assert (tmp_path / "a.txt").read_text() == "text"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  assert json.loads((tmp_path / "sub" / "c.json").read_text()) == {"a": [1.5], "b": 1}
  np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["x"], np.arange(3))
  assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "d.npz", "sub"]


def test_figure_honours_umask(tmp_path, umask):
  pytest.importorskip("matplotlib")
  from matplotlib import pyplot as plt
  from tsm import plotting
  fig, ax = plt.subplots()
  ax.plot([0, 1])
  plotting.save_figure(fig, str(tmp_path / "f.png"))
  assert _mode(tmp_path / "f.png") == 0o666 & ~umask
  assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "summary.json")
  artifacts.write_json_atomic(path, {"old": True})
  with pytest.raises(TypeError):
    artifacts.write_json_atomic(path, {"bad": object()})
  with pytest.raises(RuntimeError):
    with artifacts.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("writer failed")
  assert json.loads(open(path).read()) == {"old": True}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_write_atomic_rejects_objects(tmp_path):
  with pytest.raises(ValueError, match="data must be str or bytes"):
    artifacts.write_atomic(str(tmp_path / "x"), {"a": 1})
