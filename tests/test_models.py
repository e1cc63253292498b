"""Tests for tsm.models: shapes, unit norm, train/eval modes, grads, pretrained I/O."""

from __future__ import annotations

import functools
import inspect
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import models


def _create(name, shape, head="none", embedding_dim=16, **kwargs):
  return models.create_model(name, embedding_dim=embedding_dim, input_shape=shape,
                             head=head, **kwargs)


def _inputs(shape, batch=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch,) + shape),
                     jnp.float32)


def _numpy_variables(model, shape, seed=0):
  """Random variables without compiling the model's init (keeps ResNet-50 tests light)."""
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1,) + shape), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    if "'var'" in name or "scale" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _jit_o0(fn):
  """jit at XLA optimisation level 0 on CPU: these tests compile more than they run."""
  def call(*args):
    lowered = jax.jit(fn).lower(*args)
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return lowered.compile(compiler_options=opts)(*args)
  return call


def _embed(model, variables, x, train=False, rng=None):
  """model.apply through _jit_o0 (with a dropout rng when given)."""
  if rng is None:
    return _jit_o0(lambda v, x: model.apply(v, x, train=train))(variables, x)
  return _jit_o0(lambda v, x, r: model.apply(v, x, train=train, rngs={"dropout": r}))(
      variables, x, rng)


def _assert_unit_rows(y, batch, dim):
  assert y.shape == (batch, dim)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 1.0, atol=1e-5)


SMALL = [
    ("mlp", (128,), "none"),
    ("mlp", (8, 8), "paper_a"),
    ("convnet", (8, 8), "none"),
    ("convnet", (28, 28, 1), "linear"),
    ("conv1d", (40,), "none"),
    ("conv1d", (40, 1), "paper_a"),
]


@pytest.mark.parametrize("name,shape,head", SMALL)
def test_small_models_shapes_and_unit_norm(name, shape, head):
  model = _create(name, shape, head)
  variables = models.init_variables(model, jax.random.key(0), shape)
  assert set(variables) == {"params"}
  x = _inputs(shape)
  _assert_unit_rows(_embed(model, variables, x), 3, 16)
  y = _embed(model, variables, x, train=True, rng=jax.random.key(1))
  _assert_unit_rows(y, 3, 16)


def test_paper_b_layer_sizes():
  mlp = models.init_variables(_create("mlp", (128,), embedding_dim=32),
                              jax.random.key(0), (128,))["params"]["trunk"]
  assert mlp["dense0"]["kernel"].shape == (128, 64)
  assert mlp["out"]["kernel"].shape == (64, 32)
  conv = models.init_variables(
      _create("convnet", (28, 28, 1), embedding_dim=64),
      jax.random.key(0), (28, 28, 1))["params"]["trunk"]
  assert conv["conv0"]["kernel"].shape == (3, 3, 1, 32)
  assert conv["conv1"]["kernel"].shape == (3, 3, 32, 64)
  assert conv["dense0"]["kernel"].shape == (7 * 7 * 64, 128)
  assert conv["out"]["kernel"].shape == (128, 64)


def test_paper_a_head_layout_and_dropout():
  shape = (20,)
  model = _create("mlp", shape, "paper_a", embedding_dim=128)
  variables = models.init_variables(model, jax.random.key(0), shape)
  head = variables["params"]["head"]
  assert head["dense0"]["kernel"].shape == (64, 512)
  assert head["dense1"]["kernel"].shape == (512, 256)
  assert head["out"]["kernel"].shape == (256, 128)
  x = _inputs(shape, batch=4)
  eval1 = _embed(model, variables, x)
  eval2 = _embed(model, variables, x)
  np.testing.assert_array_equal(eval1, eval2)
  train1 = _embed(model, variables, x, train=True, rng=jax.random.key(1))
  train2 = _embed(model, variables, x, train=True, rng=jax.random.key(2))
  assert not np.allclose(train1, train2)
  assert not np.allclose(train1, eval1)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)


def test_zero_output_stays_finite_with_finite_grads():
  shape = (8,)
  model = _create("mlp", shape, hidden_sizes=(4,))
  variables = models.init_variables(model, jax.random.key(0), shape)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables)
  y = _embed(model, zeros, _inputs(shape))
  np.testing.assert_array_equal(y, 0.0)
  grads = _jit_o0(jax.grad(lambda v: model.apply(v, _inputs(shape), train=False).sum()))(
      zeros)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("name,shape,head", SMALL[1:4])
