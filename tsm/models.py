"""Flax (linen) encoders that map inputs to L2-normalised embeddings.

Every model is an :class:`EmbeddingModel`: a *trunk* (feature extractor, submodule
``trunk``) followed by an embedding *head* (submodule ``head``) and an L2
normalisation (:func:`tsm.distances.l2_normalize`, so an all-zero output stays finite
and has finite gradients). ``model.apply(variables, x, train=...)`` returns ``[B,
embedding_dim]`` float32 embeddings of unit norm.

Trunks (``model_config.name``):

* ``"mlp"``: paper B's synthetic model, ``Dense(64), ReLU, Dense(embedding_dim)``
  (hidden sizes configurable); any input shape, flattened.
* ``"convnet"``: paper B's MNIST model as in the authors' code: ``conv3x3(32), ReLU,
  maxpool2, conv3x3(64), ReLU, maxpool2, flatten, Dense(128), ReLU,
  Dense(embedding_dim)`` (SAME padding); inputs ``[H, W]`` or ``[H, W, C]``.
* ``"conv1d"``: a small 1-D ConvNet for mnist1d signals (length 40), shaped like the
  mnist1d reference ConvBase: three convolutions (kernels 5, 3, 3, stride 2, 32
  channels, ReLU), flatten, ``Dense(embedding_dim)``; inputs ``[L]`` or ``[L, C]``.
* ``"resnet18"``, ``"resnet50"``: torchvision-compatible ResNets (v1.5, BatchNorm with a
  ``batch_stats`` collection, explicit torch-style paddings so converted torchvision
  weights give the same features). ``model_config.stem``: ``"imagenet"`` (7x7/2 conv +
  3x3/2 max-pool), ``"cifar"`` (3x3/1 conv, no max-pool) or ``"auto"`` (``cifar`` when
  the input side is at most 64 pixels).
* ``"efficientnet_b0"``: paper A's trunk, torchvision-compatible EfficientNet-B0
  (MBConv blocks with squeeze-and-excitation, SiLU, BatchNorm, stochastic depth
  ``model_config.drop_path_rate`` drawn from the ``'dropout'`` rng in training),
  1280-d pooled features.

Heads (``model_config.head``):

* ``"none"``: the trunk's own output layer gives the embedding (small models end with
  ``Dense(embedding_dim)``; a ResNet / EfficientNet only when ``embedding_dim`` equals
  its feature width).
* ``"linear"``: one ``Dense(embedding_dim)`` on the trunk features.
* ``"paper_a"``: paper A's head, ``Dense(512), ReLU, Dropout(0.5), Dense(256), ReLU,
  Dropout(0.3), Dense(embedding_dim)`` (sizes and rates configurable). Dropout draws
  from the ``'dropout'`` rng, so ``apply(..., train=True)`` needs
  ``rngs={'dropout': key}``.

With ``head != "none"`` the small trunks drop their final ``Dense(embedding_dim)`` and
hand the last hidden activations to the head.

Pretrained trunk weights are read from a ``.npz`` file whose keys are the flattened
variable paths of the trunk, joined by ``/`` and prefixed by the collection:
``params/trunk/conv1/kernel``, ``batch_stats/trunk/bn1/mean``, ... Kernels use Flax
layouts (conv ``[kh, kw, in, out]``, dense ``[in, out]``). :func:`save_trunk_weights`
writes this format from a tsm model, :func:`load_pretrained` reads it, and
:func:`convert_torchvision_resnet` / :func:`convert_torchvision_efficientnet_b0`
convert a torchvision ``state_dict`` (as numpy arrays) into it.

Freezing the trunk (``model_config.freeze_trunk``): the trunk runs in inference mode
(BatchNorm uses and keeps its running statistics) and its output goes through
``jax.lax.stop_gradient``, so no gradient flows into it and the backward pass skips it.
Wrap the optimiser with :func:`maybe_freeze_trunk` (``optax.multi_transform`` over
:func:`trunk_mask`) so that weight decay and other gradient-free updates leave the
trunk untouched too.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from tsm.distances import l2_normalize

MODELS = ("mlp", "convnet", "conv1d", "resnet18", "resnet50", "efficientnet_b0")
HEADS = ("none", "linear", "paper_a")
DTYPES = ("float32", "bfloat16")
STEMS = ("auto", "imagenet", "cifar")

# Per-model defaults used when the config leaves a size field as None.
_DEFAULT_HIDDEN = {"mlp": (64,), "convnet": (128,), "conv1d": ()}
_DEFAULT_CONV = {"convnet": (32, 64), "conv1d": (32, 32, 32)}
_CONV1D_KERNELS = (5, 3, 3)
_RESNET_FEATURES = {"resnet18": 512, "resnet50": 2048}
_IMAGE_FEATURES = {**_RESNET_FEATURES, "efficientnet_b0": 1280}
_RESNET_STAGES = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}

NPZ_FORMAT = "tsm-trunk-npz-v1"
_META_PREFIX = "__"


def default_config() -> ml_collections.ConfigDict:
  """Default model config: paper B's synthetic MLP (128 -> 64 -> ReLU -> 32).

  Fields:
    name: one of ``MODELS``.
    embedding_dim: size of the L2-normalised output.
    head: ``"none"`` | ``"linear"`` | ``"paper_a"``.
    hidden_sizes: dense hidden sizes of the small trunks (None: model default, mlp
      ``(64,)``, convnet ``(128,)``, conv1d ``()``).
    conv_features: channels of the convolutions of convnet / conv1d (None: model
      default, convnet ``(32, 64)``, conv1d ``(32, 32, 32)``).
    head_hidden: hidden sizes of the ``paper_a`` head.
    head_dropout: dropout rate after each hidden layer of the ``paper_a`` head.
    stem: ResNet stem, ``"auto"`` | ``"imagenet"`` | ``"cifar"``.
    drop_path_rate: EfficientNet-B0 stochastic depth (torchvision's 0.2).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters and the
      returned embeddings stay float32).
    pretrained_path: optional ``.npz`` of trunk variables (see module docstring);
      loaded by :func:`init_variables`.
    freeze_trunk: run the trunk in inference mode without gradients.

  Returns:
    A ``ml_collections.ConfigDict``.
  """
  cfg = ml_collections.ConfigDict()
  cfg.name = "mlp"
  cfg.embedding_dim = 32
  cfg.head = "none"
  cfg.hidden_sizes = ml_collections.config_dict.placeholder(tuple)
  cfg.conv_features = ml_collections.config_dict.placeholder(tuple)
  cfg.head_hidden = (512, 256)
  cfg.head_dropout = (0.5, 0.3)
  cfg.stem = "auto"
  cfg.drop_path_rate = 0.2
  cfg.dtype = "float32"
  cfg.pretrained_path = ml_collections.config_dict.placeholder(str)
  cfg.freeze_trunk = False
  return cfg


# ---------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------


def _get(cfg: Any, field: str, default: Any = None) -> Any:
  try:
    value = cfg[field]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def _check_sizes(value: Any, field: str, allow_empty: bool = True) -> tuple[int, ...]:
  try:
    sizes = tuple(value)
  except TypeError:
    raise ValueError(f"model.{field} must be a sequence of positive ints, got {value!r}; "
                     f"pass e.g. model.{field}=(64,).") from None
  if (not allow_empty and not sizes) or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in sizes):
    raise ValueError(f"model.{field} must be a sequence of positive ints, got {value!r}; "
                     f"pass e.g. model.{field}=(64,).")
  return tuple(int(s) for s in sizes)


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
  try:
    shape = tuple(input_shape)
  except TypeError:
    raise ValueError(f"input_shape must be a tuple of positive ints without the batch "
                     f"axis, got {input_shape!r}; pass e.g. (28, 28, 1).") from None
  if not shape or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in shape):
    raise ValueError(f"input_shape must be a tuple of positive ints without the batch "
                     f"axis, got {input_shape!r}; pass e.g. (28, 28, 1).")
  return tuple(int(s) for s in shape)


def _resolve_stem(stem: str, input_shape: tuple[int, ...]) -> str:
  if stem != "auto":
    return stem
  return "cifar" if max(input_shape[:2]) <= 64 else "imagenet"


def check_model_config(model_config: ml_collections.ConfigDict,
                       input_shape: Sequence[int]) -> None:
  """Validates a model config against the per-example input shape.

  Raises a one-line ``ValueError`` naming the bad field and the fix before anything is
  compiled.

  Args:
    model_config: a config like :func:`default_config`.
    input_shape: shape of one example, without the batch axis (``(40,)``,
      ``(28, 28, 1)``, ``(32, 32, 3)``).

  Raises:
    ValueError: on an unknown model / head / dtype / stem, a non-positive size, an
      input shape the model cannot take, or a missing pretrained file.
  """
  shape = _check_input_shape(input_shape)
  name = _get(model_config, "name")
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is unknown; use one of {MODELS}.")
  emb = _get(model_config, "embedding_dim")
  if not isinstance(emb, (int, np.integer)) or isinstance(emb, bool) or emb <= 0:
    raise ValueError(f"model.embedding_dim must be a positive int, got {emb!r}; "
                     "pass e.g. model.embedding_dim=128.")
  head = _get(model_config, "head", "none")
  if head not in HEADS:
    raise ValueError(f"model.head={head!r} is unknown; use one of {HEADS}.")
  dtype = _get(model_config, "dtype", "float32")
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r} is unknown; use one of {DTYPES}.")
  stem = _get(model_config, "stem", "auto")
  if stem not in STEMS:
    raise ValueError(f"model.stem={stem!r} is unknown; use one of {STEMS}.")
  if _get(model_config, "hidden_sizes") is not None:
    _check_sizes(model_config.hidden_sizes, "hidden_sizes")
  if _get(model_config, "conv_features") is not None:
    _check_sizes(model_config.conv_features, "conv_features", allow_empty=False)
  if head == "paper_a":
    hidden = _check_sizes(_get(model_config, "head_hidden", (512, 256)), "head_hidden")
    rates = tuple(_get(model_config, "head_dropout", (0.5, 0.3)))
    if len(rates) != len(hidden) or not all(0.0 <= float(r) < 1.0 for r in rates):
      raise ValueError(f"model.head_dropout={rates!r} must hold one rate in [0, 1) per "
                       f"head_hidden layer ({len(hidden)}); pass e.g. (0.5, 0.3).")

  rank = len(shape)
  if name == "convnet":
    if rank not in (2, 3):
      raise ValueError(f"model.name='convnet' needs image inputs [H, W] or [H, W, C], got "
                       f"input_shape={shape}; use model.name='mlp' or 'conv1d' for 1-D "
                       "inputs.")
    if min(shape[:2]) < 4:
      raise ValueError(f"model.name='convnet' needs images of at least 4x4 (two 2x2 "
                       f"max-pools), got input_shape={shape}; use model.name='mlp'.")
  elif name == "conv1d":
    if rank not in (1, 2):
      raise ValueError(f"model.name='conv1d' needs 1-D inputs [L] or [L, C], got "
                       f"input_shape={shape}; use model.name='convnet' or a resnet for "
                       "images.")
  elif name in _IMAGE_FEATURES:
    if rank not in (2, 3):
      raise ValueError(f"model.name={name!r} needs image inputs [H, W] or [H, W, C], got "
                       f"input_shape={shape}; use model.name='mlp' or 'conv1d' for 1-D "
                       "inputs.")
    if head == "none" and emb != _IMAGE_FEATURES[name]:
      raise ValueError(f"model.head='none' with {name} gives {_IMAGE_FEATURES[name]}-d "
                       f"features, not model.embedding_dim={emb}; use model.head='linear' "
                       "or 'paper_a'.")
  rate = _get(model_config, "drop_path_rate", 0.2)
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"model.drop_path_rate={rate!r} must be in [0, 1); pass e.g. 0.2.")
  if head == "none" and _get(model_config, "freeze_trunk", False):
    raise ValueError("model.freeze_trunk=True with model.head='none' leaves nothing to "
                     "train; use model.head='linear' or 'paper_a'.")
  path = _get(model_config, "pretrained_path")
  if path:
    if not str(path).endswith(".npz"):
      raise ValueError(f"model.pretrained_path={path!r} must be a .npz file of trunk "
                       "variables; write one with tsm.models.save_trunk_weights.")
    if not os.path.isfile(path):
      raise ValueError(f"model.pretrained_path={path!r} does not exist; fix the path or "
                       "unset model.pretrained_path.")


# ---------------------------------------------------------------------------
# Trunks
# ---------------------------------------------------------------------------


def _dense_stack(x: jax.Array, hidden_sizes: Sequence[int], output_dim: int | None,
                 dtype: Any) -> jax.Array:
  """Flatten, ``Dense(h), ReLU`` per hidden size (``dense{i}``), optional linear ``out``.

  Called from a trunk's compact ``__call__``, so the layers are that trunk's submodules.
  """
  x = x.reshape((x.shape[0], -1))
  for i, h in enumerate(hidden_sizes):
    x = nn.relu(nn.Dense(h, dtype=dtype, name=f"dense{i}")(x))
  if output_dim is not None:
    x = nn.Dense(output_dim, dtype=dtype, name="out")(x)
  return x


class MLP(nn.Module):
  """Dense trunk: flatten, ``Dense(h), ReLU`` per hidden size, optional output layer.

  Attributes:
    hidden_sizes: hidden layer widths.
    output_dim: width of a final linear layer (None: return the last hidden layer).
    dtype: computation dtype.
  """
  hidden_sizes: Sequence[int] = (64,)
  output_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return _dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)


class ConvNet(nn.Module):
  """Paper B's MNIST ConvNet: per channel count ``conv3x3, ReLU, maxpool 2``, then dense.

  Attributes:
    conv_features: channels of the 3x3 convolutions.
    hidden_sizes: dense hidden widths after flattening.
    output_dim: width of a final linear layer (None: return the last hidden layer).
    dtype: computation dtype.
  """
  conv_features: Sequence[int] = (32, 64)
  hidden_sizes: Sequence[int] = (128,)
  output_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    if x.ndim == 3:
      x = x[..., None]
    for i, f in enumerate(self.conv_features):
      x = nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return _dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)


class Conv1DNet(nn.Module):
  """Small 1-D ConvNet for mnist1d: strided convolutions, flatten, dense.

  Attributes:
    conv_features: channels of the stride-2 convolutions.
    kernel_sizes: kernel size of each convolution (the last one repeats if shorter).
    hidden_sizes: dense hidden widths after flattening.
    output_dim: width of a final linear layer (None: return the last hidden layer).
    dtype: computation dtype.
  """
  conv_features: Sequence[int] = (32, 32, 32)
  kernel_sizes: Sequence[int] = _CONV1D_KERNELS
  hidden_sizes: Sequence[int] = ()
  output_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    if x.ndim == 2:
      x = x[..., None]
    for i, f in enumerate(self.conv_features):
      k = self.kernel_sizes[min(i, len(self.kernel_sizes) - 1)]
      x = nn.Conv(f, (k,), strides=(2,), padding="SAME", dtype=self.dtype,
                  name=f"conv{i}")(x)
      x = nn.relu(x)
    return _dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)


# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for ResNet and
# EfficientNet convolutions, so from-scratch runs start like their PyTorch counterparts.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric torch-style padding for a k x k convolution."""
  p = (k - 1) // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """ResNet basic block (two 3x3 convolutions), torchvision layout and names."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=_TORCH_CONV_INIT)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    s = (self.strides, self.strides)
    y = conv(self.features, (3, 3), s, padding=_pad(3), name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
    y = norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), s, padding="VALID", name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck block (stride on the 3x3 conv), torchvision names."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=_TORCH_CONV_INIT)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    out = self.features * self.expansion
    s = (self.strides, self.strides)
    y = conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), s, padding=_pad(3), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(out, (1, 1), padding="VALID", name="conv3")(y)
    y = norm(name="bn3")(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = conv(out, (1, 1), s, padding="VALID", name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk returning globally average-pooled features ``[B, C]``.

  Layer names follow torchvision (``conv1``, ``bn1``, ``layer{i}_{j}/conv1``, ...,
  ``layer{i}_{j}/downsample_conv``) so converted weights map one to one.

  Attributes:
    stage_sizes: blocks per stage.
    bottleneck: use bottleneck blocks (ResNet-50) instead of basic blocks.
    stem: ``"imagenet"`` (7x7/2 conv, 3x3/2 max-pool) or ``"cifar"`` (3x3/1, no pool).
    dtype: computation dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  stem: str = "imagenet"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    if self.stem == "imagenet":
      x = nn.Conv(64, (7, 7), (2, 2), padding=_pad(7), use_bias=False, dtype=self.dtype,
                  kernel_init=_TORCH_CONV_INIT, name="conv1")(x)
    else:
      x = nn.Conv(64, (3, 3), padding=_pad(3), use_bias=False, dtype=self.dtype,
                  kernel_init=_TORCH_CONV_INIT, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = Bottleneck if self.bottleneck else BasicBlock
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(64 * 2**i, strides, dtype=self.dtype, name=f"layer{i + 1}_{j}")(x, train)
    return jnp.mean(x, axis=(1, 2))


# EfficientNet-B0 stages: (expand ratio, kernel, stride, output channels, blocks).
_EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                    (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                    (6, 3, 1, 320, 1))


class ConvBNSiLU(nn.Module):
  """``conv`` (no bias, torch padding) + ``bn`` + SiLU, torchvision's Conv2dNormActivation."""
  features: int
  kernel: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides),
                padding=_pad(self.kernel), use_bias=False, dtype=self.dtype,
                kernel_init=_TORCH_CONV_INIT, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="bn")(x)
    return nn.silu(x)


class MBConv(nn.Module):
  """Inverted-residual block with squeeze-and-excitation (EfficientNet), torchvision form.

  Attributes:
    expand_ratio: channel expansion of the 1x1 expansion conv (1: no expansion conv).
    kernel: depthwise kernel size.
    strides: depthwise stride.
    features: output channels.
    drop_path: stochastic-depth rate of the residual branch (training only; draws from
      the ``'dropout'`` rng).
    dtype: computation dtype.
  """
  expand_ratio: int
  kernel: int
  strides: int
  features: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=_TORCH_CONV_INIT)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = conv(hidden, (1, 1), padding="VALID", name="expand_conv")(y)
      y = nn.silu(norm(name="expand_bn")(y))
    s = (self.strides, self.strides)
    y = conv(hidden, (self.kernel, self.kernel), s, padding=_pad(self.kernel),
             feature_group_count=hidden, name="dw_conv")(y)
    y = nn.silu(norm(name="dw_bn")(y))
    squeeze = max(1, in_features // 4)
    se = jnp.mean(y, axis=(1, 2), keepdims=True)
    se_conv = functools.partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                                kernel_init=_TORCH_CONV_INIT)
    se = nn.silu(se_conv(squeeze, name="se_fc1")(se))
    se = nn.sigmoid(se_conv(hidden, name="se_fc2")(se))
    y = y * se
    y = conv(self.features, (1, 1), padding="VALID", name="project_conv")(y)
    y = norm(name="project_bn")(y)
    if self.strides == 1 and in_features == self.features:
      if train and self.drop_path > 0:
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1, 1))
        y = jnp.where(mask, y / keep, 0.0).astype(y.dtype)
      y = x + y
    return y


