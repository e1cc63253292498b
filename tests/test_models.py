"""Tests for tsm.models: shapes, unit norm, train/eval modes, grads, pretrained I/O."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tsm import models


def _config(name, head="none", embedding_dim=16, **kwargs):
  cfg = models.default_config()
  cfg.name = name
  cfg.head = head
  cfg.embedding_dim = embedding_dim
  for k, v in kwargs.items():
    cfg[k] = v
  return cfg


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
  model = models.create_model(_config(name, head), shape)
  variables = models.init_variables(model, jax.random.key(0), shape)
  assert set(variables) == {"params"}
  x = _inputs(shape)
  _assert_unit_rows(_embed(model, variables, x), 3, 16)
  y = _embed(model, variables, x, train=True, rng=jax.random.key(1))
  _assert_unit_rows(y, 3, 16)


def test_paper_b_layer_sizes():
  mlp = models.init_variables(models.create_model(_config("mlp", embedding_dim=32), (128,)),
                              jax.random.key(0), (128,))["params"]["trunk"]
  assert mlp["dense0"]["kernel"].shape == (128, 64)
  assert mlp["out"]["kernel"].shape == (64, 32)
  conv = models.init_variables(
      models.create_model(_config("convnet", embedding_dim=64), (28, 28, 1)),
      jax.random.key(0), (28, 28, 1))["params"]["trunk"]
  assert conv["conv0"]["kernel"].shape == (3, 3, 1, 32)
  assert conv["conv1"]["kernel"].shape == (3, 3, 32, 64)
  assert conv["dense0"]["kernel"].shape == (7 * 7 * 64, 128)
  assert conv["out"]["kernel"].shape == (128, 64)


def test_paper_a_head_layout_and_dropout():
  shape = (20,)
  model = models.create_model(_config("mlp", "paper_a", embedding_dim=128), shape)
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
  model = models.create_model(_config("mlp", hidden_sizes=(4,)), shape)
  variables = models.init_variables(model, jax.random.key(0), shape)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, variables)
  y = _embed(model, zeros, _inputs(shape))
  np.testing.assert_array_equal(y, 0.0)
  grads = _jit_o0(jax.grad(lambda v: model.apply(v, _inputs(shape), train=False).sum()))(
      zeros)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("name,shape,head", SMALL[1:4])
def test_small_models_finite_nonzero_grads(name, shape, head):
  model = models.create_model(_config(name, head), shape)
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
  model = models.create_model(_config("resnet18", "linear"), shape)
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
  model = models.create_model(_config("resnet50", "paper_a", embedding_dim=128), shape)
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
  cfg = _config("resnet18", "linear", stem="imagenet")
  abstract = jax.eval_shape(lambda: models.create_model(cfg, shape).init(
      {"params": jax.random.key(0)}, jnp.zeros((1,) + shape), train=False))
  assert abstract["params"]["trunk"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
  out = jax.eval_shape(lambda v: models.create_model(cfg, shape).apply(
      v, jnp.zeros((2,) + shape), train=False), abstract)
  assert out.shape == (2, 16)


def test_bfloat16_compute_returns_float32():
  shape = (40,)
  model = models.create_model(_config("conv1d", "paper_a", dtype="bfloat16"), shape)
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
  cfg = _config("resnet18", "linear", pretrained_path=path)
  loaded_model = models.create_model(cfg, shape)
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
  other = models.create_model(_config("resnet18", "linear", stem="imagenet"), shape)
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
  model = models.create_model(_config("convnet", "paper_a"), shape)
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


def test_convert_torchvision_resnet_layout():
  shape = (8, 8, 3)
  model = models.create_model(_config("resnet18", "linear", stem="imagenet"), shape)
  variables = _numpy_variables(model, shape)
  flat = {}
  for k, v in models._flat_trunk(variables).items():  # pylint: disable=protected-access
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
  model = models.create_model(_config("efficientnet_b0", "paper_a", embedding_dim=128),
                              shape)
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
  cfg = _config("mlp", "linear", freeze_trunk=True)
  model = models.create_model(cfg, shape)
  variables = models.init_variables(model, jax.random.key(0), shape)
  x = _inputs(shape, batch=4)
  grads = _jit_o0(jax.grad(lambda p: model.apply({"params": p}, x, train=True)[0, 0]))(
      variables["params"])
  assert all((g == 0).all() for g in jax.tree_util.tree_leaves(grads["trunk"]))
  assert optax.tree.norm(grads["head"]) > 0
  mask = models.trunk_mask(variables["params"])
  assert all(jax.tree_util.tree_leaves(mask["trunk"]))
  assert not any(jax.tree_util.tree_leaves(mask["head"]))
  tx = models.maybe_freeze_trunk(optax.adamw(1e-2, weight_decay=0.1), cfg)
  state = tx.init(variables["params"])
  ones = jax.tree_util.tree_map(jnp.ones_like, variables["params"])
  updates, _ = tx.update(ones, state, variables["params"])
  assert all((u == 0).all() for u in jax.tree_util.tree_leaves(updates["trunk"]))
  assert all((u != 0).any() for u in jax.tree_util.tree_leaves(updates["head"]))
  plain = optax.sgd(1.0)
  assert models.maybe_freeze_trunk(plain, _config("mlp")) is plain


@pytest.mark.parametrize("overrides,shape,match", [
    ({"name": "vgg"}, (8,), r"model.name='vgg' is unknown"),
    ({"embedding_dim": 0}, (8,), r"model.embedding_dim must be a positive int"),
    ({"head": "mlp"}, (8,), r"model.head='mlp' is unknown"),
    ({"dtype": "float16"}, (8,), r"model.dtype='float16' is unknown"),
    ({"name": "convnet"}, (40,), r"model.name='convnet' needs image inputs"),
    ({"name": "convnet"}, (2, 2), r"at least 4x4"),
    ({"name": "conv1d"}, (8, 8, 1), r"model.name='conv1d' needs 1-D inputs"),
    ({"name": "resnet18"}, (40,), r"model.name='resnet18' needs image inputs"),
    ({"name": "resnet18", "head": "none"}, (8, 8, 3), r"use model.head='linear'"),
    ({"name": "efficientnet_b0"}, (40,), r"needs image inputs"),
    ({"drop_path_rate": 1.0}, (8,), r"model.drop_path_rate=1.0 must be in"),
    ({"hidden_sizes": (64, 0)}, (8,), r"model.hidden_sizes must be a sequence"),
    ({"head": "paper_a", "head_dropout": (0.5,)}, (8,), r"model.head_dropout="),
    ({"freeze_trunk": True}, (8,), r"model.freeze_trunk=True with model.head='none'"),
    ({"pretrained_path": "/nonexistent/trunk.npz"}, (8,), r"does not exist"),
    ({"pretrained_path": "trunk.msgpack"}, (8,), r"must be a .npz file"),
    ({}, (0,), r"input_shape must be a tuple of positive ints"),
])
def test_config_errors(overrides, shape, match):
  cfg = _config("mlp")
  for k, v in overrides.items():
    cfg[k] = v
  with pytest.raises(ValueError, match=match) as err:
    models.create_model(cfg, shape)
  assert "\n" not in str(err.value)


def test_default_config_builds():
  cfg = models.default_config()
  models.check_model_config(cfg, (128,))
  model = models.create_model(cfg, (128,))
  variables = models.init_variables(model, jax.random.key(0), (128,))
  _assert_unit_rows(_embed(model, variables, _inputs((128,))), 3, 32)
