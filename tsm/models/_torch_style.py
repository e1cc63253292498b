"""Layer settings shared by the torchvision-compatible trunks (ResNet, EfficientNet).

Converted torchvision weights must give the same features, and from-scratch runs should
start like their PyTorch counterparts, so both trunks use torch's initialiser, explicit
symmetric paddings and torch's BatchNorm constants.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

from tsm.convolution import conv_general_dilated as fast_conv

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu") for ResNet and
# EfficientNet convolutions.
TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric torch-style padding for a k x k convolution (SAME differs at stride 2)."""
  p = (k - 1) // 2
  return ((p, p), (p, p))


def conv(dtype: Any) -> Any:
  """``nn.Conv`` without bias and with torch's init (pass features, kernel, ...); its
  kernel gradient is :mod:`tsm.convolution`'s (XLA:CPU's backward-filter convolution is
  the slow op of a CPU train step)."""
  return functools.partial(nn.Conv, use_bias=False, dtype=dtype,
                           kernel_init=TORCH_CONV_INIT, conv_general_dilated=fast_conv)


def batch_norm(train: bool, dtype: Any, epsilon: float = 1e-5) -> Any:
  """``nn.BatchNorm`` with torch's constants (momentum 0.1 is Flax's 0.9, eps 1e-5;
  TensorFlow-trained weights such as EfficientNet-Lite's use ``epsilon=1e-3``)."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=epsilon, dtype=dtype)
