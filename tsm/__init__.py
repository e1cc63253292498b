"""tsm: deep metric learning in JAX/Flax.

Pure loss functions (``tsm.losses``), margin schedules (``tsm.margins``), distances
(``tsm.distances``), evaluation metrics (``tsm.metrics``), diagnostics
(``tsm.diagnostics``), exact k-NN search (``tsm.search``), and a training pipeline
(``tsm.fit``, ``tsm.train``) used by the studies under ``experiments/``.
``tsm.load(workdir)`` loads a trained run for inference (``tsm.export.load``).

``import tsm`` imports no submodule: each is imported on first access
(``tsm.losses.triplet_margin_loss`` works after a bare ``import tsm``; PEP 562), so a
researcher who only wants a loss never pays for flax, optax or TensorFlow Datasets.
The core install (``pip install tsm``: jax, chex, numpy) runs the pure library; the
training modules need ``pip install 'tsm[train]'``, and importing one without it raises
a one-line ImportError that says so instead of naming whichever package was missing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

# Public submodules, reachable as attributes of the package.
_SUBMODULES = (
    "artifacts", "checkpoint", "cli", "config", "data", "diagnostics", "distances",
    "distributed", "embed_cli", "evaluation", "export", "fit", "hooks", "losses",
    "margins", "metrics", "mining", "models", "plotting", "reporting", "search",
    "tensorboard", "train",
)

# Public functions of submodules, reachable as attributes (name -> submodule); the
# submodule is imported on first access, like the submodules themselves.
_FUNCTIONS = {"load": "export"}

__all__ = ["__version__", *_FUNCTIONS, *_SUBMODULES]

# Top-level packages of the optional extras (import name -> extra).
_EXTRA_PACKAGES = {
    **dict.fromkeys(
        ("flax", "optax", "orbax", "ml_collections", "absl", "tqdm", "matplotlib", "PIL",
         "sklearn", "scipy", "tensorflow_datasets", "array_record", "mnist1d",
         "tensorboardX", "filelock"), "train"),
    "tensorflow": "data",
}


class MissingExtraError(ModuleNotFoundError):
  """A tsm module needs a package of an optional extra that is not installed.

  A ModuleNotFoundError (hence an ImportError), so ``pytest.importorskip`` and
  ``except ImportError`` handle it as any missing module.
  """

  extra: str = "train"


def _missing_extra(fullname: str, error: ModuleNotFoundError) -> MissingExtraError | None:
  """The one-line error for ``fullname`` if ``error`` is a missing extra's package."""
  if isinstance(error, MissingExtraError):
    extra = error.extra
  else:
    extra = _EXTRA_PACKAGES.get((error.name or "").partition(".")[0])
  if extra is None:
    return None
  what = "training" if extra == "train" else extra
  # ``name`` stays the missing package: Python's ``from package import submodule`` treats
  # a ModuleNotFoundError named after the submodule itself as "no such submodule".
  out = MissingExtraError(f"{fullname} needs the {what} extra: pip install 'tsm[{extra}]'",
                          name=error.name)
  out.extra = extra
  return out


class _ExtraLoader(importlib.abc.Loader):
  """Runs a tsm submodule's own loader; turns a missing extra into a one-line error."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    try:
      self._loader.exec_module(module)
    except ModuleNotFoundError as e:
      error = _missing_extra(module.__name__, e)
      if error is None:
        raise
      raise error from None

  def __getattr__(self, name):  # get_source, get_code, is_package... for inspect and pdb
    return getattr(self._loader, name)


class _ExtraFinder(importlib.abc.MetaPathFinder):
  """Finds ``tsm.*`` modules as usual and wraps their loader in ``_ExtraLoader``."""

  def find_spec(self, fullname, path, target=None):
    if not fullname.startswith(__name__ + "."):
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
    if spec is not None and spec.loader is not None and not isinstance(spec.loader,
                                                                         _ExtraLoader):
      spec.loader = _ExtraLoader(spec.loader)
    return spec


if not any(isinstance(f, _ExtraFinder) for f in sys.meta_path):
  sys.meta_path.insert(0, _ExtraFinder())


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")  # binds tsm.<name> as well
  if name in _FUNCTIONS:
    return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted({*__all__, "MissingExtraError"})