class EfficientNetB0(nn.Module):
  """EfficientNet-B0 trunk (torchvision layout) returning pooled ``[B, 1280]`` features.

  Names: ``features_0/{conv,bn}`` (stem), ``features_{stage}_{block}/...`` (MBConv),
  ``features_8/{conv,bn}`` (final 1x1 conv), mirroring torchvision's ``features.*``.

  Attributes:
    drop_path_rate: stochastic-depth rate of the last block (torchvision: 0.2), scaled
      linearly with the block index.
    dtype: computation dtype.
  """
  drop_path_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    x = ConvBNSiLU(32, 3, 2, dtype=self.dtype, name="features_0")(x, train)
    total = sum(stage[-1] for stage in _EFFICIENTNET_B0)
    index = 0
    for s, (expand, kernel, stride, features, blocks) in enumerate(_EFFICIENTNET_B0):
      for b in range(blocks):
        x = MBConv(expand, kernel, stride if b == 0 else 1, features,
                   drop_path=self.drop_path_rate * index / total, dtype=self.dtype,
                   name=f"features_{s + 1}_{b}")(x, train)
        index += 1
    x = ConvBNSiLU(1280, 1, 1, dtype=self.dtype, name="features_8")(x, train)
    return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------
# Heads and the full model
# ---------------------------------------------------------------------------


