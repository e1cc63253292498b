"""Data parallelism over a device mesh and multi-host runs (tsm.distributed).

The device count is fixed when JAX starts, so the 4-device checks run in a subprocess
started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, and the multi-host
check starts two processes of two CPU devices each that meet through
``jax.distributed.initialize`` on localhost (CPU collectives over gloo).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from tsm import artifacts
from tsm import config as config_lib
from tsm import distributed

from fit_helpers import run_config  # noqa: E402
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _env(devices: int, cache_dir) -> dict[str, str]:
  """A subprocess environment: ``devices`` CPU devices, the tests' compilation cache."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
              JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _fit_config():
  """2 epochs of DAMS on digits; the threshold is low enough for the margin to move."""
  cfg = tiny_config("digits", epochs=2, steps_per_epoch=4)
  cfg.margin.threshold = 0.5
  cfg.checkpoint.every_steps = 2     # mid-epoch checkpoints too
  return cfg


def _assert_same_runs(a_dir, b_dir, rtol=1e-4):
  a, b = read_lines(a_dir), read_lines(b_dir)
  assert len(a) == len(b) and len(a) > 0
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key, value in x.items():
      if isinstance(value, float):
        np.testing.assert_allclose(value, y[key], rtol=rtol, atol=1e-6,
                                   err_msg=f"{x['kind']} {x['step']} {key}")
      else:
        assert value == y[key], key
  margins = [r["margin_next"] for r in a if r["kind"] == "epoch"]
  assert max(margins) > 0.2 + 1e-6, margins     # DAMS moved the margin
  with open(os.path.join(a_dir, "summary.json")) as f, \
      open(os.path.join(b_dir, "summary.json")) as g:
    sa, sb = json.load(f), json.load(g)
  assert sa.keys() == sb.keys() and sa["best_epoch"] == sb["best_epoch"]
  for key, value in sa["test"].items():
    np.testing.assert_allclose(value, sb["test"][key], rtol=rtol, atol=1e-5, err_msg=key)


# ---------------------------------------------------------------------- in-process units


def test_distributed_config_is_checked_before_anything_runs():
  cfg = config_lib.default_config()
  config_lib.check_config(cfg)
  assert cfg.distributed.initialize is False
  for field, value, fragment in (
      ("coordinator_address", "nohost", "host:port"),
      ("num_processes", 0, "distributed.num_processes"),
      ("process_id", -1, "distributed.process_id")):
    bad = config_lib.default_config()
    bad.distributed.initialize = True
    bad.distributed[field] = value
    with pytest.raises(config_lib.ConfigError, match=fragment) as e:
      config_lib.check_config(bad)
    assert "\n" not in str(e.value)
  bad = config_lib.default_config()
  bad.distributed.num_processes, bad.distributed.process_id = 2, 2
  bad.distributed.initialize = True
  with pytest.raises(config_lib.ConfigError, match="below"):
    config_lib.check_config(bad)
  bad = config_lib.default_config()
  bad.distributed.coordinator_address = "10.0.0.1:1234"
  with pytest.raises(config_lib.ConfigError, match="distributed.initialize=True"):
    config_lib.check_config(bad)
  # Switched off (the default), train_and_evaluate never calls initialize().
  assert not config_lib.default_config().distributed.initialize
  assert not jax.distributed.is_initialized()


def test_one_process_helpers():
  mesh = distributed.data_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
  batches = np.arange(24).reshape(3, 8)
  np.testing.assert_array_equal(distributed.host_batches(batches, mesh), batches)
  batch = {"inputs": np.ones((8, 3), np.float32), "labels": np.arange(8, dtype=np.int32)}
  placed = distributed.shard_batch(batch, mesh)
  assert isinstance(placed["inputs"], jax.Array)
  np.testing.assert_array_equal(placed["labels"], batch["labels"])
  assert distributed.shard_batch(batch, None) is batch
  tree = distributed.replicate({"w": np.arange(3.0)}, mesh)
  assert tree["w"].sharding.is_fully_replicated
  local = distributed.local_copy(tree)
  assert len(local["w"].sharding.device_set) == 1
  np.testing.assert_array_equal(local["w"], np.arange(3.0))
  assert distributed.divides(8, None) and distributed.divides(8 * jax.device_count(), mesh)
  assert distributed.is_primary() and not distributed.use_mesh(False)