def test_small_models_finite_nonzero_grads(name, shape, head):
  model = _create(name, shape, head)
  variables = models.init_variables(model, jax.random.key(0), shape)
  x = _inputs(shape, batch=4)

  def loss(params):
    y = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
    return jnp.sum(y[0] * y[1]) - jnp.sum(y[2] * y[3])

  grads = _jit_o0(jax.grad(loss))(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  assert optax.tree.norm(grads) > 0


@pytest.fixture(scope="module")
def resnet18():
  shape = (16, 16, 3)
  model = _create("resnet18", shape, "linear")
  return model, shape, models.init_variables(model, jax.random.key(0), shape)


def test_resnet18_cifar_train_and_eval(resnet18):
  model, shape, variables = resnet18
  assert set(variables) == {"params", "batch_stats"}
  trunk = variables["params"]["trunk"]
  assert trunk["conv1"]["kernel"].shape == (3, 3, 3, 64)  # CIFAR stem for small inputs
  assert trunk["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 512, 512)
  num_trunk = sum(x.size for x in jax.tree_util.tree_leaves(trunk))
  assert num_trunk == 11_176_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64  # torchvision minus fc
  x = _inputs(shape, batch=2)

  @_jit_o0
  def step(variables, x):
    def loss(params):
      y, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                               x, train=True, mutable=["batch_stats"])
      return jnp.sum(y[0] * y[1]), (y, updates)
    grads, (y, updates) = jax.grad(loss, has_aux=True)(variables["params"])
    return grads, y, updates

  grads, y, updates = step(variables, x)
  _assert_unit_rows(y, 2, 16)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert optax.tree.norm(grads) > 0
  old = variables["batch_stats"]["trunk"]["bn1"]["mean"]
  new = updates["batch_stats"]["trunk"]["bn1"]["mean"]
  assert not np.allclose(old, new)  # batch statistics move in train mode with mutable
  y_eval, eval_updates = _jit_o0(lambda v, x: model.apply(
      v, x, train=False, mutable=["batch_stats"]))(variables, x)
  _assert_unit_rows(y_eval, 2, 16)
  jax.tree_util.tree_map(np.testing.assert_array_equal, eval_updates["batch_stats"],
                         variables["batch_stats"])
  with pytest.raises(Exception, match="batch_stats"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)  # needs mutable


def test_resnet50_light():
  shape = (8, 8, 3)
  model = _create("resnet50", shape, "paper_a", embedding_dim=128)
  variables = _numpy_variables(model, shape)
  trunk = variables["params"]["trunk"]
  assert trunk["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
  assert variables["params"]["head"]["dense0"]["kernel"].shape == (2048, 512)
  num_trunk = sum(x.size for x in jax.tree_util.tree_leaves(trunk))
  assert num_trunk == 23_508_032 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
  y = _jit_o0(lambda v, x: model.apply(v, x, train=False))(variables, _inputs(shape, 2))
  _assert_unit_rows(y, 2, 128)


def test_imagenet_stem_shapes():
  shape = (64, 64, 3)
  model = _create("resnet18", shape, "linear", stem="imagenet")
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1,) + shape), train=False))
  assert abstract["params"]["trunk"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2,) + shape), train=False),
                       abstract)
  assert out.shape == (2, 16)


def test_bfloat16_compute_returns_float32():
  shape = (40,)
  model = _create("conv1d", shape, "paper_a", dtype="bfloat16")
  variables = models.init_variables(model, jax.random.key(0), shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  y = _embed(model, variables, _inputs(shape))
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 1.0, atol=1e-5)


