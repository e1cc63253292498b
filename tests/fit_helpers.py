"""Shared helpers of the training tests (not a test module).

``jax_compilation_cache``: a module fixture that points JAX's persistent compilation cache at
a per-session directory, so that the many small ``fit`` runs of the tests compile each
program once (a repeated run then takes a few seconds instead of tens on two cores).
Import it into a test module to use it: ``from fit_helpers import jax_compilation_cache``.
"""

from __future__ import annotations

import json
import os

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from tsm import config as config_lib


@pytest.fixture(scope="module", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  directory = tmp_path_factory.getbasetemp() / "jax_cache"
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()   # re-read the settings at the next compile
  yield directory
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()   # other test modules run without the cache


def tiny_config(name: str = "digits", **train) -> config_lib.ml_collections.ConfigDict:
  """A small, fast config on an offline dataset (no progress bar)."""
  cfg = config_lib.default_config()
  cfg.data.name = name
  cfg.data.val_fraction = 0.2
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (32,)
  cfg.model.embedding_dim = 16
  cfg.margin.schedule = "dams"
  cfg.train.epochs = 2
  cfg.train.classes_per_batch = 4
  cfg.train.samples_per_class = 4
  cfg.train.steps_per_epoch = 6
  cfg.train.progress = False
  cfg.eval.num_pairs = 100
  cfg.train.update(train)
  return cfg


def read_lines(workdir, drop=("time_s",)) -> list[dict]:
  """The records of ``workdir/metrics.jsonl`` without wall-clock fields."""
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      for key in drop:
        record.pop(key, None)
      out.append(record)
  return out


def run_config(cfg, workdir, evaluators=()) -> dict | None:
  """``tsm.config.train_and_evaluate``'s summary (None when stopped early)."""
  result = config_lib.train_and_evaluate(cfg, str(workdir), evaluators=evaluators)
  return None if result is None else result.summary
