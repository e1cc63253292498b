"""Losses that change with the epoch, and paper A's mining curriculum as one.

Protocol: a loss that changes with the epoch is any object with a method
``for_epoch(epoch: int) -> loss_fn`` (0-based epochs, as :func:`tsm.fit.fit` counts
them), where ``loss_fn`` is a loss of the train step (``(embeddings, labels, margin) ->
(loss, stats)``) or a :class:`tsm.losses.ParametricLoss`. The fit loop asks for the
epoch's loss for the epoch's train steps and its validation loss, and compiles one step
per distinct object it gets back, so ``for_epoch`` should return the same object for the
same mode (as :class:`MiningCurriculum` does) rather than a fresh closure each epoch.
The training state (the loss's own parameters, if any) is initialised from
``for_epoch(0)``: every epoch's loss must take the same parameters. A loss without
``for_epoch`` is the same at every epoch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol, runtime_checkable

from tsm.losses._triplet import curriculum_mining, triplet_margin_loss
from tsm.reducers import Reduction


@runtime_checkable
class EpochLoss(Protocol):
  """A loss that changes with the epoch: ``for_epoch(epoch) -> loss_fn``."""

  def for_epoch(self, epoch: int) -> Callable[..., Any]:
    """The loss of the (0-based) ``epoch``; the same object for the same mode."""


class MiningCurriculum:
  """Paper A's curriculum: the triplet loss mining ``curriculum_mining(epoch, a, b)``.

  An :class:`EpochLoss`: ``for_epoch(epoch)`` is :func:`tsm.losses.triplet_margin_loss`
  with the epoch's mining mode, one object per mode.

  Args:
    curriculum: ``(a, b)``: semi-hard triplets before epoch a, all triplets before b, hard
      triplets after (the authors' "scheduler a b" stages, 0-based epochs).
    distance: the triplet loss's distance.
    reduction: its reduction (``mean_nonzero`` is the authors' mean over mined triplets).

  Raises:
    ValueError: one line starting with the bad argument.
  """

  def __init__(self, curriculum: tuple[int, int], distance: str = "euclidean",
               reduction: Reduction = "mean"):
    self.until = check_curriculum(curriculum)
    self.distance, self.reduction = distance, reduction
    self._losses: dict[str, Any] = {}

  def for_epoch(self, epoch: int) -> Callable[..., Any]:
    """The triplet loss of the (0-based) ``epoch``'s mining mode."""
    mining = curriculum_mining(epoch, *self.until)
    if mining not in self._losses:   # one object per mode: fit compiles each mode once
      self._losses[mining] = functools.partial(
          triplet_margin_loss, distance=self.distance, mining=mining,
          reduction=self.reduction)
    return self._losses[mining]


def check_curriculum(curriculum: Any) -> tuple[int, int]:
  """``curriculum`` as ``(a, b)``, two integers with ``0 <= a <= b``.

  Args:
    curriculum: the ``(a, b)`` of :class:`MiningCurriculum`.

  Returns:
    ``(a, b)`` as a tuple of ints.

  Raises:
    ValueError: one line, ``curriculum=... must be (a, b) with 0 <= a <= b ...``.
  """
  if (not isinstance(curriculum, (tuple, list)) or len(curriculum) != 2
      or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                 for c in curriculum)
      or curriculum[0] > curriculum[1]):
    raise ValueError(f"curriculum={curriculum!r} must be (a, b) with 0 <= a <= b "
                     "(semihard before epoch a, all triplets before b, hard after).")
  return int(curriculum[0]), int(curriculum[1])


__all__ = ["EpochLoss", "MiningCurriculum", "check_curriculum"]
