"""Model variables: compiled initialisation and trunk freezing for the optimiser.

:func:`init_variables` initialises a model (once per model, input shape and key type
compiled, and cached) and loads its pretrained trunk. :func:`trunk_mask` and
:func:`maybe_freeze_trunk` keep a frozen trunk untouched by the optimiser: the model
already stops gradients at the trunk (``EmbeddingModel.freeze_trunk``), and
``optax.multi_transform`` over the mask also stops weight decay and other updates that
do not need a gradient.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tsm.models.factory import check_input_shape
from tsm.models.pretrained import load_pretrained


@functools.lru_cache(maxsize=32)
def _compiled_init(model: nn.Module, shape: tuple[int, ...], rng_aval: jax.ShapeDtypeStruct,
                   backend: str) -> Callable[[chex.PRNGKey], Any]:
  """Compiled ``rng -> variables`` for one model, input shape and key type (cached).

  Initialisation runs once per model, so on CPU it is compiled at XLA optimisation
  level 0: a ResNet-50 init then compiles about twice as fast (and runs a little
  slower, which matters less).
  """
  def init(rng):
    return model.init({"params": rng}, jnp.zeros((1,) + shape, jnp.float32), train=False)
  lowered = jax.jit(init).lower(rng_aval)
  if backend == "cpu":
    try:
      return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # pylint: disable=broad-except  # An XLA without the option.
      pass
  return lowered.compile()


def init_variables(model: nn.Module, rng: chex.PRNGKey,
                   input_shape: Sequence[int]) -> dict[str, Any]:
  """Initialises a model's variables (and loads its pretrained trunk, if any).

  Args:
    model: a module from :func:`tsm.models.create_model`.
    rng: PRNG key for the parameters.
    input_shape: shape of one example, without the batch axis.

  Returns:
    ``{"params": ...}`` plus ``"batch_stats"`` for models with BatchNorm. When
    ``model.pretrained_path`` is set the trunk variables come from that file
    (:func:`tsm.models.load_pretrained`).

  Raises:
    ValueError: a bad ``input_shape``, or a pretrained file that does not match.
  """
  shape = check_input_shape(input_shape)
  rng_aval = jax.ShapeDtypeStruct(jnp.shape(rng), rng.dtype)
  path = getattr(model, "pretrained_path", None)
  if path:  # The file only matters after initialisation: share the compiled init.
    model = model.clone(pretrained_path=None)
  variables = dict(_compiled_init(model, shape, rng_aval, jax.default_backend())(rng))
  if path:
    variables = load_pretrained(variables, path)
  return variables


def trunk_mask(params: Mapping[str, Any]) -> Any:
  """Boolean pytree like ``params``: True on trunk parameters, False on the head's.

  Args:
    params: the ``"params"`` collection of a tsm model (top-level ``trunk`` / ``head``).

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
  return {k: jax.tree_util.tree_map(lambda _: k == "trunk", v)  # pylint: disable=cell-var-from-loop
          for k, v in params.items()}


def maybe_freeze_trunk(tx: optax.GradientTransformation,
                       freeze_trunk: bool) -> optax.GradientTransformation:
  """Wraps ``tx`` so trunk parameters get zero updates when ``freeze_trunk`` is set.

  ``optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)`` with
  labels from :func:`trunk_mask`; the optimiser keeps no state for the trunk.

  Args:
    tx: the optimiser for trainable parameters.
    freeze_trunk: whether the model's trunk is frozen (``create_model``'s
      ``freeze_trunk``).

  Returns:
    ``tx`` itself, or the masked transformation.

  Raises:
    ValueError: ``freeze_trunk`` is not a bool.
  """
  if not isinstance(freeze_trunk, (bool, np.bool_)):
    raise ValueError(f"freeze_trunk={freeze_trunk!r} must be a bool; pass the model's "
                     "freeze_trunk (True or False).")
  if not freeze_trunk:
    return tx
  labels: Callable[[Any], Any] = lambda params: jax.tree_util.tree_map(
      lambda frozen: "frozen" if frozen else "train", trunk_mask(params))
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