def test_pretrained_round_trip_and_errors(tmp_path, resnet18):
  model, shape, source = resnet18
  path = str(tmp_path / "trunk.npz")
  models.save_trunk_weights(source, path, model_name="resnet18")
  with np.load(path) as data:
    assert "params/trunk/layer1_0/conv1/kernel" in data.files
    assert "batch_stats/trunk/bn1/var" in data.files
    assert str(data["__format__"]) == models.NPZ_FORMAT
  loaded_model = _create("resnet18", shape, "linear", pretrained_path=path)
  loaded = models.init_variables(loaded_model, jax.random.key(7), shape)
  fresh = models.init_variables(model, jax.random.key(7), shape)
  for collection in ("params", "batch_stats"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded[collection]["trunk"],
                           source[collection]["trunk"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded["params"]["head"],
                         fresh["params"]["head"])
  assert not np.allclose(fresh["params"]["trunk"]["conv1"]["kernel"],
                         source["params"]["trunk"]["conv1"]["kernel"])

  # A file from another architecture: shape mismatch named in one line.
  other = _create("resnet18", shape, "linear", stem="imagenet")
  other_vars = _numpy_variables(other, shape)
  bad = str(tmp_path / "imagenet_stem.npz")
  models.save_trunk_weights(other_vars, bad)
  with pytest.raises(ValueError, match=r"shape mismatches \[params/trunk/conv1/kernel: "
                     r"file \(7, 7, 3, 64\) vs model \(3, 3, 3, 64\)\]") as err:
    models.load_pretrained(source, bad)
  assert "\n" not in str(err.value)

  # Missing and unexpected keys.
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays.pop("batch_stats/trunk/bn1/mean")
  arrays["params/trunk/extra/kernel"] = np.zeros(3)
  partial = str(tmp_path / "partial.npz")
  np.savez(partial, **arrays)
  with pytest.raises(ValueError, match=r"missing keys \[batch_stats/trunk/bn1/mean\]; "
                     r"unexpected keys \[params/trunk/extra/kernel\]"):
    models.load_pretrained(source, partial)
  relaxed = models.load_pretrained(fresh, partial, strict=False)
  np.testing.assert_array_equal(relaxed["batch_stats"]["trunk"]["bn1"]["mean"],
                                fresh["batch_stats"]["trunk"]["bn1"]["mean"])
  np.testing.assert_array_equal(relaxed["params"]["trunk"]["conv1"]["kernel"],
                                source["params"]["trunk"]["conv1"]["kernel"])


def test_pretrained_small_model_round_trip(tmp_path):
  shape = (28, 28, 1)
  model = _create("convnet", shape, "paper_a")
  a = models.init_variables(model, jax.random.key(0), shape)
  b = models.init_variables(model, jax.random.key(1), shape)
  path = str(tmp_path / "convnet.npz")
  models.save_trunk_weights(a, path)
  merged = models.load_pretrained(b, path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged["params"]["trunk"],
                         a["params"]["trunk"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged["params"]["head"],
                         b["params"]["head"])
  x = _inputs(shape)
  ta = _embed(model, a, x)
  tb = _embed(model, merged, x)
  assert not np.allclose(ta, tb)  # heads differ, trunks equal
  with pytest.raises(ValueError, match=r"^path='.*missing\.npz' does not exist") as err:
    models.load_pretrained(b, str(tmp_path / "missing.npz"))
  assert "\n" not in str(err.value)


def test_convert_torchvision_resnet_layout():
  shape = (8, 8, 3)
  model = _create("resnet18", shape, "linear", stem="imagenet")
  variables = _numpy_variables(model, shape)
  flat = {}
  for k, v in models.pretrained._flat_trunk(variables).items():  # pylint: disable=protected-access
    flat[k] = np.asarray(v)
  # Build the torchvision state_dict this trunk corresponds to.
  torch_sd = {"fc.weight": np.zeros((1000, 512)), "fc.bias": np.zeros(1000),
              "bn1.num_batches_tracked": np.array(0)}
  for key, value in flat.items():
    collection, _, *module, leaf = key.split("/")
    tmodule = []
    for m in module:
      if m.startswith("layer"):
        tmodule += m.split("_")
      elif m == "downsample_conv":
        tmodule += ["downsample", "0"]
      elif m == "downsample_bn":
        tmodule += ["downsample", "1"]
      else:
        tmodule.append(m)
    tleaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
             "var": "running_var"}[leaf]
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1)
    torch_sd[".".join(tmodule + [tleaf])] = value
  assert "layer2.0.downsample.0.weight" in torch_sd
  assert torch_sd["conv1.weight"].shape == (64, 3, 7, 7)
  converted = models.convert_torchvision_resnet(torch_sd)
  assert set(converted) == set(flat)
  for k in flat:
    np.testing.assert_array_equal(converted[k], flat[k])