class EmbeddingHead(nn.Module):
  """Embedding head on trunk features: ``"none"``, ``"linear"`` or ``"paper_a"``.

  Attributes:
    kind: head name.
    embedding_dim: output width.
    hidden: hidden widths of the ``paper_a`` head.
    dropout: dropout rates after each hidden layer of the ``paper_a`` head.
    dtype: computation dtype.
  """
  kind: str = "linear"
  embedding_dim: int = 128
  hidden: Sequence[int] = (512, 256)
  dropout: Sequence[float] = (0.5, 0.3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.kind == "none":
      return x
    if self.kind == "paper_a":
      for i, (h, rate) in enumerate(zip(self.hidden, self.dropout)):
        x = nn.relu(nn.Dense(h, dtype=self.dtype, name=f"dense{i}")(x))
        x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.embedding_dim, dtype=self.dtype, name="out")(x)


class EmbeddingModel(nn.Module):
  """Trunk + head + L2 normalisation; returns float32 ``[B, embedding_dim]``.

  Attributes:
    trunk: feature extractor, called as ``trunk(x, train=...)``.
    head: the :class:`EmbeddingHead`.
    freeze_trunk: run the trunk in inference mode behind ``stop_gradient``.
    pretrained_path: optional ``.npz`` that :func:`init_variables` loads into the trunk.
  """
  trunk: nn.Module
  head: nn.Module
  freeze_trunk: bool = False
  pretrained_path: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Embeds a batch.

    Args:
      x: ``[B, *input_shape]`` float inputs.
      train: training mode (dropout on, BatchNorm batch statistics; pass
        ``mutable=['batch_stats']`` and ``rngs={'dropout': key}`` to ``apply``).

    Returns:
      ``[B, embedding_dim]`` float32 embeddings of unit (or zero) L2 norm.
    """
    features = self.trunk(x, train=train and not self.freeze_trunk)
    if self.freeze_trunk:
      features = jax.lax.stop_gradient(features)
    out = self.head(features, train=train)
    return l2_normalize(out.astype(jnp.float32))


def _create_model_cfg(model_config: ml_collections.ConfigDict,
                      input_shape: Sequence[int]) -> EmbeddingModel:
  """Builds the embedding model a config describes.

  Args:
    model_config: a config like :func:`default_config` (missing optional fields take
      their defaults).
    input_shape: shape of one example, without the batch axis.

  Returns:
    An :class:`EmbeddingModel`; ``model.apply(variables, x, train=...)`` gives
    L2-normalised ``[B, model_config.embedding_dim]`` embeddings.

  Raises:
    ValueError: see :func:`check_model_config`.
  """
  check_model_config(model_config, input_shape)
  shape = tuple(int(s) for s in input_shape)
  name = model_config.name
  emb = int(model_config.embedding_dim)
  head = _get(model_config, "head", "none")
  dtype = jnp.bfloat16 if _get(model_config, "dtype", "float32") == "bfloat16" else (
      jnp.float32)
  output_dim = emb if head == "none" else None
  hidden = _get(model_config, "hidden_sizes")
  hidden = tuple(hidden) if hidden is not None else _DEFAULT_HIDDEN.get(name, ())
  conv = _get(model_config, "conv_features")
  conv = tuple(conv) if conv is not None else _DEFAULT_CONV.get(name, ())
  if name == "mlp":
    trunk = MLP(hidden, output_dim, dtype)
  elif name == "convnet":
    trunk = ConvNet(conv, hidden, output_dim, dtype)
  elif name == "conv1d":
    trunk = Conv1DNet(conv, _CONV1D_KERNELS, hidden, output_dim, dtype)
  elif name == "efficientnet_b0":
    trunk = EfficientNetB0(float(_get(model_config, "drop_path_rate", 0.2)), dtype)
  else:
    trunk = ResNet(_RESNET_STAGES[name], bottleneck=name == "resnet50",
                   stem=_resolve_stem(_get(model_config, "stem", "auto"), shape),
                   dtype=dtype)
  head_module = EmbeddingHead(
      head, emb, tuple(_get(model_config, "head_hidden", (512, 256))),
      tuple(float(r) for r in _get(model_config, "head_dropout", (0.5, 0.3))), dtype)
  return EmbeddingModel(trunk, head_module,
                        freeze_trunk=bool(_get(model_config, "freeze_trunk", False)),
                        pretrained_path=_get(model_config, "pretrained_path") or None)


@functools.lru_cache(maxsize=32)
def _compiled_init(model: nn.Module, shape: tuple[int, ...], rng_aval: jax.ShapeDtypeStruct,
                   backend: str) -> Callable[[chex.PRNGKey], Any]:
  """Compiled ``rng -> variables`` for one model, input shape and key type (cached).

  Initialisation runs once per model, so on CPU it is compiled at XLA optimisation
  level 0: a ResNet-50 init then compiles about twice as fast (and runs a little
  slower, which matters less).
  """
  def init(rng):
    return model.init({"params": rng}, jnp.zeros((1,) + shape, jnp.float32), train=False)
  lowered = jax.jit(init).lower(rng_aval)
  if backend == "cpu":
    try:
      return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # pylint: disable=broad-except  # An XLA without the option.
      pass
  return lowered.compile()


def init_variables(model: nn.Module, rng: chex.PRNGKey,
                   input_shape: Sequence[int]) -> dict[str, Any]:
  """Initialises a model's variables (and loads its pretrained trunk, if any).

  Args:
    model: a module from :func:`create_model`.
    rng: PRNG key for the parameters.
    input_shape: shape of one example, without the batch axis.

  Returns:
    ``{"params": ...}`` plus ``"batch_stats"`` for models with BatchNorm. When
    ``model.pretrained_path`` is set the trunk variables come from that file
    (:func:`load_pretrained`).
  """
  shape = _check_input_shape(input_shape)
  rng_aval = jax.ShapeDtypeStruct(jnp.shape(rng), rng.dtype)
  path = getattr(model, "pretrained_path", None)
  if path:  # The file only matters after initialisation: share the compiled init.
    model = model.clone(pretrained_path=None)
  variables = dict(_compiled_init(model, shape, rng_aval, jax.default_backend())(rng))
  if path:
    variables = load_pretrained(variables, path)
  return variables


# ---------------------------------------------------------------------------
# Pretrained trunk weights
# ---------------------------------------------------------------------------


def _flat_trunk(variables: Mapping[str, Any]) -> dict[str, Any]:
  """``{"params/trunk/conv1/kernel": leaf, ...}`` for every trunk variable."""
  flat = {}
  for collection, tree in variables.items():
    if not isinstance(tree, Mapping) or "trunk" not in tree:
      continue
    for path, leaf in traverse_util.flatten_dict(tree["trunk"]).items():
      flat["/".join((collection, "trunk") + tuple(path))] = leaf
  return flat


def save_trunk_weights(variables: Mapping[str, Any], path: str, *,
                       model_name: str | None = None) -> None:
  """Writes a model's trunk variables to a ``.npz`` that :func:`load_pretrained` reads.

  Keys are ``<collection>/trunk/<module path>/<name>`` (e.g.
  ``params/trunk/layer1_0/conv1/kernel``, ``batch_stats/trunk/bn1/mean``); two metadata
  entries, ``__format__`` and ``__model__``, describe the file.

  Args:
    variables: variables of a tsm model (``{"params": ..., "batch_stats": ...}``).
    path: output file (``.npz``).
    model_name: optional model name stored as metadata.
  """
  arrays = {k: np.asarray(jax.device_get(v)) for k, v in _flat_trunk(variables).items()}
  if not arrays:
    raise ValueError("variables has no 'trunk' entries; pass the variables of a model "
                     "from tsm.models.create_model.")
  arrays["__format__"] = np.array(NPZ_FORMAT)
  arrays["__model__"] = np.array(model_name or "")
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _summary(items: Sequence[str], limit: int = 5) -> str:
  items = sorted(items)
  more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
  return "[" + ", ".join(items[:limit]) + "]" + more


def load_pretrained(variables: Mapping[str, Any], path: str, *,
                    strict: bool = True) -> dict[str, Any]:
  """Replaces the trunk variables of freshly initialised ``variables`` by a file's.

  Args:
    variables: initialised variables (:func:`init_variables`).
    path: a ``.npz`` in the layout :func:`save_trunk_weights` writes.
    strict: if True, the file must hold exactly the model's trunk variables; if False,
      trunk variables absent from the file keep their initial values and extra file
      entries are ignored. Shapes must match either way.

  Returns:
    A new variables dict (head variables untouched), each loaded leaf cast to the dtype
    of the variable it replaces.

  Raises:
    ValueError: one line listing missing keys, unexpected keys and shape mismatches.
  """
  if not os.path.isfile(path):
    raise ValueError(f"pretrained file {path!r} does not exist; fix model.pretrained_path.")
  with np.load(path, allow_pickle=False) as data:
    loaded = {k: data[k] for k in data.files if not k.startswith(_META_PREFIX)}
  expected = _flat_trunk(variables)
  missing = [k for k in expected if k not in loaded]
  unexpected = [k for k in loaded if k not in expected]
  mismatched = [f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in expected
                if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)]
  problems = []
  if strict and missing:
    problems.append(f"missing keys {_summary(missing)}")
  if strict and unexpected:
    problems.append(f"unexpected keys {_summary(unexpected)}")
  if mismatched:
    problems.append(f"shape mismatches {_summary(mismatched)}")
  if problems or not set(expected) & set(loaded):
    detail = "; ".join(problems) or "no key in common"
    raise ValueError(f"pretrained file {path!r} does not match the model trunk: {detail}; "
                     "check model.name / model.stem, or convert the weights to the key "
                     "layout documented in tsm.models.")
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(tree)
    for key, leaf in flat.items():
      name = "/".join((collection,) + tuple(key))
      if name in loaded and key[0] == "trunk":
        flat[key] = jnp.asarray(loaded[name], dtype=leaf.dtype)
    out[collection] = traverse_util.unflatten_dict(flat)
  return out


def _torch_leaf(module: Sequence[str], leaf: str, value: Any) -> tuple[str, np.ndarray]:
  """Maps one torch tensor to its ``<collection>/trunk/<module>/<name>`` key and layout."""
  value = np.asarray(value)
  path = "/".join(module)
  if leaf == "weight" and value.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
    return f"params/trunk/{path}/kernel", value.transpose(2, 3, 1, 0)
  if leaf == "weight" and value.ndim == 2:  # linear [out, in] -> [in, out]
    return f"params/trunk/{path}/kernel", value.T
  collection, name = {
      "weight": ("params", "scale"), "bias": ("params", "bias"),
      "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
  }[leaf]
  return f"{collection}/trunk/{path}/{name}", value


def convert_torchvision_resnet(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts a torchvision ResNet-18/50 ``state_dict`` to the trunk ``.npz`` key layout.

  Pass numpy arrays (``{k: v.numpy() for k, v in torch_model.state_dict().items()}``);
  save the result with ``np.savez(path, **converted)`` and use it with
  ``model.stem="imagenet"``. The classifier (``fc.*``) and ``num_batches_tracked``
  entries are dropped. Conv weights go from ``[out, in, kh, kw]`` to ``[kh, kw, in,
  out]``; BatchNorm ``weight``/``bias`` become ``scale``/``bias`` and
  ``running_mean``/``running_var`` become ``batch_stats`` ``mean``/``var``.

  Args:
    state_dict: mapping from torchvision parameter names to arrays.

  Returns:
    ``{"params/trunk/...": array, "batch_stats/trunk/...": array}``.
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
      continue
    module, leaf = parts[:-1], parts[-1]
    if module[0].startswith("layer"):  # layer1.0.conv1 -> layer1_0/conv1
      rest = module[2:]
      if rest[0] == "downsample":  # downsample.0 / .1 -> downsample_conv / _bn
        rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"]
      module = [f"{module[0]}_{module[1]}"] + rest
    k, v = _torch_leaf(module, leaf, value)
    out[k] = v
  return out


def convert_torchvision_efficientnet_b0(
    state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts a torchvision ``efficientnet_b0`` ``state_dict`` to the trunk ``.npz`` layout.

  Like :func:`convert_torchvision_resnet` (numpy arrays in, ``np.savez`` the result);
  the classifier is dropped. ``features.0.{0,1}`` -> ``features_0/{conv,bn}``,
  ``features.8.{0,1}`` -> ``features_8/{conv,bn}``, and in block
  ``features.<s>.<b>.block.<i>`` the sub-layers map to ``expand_*`` (absent in stage 1,
  whose blocks do not expand), ``dw_*``, ``se_fc1``/``se_fc2`` and ``project_*``.

  Args:
    state_dict: mapping from torchvision parameter names to arrays.

  Returns:
    ``{"params/trunk/...": array, "batch_stats/trunk/...": array}``.
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[0] != "features" or parts[-1] == "num_batches_tracked":
      continue
    stage, leaf = int(parts[1]), parts[-1]
    if stage in (0, 8):  # features.0.0.weight -> features_0/conv
      module = [f"features_{stage}", "conv" if parts[2] == "0" else "bn"]
    else:  # features.2.1.block.3.1.weight -> features_2_1/project_bn
      layers = ("dw", "se", "project") if stage == 1 else ("expand", "dw", "se", "project")
      layer = layers[int(parts[4])]
      sub = parts[5] if layer == "se" else ("conv" if parts[5] == "0" else "bn")
      module = [f"features_{stage}_{parts[2]}", f"{layer}_{sub}"]
    k, v = _torch_leaf(module, leaf, value)
    out[k] = v
  return out


def trunk_mask(params: Mapping[str, Any]) -> Any:
  """Boolean pytree like ``params``: True on trunk parameters, False on the head's."""
  return {k: jax.tree_util.tree_map(lambda _: k == "trunk", v)  # pylint: disable=cell-var-from-loop
          for k, v in params.items()}


