"""tsm.load (tsm/export.py) and tsm-embed (tsm/embed_cli.py) on a tiny trained run.

References: the run's own ``FitResult`` (its states and its ``embed``), the summary's
test Recall@1 recomputed by a brute-force numpy loop, hand-computed preprocessing, and a
brute-force k-NN for the README example.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

import tsm
from fit_helpers import jax_compilation_cache  # noqa: F401  # pylint: disable=unused-import
from fit_helpers import tiny_config
from tsm import checkpoint as checkpoint_lib
from tsm import config as config_lib
from tsm import embed_cli
from tsm import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-epoch, 2-steps-per-epoch run: checkpoints at steps 2 and 4."""
  cfg = tiny_config(epochs=2, steps_per_epoch=2, tensorboard=False)
  workdir = str(tmp_path_factory.mktemp("run"))
  result = config_lib.train_and_evaluate(cfg, workdir)
  return workdir, result


@pytest.fixture(scope="module")
def loaded(trained):
  return tsm.load(trained[0])


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _recall_at_1(embeddings: np.ndarray, labels: np.ndarray) -> float:
  """Leave-one-out 1-NN label agreement, one query at a time (float64)."""
  e = embeddings.astype(np.float64)
  hits = 0
  for i in range(len(e)):
    d = np.sqrt(((e - e[i]) ** 2).sum(axis=1))
    d[i] = np.inf
    hits += labels[int(np.argmin(d))] == labels[i]
  return hits / len(e)


