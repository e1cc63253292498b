"""Building a model by name: :func:`create_model`, :func:`check_model` and their defaults.

Typed arguments only (no config objects): ``tsm.config`` builds its ``model`` section
from :data:`MODEL_DEFAULTS` and calls these functions with keywords, prefixing
``model.`` to the messages of :func:`check_model`, which start with the argument name.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from tsm.models.efficientnet import (EFFICIENTNET_FEATURES, EfficientNetB0,
                                     EfficientNetLite0)
from tsm.models.heads import EmbeddingHead, EmbeddingModel
from tsm.models.resnet import RESNET_FEATURES, RESNET_STAGES, ResNet
from tsm.models.small import (CONV1D_KERNELS, DEFAULT_CONV, DEFAULT_HIDDEN, MLP,
                              Conv1DNet, ConvNet)

MODELS = ("mlp", "convnet", "conv1d", "resnet18", "resnet50", "efficientnet_b0",
          "efficientnet_lite0")
HEADS = ("none", "linear", "paper_a")
DTYPES = ("float32", "bfloat16")
STEMS = ("auto", "imagenet", "cifar")

# The keyword defaults of create_model and check_model (the ones after embedding_dim
# and input_shape), in signature order: tsm.config builds its ``model`` section from
# them. A test keeps this dict and the signatures equal.
MODEL_DEFAULTS = {
    "head": "none",
    "hidden_sizes": None,
    "conv_features": None,
    "head_hidden": (512, 256),
    "head_dropout": (0.5, 0.3),
    "stem": "auto",
    "drop_path_rate": 0.2,
    "dtype": "float32",
    "pretrained_path": None,
    "freeze_trunk": False,
}

_IMAGE_FEATURES = {**RESNET_FEATURES, "efficientnet_b0": EFFICIENTNET_FEATURES,
                   "efficientnet_lite0": EFFICIENTNET_FEATURES}


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def _check_sizes(value: Any, field: str, allow_empty: bool = True) -> tuple[int, ...]:
  example = "(64,)" if allow_empty else "(32, 64)"
  error = ValueError(f"{field}={value!r} must be a sequence of positive ints; pass e.g. "
                     f"{field}={example}.")
  if isinstance(value, (str, bytes)):
    raise error
  try:
    sizes = tuple(value)
  except TypeError:
    raise error from None
  if (not allow_empty and not sizes) or not all(_is_int(s) and s > 0 for s in sizes):
    raise error
  return tuple(int(s) for s in sizes)


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
  """Checks one example's shape (no batch axis) and returns it as a tuple of ints.

  Args:
    input_shape: e.g. ``(40,)``, ``(28, 28, 1)``.

  Returns:
    The shape as a tuple of Python ints.

  Raises:
    ValueError: when it is not a non-empty sequence of positive ints.
  """
  error = ValueError(f"input_shape must be a tuple of positive ints without the batch "
                     f"axis, got {input_shape!r}; pass e.g. (28, 28, 1).")
  try:
    shape = tuple(input_shape)
  except TypeError:
    raise error from None
  if not shape or not all(_is_int(s) and s > 0 for s in shape):
    raise error
  return tuple(int(s) for s in shape)


def _resolve_stem(stem: str, input_shape: tuple[int, ...]) -> str:
  if stem != "auto":
    return stem
  return "cifar" if max(input_shape[:2]) <= 64 else "imagenet"


def check_model(name: str, *, embedding_dim: int, input_shape: Sequence[int],
                head: str = "none", hidden_sizes: Sequence[int] | None = None,
                conv_features: Sequence[int] | None = None,
                head_hidden: Sequence[int] = (512, 256),
                head_dropout: Sequence[float] = (0.5, 0.3), stem: str = "auto",
                drop_path_rate: float = 0.2, dtype: str = "float32",
                pretrained_path: str | None = None, freeze_trunk: bool = False) -> None:
  """Validates :func:`create_model`'s arguments against the per-example input shape.

  Nothing is traced or compiled. The message of the ``ValueError`` is one line that
  starts with the bad argument (``"embedding_dim=0 must be ..."``), so a config layer can
  prefix its section (``model.``), and says the fix.

  Args:
    name: see :func:`create_model` (all arguments are the same).
    embedding_dim: see :func:`create_model`.
    input_shape: see :func:`create_model`.
    head: see :func:`create_model`.
    hidden_sizes: see :func:`create_model`.
    conv_features: see :func:`create_model`.
    head_hidden: see :func:`create_model`.
    head_dropout: see :func:`create_model`.
    stem: see :func:`create_model`.
    drop_path_rate: see :func:`create_model`.
    dtype: see :func:`create_model`.
    pretrained_path: see :func:`create_model`.
    freeze_trunk: see :func:`create_model`.

  Raises:
    ValueError: on an unknown model / head / dtype / stem, a non-positive size, an
      input shape the model cannot take, or a missing pretrained file.
  """
  shape = check_input_shape(input_shape)
  if name not in MODELS:
    raise ValueError(f"name={name!r} is unknown; use one of {MODELS}.")
  if not _is_int(embedding_dim) or embedding_dim <= 0:
    raise ValueError(f"embedding_dim={embedding_dim!r} must be a positive int; pass e.g. "
                     "embedding_dim=128.")
  if head not in HEADS:
    raise ValueError(f"head={head!r} is unknown; use one of {HEADS}.")
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r} is unknown; use one of {DTYPES}.")
  if stem not in STEMS:
    raise ValueError(f"stem={stem!r} is unknown; use one of {STEMS}.")
  if hidden_sizes is not None:
    _check_sizes(hidden_sizes, "hidden_sizes")
  if conv_features is not None:
    _check_sizes(conv_features, "conv_features", allow_empty=False)
  if head == "paper_a":  # The paper_a head alone reads head_hidden / head_dropout.
    hidden = _check_sizes(head_hidden, "head_hidden")
    rates = tuple(head_dropout) if not isinstance(head_dropout, (str, bytes)) else ()
    if len(rates) != len(hidden) or not all(_is_real(r) and 0.0 <= r < 1.0
                                            for r in rates):
      raise ValueError(f"head_dropout={head_dropout!r} must hold one rate in [0, 1) per "
                       f"head_hidden layer ({len(hidden)}); pass e.g. (0.5, 0.3).")

  rank = len(shape)
  if name == "convnet":
    if rank not in (2, 3):
      raise ValueError(f"name='convnet' needs image inputs [H, W] or [H, W, C], got "
                       f"input_shape={shape}; use name='mlp' or 'conv1d' for 1-D inputs.")
    if min(shape[:2]) < 4:
      raise ValueError(f"name='convnet' needs images of at least 4x4 (two 2x2 "
                       f"max-pools), got input_shape={shape}; use name='mlp'.")
  elif name == "conv1d":
    if rank not in (1, 2):
      raise ValueError(f"name='conv1d' needs 1-D inputs [L] or [L, C], got "
                       f"input_shape={shape}; use name='convnet' or a resnet for images.")
  elif name in _IMAGE_FEATURES:
    if rank not in (2, 3):
      raise ValueError(f"name={name!r} needs image inputs [H, W] or [H, W, C], got "
                       f"input_shape={shape}; use name='mlp' or 'conv1d' for 1-D inputs.")
    if head == "none" and embedding_dim != _IMAGE_FEATURES[name]:
      raise ValueError(f"head='none' with {name} gives {_IMAGE_FEATURES[name]}-d "
                       f"features, not embedding_dim={embedding_dim}; use head='linear' "
                       "or 'paper_a'.")
  if not _is_real(drop_path_rate) or not 0.0 <= drop_path_rate < 1.0:
    raise ValueError(f"drop_path_rate={drop_path_rate!r} must be in [0, 1); pass e.g. "
                     "0.2.")
  if not isinstance(freeze_trunk, (bool, np.bool_)):
    raise ValueError(f"freeze_trunk={freeze_trunk!r} must be a bool; pass True or False.")
  if freeze_trunk and head == "none":
    raise ValueError("freeze_trunk=True with head='none' leaves nothing to train; use "
                     "head='linear' or 'paper_a'.")
  if pretrained_path:
    if not isinstance(pretrained_path, str) or not pretrained_path.endswith(".npz"):
      raise ValueError(f"pretrained_path={pretrained_path!r} must be a .npz file of trunk "
                       "variables; write one with tsm.models.save_trunk_weights.")
    if not os.path.isfile(pretrained_path):
      raise ValueError(f"pretrained_path={pretrained_path!r} does not exist; fix the path "
                       "or unset pretrained_path.")


def create_model(name: str, *, embedding_dim: int, input_shape: Sequence[int],
                 head: str = "none", hidden_sizes: Sequence[int] | None = None,
                 conv_features: Sequence[int] | None = None,
                 head_hidden: Sequence[int] = (512, 256),
                 head_dropout: Sequence[float] = (0.5, 0.3), stem: str = "auto",
                 drop_path_rate: float = 0.2, dtype: str = "float32",
                 pretrained_path: str | None = None,
                 freeze_trunk: bool = False) -> EmbeddingModel:
  """Builds an embedding model by name.

  Args:
    name: the trunk, one of :data:`MODELS`.
    embedding_dim: size of the L2-normalised output.
    input_shape: shape of one example, without the batch axis (``(40,)``,
      ``(28, 28, 1)``, ``(32, 32, 3)``).
    head: ``"none"`` | ``"linear"`` | ``"paper_a"`` (see :mod:`tsm.models.heads`).
    hidden_sizes: dense hidden sizes of the small trunks (None: model default, mlp
      ``(64,)``, convnet ``(128,)``, conv1d ``()``).
    conv_features: channels of the convolutions of convnet / conv1d (None: model
      default, convnet ``(32, 64)``, conv1d ``(32, 32, 32)``).
    head_hidden: hidden sizes of the ``paper_a`` head.
    head_dropout: dropout rate after each hidden layer of the ``paper_a`` head.
    stem: ResNet stem, ``"auto"`` (``"cifar"`` when the input side is at most 64
      pixels) | ``"imagenet"`` | ``"cifar"``.
    drop_path_rate: EfficientNet stochastic depth (torchvision's 0.2).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters and the
      returned embeddings stay float32).
    pretrained_path: optional ``.npz`` of trunk variables
      (:mod:`tsm.models.pretrained`), loaded by :func:`tsm.models.init_variables`.
    freeze_trunk: run the trunk in inference mode without gradients (wrap the
      optimiser with :func:`tsm.models.maybe_freeze_trunk` too).

  Returns:
    An :class:`EmbeddingModel`; ``model.apply(variables, x, train=...)`` gives
    L2-normalised float32 ``[B, embedding_dim]`` embeddings.

  Raises:
    ValueError: see :func:`check_model`.
  """
  check_model(name, embedding_dim=embedding_dim, input_shape=input_shape, head=head,
              hidden_sizes=hidden_sizes, conv_features=conv_features,
              head_hidden=head_hidden, head_dropout=head_dropout, stem=stem,
              drop_path_rate=drop_path_rate, dtype=dtype,
              pretrained_path=pretrained_path, freeze_trunk=freeze_trunk)
  shape = check_input_shape(input_shape)
  emb = int(embedding_dim)
  compute_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  output_dim = emb if head == "none" else None
  hidden = (tuple(int(h) for h in hidden_sizes) if hidden_sizes is not None
            else DEFAULT_HIDDEN.get(name, ()))
  conv = (tuple(int(c) for c in conv_features) if conv_features is not None
          else DEFAULT_CONV.get(name, ()))
  if name == "mlp":
    trunk = MLP(hidden, output_dim, compute_dtype)
  elif name == "convnet":
    trunk = ConvNet(conv, hidden, output_dim, compute_dtype)
  elif name == "conv1d":
    trunk = Conv1DNet(conv, CONV1D_KERNELS, hidden, output_dim, compute_dtype)
  elif name == "efficientnet_b0":
    trunk = EfficientNetB0(float(drop_path_rate), compute_dtype)
  elif name == "efficientnet_lite0":
    trunk = EfficientNetLite0(float(drop_path_rate), compute_dtype)
  else:
    trunk = ResNet(RESNET_STAGES[name], bottleneck=name == "resnet50",
                   stem=_resolve_stem(stem, shape), dtype=compute_dtype)
  if head == "paper_a":
    head_module = EmbeddingHead(head, emb, tuple(int(h) for h in head_hidden),
                                tuple(float(r) for r in head_dropout), compute_dtype)
  else:  # head_hidden / head_dropout are unused (and unchecked) for these heads.
    head_module = EmbeddingHead(head, emb, dtype=compute_dtype)
  return EmbeddingModel(trunk, head_module, freeze_trunk=bool(freeze_trunk),
                        pretrained_path=pretrained_path or None)
