"""Evaluators, and embedding extraction over a whole split for any model and parameters.

Evaluators are small objects the fit loop calls without knowing what they compute
(big_vision's plug-in evaluators): ``evaluator(ctx) -> {split: {metric: value}}`` with
an :class:`EvalContext` that embeds each split once and shares the embeddings between
evaluators. The loop flattens the result into the epoch record as ``<split>_<metric>``
(``val_map@r``) and nests it in ``summary.json`` for the final evaluation
(``summary["test"]["map@r"]``). Each evaluator runs every ``every_epochs`` epochs
(and after the last epoch); the final evaluators run once on the best state. Built-in:

* :class:`Retrieval`: Recall@K, Precision@1, R-precision, MAP@R of a split against
  itself (:func:`tsm.metrics.retrieval_metrics`).
* :class:`Verification`: AUC, EER, TAR@FAR on seeded same/different pairs of a split,
  and, with ``threshold_split``, paper A's decision threshold chosen on another split's
  pairs and the accuracy at it.
* :class:`KNN`: k-NN accuracy of a split's embeddings against another's.
* :class:`Clustering`: NMI / AMI of k-means clusters.
* :class:`ValidationLoss`: the training loss and its statistics on fixed batches.
* :class:`InputBaseline`: retrieval and k-NN of the inputs themselves (raw pixels, a
  frozen trunk's features), the model-free baseline.

A study adds its own analyses the same way (an object with ``every_epochs`` and
``__call__(ctx)``); the context gives the train state, the epoch record so far (the loss,
the margin the epoch trained at, the counts) and the embeddings.

Embedding extraction:

``embed(apply_fn, variables, inputs, batch_size)`` runs ``apply_fn(variables, x) -> [n, D]``
over fixed-size batches under one ``jax.jit``: the last batch is padded (with copies of
the split's first example) to the same shape, so a single compilation serves every batch
of every split with the same input shape. Batches of a ``Split`` are decoded ahead by
``tsm.data.loader.batches`` (background threads) while the device computes; results stay
on the device until the end (no host transfer per batch).

The jitted wrapper is cached per ``apply_fn`` object: pass the same function object on
every call (e.g. built once per model) and later calls reuse the compilation; a new
lambda on each call is traced and compiled again.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np

from tsm import distributed
from tsm import metrics as metrics_lib
from tsm.data import loader
from tsm.data import pairs as pairs_lib

_JITTED: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jitted(apply_fn: Callable) -> Callable:
  try:
    return _JITTED[apply_fn]
  except (KeyError, TypeError):
    pass
  fn = jax.jit(apply_fn)
  try:
    _JITTED[apply_fn] = fn
  except TypeError:  # not weak-referenceable: no caching
    pass
  return fn


class _ArraySource:
  """Adapts an in-memory array to the Split protocol used by ``loader.batches``."""

  def __init__(self, array: np.ndarray):
    self.array = array
    self.labels = np.zeros(array.shape[0], np.int32)

  def __len__(self) -> int:
    return self.array.shape[0]

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self.array[indices]


class _SplitSource:
  """Any object with ``__len__`` and ``get(indices)``, labels optional."""

  def __init__(self, split: Any):
    self.split = split
    self.labels = np.zeros(len(split), np.int32)

  def get(self, indices: np.ndarray) -> np.ndarray:
    return self.split.get(indices)


def embed(apply_fn: Callable[[Any, jax.Array], jax.Array], variables: Any, inputs: Any,
          batch_size: int = 256, *, prefetch: int = 2) -> np.ndarray:
  """Embeddings of every example of ``inputs``, in order.

  Args:
    apply_fn: ``apply_fn(variables, x [B, ...]) -> [B, D]``, e.g.
      ``lambda v, x: model.apply(v, x, train=False)`` (build it once and reuse it).
    variables: the model variables (any pytree), passed unchanged to ``apply_fn``.
    inputs: a ``[N, ...]`` array, or an object with ``__len__`` and ``get(indices) ->
      [n, ...]`` (the ``tsm.data.Split`` protocol).
    batch_size: examples per call; the batch shape is ``min(batch_size, N)``.
    prefetch: batches of a split decoded ahead by background threads.

  Returns:
    ``[N, D]`` float32 numpy array.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive; pass e.g. 256.")
  if hasattr(inputs, "get") and hasattr(inputs, "__len__") and not hasattr(inputs, "shape"):
    source = _SplitSource(inputs)
  else:
    source = _ArraySource(np.asarray(inputs))
  n = len(source.labels)
  if n == 0:
    raise ValueError("inputs is empty; pass at least one example.")
  size = min(batch_size, n)
  index_batches = []
  for start in range(0, n, size):
    idx = np.arange(start, min(start + size, n))
    index_batches.append(np.concatenate([idx, np.zeros(size - idx.size, np.int64)]))
  fn = _jitted(apply_fn)
  outputs = []
  for start, batch in zip(range(0, n, size),
                          loader.batches(source, index_batches, prefetch=prefetch)):
    out = fn(variables, batch["inputs"])
    if out.ndim != 2 or out.shape[0] != size:
      raise ValueError(f"apply_fn returned shape {out.shape} for a batch of {size}; it "
                       "must return [batch, embedding_dim].")
    outputs.append(out if start + size <= n else out[:n - start])
  return np.concatenate(jax.device_get(outputs)).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- evaluators