def _torchvision_efficientnet_b0_state_dict(rng):
  """Random arrays under torchvision's efficientnet_b0 names and shapes."""
  sd = {}

  def conv_bn(prefix, out, inp, k):
    sd[f"{prefix}.0.weight"] = rng.normal(size=(out, inp, k, k)) / np.sqrt(inp * k * k)
    for leaf in ("weight", "bias", "running_mean"):
      sd[f"{prefix}.1.{leaf}"] = rng.normal(size=(out,)) * 0.1
    sd[f"{prefix}.1.running_var"] = rng.uniform(0.5, 1.5, size=(out,))
    sd[f"{prefix}.1.num_batches_tracked"] = np.array(3)

  conv_bn("features.0", 32, 3, 3)
  stages = ((1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3), (6, 5, 112, 3),
            (6, 5, 192, 4), (6, 3, 320, 1))
  inp = 32
  for s, (expand, k, out, blocks) in enumerate(stages, start=1):
    for b in range(blocks):
      prefix, hid, i = f"features.{s}.{b}.block", inp * expand, 0
      if expand != 1:
        conv_bn(f"{prefix}.0", hid, inp, 1)
        i = 1
      conv_bn(f"{prefix}.{i}", hid, 1, k)  # depthwise: [hid, 1, k, k]
      sq = max(1, inp // 4)
      sd[f"{prefix}.{i + 1}.fc1.weight"] = rng.normal(size=(sq, hid, 1, 1))
      sd[f"{prefix}.{i + 1}.fc1.bias"] = rng.normal(size=(sq,))
      sd[f"{prefix}.{i + 1}.fc2.weight"] = rng.normal(size=(hid, sq, 1, 1))
      sd[f"{prefix}.{i + 1}.fc2.bias"] = rng.normal(size=(hid,))
      conv_bn(f"{prefix}.{i + 2}", out, hid, 1)
      inp = out
  conv_bn("features.8", 1280, 320, 1)
  sd["classifier.1.weight"] = rng.normal(size=(1000, 1280))
  sd["classifier.1.bias"] = rng.normal(size=(1000,))
  return {k: v.astype(np.float32) for k, v in sd.items()}


def test_efficientnet_b0(tmp_path):
  shape = (16, 16, 3)
  model = _create("efficientnet_b0", shape, "paper_a", embedding_dim=128)
  variables = _numpy_variables(model, shape)
  trunk = variables["params"]["trunk"]
  # torchvision efficientnet_b0: 5,288,548 parameters, 1,281,000 of them in the classifier.
  assert sum(x.size for x in jax.tree_util.tree_leaves(trunk)) == 5_288_548 - 1_281_000
  assert trunk["features_2_0"]["dw_conv"]["kernel"].shape == (3, 3, 1, 96)
  torch_sd = _torchvision_efficientnet_b0_state_dict(np.random.default_rng(0))
  converted = models.convert_torchvision_efficientnet_b0(torch_sd)
  path = str(tmp_path / "effnet.npz")
  np.savez(path, **converted)
  loaded = models.load_pretrained(variables, path)  # strict: every key and shape matches
  np.testing.assert_array_equal(
      loaded["params"]["trunk"]["features_3_1"]["se_fc2"]["kernel"],
      torch_sd["features.3.1.block.2.fc2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["trunk"]["features_1_0"]["project_bn"]["var"],
      torch_sd["features.1.0.block.2.1.running_var"])
  x = _inputs(shape, 2)
  y = _jit_o0(lambda v, x: model.apply(v, x, train=False))(loaded, x)
  _assert_unit_rows(y, 2, 128)
  with pytest.raises(Exception, match="dropout"):  # stochastic depth needs the rng
    jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]),
                   loaded)


def test_freeze_trunk():
  shape = (32,)
  model = _create("mlp", shape, "linear", freeze_trunk=True)
  variables = models.init_variables(model, jax.random.key(0), shape)
  x = _inputs(shape, batch=4)
  grads = _jit_o0(jax.grad(lambda p: model.apply({"params": p}, x, train=True)[0, 0]))(
      variables["params"])
  assert all((g == 0).all() for g in jax.tree_util.tree_leaves(grads["trunk"]))
  assert optax.tree.norm(grads["head"]) > 0
  mask = models.trunk_mask(variables["params"])
  assert all(jax.tree_util.tree_leaves(mask["trunk"]))
  assert not any(jax.tree_util.tree_leaves(mask["head"]))
  tx = models.maybe_freeze_trunk(optax.adamw(1e-2, weight_decay=0.1), freeze_trunk=True)
  state = tx.init(variables["params"])
  ones = jax.tree_util.tree_map(jnp.ones_like, variables["params"])
  updates, _ = tx.update(ones, state, variables["params"])
  assert all((u == 0).all() for u in jax.tree_util.tree_leaves(updates["trunk"]))
  assert all((u != 0).any() for u in jax.tree_util.tree_leaves(updates["head"]))
  plain = optax.sgd(1.0)
  assert models.maybe_freeze_trunk(plain, freeze_trunk=False) is plain
  with pytest.raises(ValueError, match=r"^freeze_trunk=.* must be a bool"):
    models.maybe_freeze_trunk(plain, {"freeze_trunk": True})  # a config dict is refused


