"""One-line errors for the modules of an optional extra (``tsm[train]``, ``tsm[data]``).

The core install (jax, chex, numpy) runs the pure library; a module that needs an
extra's packages starts with ``require(__name__, "flax", ...)``, which imports them and,
when one is missing, raises :class:`MissingExtraError` ("tsm.fit needs the training
extra: pip install 'tsm[train]'") instead of whichever package's ModuleNotFoundError.
Each module checks its own packages, so nothing is installed into ``sys.meta_path`` and
no other import is touched.
"""

from __future__ import annotations

import importlib

# Top-level packages of the optional extras (import name -> extra).
EXTRA_PACKAGES = {
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


def missing_extra(fullname: str, error: ModuleNotFoundError) -> MissingExtraError | None:
  """The one-line error for ``fullname`` if ``error`` is a missing extra's package."""
  if isinstance(error, MissingExtraError):
    extra = error.extra
  else:
    extra = EXTRA_PACKAGES.get((error.name or "").partition(".")[0])
  if extra is None:
    return None
  what = "training" if extra == "train" else extra
  # ``name`` stays the missing package: Python's ``from package import submodule`` treats
  # a ModuleNotFoundError named after the submodule itself as "no such submodule".
  out = MissingExtraError(f"{fullname} needs the {what} extra: pip install 'tsm[{extra}]'",
                          name=error.name)
  out.extra = extra
  return out


def require(module: str, *packages: str) -> None:
  """Imports ``packages`` for the tsm module ``module``; a missing one is one line.

  Args:
    module: the importing module's ``__name__``.
    *packages: the extra packages it imports (top-level names of
      :data:`EXTRA_PACKAGES`).

  Raises:
    MissingExtraError: a package is not installed ("<module> needs the training extra:
      pip install 'tsm[train]'").
  """
  for package in packages:
    try:
      importlib.import_module(package)
    except ModuleNotFoundError as e:
      error = missing_extra(module, e)
      if error is None:
        raise
      raise error from None
