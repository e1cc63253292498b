"""One-epoch end-to-end fits on TFDS datasets under ``tfds.testing.mock_data``.

No download and no TensorFlow: the mock serves random examples through
``tfds.data_source`` (see tests/test_data.py for what works without TensorFlow). LFW's
mock gives every image its own random identity, so it uses test_data's fake source with
repeated identities. Tiny models, two steps: these check that every TFDS path (labels,
decoding, resizing, class-disjoint splits, PK sampling, evaluation, summary) runs.
"""

from __future__ import annotations

import json
import math
import os

import pytest


from fit_helpers import run_config  # noqa: E402
from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import read_lines
from fit_helpers import tiny_config

tfds = pytest.importorskip("tensorflow_datasets")

CASES = {   # name: (image_size, mock examples per split, classes per batch)
    "mnist": (None, 60, 3),
    "cifar10": (None, 60, 3),
    "caltech_birds2011": (16, 60, 4),
    "lfw": (16, None, 4),
}


def _mock(name):
  if name == "lfw":
    from test_data import _fake_lfw  # pylint: disable=import-outside-toplevel
    names = [f"person_{i % 10:02d}" for i in range(50)] + [f"single_{i}" for i in range(8)]
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                  as_data_source_fn=_fake_lfw(names))
  return tfds.testing.mock_data(num_examples=CASES[name][1],
                                policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*no other member of their class")   # tiny mock splits
@pytest.mark.parametrize("name", sorted(CASES))
def test_one_epoch_under_mock_data(tmp_path, name):
  image_size, _, classes = CASES[name]
  cfg = tiny_config(name, epochs=1, steps_per_epoch=2, classes_per_batch=classes,
                    samples_per_class=2)
  cfg.data.image_size = image_size
  cfg.data.cache_dir = str(tmp_path / "cache")
  cfg.data.augment = name != "mnist"
  cfg.model.hidden_sizes = (16,)
  cfg.eval.num_pairs = 20
  workdir = tmp_path / "run"
  with _mock(name):
    summary = run_config(cfg, str(workdir))
  steps = [r for r in read_lines(workdir) if r["kind"] == "step"]
  assert [r["step"] for r in steps] == [1, 2]
  assert all(math.isfinite(r["loss"]) for r in steps)
  with open(workdir / "summary.json") as f:
    assert json.load(f) == json.loads(json.dumps(summary))   # NaN-free JSON round trip
  assert summary["dataset"] == name
  for key in ("recall@1", "map@r", "auc"):
    assert 0.0 <= summary["test"][key] <= 1.0
  assert os.path.exists(workdir / "training.png")
