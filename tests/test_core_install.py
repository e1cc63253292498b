"""The core install (``pip install tsm``: jax, chex, numpy) imports and runs the library.

Two ways to run it:

* ``python tests/test_core_install.py`` in a venv with only the core install (the CI
  step in ``.ci/run``): asserts that flax, optax and tensorflow_datasets are really
  absent, then runs every check below against the installed package.
* under pytest in the full environment: the same checks run in a subprocess where the
  training extra's packages are blocked (``sys.modules[name] = None`` makes their import
  raise ModuleNotFoundError, exactly as when they are not installed).
"""

import os
import subprocess
import sys
import textwrap

try:
  import pytest
except ModuleNotFoundError:  # the core venv of .ci/run runs this file without pytest
  pytest = None

# Import names of the training extra's packages (pyproject.toml, [train]) that the core
# install does not bring anyway (absl-py comes with chex, scipy with jax).
TRAIN_PACKAGES = ("flax", "optax", "orbax", "ml_collections", "tqdm", "matplotlib", "PIL",
                  "sklearn", "tensorflow_datasets", "tensorflow", "array_record", "mnist1d",
                  "tensorboardX")


def check_import_is_light():
  import tsm  # pylint: disable=import-outside-toplevel
  heavy = sorted(m for m, module in sys.modules.items()
                 if m.partition(".")[0] in TRAIN_PACKAGES and module is not None)
  assert not heavy, f"import tsm imported {heavy}"
  assert "losses" in dir(tsm) and "fit" in tsm.__all__


def check_loss_and_gradient():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tsm  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
  labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
  loss_fn = lambda e: tsm.losses.triplet_margin_loss(e, labels, 0.2)[0]
  loss, grad = jax.value_and_grad(loss_fn)(x)
  assert np.isfinite(float(loss)) and float(loss) > 0, loss
  assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).sum()) > 0
  return x, labels


def check_margins_metrics_diagnostics_search(x, labels):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tsm  # pylint: disable=import-outside-toplevel
  sched = tsm.margins.dams(initial_margin=0.2, threshold=0.5, increment=0.05)
  _, stats = tsm.losses.triplet_margin_loss(x * 100.0, labels, 0.2)  # all easy
  state = sched.update(sched.accumulate(sched.init(), stats))
  assert abs(float(state.margin) - 0.25) < 1e-6, state.margin
  out = tsm.metrics.retrieval_metrics(np.asarray(x), np.asarray(labels), ks=(1,))
  assert 0.0 <= out["recall@1"] <= 1.0
  var = tsm.diagnostics.intra_class_variance(x, labels, num_classes=4)
  assert all(bool(np.all(np.isfinite(np.asarray(v)))) for v in jax.tree_util.tree_leaves(var))
  ids, dist = tsm.search.Index.build(np.asarray(x)).search(np.asarray(x), k=1)
  np.testing.assert_array_equal(ids[:, 0], np.arange(8))
  np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-3)


def check_training_modules_say_which_extra():
  import importlib  # pylint: disable=import-outside-toplevel
  import tsm  # pylint: disable=import-outside-toplevel
  for name in ("fit", "train", "checkpoint", "config", "models", "tensorboard"):
    for how in ("import", "attribute"):
      try:
        if how == "import":
          importlib.import_module(f"tsm.{name}")
        else:
          getattr(tsm, name)
      except ImportError as e:
        want = f"tsm.{name} needs the training extra: pip install 'tsm[train]'"
        assert str(e) == want, (str(e), want)
      else:
        raise AssertionError(f"tsm.{name} imported without the training extra")


def run_all():
  check_import_is_light()
  x, labels = check_loss_and_gradient()
  check_margins_metrics_diagnostics_search(x, labels)
  check_training_modules_say_which_extra()


# ----------------------------------------------------------------------------- pytest


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(_REPO, "tsm", "margins.py"), encoding="utf-8") as _f:
  # Known gap until tsm/margins.py drops its config functions' ml_collections import
  # (a planned change); the test runs normally, unmarked, once the import is gone.
  _MARGINS_IMPORT_ML_COLLECTIONS = "import ml_collections" in _f.read()


_known_gap = (lambda f: f) if pytest is None else pytest.mark.xfail(
    _MARGINS_IMPORT_ML_COLLECTIONS, strict=True,
    reason="tsm.margins still imports ml_collections (training extra)")


@_known_gap
def test_core_install_with_training_packages_blocked():
  code = textwrap.dedent(f"""
      import sys
      sys.path[:0] = [{_REPO!r}, {os.path.dirname(os.path.abspath(__file__))!r}]
      import test_core_install as t
      for name in t.TRAIN_PACKAGES:
        sys.modules[name] = None  # import raises ModuleNotFoundError, as if not installed
      t.run_all()
      print("core ok")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=300, check=False)
  assert out.returncode == 0 and "core ok" in out.stdout, out.stderr[-3000:]


def test_missing_extra_error_is_one_line_and_an_import_error():
  import tsm  # pylint: disable=import-outside-toplevel
  err = ModuleNotFoundError("No module named 'flax'", name="flax")
  got = tsm._missing_extra("tsm.models", err)  # pylint: disable=protected-access
  assert isinstance(got, ModuleNotFoundError) and "\n" not in str(got)
  assert str(got) == "tsm.models needs the training extra: pip install 'tsm[train]'"
  tf = ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
  assert str(tsm._missing_extra("tsm.data.prepare", tf)) == (  # pylint: disable=protected-access
      "tsm.data.prepare needs the data extra: pip install 'tsm[data]'")
  other = ModuleNotFoundError("No module named 'nope'", name="nope")
  assert tsm._missing_extra("tsm.fit", other) is None  # pylint: disable=protected-access


if __name__ == "__main__":
  import importlib.util  # pylint: disable=ungrouped-imports
  present = [m for m in ("flax", "optax", "tensorflow_datasets")
             if importlib.util.find_spec(m) is not None]
  assert not present, f"the core install must not bring {present}"
  run_all()
  import tsm  # pylint: disable=ungrouped-imports
  print(f"core install ok: tsm from {os.path.dirname(tsm.__file__)}")