def test_metrics_log_of_other_processes_writes_nothing(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = artifacts.MetricsLog(path)
  writer.append([{"kind": "step", "step": 1}, {"kind": "step", "step": 2}])
  size = writer.size()
  writer.append([{"kind": "step", "step": 3}])
  reader = artifacts.MetricsLog(path, write=False)
  reader.truncate(size)            # as after restoring a checkpoint taken at step 2
  assert [r["step"] for r in reader.read()] == [1, 2]
  assert os.path.getsize(path) > size                      # the file is untouched
  reader.append([{"kind": "step", "step": 3}])
  assert reader.size() == writer.size()                    # same byte count as process 0
  assert [r["step"] for r in reader.read()] == [1, 2, 3]
  reader.truncate(0)
  assert reader.read() == [] and os.path.getsize(path) > 0


# ---------------------------------------------------------------------- 4 devices vs 1


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  """The reference: the fit of ``_fit_config()`` in this (1-device) process."""
  assert jax.device_count() == 1
  workdir = tmp_path_factory.mktemp("one_device")
  run_config(_fit_config(), str(workdir))
  return workdir


_FOUR_DEVICES = textwrap.dedent("""
    import json, os, sys
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from tsm import config as config_lib, distances, margins, train as train_lib
    from fit_helpers import run_config, tiny_config
    from test_scale import _fit_config
    assert jax.device_count() == 4, jax.devices()

    class Net(nn.Module):   # BatchNorm and dropout: both must see the global batch
      @nn.compact
      def __call__(self, x, train=False):
        x = nn.Dense(16)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return distances.l2_normalize(nn.Dense(4)(x))

    def step_once(loss, mining, mesh):
      cfg = config_lib.default_config()
      cfg.loss.name, cfg.loss.mining = loss, mining
      cfg.margin.schedule, cfg.margin.threshold = "dams", 0.0
      cfg.train.optimizer, cfg.train.momentum, cfg.train.learning_rate = "sgd", 0.0, 1.0
      model = Net()
      x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
      labels = np.repeat(np.arange(4), 4).astype(np.int32)
      variables = model.init(jax.random.key(0), x[:2])
      cfg.train.epochs = 10
      schedule = config_lib.build_schedule(cfg, steps_per_epoch=1)
      tx = config_lib.build_optimizer(cfg, 10)
      state = train_lib.replicate(train_lib.create_train_state(
          variables, tx, schedule, jax.random.PRNGKey(1)), mesh)
      before = jax.device_get(state.params)
      step = train_lib.make_train_step(model, config_lib.build_loss(cfg), schedule, tx,
                                       mesh=mesh)
      end = train_lib.make_end_of_epoch(schedule, mesh)
      batch = {"inputs": x, "labels": labels}
      if mesh is not None:
        from tsm import distributed
        batch = distributed.shard_batch(batch, mesh)
        assert len(batch["inputs"].sharding.device_set) == 4
      state, metrics = step(state, batch)
      state = end(state)
      # plain SGD with learning rate 1: the gradient is the parameter change
      grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(state.params))
      if mesh is not None:
        assert all(l.sharding.is_fully_replicated for l in jax.tree.leaves(state))
      return (jax.device_get(metrics), grads, jax.device_get(state.batch_stats),
              float(state.margin_state.margin))

    mesh = train_lib.data_mesh()
    # (the fit below covers mining="all")
    for loss, mining in (("triplet", "semihard"), ("triplet", "hard"), ("contrastive", "all")):
      one, four = step_once(loss, mining, None), step_once(loss, mining, mesh)
      for key, value in one[0].items():
        exact = key.startswith("num_")      # counts over the global batch: exactly equal
        np.testing.assert_allclose(four[0][key], value, rtol=0 if exact else 1e-5,
                                   atol=0 if exact else 1e-6, err_msg=f"{loss} {key}")
      for tree_one, tree_four in ((one[1], four[1]), (one[2], four[2])):
        for a, b in zip(jax.tree.leaves(tree_one), jax.tree.leaves(tree_four)):
          np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=loss)
      assert one[3] == four[3] > 0.2, (loss, one[3], four[3])   # the DAMS update
      key = "num_triplets" if loss == "triplet" else "num_pairs"
      assert one[0][key] > 0

    run_config(_fit_config(), sys.argv[1])    # data_parallel: the 4-device mesh
    print("OK")
""")


@pytest.mark.slow
def test_four_devices_step_and_fit_match_one_device(tmp_path, jax_compilation_cache,
                                                   one_device_run):
  """One step (3 losses / minings, BatchNorm, dropout, DAMS) and a 2-epoch fit."""
  proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, str(tmp_path / "four")],
                        capture_output=True, text=True, env=_env(4, jax_compilation_cache),
                        cwd=ROOT, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
  _assert_same_runs(one_device_run, tmp_path / "four")


# ---------------------------------------------------------------------- 2 hosts

_HOST = textwrap.dedent("""
    import sys
    import jax
    from fit_helpers import run_config
    from test_scale import _fit_config
    process_id, port, workdir = sys.argv[1:4]
    cfg = _fit_config()
    cfg.distributed.initialize = True
    cfg.distributed.coordinator_address = f"localhost:{port}"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = int(process_id)
    summary = run_config(cfg, workdir)
    assert jax.process_count() == 2 and jax.device_count() == 4
    assert jax.local_device_count() == 2
    print("DONE", summary is not None)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_hosts(workdir, cache_dir) -> None:
  """Runs ``_HOST`` as processes 0 and 1 of one run (output to files: no pipe stalls)."""
  port = _free_port()
  logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", _HOST, str(i), str(port), str(workdir)],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=_env(2, cache_dir), cwd=ROOT)
           for i, log in enumerate(logs)]
  try:
    for proc in procs:
      proc.wait(timeout=300)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs):
    log.seek(0)
    out = log.read()
    log.close()
    assert proc.returncode == 0 and "DONE" in out, out[-4000:]


@pytest.mark.slow
def test_two_hosts_match_one_device(tmp_path, jax_compilation_cache, one_device_run):
  """2 processes x 2 devices (each loads half of every batch) equal a 1-device run."""
  _two_hosts(tmp_path, jax_compilation_cache)
  _assert_same_runs(one_device_run, tmp_path)
  assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(one_device_run))
  assert (sorted(os.listdir(tmp_path / "checkpoints"))
          == sorted(os.listdir(one_device_run / "checkpoints")))


def test_config_fields_of_the_distributed_section_do_not_block_a_resume(tmp_path):
  cfg = _fit_config()
  os.makedirs(tmp_path, exist_ok=True)
  artifacts.write_json_atomic(str(tmp_path / "config.json"), json.loads(cfg.to_json()))
  other = ml_collections.ConfigDict(cfg.to_dict())
  other.distributed.process_id = 1      # another host of the same run
  other.distributed.initialize = True
  config_lib.check_same_run(str(tmp_path), other)  # pylint: disable=protected-access