def maybe_freeze_trunk(tx: optax.GradientTransformation,
                       model_config: ml_collections.ConfigDict
                       ) -> optax.GradientTransformation:
  """Wraps ``tx`` so trunk parameters get zero updates when ``freeze_trunk`` is set.

  ``optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)`` with
  labels from :func:`trunk_mask`; the optimiser keeps no state for the trunk.

  Args:
    tx: the optimiser for trainable parameters.
    model_config: the model config.

  Returns:
    ``tx`` itself, or the masked transformation.
  """
  if not _get(model_config, "freeze_trunk", False):
    return tx
  labels: Callable[[Any], Any] = lambda params: jax.tree_util.tree_map(
      lambda frozen: "frozen" if frozen else "train", trunk_mask(params))
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# TEMPORARY shim (replaced by the tsm.models package): the typed API config.py calls.
MODEL_DEFAULTS = dict(head="none", hidden_sizes=None, conv_features=None,
                      head_hidden=(512, 256), head_dropout=(0.5, 0.3), stem="auto",
                      drop_path_rate=0.2, dtype="float32", pretrained_path=None,
                      freeze_trunk=False)


def check_model(name, *, embedding_dim, input_shape, **kw):
  try:
    check_model_config(ml_collections.ConfigDict(dict(name=name, embedding_dim=embedding_dim, **kw)), input_shape)
  except ValueError as e:
    raise ValueError(str(e).replace("model.", "")) from None


def create_model(name, *, embedding_dim, input_shape, **kw):
  return _create_model_cfg(ml_collections.ConfigDict(dict(name=name, embedding_dim=embedding_dim, **kw)), input_shape)
