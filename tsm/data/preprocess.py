"""Image preprocessing and augmentation in numpy (off the train step's path).

``prepare_images`` turns decoded uint8 images (any sizes) into a float32 batch of one
shape: resize (shorter side to ``image_size``, then centre crop), grey <-> colour,
scale and normalise. ``channel_stats`` and ``standardize`` give the ``"dataset"``
normalisation (``tsm.data.load`` applies it: the training split's own channel mean and
std). ``augment_images`` applies a random crop (zero-padded shift) and
an optional horizontal flip, per example, from a numpy ``Generator`` (seeded per batch
by the loader, so augmentation is deterministic).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
from tsm import _extras

_extras.require(__name__, "PIL")   # else one line naming tsm[train]

from PIL import Image

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side to ``size`` (bilinear) and centre-crops to a square.

  Args:
    image: ``[H, W, C]`` uint8.
    size: output side.

  Returns:
    ``[size, size, C]`` uint8.
  """
  h, w, c = image.shape
  if (h, w) == (size, size):
    return image
  scale = size / min(h, w)
  new_h, new_w = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  pil = pil.resize((new_w, new_h), Image.BILINEAR)
  out = np.asarray(pil)
  if out.ndim == 2:
    out = out[..., None]
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return out[top:top + size, left:left + size]


def set_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
  """Repeats grey to 3 channels or converts colour to grey (luma); None keeps them."""
  have = images.shape[-1]
  if channels is None or channels == have:
    return images
  if channels == 3 and have == 1:
    return np.repeat(images, 3, axis=-1)
  if channels == 1 and have == 3:
    return (images.astype(np.float32) @ _LUMA)[..., None]
  raise ValueError(f"channels={channels} cannot be made from {have}-channel images; "
                   "use 1, 3 or None.")


def normalize(images: np.ndarray, method: str) -> np.ndarray:
  """Scales ``[0, 255]`` values: ``unit`` -> [0, 1], ``symmetric`` -> [-1, 1],
  ``imagenet`` -> ImageNet mean / std per channel (grey uses the luma-weighted mean).

  ``"dataset"`` needs statistics of a training split, which one batch does not have:
  ``tsm.data.load`` prepares such data with ``unit`` and then applies
  :func:`standardize` with :func:`channel_stats` of the training split.
  """
  x = images.astype(np.float32) / 255.0
  if method == "unit":
    return x
  if method == "symmetric":
    return 2.0 * x - 1.0
  if method == "imagenet":
    if x.shape[-1] == 3:
      return (x - IMAGENET_MEAN) / IMAGENET_STD
    return (x - IMAGENET_MEAN @ _LUMA) / (IMAGENET_STD @ _LUMA)
  raise ValueError(f"normalize={method!r} is unknown; use unit, symmetric or imagenet "
                   "(dataset is applied by tsm.data.load).")


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
  """Images in [0, 1] (``normalize="unit"``) back to the uint8 pixels they came from
  (exact for ``pixels / 255``; values outside [0, 1] are clipped)."""
  return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


class ChannelStats(NamedTuple):
  """Per-channel mean and standard deviation of prepared inputs (``[C]`` float32)."""
  mean: np.ndarray
  std: np.ndarray


