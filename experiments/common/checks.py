"""Checks of a ``study`` section every study shares (one-line :class:`StudyError`).

Each study's ``check_study`` calls these for the fields all studies have (the grid's
``workers``, ``xla_threads``, ``epochs``, ``compare_to``, integer counts) and checks its
own fields itself.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from experiments.common import launch
from experiments.common.grid import StudyError


def check_known(section: Any, known: Sequence[str]) -> None:
  """Every field of ``section`` is one of ``known``."""
  unknown = sorted(set(section.keys()) - set(known))
  if unknown:
    raise StudyError(f"study.{unknown[0]} is not a study field; use one of "
                     f"{', '.join(known)}.")


def check_integers(section: Any, minimums: Iterable[tuple[str, int]]) -> None:
  """Each ``(field, minimum)``: ``section[field]`` is an integer (not a bool), at least
  ``minimum``."""
  for field, minimum in minimums:
    value = section[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise StudyError(f"study.{field}={value!r} must be an integer >= {minimum}.")


def check_grid(section: Any) -> None:
  """The grid's fields: ``xla_threads`` 0 or 1, ``workers`` an integer, ``epochs`` None
  or an integer >= 1, ``compare_to`` '' or a finished study with a ``verdicts.csv``,
  ``launcher`` and ``slurm`` (:func:`experiments.common.launch.check_launcher`)."""
  check_integers(section, (("xla_threads", 0),))
  if section.xla_threads > 1:
    raise StudyError(f"study.xla_threads={section.xla_threads} must be 0 (XLA's default) "
                     "or 1 (single-threaded).")
  if isinstance(section.workers, bool) or not isinstance(section.workers, int):
    raise StudyError(f"study.workers={section.workers!r} must be an integer (<= 1 runs in "
                     "this process).")
  epochs = section.epochs
  if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                             or epochs < 1):
    raise StudyError(f"study.epochs={epochs!r} must be an integer >= 1 or None.")
  launch.check_launcher(section)
  if not isinstance(section.compare_to, str):
    raise StudyError(f"study.compare_to={section.compare_to!r} must be a study directory "
                     "or ''.")
  if section.compare_to and not os.path.exists(os.path.join(section.compare_to,
                                                            "verdicts.csv")):
    raise StudyError(f"study.compare_to={section.compare_to!r} has no verdicts.csv; point "
                     "it at a finished run of the same study.")


def check_datasets(cfg: Any) -> None:
  """``study.datasets`` is not empty and names config sections."""
  datasets = tuple(cfg.study.datasets)
  if not datasets:
    raise StudyError("study.datasets is empty; name at least one dataset.")
  for name in datasets:
    if name not in cfg:
      raise StudyError(f"study.datasets names {name!r}, which has no config section; use "
                       f"one of {', '.join(k for k in cfg.keys() if k != 'study')}.")


def check_fraction(section: Any, field: str) -> None:
  """``section[field]`` is in (0, 1)."""
  if not 0 < float(section[field]) < 1:
    raise StudyError(f"study.{field}={section[field]!r} must be in (0, 1).")
