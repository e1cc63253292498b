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

from tsm import _extras

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

# One-line errors for a missing extra (``tsm._extras``), also reachable from here.
MissingExtraError = _extras.MissingExtraError
_missing_extra = _extras.missing_extra


def __getattr__(name: str):
  if name in _SUBMODULES:
    try:
      return importlib.import_module(f"{__name__}.{name}")  # binds tsm.<name> as well
    except ModuleNotFoundError as e:   # the accessed module names the extra it needs
      error = _extras.missing_extra(f"{__name__}.{name}", e)
      if error is None:
        raise
      raise error from None
  if name in _FUNCTIONS:
    return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted({*__all__, "MissingExtraError"})