Results = dict[str, dict[str, float]]


@dataclasses.dataclass
class EvalContext:
  """What an evaluator may use; embeddings are computed once per split and shared.

  Attributes:
    state: the train state evaluated (``tsm.train.TrainState``).
    splits: the run's ``tsm.data.DatasetSplits``.
    embed_fn: ``(state, split) -> [N, D]`` numpy embeddings (the loop's jitted model).
    epoch: the 0-based epoch just finished, or None in the final evaluation.
    record: the epoch's record so far (``loss``, ``margin`` — the margin the epoch
      trained at —, ``margin_next``, counts ...); ``{}`` in the final evaluation.
    loss_fn: ``(state, split, index_batches, margin, epoch) -> list of metric dicts``
      (host floats) of the epoch's training loss on fixed batches of a split, in
      inference mode; None when the loop has no loss to offer.
    artifacts: arrays an evaluator leaves for the loop to save (``pairs.npz``).
  """
  state: Any
  splits: Any
  embed_fn: Callable[[Any, Any], np.ndarray]
  epoch: int | None = None
  record: dict[str, Any] = dataclasses.field(default_factory=dict)
  loss_fn: Callable[..., list[dict[str, float]]] | None = None
  artifacts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  _cache: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> Any:
    """The split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
    return getattr(self.splits, name)

  def labels(self, name: str) -> np.ndarray:
    """Labels of the split ``name``."""
    return np.asarray(self.split(name).labels)

  def embeddings(self, name: str) -> np.ndarray:
    """``[N, D]`` embeddings of the split ``name`` (computed once per context)."""
    if name not in self._cache:
      self._cache[name] = self.embed_fn(self.state, self.split(name))
    return self._cache[name]


class Evaluator(Protocol):
  """An evaluation the loop runs without knowing what it computes.

  Attributes:
    every_epochs: run after every that many epochs (and after the last); 0 = never
      during training (final evaluation only).
  """
  every_epochs: int

  def __call__(self, ctx: EvalContext) -> Results:
    """``{split: {metric: value}}`` of JSON-able scalars."""


def _floats(values: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in values.items() if np.ndim(v) == 0}


@dataclasses.dataclass
class Retrieval:
  """Recall@K, Precision@1, R-precision and MAP@R of a split against itself.

  Unlabelled examples (negative labels) are left out.

  Attributes:
    split: the split (``"val"`` or ``"test"``).
    ks: the K of Recall@K.
    distance: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or ``"dot_product"``.
    every_epochs: see :class:`Evaluator`.
  """
  split: str = "val"
  ks: Sequence[int] = (1, 5, 10)
  distance: str = "euclidean"
  every_epochs: int = 1

  def __call__(self, ctx: EvalContext) -> Results:
    if not len(ctx.split(self.split)):
      return {}
    labels = ctx.labels(self.split)
    keep = labels >= 0
    return {self.split: _floats(metrics_lib.retrieval_metrics(
        ctx.embeddings(self.split)[keep], labels[keep], ks=tuple(self.ks),
        distance=self.distance))}


@dataclasses.dataclass
class Verification:
  """AUC, EER and TAR@FAR of seeded same / different pairs of a split.

  Pairs (``protocol``): ``"all"`` — every same-class pair of the split (up to
  ``max_positives``, drawn uniformly beyond) and ``num_negatives`` random different-class
  pairs (all of them when fewer; :func:`tsm.data.pairs.evaluation_pairs`), so that AUC and
  EER do not carry the sampling noise of a few hundred pairs; ``"paper_a"`` — paper A's
  ``num_pairs`` pairs, half of them same-class (:func:`tsm.data.pairs.verification_pairs`).
  TAR@FAR=x is NaN where the negatives number fewer than 10/x (reports print "—").
  With ``threshold_split`` the decision threshold is paper A's (closest ROC point to the
  corner) on that split's pairs (seeded with ``threshold_seed``), and the accuracy of this
  split's pairs at it is reported (``accuracy``: balanced, the mean of the true-positive
  and true-negative rates, which paper A's half-and-half pairs estimate). The pair
  distances and labels are left in ``ctx.artifacts`` as ``<split>_distances`` and
  ``<split>_same``.

  Attributes:
    split: the split whose pairs are scored.
    num_pairs: pairs per split under ``"paper_a"``.
    seed: seed of the pairs.
    distance: the distance of the embedding space.
    threshold_split: the split the threshold is chosen on, or None.
    threshold_seed: seed of that split's pairs.
    every_epochs: see :class:`Evaluator`.
    protocol: ``"all"`` or ``"paper_a"``.
    num_negatives: different-class pairs under ``"all"``.
    max_positives: cap on the same-class pairs under ``"all"``.
  """
  split: str = "val"
  num_pairs: int = 1000
  seed: int = 0
  distance: str = "euclidean"
  threshold_split: str | None = None
  threshold_seed: int = 0
  every_epochs: int = 1
  protocol: str = "all"
  num_negatives: int = 100_000
  max_positives: int = 10_000_000

  def pair_distances(self, ctx: EvalContext, split: str, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, same)`` of ``split``'s seeded pairs (also left in artifacts)."""
    labels = ctx.labels(split)
    if self.protocol == "paper_a":
      i, j, same = pairs_lib.verification_pairs(labels, self.num_pairs, seed)
    else:
      i, j, same = pairs_lib.evaluation_pairs(labels, num_negatives=self.num_negatives,
                                              max_positives=self.max_positives, seed=seed)
    d = metrics_lib.pair_distances(ctx.embeddings(split), i, j, distance=self.distance)
    same = np.asarray(same, bool)
    ctx.artifacts[f"{split}_distances"], ctx.artifacts[f"{split}_same"] = d, same
    return d, same

  def __call__(self, ctx: EvalContext) -> Results:
    if not len(ctx.split(self.split)):
      return {}
    d, same = self.pair_distances(ctx, self.split, self.seed)
    out = _floats(metrics_lib.verification_metrics(d, same))
    if self.threshold_split is not None and len(ctx.split(self.threshold_split)):
      td, tsame = self.pair_distances(ctx, self.threshold_split, self.threshold_seed)
      threshold = float(metrics_lib.choose_threshold_closest_to_corner(td, tsame))
      out["threshold"] = threshold
      out["accuracy"] = float(metrics_lib.balanced_accuracy_at_threshold(d, same,
                                                                         threshold))
    return {self.split: out}


