"""torchvision-compatible EfficientNet-B0 trunk (paper A's trunk).

MBConv blocks with squeeze-and-excitation, SiLU, BatchNorm (``batch_stats``) and
stochastic depth (``drop_path_rate``, drawn from the ``'dropout'`` rng in training);
1280-d pooled features. Layer names mirror torchvision's ``features.*``
(``features_0/{conv,bn}``, ``features_{stage}_{block}/{expand,dw,se,project}_*``,
``features_8/{conv,bn}``), so :func:`tsm.models.convert_torchvision_efficientnet_b0`
maps its weights one to one.

References:
  Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019.
  torchvision.models.efficientnet (layout, stochastic depth 0.2 * block / 16).
  Tomchak et al., arXiv 2603.26389 (paper A: EfficientNet-B0 trunk).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsm.models._torch_style import TORCH_CONV_INIT, batch_norm, conv, torch_pad

EFFICIENTNET_FEATURES = 1280
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
  """
  expand_ratio: int
  kernel: int
  strides: int
  features: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_, norm = conv(self.dtype), batch_norm(train, self.dtype)
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = conv_(hidden, (1, 1), padding="VALID", name="expand_conv")(y)
      y = nn.silu(norm(name="expand_bn")(y))
    s = (self.strides, self.strides)
    y = conv_(hidden, (self.kernel, self.kernel), s, padding=torch_pad(self.kernel),
              feature_group_count=hidden, name="dw_conv")(y)
    y = nn.silu(norm(name="dw_bn")(y))
    squeeze = max(1, in_features // 4)
    se = jnp.mean(y, axis=(1, 2), keepdims=True)
    # The squeeze-and-excitation 1x1 convs keep their bias (torchvision's SqueezeExcitation).
    se_conv = functools.partial(nn.Conv, kernel_size=(1, 1), dtype=self.dtype,
                                kernel_init=TORCH_CONV_INIT)
    se = nn.silu(se_conv(squeeze, name="se_fc1")(se))
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
