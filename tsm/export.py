"""A trained run as an embedding function: ``tsm.load(workdir)``.

``load`` reads a run directory written by ``tsm-train`` / ``tsm.config.train_and_evaluate``
(``config.json`` and ``checkpoints/``), rebuilds the model from the config and restores
only the model's variables (``params`` and, for BatchNorm models, ``batch_stats``) of the
best or the last checkpoint: orbax's partial restore reads those arrays and leaves the
optimiser state, the loss's parameters and the margin state on disk, so loading needs
neither the optimiser nor the loss to be rebuilt.

Example::

  run = tsm.load("runs/digits_dams")               # the best checkpoint
  test = run.splits.test
  embeddings = run.embed(test)                      # [N, D] float32
  index = tsm.search.Index.build(embeddings, ids=test.labels)
  ids, distances = index.search(run.embed(queries), k=5)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tsm import checkpoint as checkpoint_lib
from tsm import config as config_lib
from tsm import evaluation
from tsm.data import preprocess

__all__ = ["Loaded", "load", "WHICH"]

WHICH = ("best", "last")


@dataclasses.dataclass(frozen=True, eq=False)
class Loaded:
  """A trained model with its variables and the config it was trained with.

  Attributes:
    config: the run's resolved config (``config.json``), for reading with
      :mod:`tsm.config` (this module reads no field of it).
    data: the run's :class:`tsm.data.DataSpec` (``tsm.config.data_spec`` of ``config``),
      whose preprocessing :meth:`prepare` applies.
    model: the Flax module ``tsm.config.build_model`` builds from ``config``.
    variables: ``{"params": ...}`` (plus ``"batch_stats"`` for BatchNorm models), the
      restored checkpoint's.
    step: the optimiser step of the restored checkpoint.
    input_shape: the shape of one model input (without the batch axis).
    splits: the run's dataset (``tsm.data.DatasetSplits``: ``.train``, ``.val``,
      ``.test``, each with ``.labels``), as training split it.
    workdir: the run directory.
    trunk: the frozen pretrained trunk whose cached features the model was trained on
      (``tsm.models.PretrainedTrunk``; :meth:`prepare` runs it on raw images), or None.
  """
  config: Any
  data: Any
  model: Any
  variables: dict[str, Any]
  step: int
  input_shape: tuple[int, ...]
  splits: Any
  workdir: str
  trunk: Any = None

  def __repr__(self) -> str:
    """One line: the run, its checkpoint, the model and the data (not the arrays)."""
    sizes = ", ".join(f"{name} {len(getattr(self.splits, name))}"
                      for name in ("train", "val", "test"))
    trunk = "" if self.trunk is None else f", trunk={type(self.trunk).__name__}"
    return (f"Loaded(workdir={self.workdir!r}, step={self.step}, "
            f"model={type(self.model).__name__}{trunk}, input_shape={self.input_shape}, "
            f"data={self.data.name!r} ({sizes}))")

  def prepare(self, inputs: Any) -> np.ndarray:
    """Raw inputs as model inputs: integer arrays are images with values 0..255 and get
    the run's preprocessing (``data.image_size``, ``data.channels``,
    ``data.normalize``; ``"dataset"`` with the training split's statistics,
    ``splits.input_stats``), as the IDX and TFDS pipelines apply it; float arrays are taken
    as already-prepared model inputs. For a run on a frozen pretrained trunk's cached
    features, raw images are prepared the same way and then run through the trunk.

    Args:
      inputs: ``[N, ...]`` array.

    Returns:
      float32 ``[N, *input_shape]``.

    Raises:
      ValueError: the shape does not fit the model's ``input_shape``.
    """
    x = np.asarray(inputs)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
      d = self.data
      if x.ndim not in (3, 4):
        raise ValueError(f"inputs: integer images must be [N, H, W] or [N, H, W, C], got "
                         f"shape {x.shape}; pass float model inputs of shape "
                         f"[N, {', '.join(map(str, self.input_shape))}].")
      standardize = d.normalize == "dataset"
      x = preprocess.prepare_images(x, image_size=d.image_size, channels=d.channels,
                                    method="unit" if standardize else d.normalize)
      if standardize:   # the training split's statistics, as tsm.data.load applied them
        x = preprocess.standardize(x, self.splits.input_stats)
      if self.trunk is not None:   # as the feature cache made the training inputs
        x = self.trunk.features(preprocess.unit_to_uint8(x))
    elif not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"inputs has dtype {x.dtype}; pass float model inputs or uint8 "
                       "images.")
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ValueError(f"inputs have shape {x.shape}, the model takes "
                       f"[N, {', '.join(map(str, self.input_shape))}]; reshape them (or "
                       "pass the run's own split, e.g. run.splits.test).")
    return x.astype(np.float32, copy=False)

  def embed(self, inputs: Any, batch_size: int = 256) -> np.ndarray:
    """Embeddings of ``inputs`` with the model in inference mode.

    Args:
      inputs: a ``tsm.data.Split`` (e.g. ``self.splits.test``), or an ``[N, ...]`` array
        (see :meth:`prepare`: integer arrays are raw images and are preprocessed).
      batch_size: examples per compiled call.

    Returns:
      ``[N, D]`` float32 numpy array, in the order of ``inputs``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
        or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be a positive integer; pass e.g. "
                       "256.")
    if not (hasattr(inputs, "get") and hasattr(inputs, "__len__")
            and not hasattr(inputs, "shape")):
      inputs = self.prepare(inputs)
    return evaluation.embed(_apply_fn(self.model), self.variables, inputs, int(batch_size))