@dataclasses.dataclass
class KNN:
  """k-NN accuracy of ``query`` embeddings voting over ``reference`` embeddings.

  Meaningful when the two splits share classes (``standard`` / ``by_image`` splits).

  Attributes:
    k: neighbours voting (paper B: 5).
    reference: the split voted over (``"train"``).
    query: the split classified (``"test"``).
    distance: the distance of the embedding space.
    every_epochs: see :class:`Evaluator` (default 0: final evaluation only).
  """
  k: int = 5
  reference: str = "train"
  query: str = "test"
  distance: str = "euclidean"
  every_epochs: int = 0

  def __call__(self, ctx: EvalContext) -> Results:
    if not len(ctx.split(self.query)):
      return {}
    return {self.query: {f"knn@{self.k}": float(metrics_lib.knn_accuracy(
        ctx.embeddings(self.reference), ctx.labels(self.reference),
        ctx.embeddings(self.query), ctx.labels(self.query), k=self.k,
        distance=self.distance))}}


def _unit_inputs(state: Any, split: Any) -> np.ndarray:
  """A split's inputs, flattened and L2-normalised (the model-free 'embedding')."""
  del state
  x = split.get(np.arange(len(split))).reshape(len(split), -1).astype(np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass
class InputBaseline:
  """Retrieval (and k-NN) of a split's inputs themselves, with no model: what a trained
  model has to beat (raw pixels, or a frozen trunk's features without a head).

  The inputs are flattened and L2-normalised, as embeddings are, so the Euclidean
  ranking is the cosine one; the metrics are :class:`Retrieval`'s and :class:`KNN`'s.

  Attributes:
    name: the key of the results (``"test_pixels"`` -> ``summary["test_pixels"]``).
    ks: the K of Recall@K.
    knn_k: neighbours of the k-NN accuracy of ``split`` against ``"train"`` (0: none;
      meaningful when the splits share classes).
    split: the split scored.
    splits: None (the run's own splits) or a function returning other
      ``DatasetSplits`` of the same examples (e.g. native-size pixels), called when the
      evaluator runs.
    every_epochs: see :class:`Evaluator` (default 0: final evaluation only).
  """
  name: str
  ks: Sequence[int] = (1, 5, 10)
  knn_k: int = 0
  split: str = "test"
  splits: Callable[[], Any] | None = None
  every_epochs: int = 0

  def __call__(self, ctx: EvalContext) -> Results:
    splits = ctx.splits if self.splits is None else self.splits()
    inputs = EvalContext(state=None, splits=splits, embed_fn=_unit_inputs)
    out = Retrieval(self.split, self.ks, every_epochs=0)(inputs).get(self.split, {})
    if self.knn_k:
      out.update(KNN(self.knn_k, "train", self.split)(inputs).get(self.split, {}))
    return {self.name: out} if out else {}


@dataclasses.dataclass
class Clustering:
  """NMI and AMI of k-means clusters (k = number of classes) of a split.

  Attributes:
    split: the split clustered.
    seed: k-means random state.
    every_epochs: see :class:`Evaluator` (default 0: final evaluation only).
  """
  split: str = "test"
  seed: int = 0
  every_epochs: int = 0

  def __call__(self, ctx: EvalContext) -> Results:
    labels = ctx.labels(self.split)
    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
      return {}
    return {self.split: _floats(metrics_lib.clustering_metrics(
        ctx.embeddings(self.split)[keep], labels[keep], self.seed))}


@dataclasses.dataclass
class ValidationLoss:
  """Mean training loss, active ratio and easy share on fixed batches of a split.

  Attributes:
    index_batches: int ``[steps, rows]`` index batches of the split (e.g. epoch 0 of a
      sampler over its labels), fixed for the run so epochs compare; for a two-view
      loss, in the training batches' layout (``tsm.data.repeat_views``).
    margin: the margin of the loss; None = the margin the epoch trained at (paper A's
      code uses a fixed 1.0, so that losses of epochs with different margins compare).
    split: the split (``"val"``).
    every_epochs: see :class:`Evaluator`.
  """
  index_batches: np.ndarray
  margin: float | None = 1.0
  split: str = "val"
  every_epochs: int = 1

  def __call__(self, ctx: EvalContext) -> Results:
    if ctx.loss_fn is None:
      return {}
    margin = ctx.record.get("margin") if self.margin is None else self.margin
    if margin is None:
      margin = float(jax.device_get(ctx.state.margin_state.margin))
    host = ctx.loss_fn(ctx.state, self.split, self.index_batches, margin, ctx.epoch or 0)
    mean = lambda key: float(np.mean([m[key] for m in host]))  # noqa: E731
    return {self.split: {"loss": mean("loss"), "active_ratio": mean("active_ratio"),
                         "easy_share": mean("easy_share")}}


def run_evaluators(evaluators: Sequence[Evaluator], ctx: EvalContext) -> Results:
  """Runs ``evaluators`` in order and merges their results split by split."""
  out: Results = {}
  for evaluator in evaluators:
    for split, values in (evaluator(ctx) or {}).items():
      out.setdefault(split, {}).update(values)
  return out


def flatten(results: Results) -> dict[str, float]:
  """``{split: {metric: v}}`` as epoch-record keys ``<split>_<metric>``."""
  return {f"{split}_{k}": v for split, values in results.items() for k, v in values.items()}


def make_embed_fn(model: Any, batch_size: int = 256) -> Callable[[Any, Any], np.ndarray]:
  """``(state, split or array) -> [N, D]`` numpy embeddings with ``model`` in inference
  mode, each host on its own devices; one jitted forward pass per input shape."""
  cached = getattr(model, "_tsm_eval_apply", None)
  if cached is None:   # one apply object per model: embed's jit cache then hits
    cached = lambda variables, x: model.apply(variables, x, train=False)  # noqa: E731
    object.__setattr__(model, "_tsm_eval_apply", cached)

  def embed_fn(state, inputs) -> np.ndarray:
    variables = {"params": state.params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    return np.asarray(embed(cached, distributed.local_copy(variables), inputs, batch_size))

  return embed_fn