_ERROR_CASES = [
    ({"name": "vgg"}, (8,), r"^name='vgg' is unknown"),
    ({"embedding_dim": 0}, (8,), r"^embedding_dim=0 must be a positive int"),
    ({"embedding_dim": 16.0}, (8,), r"^embedding_dim=16.0 must be a positive int"),
    ({"head": "mlp"}, (8,), r"^head='mlp' is unknown"),
    ({"dtype": "float16"}, (8,), r"^dtype='float16' is unknown"),
    ({"stem": "tiny"}, (8,), r"^stem='tiny' is unknown"),
    ({"name": "convnet"}, (40,), r"^name='convnet' needs image inputs"),
    ({"name": "convnet"}, (2, 2), r"at least 4x4"),
    ({"name": "conv1d"}, (8, 8, 1), r"^name='conv1d' needs 1-D inputs"),
    ({"name": "resnet18"}, (40,), r"^name='resnet18' needs image inputs"),
    ({"name": "resnet18"}, (8, 8, 3), r"^head='none' with resnet18 .* use head='linear'"),
    ({"name": "efficientnet_b0"}, (40,), r"needs image inputs"),
    ({"drop_path_rate": 1.0}, (8,), r"^drop_path_rate=1.0 must be in"),
    ({"drop_path_rate": "0.2"}, (8,), r"^drop_path_rate='0.2' must be in"),
    ({"hidden_sizes": (64, 0)}, (8,), r"^hidden_sizes=\(64, 0\) must be a sequence"),
    ({"hidden_sizes": 64}, (8,), r"^hidden_sizes=64 must be a sequence"),
    ({"name": "convnet", "conv_features": ()}, (8, 8), r"^conv_features=\(\) must be"),
    ({"head": "paper_a", "head_dropout": (0.5,)}, (8,), r"^head_dropout="),
    ({"head": "paper_a", "head_hidden": (512, -1)}, (8,), r"^head_hidden="),
    ({"freeze_trunk": True}, (8,), r"^freeze_trunk=True with head='none'"),
    ({"freeze_trunk": "yes", "head": "linear"}, (8,), r"^freeze_trunk='yes' must be a bool"),
    ({"pretrained_path": "/nonexistent/trunk.npz"}, (8,), r"^pretrained_path=.*does not exist"),
    ({"pretrained_path": "trunk.msgpack"}, (8,), r"^pretrained_path=.*must be a .npz file"),
    ({}, (0,), r"^input_shape must be a tuple of positive ints"),
    ({}, None, r"^input_shape must be a tuple of positive ints"),
]


@pytest.mark.parametrize("overrides,shape,match", _ERROR_CASES)
def test_argument_errors(overrides, shape, match):
  kwargs = {"name": "mlp", "embedding_dim": 16, **overrides}
  with pytest.raises(ValueError, match=match) as err:
    models.check_model(input_shape=shape, **kwargs)
  assert "\n" not in str(err.value)
  with pytest.raises(ValueError, match=match):
    models.create_model(input_shape=shape, **kwargs)


def test_model_defaults_match_the_signatures_and_build():
  signature = inspect.signature(models.create_model)
  assert inspect.signature(models.check_model).parameters == signature.parameters
  keyword_defaults = {k: p.default for k, p in signature.parameters.items()
                      if p.default is not inspect.Parameter.empty}
  assert models.MODEL_DEFAULTS == keyword_defaults
  assert list(models.MODEL_DEFAULTS) == list(keyword_defaults)
  models.check_model("mlp", embedding_dim=32, input_shape=(128,), **models.MODEL_DEFAULTS)
  model = models.create_model("mlp", embedding_dim=32, input_shape=(128,),
                              **models.MODEL_DEFAULTS)
  variables = models.init_variables(model, jax.random.key(0), (128,))
  assert variables["params"]["trunk"]["dense0"]["kernel"].shape == (128, 64)
  _assert_unit_rows(_embed(model, variables, _inputs((128,))), 3, 32)


