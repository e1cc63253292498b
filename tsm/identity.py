"""What identifies a run of ``tsm.fit.fit``, so that a rerun on the same workdir is the
same run (or a declared continuation of it), never a silent mix of two.

``run.json`` in the workdir holds :func:`describe`'s record: the data (each split's
size, input shape, a hash of its labels and of a few evenly spaced input rows), the
model (its class and its parameters' shapes), the loss (its function or class and
arguments), the optimiser (a hash of the updates it makes on a fixed probe: its kind,
learning rate, schedule, momentum, clipping show there), the seed, the steps per epoch
and the epochs. :func:`check` compares a rerun's record with the saved one and names
the first difference in one line; the optimiser and the epochs may change when the
caller says the run is continued with changes (``fit(..., resume_with_changes=True)``,
``tsm-train --resume_with_changes``).

The fingerprints are cheap (16 rows of each split are read), so data that differ only
in rows between those may pass: the check catches another data set, another split or
other arrays of another size, not a single edited pixel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from tsm import artifacts
from tsm import workdir as workdir_lib

NAME = "run.json"
# Entries a continuation may change (resume_with_changes).
CHANGEABLE = ("optimizer", "epochs")
_ROWS = 16   # input rows hashed per split


class OtherRun(ValueError):
  """The workdir holds a run of other data, model, loss or settings; one line; exit 2."""


def _hash(*parts: Any) -> str:
  h = hashlib.blake2b(digest_size=8)
  for part in parts:
    h.update(part if isinstance(part, bytes) else repr(part).encode())
  return h.hexdigest()


def _stable(text: str) -> str:
  """A repr without object addresses (``<function f at 0x7f...>``)."""
  return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def describe_callable(obj: Any) -> str:
  """A loss (or any callable) in words that survive a new process: a function's module
  and name, a partial's function and arguments, an object's class and repr."""
  if isinstance(obj, functools.partial):
    args = ", ".join([_stable(repr(a)) for a in obj.args] + [
        f"{k}={_stable(repr(v))}" for k, v in sorted(obj.keywords.items())])
    return f"{describe_callable(obj.func)}({args})"
  name = getattr(obj, "__qualname__", None)
  if name is not None:
    return f"{getattr(obj, '__module__', '?')}.{name}"
  return f"{type(obj).__module__}.{type(obj).__qualname__}: {_stable(repr(obj))}"


def _split(split: Any) -> dict[str, Any]:
  n = len(split)
  labels = np.asarray(split.labels)
  record = {"examples": n, "labels": _hash(labels.astype(np.int64).tobytes())}
  if n:
    rows = np.unique(np.linspace(0, n - 1, min(n, _ROWS)).astype(np.int64))
    sample = np.ascontiguousarray(np.asarray(split.get(rows)))
    record["inputs"] = _hash(str(sample.dtype), sample.shape[1:], sample.tobytes())
  return record


def optimizer_fingerprint(optimizer: Any) -> str | None:
  """A hash of the first updates ``optimizer`` makes on a fixed probe (its kind and
  settings show in them); None for an optimiser that needs the model's own parameter
  tree (e.g. ``optax.multi_transform`` with a labelling function)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  params = (jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32), {})
  try:
    state = optimizer.init(params)
    updates = []
    for step in range(3):
      grads = (jnp.sin(jnp.arange(8, dtype=jnp.float32) + step) * (10.0 ** step), {})
      update, state = optimizer.update(grads, state, params)
      updates.append(np.asarray(jax.device_get(update[0]), np.float64))
  except Exception:  # pylint: disable=broad-except  # a transform tied to its params
    return None
  return _hash(np.array2string(np.stack(updates), precision=6, floatmode="maxprec"))


def describe(*, model: Any, loss: Any, optimizer: Any, splits: Any, params: Any,
             epochs: int, seed: int, steps_per_epoch: int) -> dict[str, Any]:
  """The record of a run (see the module docstring); plain JSON values."""
  import jax  # pylint: disable=import-outside-toplevel
  shapes = jax.tree.map(lambda x: list(np.shape(x)), params)
  return {
      "data": {name: _split(getattr(splits, name)) for name in ("train", "val", "test")},
      "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                "parameters": _hash(json.dumps(shapes, sort_keys=True, default=str))},
      "loss": describe_callable(loss),
      "optimizer": optimizer_fingerprint(optimizer),
      "seed": int(seed), "steps_per_epoch": int(steps_per_epoch), "epochs": int(epochs),
  }


def check(workdir: str, record: Mapping[str, Any], *, resume_with_changes: bool = False
          ) -> dict[str, list[Any]]:
  """Compares ``record`` with the workdir's ``run.json``.

  Returns:
    The changed :data:`CHANGEABLE` entries, ``{"epochs": [there, now], ...}`` (empty
    when nothing changed or there is no ``run.json``).

  Raises:
    OtherRun: an entry differs that may not (or, without ``resume_with_changes``, any
      entry); one line naming it.
  """
  path = os.path.join(workdir, NAME)
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return {}   # a torn record: the checkpoints decide (config.json for the commands)
  found = workdir_lib.differences(saved, dict(record))
  if saved.get("optimizer") is None or record.get("optimizer") is None:
    found = [d for d in found if d[0] != "optimizer"]   # not comparable
  fixed = [d for d in found if d[0].split(".")[0] not in CHANGEABLE]
  if fixed or (found and not resume_with_changes):
    key, there, now = (fixed or found)[0]
    hint = ("pass resume_with_changes=True (tsm-train: --resume_with_changes) to continue "
            "it with them, or " if not fixed else "")
    raise OtherRun(
        f"workdir {workdir} holds another run: its {key} differs ({there!r} there, "
        f"{now!r} now); {hint}use a new workdir.")
  return {key: [there, now] for key, there, now in found}


def save(workdir: str, record: Mapping[str, Any]) -> None:
  """Writes ``record`` as the workdir's ``run.json`` (atomically)."""
  artifacts.write_json_atomic(os.path.join(workdir, NAME), dict(record))
