"""Flax (linen) encoders that map inputs to L2-normalised embeddings.

Every model is an :class:`EmbeddingModel`: a *trunk* (feature extractor, submodule
``trunk``) followed by an embedding *head* (submodule ``head``) and an L2
normalisation (:func:`tsm.distances.l2_normalize`). ``model.apply(variables, x,
train=...)`` returns ``[B, embedding_dim]`` float32 embeddings of unit norm. Build one by
name with typed arguments::

  model = tsm.models.create_model("convnet", embedding_dim=64, input_shape=(28, 28, 1))
  variables = tsm.models.init_variables(model, jax.random.key(0), (28, 28, 1))

Trunks (``name``, :data:`MODELS`):

* ``"mlp"``, ``"convnet"``, ``"conv1d"``: paper B's small models
  (:mod:`tsm.models.small`).
* ``"resnet18"``, ``"resnet50"``: torchvision-compatible ResNets with a ``stem``
  (``"imagenet"``, ``"cifar"`` or ``"auto"``: ``cifar`` when the input side is at most
  64 pixels) (:mod:`tsm.models.resnet`).
* ``"efficientnet_b0"``: paper A's trunk, torchvision-compatible, stochastic depth
  ``drop_path_rate`` (:mod:`tsm.models.efficientnet`).

Heads (``head``, :data:`HEADS`): ``"none"``, ``"linear"``, ``"paper_a"``
(:mod:`tsm.models.heads`). With ``head != "none"`` the small trunks drop their final
``Dense(embedding_dim)`` and hand the last hidden activations to the head.

Train mode: pass ``rngs={'dropout': key}`` (paper A's head dropout, EfficientNet's
stochastic depth) and, for BatchNorm models, ``mutable=['batch_stats']``.

Modules:

* :mod:`tsm.models.factory`: :func:`create_model`, :func:`check_model` (one-line
  ``ValueError`` starting with the argument name), :data:`MODEL_DEFAULTS`.
* :mod:`tsm.models.small`, :mod:`tsm.models.resnet`, :mod:`tsm.models.efficientnet`:
  the trunks.
* :mod:`tsm.models.heads`: :class:`EmbeddingHead`, :class:`EmbeddingModel`.
* :mod:`tsm.models.variables`: :func:`init_variables` (compiled, cached, loads the
  pretrained trunk), :func:`trunk_mask`, :func:`maybe_freeze_trunk`.
* :mod:`tsm.models.pretrained`: the ``.npz`` trunk format, :func:`save_trunk_weights`,
  :func:`load_pretrained`, torchvision converters.

Freezing the trunk (``freeze_trunk=True``): the trunk runs in inference mode behind
``jax.lax.stop_gradient``; wrap the optimiser with :func:`maybe_freeze_trunk` so that
weight decay and other gradient-free updates leave the trunk untouched too.

References:
  Tomchak et al., arXiv 2603.26389 (paper A: EfficientNet-B0 trunk, 512-256 head).
  Zeng, arXiv 2510.02161 (paper B: synthetic MLP, MNIST ConvNet).
"""

from tsm.models.efficientnet import ConvBNSiLU, EfficientNetB0, MBConv
from tsm.models.factory import (DTYPES, HEADS, MODEL_DEFAULTS, MODELS, STEMS,
                                check_input_shape, check_model, create_model)
from tsm.models.heads import EmbeddingHead, EmbeddingModel, l2_normalize
from tsm.models.pretrained import (NPZ_FORMAT, convert_torchvision_efficientnet_b0,
                                   convert_torchvision_resnet, load_pretrained,
                                   save_trunk_weights)
from tsm.models.resnet import BasicBlock, Bottleneck, ResNet
from tsm.models.small import MLP, Conv1DNet, ConvNet
from tsm.models.variables import init_variables, maybe_freeze_trunk, trunk_mask

__all__ = [
    "BasicBlock", "Bottleneck", "Conv1DNet", "ConvBNSiLU", "ConvNet", "DTYPES",
    "EfficientNetB0", "EmbeddingHead", "EmbeddingModel", "HEADS", "MBConv", "MLP",
    "MODELS", "MODEL_DEFAULTS", "NPZ_FORMAT", "ResNet", "STEMS", "check_input_shape",
    "check_model", "convert_torchvision_efficientnet_b0", "convert_torchvision_resnet",
    "create_model", "init_variables", "l2_normalize", "load_pretrained",
    "maybe_freeze_trunk", "save_trunk_weights", "trunk_mask",
]