# Regression against the config-driven API this package replaced. tests/
# models_reference.json was computed on main at 86a0059 (the single-module
# tsm/models.py) by _reference_entry, with each model built by
# ``create_model(cfg, input_shape)`` from a ``default_config()`` whose fields were set
# to the keywords below. It pins the variable tree (paths, shapes, dtypes: checkpoints
# of that version load), the initial values (per-leaf sums: same initialisers and
# rng use) and the embeddings (eval, and train with dropout for models without
# BatchNorm). Regenerate it only for an intended change of parameters or outputs.
_REFERENCE_SETUPS = [
    # (id, name, input_shape, create_model keywords, slow)
    ("mlp", "mlp", (128,), {"embedding_dim": 32}, False),
    ("mlp_paper_a", "mlp", (8, 8), {"embedding_dim": 16, "head": "paper_a",
                                     "head_hidden": (12, 10), "head_dropout": (0.5, 0.3)},
     False),
    ("convnet", "convnet", (28, 28, 1), {"embedding_dim": 64}, False),
    ("convnet_linear", "convnet", (8, 8), {"embedding_dim": 16, "head": "linear",
                                            "conv_features": (4, 8), "hidden_sizes": (12,)},
     False),
    ("conv1d", "conv1d", (40,), {"embedding_dim": 32}, False),
    ("conv1d_bf16", "conv1d", (40, 1), {"embedding_dim": 16, "head": "paper_a",
                                         "dtype": "bfloat16"}, False),
    ("resnet18_cifar", "resnet18", (16, 16, 3), {"embedding_dim": 16, "head": "linear"},
     False),
    ("resnet18_imagenet", "resnet18", (32, 32, 3), {"embedding_dim": 512,
                                                     "stem": "imagenet"}, True),
    ("resnet50", "resnet50", (8, 8, 3), {"embedding_dim": 128, "head": "paper_a"}, True),
    ("efficientnet_b0", "efficientnet_b0", (16, 16, 3),
     {"embedding_dim": 128, "head": "paper_a", "drop_path_rate": 0.3}, True),
]


@functools.lru_cache(maxsize=1)
def _reference():
  with open(os.path.join(os.path.dirname(__file__), "models_reference.json")) as f:
    return json.load(f)


def _flat(tree):
  """``{"params/trunk/conv1/kernel": leaf, ...}`` for every leaf of a variables tree."""
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _reference_entry(model, shape):
  """Variable tree, per-leaf init sums and embeddings of ``model`` (see above)."""
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1,) + shape), train=False))
  entry = {"tree": {k: [list(v.shape), str(v.dtype)] for k, v in _flat(abstract).items()}}
  variables = models.init_variables(model, jax.random.key(0), shape)
  entry["init"] = {k: [float(np.sum(np.asarray(v, np.float64))),
                       float(np.sum(np.abs(np.asarray(v, np.float64))))]
                   for k, v in _flat(variables).items()}
  x = _inputs(shape, batch=2)
  if "batch_stats" in variables:  # Fresh BatchNorm models embed near zero in eval mode.
    entry["eval"] = np.asarray(_embed(model, _numpy_variables(model, shape), x)).tolist()
  else:
    entry["eval"] = np.asarray(_embed(model, variables, x)).tolist()
    entry["train"] = np.asarray(_embed(model, variables, x, True, jax.random.key(1))).tolist()
  return entry


@pytest.mark.parametrize("setup", [
    pytest.param(s, id=s[0], marks=[pytest.mark.slow] if s[-1] else [])
    for s in _REFERENCE_SETUPS])
def test_same_variables_and_outputs_as_the_config_api(setup):
  sid, name, shape, kwargs, _ = setup
  expected = _reference()[sid]
  got = _reference_entry(models.create_model(name, input_shape=shape, **kwargs), shape)
  assert got["tree"] == expected["tree"]
  assert set(got["init"]) == set(expected["init"])
  for key, sums in expected["init"].items():
    np.testing.assert_allclose(got["init"][key], sums, rtol=1e-6, atol=1e-6, err_msg=key)
  assert set(got) == set(expected)
  for mode in ("eval", "train"):
    if mode in expected:
      np.testing.assert_allclose(got[mode], expected[mode], rtol=1e-5, atol=1e-6)
