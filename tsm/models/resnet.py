"""torchvision-compatible ResNet-18 / ResNet-50 trunks (v1.5).

BatchNorm keeps its running statistics in the ``batch_stats`` collection; explicit
torch-style paddings and torchvision's layer names (``conv1``, ``bn1``,
``layer{i}_{j}/conv1``, ..., ``layer{i}_{j}/downsample_conv``) make converted
torchvision weights (:func:`tsm.models.convert_torchvision_resnet`) give the same
features. Two stems: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) and ``"cifar"``
(3x3/1 conv, no max-pool) for small images.

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
  torchvision.models.resnet (v1.5: the bottleneck's stride sits on its 3x3 conv).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsm.models._torch_style import batch_norm, conv, torch_pad

RESNET_FEATURES = {"resnet18": 512, "resnet50": 2048}
RESNET_STAGES = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
  """ResNet basic block (two 3x3 convolutions), torchvision layout and names."""
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_, norm = conv(self.dtype), batch_norm(train, self.dtype)
    s = (self.strides, self.strides)
    y = conv_(self.features, (3, 3), s, padding=torch_pad(3), name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv_(self.features, (3, 3), padding=torch_pad(3), name="conv2")(y)
    y = norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv_(self.features, (1, 1), s, padding="VALID", name="downsample_conv")(x)
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
    conv_, norm = conv(self.dtype), batch_norm(train, self.dtype)
    out = self.features * self.expansion
    s = (self.strides, self.strides)
    y = conv_(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv_(self.features, (3, 3), s, padding=torch_pad(3), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv_(out, (1, 1), padding="VALID", name="conv3")(y)
    y = norm(name="bn3")(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = conv_(out, (1, 1), s, padding="VALID", name="downsample_conv")(x)
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
      x = conv(self.dtype)(64, (7, 7), (2, 2), padding=torch_pad(7), name="conv1")(x)
    else:
      x = conv(self.dtype)(64, (3, 3), padding=torch_pad(3), name="conv1")(x)
    x = batch_norm(train, self.dtype)(name="bn1")(x)
    x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = Bottleneck if self.bottleneck else BasicBlock
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(64 * 2**i, strides, dtype=self.dtype, name=f"layer{i + 1}_{j}")(x, train)
    return jnp.mean(x, axis=(1, 2))
