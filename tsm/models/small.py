"""The small trunks of paper B: a dense MLP, a 2-D ConvNet and a 1-D ConvNet.

* :class:`MLP`: paper B's synthetic model, ``Dense(64), ReLU, Dense(embedding_dim)``
  (hidden sizes configurable); any input shape, flattened.
* :class:`ConvNet`: paper B's MNIST model as in the authors' code: ``conv3x3(32), ReLU,
  maxpool2, conv3x3(64), ReLU, maxpool2, flatten, Dense(128), ReLU,
  Dense(embedding_dim)`` (SAME padding); inputs ``[H, W]`` or ``[H, W, C]``.
* :class:`Conv1DNet`: a small 1-D ConvNet for mnist1d signals (length 40), shaped like
  the mnist1d reference ConvBase: three convolutions (kernels 5, 3, 3, stride 2, 32
  channels, ReLU), flatten, ``Dense(embedding_dim)``; inputs ``[L]`` or ``[L, C]``.

Each ends with an optional linear ``out`` layer (``output_dim``): with the model head
``"none"`` it gives the embedding; with another head the trunk hands its last hidden
activations to the head instead.

References:
  Zeng, arXiv 2510.02161 (paper B: the synthetic MLP and the MNIST ConvNet; authors'
  code ZenzenDatabase/Triplet_Contrastive).
  Greydanus, "Scaling down Deep Learning", arXiv 2011.14439 (mnist1d and its ConvBase).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsm.convolution import conv_general_dilated as fast_conv

# Per-model defaults of the size fields that ``create_model`` takes as None.
DEFAULT_HIDDEN = {"mlp": (64,), "convnet": (128,), "conv1d": ()}
DEFAULT_CONV = {"convnet": (32, 64), "conv1d": (32, 32, 32)}
CONV1D_KERNELS = (5, 3, 3)


def dense_stack(x: jax.Array, hidden_sizes: Sequence[int], output_dim: int | None,
                dtype: Any) -> jax.Array:
  """Flatten, ``Dense(h), ReLU`` per hidden size (``dense{i}``), optional linear ``out``.

  Called from a trunk's compact ``__call__``, so the layers are that trunk's submodules
  (their names are part of the checkpoint layout).

  Args:
    x: ``[B, ...]`` activations.
    hidden_sizes: hidden layer widths.
    output_dim: width of the final linear layer, or None for none.
    dtype: computation dtype.

  Returns:
    ``[B, output_dim]`` (or ``[B, hidden_sizes[-1]]``, or the flattened input).
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
    return dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)


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
      x = nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i}",
                  conv_general_dilated=fast_conv)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)


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
  kernel_sizes: Sequence[int] = CONV1D_KERNELS
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
                  name=f"conv{i}", conv_general_dilated=fast_conv)(x)
      x = nn.relu(x)
    return dense_stack(x, self.hidden_sizes, self.output_dim, self.dtype)