def channel_stats(batches: Iterable[np.ndarray]) -> ChannelStats:
  """Mean and standard deviation of each channel, pooled over every pixel of every image.

  The pooled std includes the spread between images (paper A's code averages per-image
  stds instead, which leaves it out). A constant channel gets std 1, so that it
  standardises to 0 rather than to NaN.

  Args:
    batches: float arrays ``[n, ..., C]`` (channels last), e.g. ``split.get(indices)``
      chunks; accumulated in float64, so the chunking changes the result only by
      rounding.

  Returns:
    :class:`ChannelStats` of float32 ``[C]`` arrays.

  Raises:
    ValueError: no pixel was given, or the chunks disagree in their channel count.
  """
  count, total, total_sq, channels = 0, None, None, None
  for batch in batches:
    x = np.asarray(batch, np.float64)
    if x.ndim < 2:
      raise ValueError(f"channel_stats takes [n, ..., C] arrays, got shape {x.shape}.")
    if channels is not None and x.shape[-1] != channels:
      raise ValueError(f"channel_stats: a chunk has {x.shape[-1]} channels, the first "
                       f"{channels}; give chunks of one split.")
    channels = x.shape[-1]
    x = x.reshape(-1, channels)
    if total is None:
      total, total_sq = np.zeros(channels), np.zeros(channels)
    # Sums shifted by the first chunk's mean keep the variance accurate for data far
    # from zero, where sum(x^2) - n mean^2 would cancel.
    if count == 0:
      shift = x.mean(axis=0) if x.shape[0] else np.zeros(channels)
    count += x.shape[0]
    d = x - shift
    total += d.sum(axis=0)
    total_sq += (d * d).sum(axis=0)
  if not count:
    raise ValueError("channel_stats got no pixel; the training split is empty (check "
                     "num_examples and the split).")
  mean_d = total / count
  var = np.maximum(total_sq / count - mean_d * mean_d, 0.0)
  std = np.sqrt(var)
  std = np.where(std == 0, 1.0, std)   # NaN (from NaN inputs) stays NaN
  return ChannelStats((mean_d + shift).astype(np.float32), std.astype(np.float32))


def standardize(inputs: np.ndarray, stats: ChannelStats) -> np.ndarray:
  """``(inputs - mean) / std`` per channel (the last axis), float32."""
  x = np.asarray(inputs, np.float32)
  return (x - stats.mean) / stats.std


def prepare_images(images: Sequence[np.ndarray] | np.ndarray, *, image_size: int | None,
                   channels: int | None, method: str = "unit") -> np.ndarray:
  """Decoded uint8 images (any sizes) -> float32 ``[n, S, S, C]`` batch.

  Args:
    images: ``n`` arrays ``[H, W]`` or ``[H, W, C]`` (uint8, 0..255), or one array.
    image_size: output side (None keeps the native size; all must then agree).
    channels: 1, 3 or None (native).
    method: normalisation, see ``normalize``.

  Returns:
    float32 ``[n, S, S, C]``.
  """
  out = []
  for image in images:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image_size is not None:
      image = resize_image(image, image_size)
    out.append(image)
  batch = np.stack(out)
  return normalize(set_channels(batch, channels), method)


def augment_images(batch: np.ndarray, rng: np.random.Generator, *, flip: bool = True,
                   crop_padding: int | None = None) -> np.ndarray:
  """Random shift (a crop of the zero-padded image) and horizontal flip, per example.

  Args:
    batch: float32 ``[B, H, W, C]``.
    rng: numpy Generator (the loader seeds one per batch).
    flip: flip each image left-right with probability 1/2.
    crop_padding: maximum shift in pixels (default ``max(1, H // 8)``); 0 disables.

  Returns:
    Augmented float32 ``[B, H, W, C]`` (the padding value is 0 after normalisation).
  """
  batch = np.asarray(batch, np.float32)
  if batch.ndim != 4:
    return batch
  b, h, w, _ = batch.shape
  pad = max(1, h // 8) if crop_padding is None else int(crop_padding)
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  flips = (rng.random(b) < 0.5) if flip else np.zeros(b, bool)
  padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else batch
  out = np.empty_like(batch)
  for i in range(b):   # contiguous slices: much faster than a fancy-index gather
    crop = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


# Natural images are flipped by augmentation; digits are not (a mirrored 2 is no 2).
FLIP_DATASETS = ("cifar10", "caltech_birds2011", "cars196", "lfw", "fashion_mnist")


def image_augmenter(name: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
  """The augmentation of an image dataset: random shift, and flip for natural images."""
  return functools.partial(augment_images, flip=name in FLIP_DATASETS)

