"""EfficientNet trunks: torchvision's B0 (paper A's trunk) and EfficientNet-Lite0.

Both are MBConv networks with BatchNorm (``batch_stats``) and stochastic depth
(``drop_path_rate``, drawn from the ``'dropout'`` rng in training), returning 1280-d
pooled features.

* :class:`EfficientNetB0`: squeeze-and-excitation, SiLU, torch's symmetric padding.
  Layer names mirror torchvision's ``features.*`` (``features_0/{conv,bn}``,
  ``features_{stage}_{block}/{expand,dw,se,project}_*``, ``features_8/{conv,bn}``), so
  :func:`tsm.models.convert_torchvision_efficientnet_b0` maps its weights one to one.
* :class:`EfficientNetLite0`: B0 without squeeze-and-excitation, ReLU6, a fixed 32-channel
  stem and 1280-channel head, TensorFlow's ``"SAME"`` padding (asymmetric at stride 2)
  and BatchNorm epsilon 1e-3, the form its ImageNet weights were trained in. Names
  ``stem_{conv,bn}``, ``blocks_{i}/{expand,dw,project}_{conv,bn}`` (i = 0..15),
  ``head_{conv,bn}`` and the optional ImageNet ``classifier``; :func:`tsm.models.convert_efficientnet_lite0` maps the
  efficientnet_pytorch names (``_conv_stem``, ``_blocks.{i}._expand_conv``, ...) to them.
  It takes images in [0, 1] (``DataSpec(normalize="unit")``) and applies the weights' own
  input scaling, ``(255 x - 127) / 128``, itself; one-channel images are repeated to RGB.

References:
  Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019.
  torchvision.models.efficientnet (layout, stochastic depth 0.2 * block / 16).
  Liu et al., "Higher accuracy on vision models with EfficientNet-Lite", TensorFlow
  blog, 2020; tensorflow/tpu models/official/efficientnet/lite (Lite0: no SE, ReLU6,
  fixed stem and head, inputs (x - 127) / 128).
  Tomchak et al., arXiv 2603.26389 (paper A: EfficientNet-B0 trunk).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsm.models._torch_style import TORCH_CONV_INIT, batch_norm, conv, torch_pad

EFFICIENTNET_FEATURES = 1280
# EfficientNet-Lite0's ImageNet weights take (x - LITE_INPUT_MEAN) / LITE_INPUT_STD of
# 0..255 RGB pixels; its BatchNorm epsilon is TensorFlow's 1e-3.
LITE_INPUT_MEAN = 127.0
LITE_INPUT_STD = 128.0
LITE_BN_EPSILON = 1e-3
# EfficientNet-B0 stages: (expand ratio, kernel, stride, output channels, blocks).
EFFICIENTNET_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
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
    x = conv(self.dtype)(self.features, (self.kernel, self.kernel),
                         (self.strides, self.strides), padding=torch_pad(self.kernel),
                         name="conv")(x)
    x = batch_norm(train, self.dtype)(name="bn")(x)
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
    squeeze_excite: squeeze-and-excitation after the depthwise conv (B0: yes; Lite: no).
    activation: the nonlinearity (B0: SiLU; Lite: ReLU6).
    tf_padding: TensorFlow's ``"SAME"`` padding (asymmetric at stride 2) instead of
      torch's symmetric one.
    bn_epsilon: BatchNorm epsilon (torch 1e-5; TensorFlow-trained weights 1e-3).
  """
  expand_ratio: int
  kernel: int
  strides: int
  features: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32
  squeeze_excite: bool = True
  activation: Callable[[jax.Array], jax.Array] = nn.silu
  tf_padding: bool = False
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_, norm = conv(self.dtype), batch_norm(train, self.dtype, self.bn_epsilon)
    act = self.activation
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = conv_(hidden, (1, 1), padding="VALID", name="expand_conv")(y)
      y = act(norm(name="expand_bn")(y))
    s = (self.strides, self.strides)
    y = conv_(hidden, (self.kernel, self.kernel), s,
              padding="SAME" if self.tf_padding else torch_pad(self.kernel),
              feature_group_count=hidden, name="dw_conv")(y)
    y = act(norm(name="dw_bn")(y))
    if self.squeeze_excite:
      squeeze = max(1, in_features // 4)
      se = jnp.mean(y, axis=(1, 2), keepdims=True)
      # The squeeze-and-excitation 1x1 convs keep their bias (torchvision's
      # SqueezeExcitation).
      se_conv = functools.partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                                  kernel_init=TORCH_CONV_INIT)
      se = act(se_conv(squeeze, name="se_fc1")(se))
      se = nn.sigmoid(se_conv(hidden, name="se_fc2")(se))
      y = y * se
    y = conv_(self.features, (1, 1), padding="VALID", name="project_conv")(y)
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
    total = sum(stage[-1] for stage in EFFICIENTNET_B0_STAGES)
    index = 0
    for s, (expand, kernel, stride, features, blocks) in enumerate(EFFICIENTNET_B0_STAGES):
      for b in range(blocks):
        x = MBConv(expand, kernel, stride if b == 0 else 1, features,
                   drop_path=self.drop_path_rate * index / total, dtype=self.dtype,
                   name=f"features_{s + 1}_{b}")(x, train)
        index += 1
    x = ConvBNSiLU(EFFICIENTNET_FEATURES, 1, 1, dtype=self.dtype, name="features_8")(
        x, train)
    return jnp.mean(x, axis=(1, 2))


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 trunk returning pooled ``[B, 1280]`` features (see the module
  docstring for its form and names).

  Inputs are images in [0, 1], ``[B, H, W]``, ``[B, H, W, 1]`` or ``[B, H, W, 3]``, of
  any size of at least 32 pixels (the network is convolutional; its ImageNet weights
  were trained at 224 x 224). With ``num_classes`` the module also has the ImageNet
  classifier ``classifier`` (Dense 1280 -> num_classes), applied by :meth:`logits`.

  Attributes:
    drop_path_rate: stochastic-depth rate of the last block (the reference
      implementation's 0.2), scaled linearly with the block index.
    dtype: computation dtype.
    num_classes: size of the classifier (0: none).
  """
  drop_path_rate: float = 0.2
  dtype: Any = jnp.float32
  num_classes: int = 0

  def setup(self):
    conv_ = conv(self.dtype)
    self.stem_conv = conv_(32, (3, 3), (2, 2), padding="SAME", name="stem_conv")
    blocks, total, index = [], sum(stage[-1] for stage in EFFICIENTNET_B0_STAGES), 0
    for expand, kernel, stride, features, repeats in EFFICIENTNET_B0_STAGES:
      for b in range(repeats):
        blocks.append(MBConv(expand, kernel, stride if b == 0 else 1, features,
                             drop_path=self.drop_path_rate * index / total,
                             dtype=self.dtype, squeeze_excite=False,
                             activation=nn.relu6, tf_padding=True,
                             bn_epsilon=LITE_BN_EPSILON, name=f"blocks_{index}"))
        index += 1
    self.blocks = blocks
    self.head_conv = conv_(EFFICIENTNET_FEATURES, (1, 1), padding="VALID",
                           name="head_conv")
    norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=LITE_BN_EPSILON,
                             dtype=self.dtype)
    self.stem_bn, self.head_bn = norm(name="stem_bn"), norm(name="head_bn")
    if self.num_classes:
      self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = (x.astype(jnp.float32) * 255.0 - LITE_INPUT_MEAN) / LITE_INPUT_STD
    stats = not train
    x = nn.relu6(self.stem_bn(self.stem_conv(x.astype(self.dtype)),
                              use_running_average=stats))
    for block in self.blocks:
      x = block(x, train)
    x = nn.relu6(self.head_bn(self.head_conv(x), use_running_average=stats))
    return jnp.mean(x, axis=(1, 2))

  def logits(self, features: jax.Array) -> jax.Array:
    """ImageNet logits ``[B, num_classes]`` of pooled features (needs ``num_classes``)."""
    return self.classifier(features)