def _apply_fn(model: Any):
  """One apply function per model, so ``evaluation.embed``'s jit cache hits on reuse."""
  cached = model.__dict__.get("_tsm_export_apply")
  if cached is None:
    cached = lambda variables, x: model.apply(variables, x, train=False)  # noqa: E731
    object.__setattr__(model, "_tsm_export_apply", cached)
  return cached


def _pick_step(directory: str, which: str) -> int:
  ckpt = checkpoint_lib.Checkpointer(directory, async_save=False, cleanup_tmp=False)
  try:
    latest = ckpt.latest_step()
    best = ckpt.best_step() if which == "best" else None
  finally:
    ckpt.close()
  # A run whose checkpoints carry no validation metric has no best: its last one is
  # what fit summarises too.
  step = latest if best is None else best
  if step is None:
    raise ValueError(f"{directory} holds no checkpoint; train the run first (tsm-train "
                     "with the same --workdir resumes it).")
  return int(step)


def _restore_variables(path: str, abstract: dict[str, Any]) -> dict[str, Any]:
  """The ``params`` / ``batch_stats`` subtrees of a saved TrainState (orbax partial
  restore: the other leaves are not read)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  # On this process's first device: the saved sharding may name a mesh that is not here.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), abstract)
  with ocp.PyTreeCheckpointer() as reader:
    return reader.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=True))


def load(workdir: str | os.PathLike[str], *, which: str = "best") -> Loaded:
  """Loads a trained run's model and variables for inference.

  Args:
    workdir: a run directory of ``tsm-train`` / ``tsm.config.train_and_evaluate`` (it
      holds ``config.json`` and ``checkpoints/``): absolute, relative to the current
      directory, with ``~``, or through a symlink; a workdir moved after training loads
      from its new place.
    which: ``"best"``: the checkpoint with the best ``train.best_metric`` (the state the
      summary's test metrics were computed with; the last checkpoint when none carries
      a metric), or ``"last"``: the most recent checkpoint.

  Returns:
    A :class:`Loaded`; ``loaded.embed(loaded.splits.test)`` gives the test embeddings.

  Raises:
    ValueError: a bad ``which``, or a workdir without ``config.json`` or checkpoints
      (one line).
    tsm.checkpoint.CheckpointError: the chosen checkpoint cannot be read, or it does
      not hold the variables of the model the config describes.

  References:
    orbax-checkpoint, partial restore:
    https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html
  """
  if which not in WHICH:
    raise ValueError(f"which={which!r} is unknown; use 'best' or 'last'.")
  # orbax restores from absolute paths only; "~", relative paths and symlinks resolve here.
  workdir = os.path.realpath(os.path.expanduser(os.fspath(workdir)))
  cfg = config_lib.read_run_config(workdir)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"workdir {workdir} holds no checkpoints/; train the run first "
                     "(tsm-train with the same --workdir resumes it).")
  step = _pick_step(directory, which)
  try:
    splits = config_lib.load_data(cfg)
  except ValueError as e:
    raise ValueError(f"workdir {workdir}: its dataset does not load "
                     f"({str(e).strip().splitlines()[0]})") from None
  input_shape = tuple(int(s) for s in splits.input_shape)
  model = config_lib.build_model(cfg, input_shape)
  # Shapes only: the restored arrays replace every value (a pretrained trunk included).
  abstract = jax.eval_shape(
      lambda rng: model.init({"params": rng}, jnp.zeros((1,) + input_shape, jnp.float32),
                             train=False), jax.random.key(0))
  abstract = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
  path = os.path.join(directory, str(step), "state")
  try:
    variables = _restore_variables(path, abstract)
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
    cause = checkpoint_lib.cause_of(e)
    raise checkpoint_lib.CheckpointError(
        f"checkpoint {step} in {directory} does not restore into the model of its "
        f"config.json ({cause}).", cause) from None
  variables = {k: v for k, v in variables.items() if k == "params" or v}
  return Loaded(config=cfg, data=config_lib.data_spec(cfg), model=model,
                variables=variables, step=step, input_shape=input_shape, splits=splits,
                workdir=workdir, trunk=config_lib.build_trunk(cfg))
