"""Batch samplers: index batches for one epoch, deterministic from (seed, epoch).

Every sampler implements :class:`Sampler`: ``epoch(epoch) -> np.ndarray int64 [steps,
rows]`` of indices into a split, a pure function of the constructor arguments and
``epoch`` (a fresh ``np.random.default_rng((seed, epoch))`` each call), and
``steps_per_epoch`` (each sampler's own pass over the split, or the
``steps_per_epoch`` given to its constructor). :func:`make_sampler` builds one by name.
The batches are *global*; on several hosts each host loads its share with
``host_share(batches, process_index, process_count)``.

Two-view (or ``V``-view) training, as self-supervised losses need it:
:class:`MultiViewSampler` repeats each batch's indices (``[steps, V x rows]``, view after
view), and the loader augments every row with its own draws, so the views are the same
inputs independently augmented.

Negative labels mark unlabelled points (the synthetic set's outliers): they are never
anchors or positives; the random triplet / pair samplers may draw them as negatives,
the P x K sampler never draws them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

SAMPLINGS = ("pk", "random", "triplets", "pairs")


@runtime_checkable
class Sampler(Protocol):
  """What the fit loop needs of a sampler.

  Attributes:
    steps_per_epoch: number of batches of every epoch.
  """
  steps_per_epoch: int

  def epoch(self, epoch: int) -> np.ndarray:
    """int64 ``[steps_per_epoch, rows]`` index batches of ``epoch`` (deterministic)."""


def _capped(steps: int, cap: int | None) -> int:
  if cap is not None and (isinstance(cap, bool) or int(cap) < 1):
    raise ValueError(f"steps_per_epoch={cap!r} must be an integer >= 1 or None.")
  return steps if cap is None else min(steps, int(cap))


def _rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng((int(seed), int(epoch)))


def host_share(batches: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This host's contiguous share of each global batch.

  Args:
    batches: ``[steps, B]`` global index batches (or ``[B]``).
    process_index: ``jax.process_index()``.
    process_count: ``jax.process_count()``; must divide ``B``.

  Returns:
    ``[steps, B / process_count]``: columns ``[i * b, (i + 1) * b)`` of host ``i``.
    Concatenating the shares of hosts ``0..count-1`` gives the global batch back (the
    order a ``jax.make_array_from_process_local_data`` global batch expects).
  """
  batches = np.asarray(batches)
  size = batches.shape[-1]
  if process_count < 1 or size % process_count:
    raise ValueError(f"process_count={process_count} must divide the global batch size "
                     f"{size}; change the batch size or P x K.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  per_host = size // process_count
  return batches[..., process_index * per_host:(process_index + 1) * per_host]


def _check_views(views: int) -> int:
  if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
    raise ValueError(f"views={views!r} must be an integer >= 1.")
  return int(views)


def repeat_views(batches: np.ndarray, views: int) -> np.ndarray:
  """Each batch's indices ``views`` times, view after view.

  Args:
    batches: ``[steps, B]`` index batches (or ``[B]``).
    views: number of views, >= 1.

  Returns:
    ``[steps, views * B]``: columns ``[v B, (v + 1) B)`` are view ``v`` (the same
    indices as columns ``[0, B)``).
  """
  return np.concatenate([np.asarray(batches)] * _check_views(views), axis=-1)


class MultiViewSampler:
  """A sampler whose batches hold every input ``views`` times (two-view training).

  Batch ``s`` of epoch ``e`` is ``repeat_views(sampler.epoch(e)[s], views)``: rows
  ``[0, B)`` are view A, rows ``[B, 2B)`` view B of the same inputs, with the same
  labels. The loader augments each row with its own random draws (seeded by the run's
  seed, the epoch and the step), so the views differ exactly by their augmentation;
  the train step embeds all ``views x B`` rows at once (one compiled step of fixed
  shape) and a two-view loss splits them (``tsm.losses.stacked_views``).

  Attributes:
    sampler: the sampler of the inputs (its batch size counts inputs per view).
    views: number of views.
    steps_per_epoch: the sampler's.
  """

  def __init__(self, sampler: Sampler, views: int = 2):
    self.sampler, self.views = sampler, _check_views(views)
    self.steps_per_epoch = int(sampler.steps_per_epoch)

  def epoch(self, epoch: int) -> np.ndarray:
    """int64 ``[steps_per_epoch, views * rows]``."""
    return repeat_views(self.sampler.epoch(epoch), self.views)


class _ClassIndex:
  """Examples grouped by class, for fast random positives and negatives."""

  def __init__(self, labels: np.ndarray):
    labels = np.asarray(labels).reshape(-1)
    self.labels = labels
    self.order = np.argsort(labels, kind="stable")
    self.classes, self.starts, self.counts = np.unique(
        labels[self.order], return_index=True, return_counts=True)
    # Rank of each example within its class block in `order`.
    self.rank = np.empty(labels.size, np.int64)
    self.rank[self.order] = np.arange(labels.size) - np.repeat(self.starts, self.counts)
    self.class_pos = np.searchsorted(self.classes, labels)

  def anchors(self, outlier_anchors: bool = False,
              positive_is_anchor: bool = False) -> np.ndarray:
    """Examples that can anchor a triplet.

    By default: label >= 0 and at least two in the class. ``outlier_anchors`` admits
    label -1 (outliers form one class, as in paper B's code); ``positive_is_anchor``
    admits singletons (their positive is themselves).
    """
    ok = np.ones(self.labels.size, bool) if outlier_anchors else self.labels >= 0
    if not positive_is_anchor:
      ok &= self.counts[self.class_pos] >= 2
    return np.flatnonzero(ok)

  def positives(self, anchors: np.ndarray, rng: np.random.Generator,
                positive_is_anchor: bool = False) -> np.ndarray:
    """A random example of each anchor's class (uniform): another one by default, or
    any one, the anchor included, with ``positive_is_anchor`` (paper B's code)."""
    pos = self.class_pos[anchors]
    if positive_is_anchor:
      return self.order[self.starts[pos] + rng.integers(0, self.counts[pos])]
    u = rng.integers(0, self.counts[pos] - 1)
    u = u + (u >= self.rank[anchors])
    return self.order[self.starts[pos] + u]

  def negatives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random example with a different label (uniform over all such examples)."""
    pos = self.class_pos[anchors]
    v = rng.integers(0, self.labels.size - self.counts[pos])
    v = v + self.counts[pos] * (v >= self.starts[pos])
    return self.order[v]


class PKSampler:
  """P classes x K examples per batch, covering each epoch as evenly as it can.

  Each epoch every eligible class ``c`` (label >= 0, at least 2 examples) is cut into
  ``ceil(n_c / K)`` chunks of K examples taken from a shuffled permutation of the
  class (the last chunk is completed from a fresh permutation without repeating an
  example inside the chunk; a class with fewer than K examples repeats examples, the
  only case where a batch holds duplicates). Chunks are assigned to distinct batches,
  largest classes first, each to the batches with the most free slots (ties at
  random; this places every chunk whenever the epoch has room), so no class appears
  twice in a batch; free slots are filled with random classes (weighted by size). With the default ``steps_per_epoch`` every example of an eligible class
  appears at least once per epoch (exactly once when each ``n_c`` is a multiple of K
  and the chunks fill the batches). With fewer steps, chunks that do not fit are
  dropped; with more, the extra slots are random classes. Classes with a single
  example (e.g. most LFW identities) have no positive and are never drawn.

  Batch layout: ``[c_1 x K, c_2 x K, ..., c_P x K]`` (classes in random order).
  """

  def __init__(self, labels, classes_per_batch: int, samples_per_class: int, seed: int,
               steps_per_epoch: int | None = None):
    labels = np.asarray(labels).reshape(-1)
    p, k = int(classes_per_batch), int(samples_per_class)
    if p < 2:
      raise ValueError(f"classes_per_batch={p} must be >= 2 (negatives come from other "
                       "classes).")
    if k < 2:
      raise ValueError(f"samples_per_class={k} must be >= 2 (positives need two "
                       "examples of a class).")
    index = _ClassIndex(labels)
    ok = (index.classes >= 0) & (index.counts >= 2)
    self.classes = index.classes[ok]
    if self.classes.size < p:
      raise ValueError(f"classes_per_batch={p} exceeds the {self.classes.size} classes "
                       "with >= 2 examples; lower classes_per_batch.")
    self._members = [index.order[s:s + n]
                     for s, n in zip(index.starts[ok], index.counts[ok])]
    self._chunks = np.asarray([-(-m.size // k) for m in self._members])
    self.num_classes_per_batch, self.samples_per_class, self.seed = p, k, int(seed)
    self.batch_size = p * k
    default = max(-(-int(self._chunks.sum()) // p), int(self._chunks.max()))
    self.steps_per_epoch = int(steps_per_epoch or default)
    if self.steps_per_epoch < 1:
      raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1.")

  def _assign(self, rng: np.random.Generator) -> list[list[int]]:
    """Class positions (into self.classes) of each batch."""
    steps, p = self.steps_per_epoch, self.num_classes_per_batch
    free = np.full(steps, p, np.int64)
    batches: list[list[int]] = [[] for _ in range(steps)]
    # Largest first; ties in random order.
    order = np.lexsort((rng.random(self.classes.size), -self._chunks))
    for c in order:
      m = min(int(self._chunks[c]), int((free > 0).sum()))
      if m == 0:
        break
      # The m batches with the most free slots, ties broken at random: the
      # Gale-Ryser construction, which places every chunk whenever that is possible.
      key = free + 0.5 * rng.random(steps)
      chosen = np.argpartition(-key, m - 1)[:m]
      free[chosen] -= 1
      for b in chosen:
        batches[b].append(int(c))
    sizes = np.asarray([m.size for m in self._members], np.float64)
    for b in np.flatnonzero(free > 0):
      weights = sizes.copy()
      weights[batches[b]] = 0.0
      extra = rng.choice(self.classes.size, int(free[b]), replace=False,
                         p=weights / weights.sum())
      batches[b].extend(int(c) for c in extra)
    return batches

  def epoch(self, epoch: int) -> np.ndarray:
    """Index batches of one epoch: int64 ``[steps_per_epoch, P * K]``."""
    rng = _rng(self.seed, epoch)
    k = self.samples_per_class
    queues = [rng.permutation(m) for m in self._members]
    heads = [0] * len(queues)

    def take(c: int) -> np.ndarray:
      members, queue, head = self._members[c], queues[c], heads[c]
      if members.size < k:   # too small: all of it, then random repeats
        return np.concatenate([rng.permutation(members),
                               rng.choice(members, k - members.size)])
      if head + k <= queue.size:
        heads[c] = head + k
        return queue[head:head + k]
      got = queue[head:]
      fresh = rng.permutation(members)
      fresh = np.concatenate([fresh[~np.isin(fresh, got)], fresh[np.isin(fresh, got)]])
      need = k - got.size
      queues[c], heads[c] = fresh, need
      return np.concatenate([got, fresh[:need]])

    out = np.empty((self.steps_per_epoch, self.batch_size), np.int64)
    for b, classes in enumerate(self._assign(rng)):
      out[b] = np.concatenate([take(c) for c in rng.permutation(classes)])
    return out


class RandomBatchSampler:
  """Plain random batches: a fresh permutation of ``range(n)`` per epoch.

  ``drop_last=True`` drops the incomplete last batch; ``False`` completes it with the
  first indices of the permutation (so every example appears, a few twice).
  """

  def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True,
               steps_per_epoch: int | None = None):
    if batch_size < 1 or (drop_last and n < batch_size):
      raise ValueError(f"batch_size={batch_size} must be in [1, {n}] (the split size).")
    self.n, self.batch_size, self.seed, self.drop_last = int(n), int(batch_size), int(
        seed), drop_last
    self._full_steps = n // batch_size if drop_last else -(-n // batch_size)
    self.steps_per_epoch = _capped(self._full_steps, steps_per_epoch)

  def epoch(self, epoch: int) -> np.ndarray:
    """int64 ``[steps_per_epoch, batch_size]``."""
    perm = _rng(self.seed, epoch).permutation(self.n)
    total = self._full_steps * self.batch_size
    if total > self.n:
      perm = np.concatenate([perm, perm[:total - self.n]])
    out = perm[:total].reshape(self._full_steps, self.batch_size).astype(np.int64)
    return out[:self.steps_per_epoch]


class RandomTripletSampler:
  """Paper B's triplets: every anchor once per epoch, one random positive and one
  random negative each (no mining).

  Anchors are the examples with a positive (label >= 0, class size >= 2), in random
  order; ``steps_per_epoch = num_anchors // batch_size``. Batches are
  ``[anchors (B), positives (B), negatives (B)]`` concatenated.

  Paper B's code differs in two ways, each an option: ``outlier_anchors`` lets the
  unlabelled points (label -1) anchor triplets, as one class of their own;
  ``positive_is_anchor`` draws the positive uniformly from the anchor's class including
  the anchor itself (so a singleton class anchors with itself as positive).
  """

  def __init__(self, labels, batch_size: int, seed: int,
               steps_per_epoch: int | None = None, *, outlier_anchors: bool = False,
               positive_is_anchor: bool = False):
    self._index = _ClassIndex(labels)
    self._positive_is_anchor = bool(positive_is_anchor)
    self._anchors = self._index.anchors(outlier_anchors, positive_is_anchor)
    if len(self._index.classes) < 2:
      raise ValueError("labels must hold at least two classes to draw negatives.")
    if batch_size < 1 or self._anchors.size < batch_size:
      raise ValueError(f"batch_size={batch_size} must be in [1, {self._anchors.size}] "
                       "(the examples that have a positive).")
    self.batch_size, self.seed = int(batch_size), int(seed)
    self._full_steps = self._anchors.size // self.batch_size
    self.steps_per_epoch = _capped(self._full_steps, steps_per_epoch)

  def epoch(self, epoch: int) -> np.ndarray:
    """int64 ``[steps_per_epoch, 3 * batch_size]``."""
    rng = _rng(self.seed, epoch)
    n = self._full_steps * self.batch_size
    a = rng.permutation(self._anchors)[:n]
    p = self._index.positives(a, rng, self._positive_is_anchor)
    neg = self._index.negatives(a, rng)
    shape = (self._full_steps, self.batch_size)
    out = np.concatenate([a.reshape(shape), p.reshape(shape), neg.reshape(shape)],
                         axis=1).astype(np.int64)
    return out[:self.steps_per_epoch]


class RandomPairSampler:
  """Paper B's pairs: every anchor once per epoch, paired by a fair coin with a random
  positive or a random negative.

  Batches are ``[x1 (B), x2 (B)]``; ``same = labels[b[:B]] == labels[b[B:]]``.
  """

  def __init__(self, labels, batch_size: int, seed: int,
               steps_per_epoch: int | None = None, *, outlier_anchors: bool = False,
               positive_is_anchor: bool = False):
    self._triplets = RandomTripletSampler(labels, batch_size, seed,
                                          outlier_anchors=outlier_anchors,
                                          positive_is_anchor=positive_is_anchor)
    self.batch_size, self.seed = int(batch_size), int(seed)
    self.steps_per_epoch = _capped(self._triplets.steps_per_epoch, steps_per_epoch)

  def epoch(self, epoch: int) -> np.ndarray:
    """int64 ``[steps_per_epoch, 2 * batch_size]``."""
    t = self._triplets.epoch(epoch)
    b = self.batch_size
    anchors, pos, neg = t[:, :b], t[:, b:2 * b], t[:, 2 * b:]
    coin = np.random.default_rng((self.seed, int(epoch), 1)).random(anchors.shape) < 0.5
    out = np.concatenate([anchors, np.where(coin, pos, neg)], axis=1)
    return out[:self.steps_per_epoch]


def check_sampling(sampling: str) -> None:
  """Raises a one-line ValueError unless ``sampling`` is one of :data:`SAMPLINGS`."""
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling={sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}.")


def make_sampler(sampling: str, labels, *, seed: int, classes_per_batch: int = 8,
                 samples_per_class: int = 4, batch_size: int = 64,
                 steps_per_epoch: int | None = None,
                 max_classes: int | None = None, outlier_anchors: bool = False,
                 positive_is_anchor: bool = False, views: int = 1) -> Sampler:
  """The sampler named ``sampling`` over ``labels``.

  Args:
    sampling: ``"pk"`` (:class:`PKSampler`), ``"random"`` (:class:`RandomBatchSampler`),
      ``"triplets"`` (:class:`RandomTripletSampler`) or ``"pairs"``
      (:class:`RandomPairSampler`).
    labels: the split's labels.
    seed: sampler seed (batches are a function of ``(seed, epoch)``).
    classes_per_batch: P of ``"pk"``.
    samples_per_class: K of ``"pk"``.
    batch_size: B of the other samplers (capped at the split size).
    steps_per_epoch: batches per epoch; None = the sampler's own pass over the split.
    max_classes: cap on P (P x K sampling on a split with fewer classes).
    outlier_anchors: ``"triplets"`` / ``"pairs"``: label -1 may anchor (paper B's code).
    positive_is_anchor: ``"triplets"`` / ``"pairs"``: the positive may be the anchor
      itself (paper B's code).
    views: ``"pk"`` / ``"random"``: each input that many times (a
      :class:`MultiViewSampler` when > 1; ``batch_size`` and P x K count inputs per
      view).

  Returns:
    A :class:`Sampler`.
  """
  check_sampling(sampling)
  if views != 1:
    if sampling in ("triplets", "pairs"):
      raise ValueError(f"views={views!r} takes in-batch sampling (pk or random); "
                       f"sampling={sampling!r} draws explicit tuples.")
    return MultiViewSampler(
        make_sampler(sampling, labels, seed=seed, classes_per_batch=classes_per_batch,
                     samples_per_class=samples_per_class, batch_size=batch_size,
                     steps_per_epoch=steps_per_epoch, max_classes=max_classes), views)
  if sampling == "pk":
    p = classes_per_batch if max_classes is None else min(classes_per_batch, max_classes)
    return PKSampler(labels, p, samples_per_class, seed, steps_per_epoch=steps_per_epoch)
  labels = np.asarray(labels)
  batch_size = min(batch_size, len(labels))
  if sampling == "random":
    return RandomBatchSampler(len(labels), batch_size, seed,
                              steps_per_epoch=steps_per_epoch)
  paper_b = dict(outlier_anchors=outlier_anchors, positive_is_anchor=positive_is_anchor)
  if sampling == "triplets":
    return RandomTripletSampler(labels, batch_size, seed, steps_per_epoch=steps_per_epoch,
                                **paper_b)
  return RandomPairSampler(labels, batch_size, seed, steps_per_epoch=steps_per_epoch,
                           **paper_b)