def _write_idx(path, array: np.ndarray) -> None:
  """A uint8 IDX file written byte by byte (magic 0x0008 + ndim, big-endian dims)."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


# --------------------------------------------------------------------------- tsm.load


def test_lazy_attribute_is_export_load():
  assert tsm.load is export.load and "load" in dir(tsm)


def test_best_checkpoint_gives_fits_best_state_and_embeddings(trained, loaded):
  workdir, result = trained
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   cleanup_tmp=False) as ckpt:
    best = ckpt.best_step()
  assert loaded.step == best
  _assert_trees_equal(loaded.variables["params"], result.best_state.params)
  assert set(loaded.variables) == {"params"}   # the MLP has no BatchNorm
  test = loaded.splits.test
  ours = loaded.embed(test)
  assert ours.shape == (len(test.labels), 16) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, result.embed(test), rtol=1e-6, atol=1e-6)


def test_summary_recall_at_1_recomputed_from_loaded_embeddings(trained, loaded):
  _, result = trained
  test = loaded.splits.test
  recall = _recall_at_1(loaded.embed(test), np.asarray(test.labels))
  assert recall == pytest.approx(result.summary["test"]["recall@1"], abs=1e-12)


def test_last_checkpoint_is_the_final_state(trained):
  workdir, result = trained
  last = tsm.load(workdir, which="last")
  assert last.step == 4 == int(result.state.step)
  _assert_trees_equal(last.variables["params"], result.state.params)


def test_config_and_shapes_come_from_the_run(trained, loaded):
  workdir, _ = trained
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert loaded.config.model.embedding_dim == saved["model"]["embedding_dim"] == 16
  assert loaded.config.data.name == "digits" and loaded.input_shape == (8, 8, 1)


def test_reprs_are_one_short_line(trained, loaded):
  workdir, result = trained
  text = repr(loaded)
  assert "\n" not in text and len(text) < 250 and "Array" not in text
  sizes = (f"train {len(loaded.splits.train)}, val {len(loaded.splits.val)}, "
           f"test {len(loaded.splits.test)}")
  assert text == (f"Loaded(workdir={os.path.realpath(workdir)!r}, step={loaded.step}, "
                  f"model={type(loaded.model).__name__}, input_shape=(8, 8, 1), "
                  f"data='digits' ({sizes}))")
  text = repr(result)
  s = result.summary
  assert "\n" not in text and len(text) < 250 and "Array" not in text
  assert text == (f"FitResult(epochs=2, selected epoch {s['best_epoch']} (lowest val_loss), "
                  f"test map@r {s['test']['map@r']:.4f}, recall@1 "
                  f"{s['test']['recall@1']:.4f}, auc {s['test']['auc']:.4f}, step=4)")


def test_array_inputs_in_batches_match_the_split(loaded):
  test = loaded.splits.test
  x = np.asarray(test.get(np.arange(len(test.labels))))
  np.testing.assert_allclose(loaded.embed(x, batch_size=7), loaded.embed(test),
                             rtol=1e-6, atol=1e-6)


def test_integer_images_get_the_runs_preprocessing(loaded):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
  assert loaded.config.data.normalize == "unit"
  expected = images[..., None].astype(np.float32) / 255.0   # by hand: [0, 1], one channel
  np.testing.assert_allclose(loaded.prepare(images), expected, rtol=1e-7)
  np.testing.assert_allclose(loaded.embed(images), loaded.embed(expected), atol=1e-6)


def test_dataset_normalization_is_applied_to_integer_images(tmp_path):
  cfg = tiny_config(epochs=1, steps_per_epoch=1, tensorboard=False)
  cfg.data.normalize = "dataset"
  config_lib.train_and_evaluate(cfg, str(tmp_path))
  run = tsm.load(str(tmp_path))
  plain = tsm.data.load(dataclasses.replace(config_lib.data_spec(cfg), normalize="unit"),
                        seed=int(cfg.seed))
  train = plain.train.get(np.arange(len(plain.train)))
  mean, std = train.mean(dtype=np.float64), train.std(dtype=np.float64)  # one channel
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
  expected = (images[..., None] / 255.0 - mean) / std        # by hand
  np.testing.assert_allclose(run.prepare(images), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run.embed(run.splits.test),
                             run.embed(np.asarray(run.splits.test.get(
                                 np.arange(len(run.splits.test))))), atol=1e-6)


def test_nan_in_gives_nan_out(loaded):
  x = np.zeros((3, 8, 8, 1), np.float32)
  x[1, 2, 3, 0] = np.nan
  out = loaded.embed(x)
  assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("make,match", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "holds no config.json"),
])
def test_a_workdir_without_a_run_is_one_line(tmp_path, make, match):
  with pytest.raises(ValueError, match=match) as e:
    tsm.load(make(tmp_path))
  assert "\n" not in str(e.value)


def test_a_workdir_without_checkpoints_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_json(tiny_config())))
  with pytest.raises(ValueError, match="holds no checkpoints") as e:
    tsm.load(tmp_path)
  assert "\n" not in str(e.value)
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ValueError, match="holds no checkpoint"):
    tsm.load(tmp_path)


def test_bad_arguments_are_one_line(trained, loaded):
  with pytest.raises(ValueError, match="which='worst' is unknown"):
    tsm.load(trained[0], which="worst")
  with pytest.raises(ValueError, match=r"the model takes \[N, 8, 8, 1\]"):
    loaded.embed(np.zeros((2, 64), np.float32))
  with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
    loaded.embed(np.zeros((2, 8, 8, 1), np.float32), batch_size=0)


def test_a_checkpoint_of_another_model_is_a_checkpoint_error(trained, tmp_path):
  workdir, _ = trained
  os.symlink(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
  cfg = tiny_config()
  cfg.model.embedding_dim = 8   # the saved kernels are [32, 16]
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_json(cfg)))
  with pytest.raises(checkpoint_lib.CheckpointError, match="does not restore") as e:
    tsm.load(tmp_path)
  assert "\n" not in str(e.value)


def test_readme_example_embed_index_query(trained, loaded):
  """The README's example; the k-NN answer checked against brute force."""
  run = tsm.load(trained[0])                  # best checkpoint
  gallery = run.splits.test
  embeddings = run.embed(gallery)             # [N, D] float32
  index = tsm.search.Index.build(embeddings, ids=np.arange(len(embeddings)))
  queries = run.embed(run.splits.val)
  ids, distances = index.search(queries, k=5)
  assert ids.shape == distances.shape == (len(queries), 5)
  e, q = embeddings.astype(np.float64), queries.astype(np.float64)
  for i in range(len(q)):
    d = np.sqrt(((e - q[i]) ** 2).sum(axis=1))
    np.testing.assert_allclose(distances[i], np.sort(d)[:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d[ids[i]], distances[i], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- tsm-embed


def test_cli_split_writes_embeddings_and_labels(trained, loaded, tmp_path):
  out = tmp_path / "sub" / "test.npz"
  embed_cli.run([f"--workdir={trained[0]}", "--split=test", f"--out={out}"])
  with np.load(out) as z:
    assert set(z.keys()) == {"embeddings", "labels"}
    assert z["embeddings"].dtype == np.float32
    np.testing.assert_allclose(z["embeddings"], loaded.embed(loaded.splits.test),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(z["labels"], loaded.splits.test.labels)
  assert os.listdir(out.parent) == ["test.npz"]   # no temporary file left behind


def test_cli_inputs_npy_npz_idx_file_and_idx_dir(trained, loaded, tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
  labels = np.array([0, 1, 2, 0, 1, 2])
  expected = loaded.embed(images)
  floats = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
  np.save(tmp_path / "x.npy", floats)
  np.savez(tmp_path / "x.npz", images=images, labels=labels)
  _write_idx(tmp_path / "images-idx3-ubyte", images)
  idx_dir = tmp_path / "idx"
  idx_dir.mkdir()
  _write_idx(idx_dir / "t10k-images-idx3-ubyte", images)
  _write_idx(idx_dir / "t10k-labels-idx1-ubyte", labels.astype(np.uint8))
  _write_idx(idx_dir / "train-images-idx3-ubyte", images[:2])
  _write_idx(idx_dir / "train-labels-idx1-ubyte", labels[:2].astype(np.uint8))
  cases = [("x.npy", loaded.embed(floats), None), ("x.npz", expected, labels),
           ("images-idx3-ubyte", expected, None), ("idx", expected, labels)]
  for name, want, want_labels in cases:
    out = tmp_path / f"out_{name.replace('.', '_')}.npz"
    embed_cli.run([f"--workdir={trained[0]}", f"--input={tmp_path / name}",
                   f"--out={out}", "--which=last", "--batch_size=4"])
    with np.load(out) as z:
      np.testing.assert_allclose(z["embeddings"], want, rtol=1e-6, atol=1e-6,
                                 err_msg=name)
      if want_labels is None:
        assert "labels" not in z, name
      else:
        np.testing.assert_array_equal(z["labels"], want_labels)


@pytest.mark.parametrize("args,match", [
    (["--split=test"], "--workdir"),
    (["--workdir=W", "--out=o.npz"], "one of the arguments --split --input is required"),
    (["--workdir=W", "--split=test", "--input=x.npy", "--out=o.npz"], "not allowed with"),
    (["--workdir=W", "--split=tst", "--out=o.npz"], "invalid choice"),
    (["--workdir=W", "--split=test", "--out=o.txt"], "must end in .npz"),
    (["--workdir=W", "--split=test", "--out=o.npz", "--batch_size=0"], "must be positive"),
    (["--workdir=W/missing", "--split=test", "--out=o.npz"], "does not exist"),
    (["--workdir=W", "--input=W/missing.npy", "--out=o.npz"], "does not exist"),
    (["--workdir=E", "--split=test", "--out=o.npz"], "holds no config.json"),
    (["--workdir=W", "--input=W/bad.npy", "--out=o.npz"], r"takes \[N, 8, 8, 1\]"),
    (["--workdir=W", "--input=W/bad.npz", "--out=o.npz"], "name the inputs array"),
])
def test_cli_errors_are_one_line_exit_2(trained, tmp_path, capsys, args, match):
  workdir = trained[0]
  empty = tmp_path / "empty"
  empty.mkdir()
  np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
  np.savez(tmp_path / "bad.npz", a=np.zeros((3, 8, 8)), b=np.zeros(3))
  args = [a.replace("=W/", f"={tmp_path}/").replace("=W", f"={workdir}")
          .replace("=E", f"={empty}").replace("=o.", f"={tmp_path}/o.") for a in args]
  with pytest.raises(SystemExit) as e:
    embed_cli.run(args)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("tsm-embed: error: ") and err.count("\n") == 1, err
  assert re.search(match, err), err
  assert not os.path.exists(tmp_path / "o.npz")


@pytest.mark.slow   # a fresh interpreter: imports and one compile (about 10 s)
def test_cli_subprocess_entry_point(trained, tmp_path):
  out = tmp_path / "val.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.embed_cli", f"--workdir={trained[0]}", "--split=val",
       f"--out={out}"], capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "wrote" in proc.stdout and "with labels" in proc.stdout
  with np.load(out) as z:
    assert z["embeddings"].shape[1] == 16 and z["labels"].shape == z["embeddings"][:, 0].shape


def test_relative_home_symlinked_and_moved_workdirs_load(trained, loaded, tmp_path,
                                                         monkeypatch):
  import shutil
  workdir = trained[0]
  want = loaded.embed(loaded.splits.test)
  moved = tmp_path / "moved" / "run"
  shutil.copytree(workdir, moved)
  (tmp_path / "link").symlink_to(moved)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path))
  for form in ("moved/run", "./link", "~/moved/run", str(tmp_path / "link")):
    run = tsm.load(form)
    assert run.workdir == str(moved.resolve()), form
    np.testing.assert_array_equal(run.embed(run.splits.test), want)
