"""Embedding-space and training diagnostics of the two source papers.

Why one module of this length: the variance, loss-decay and effective-margin
diagnostics and the Gaussian mixture fitted to the margins share one seeded
triplet-sampling helper and one set of input checks.

Paper B (Zeng, arXiv 2510.02161) compares losses by the geometry they leave behind and
by how greedily they learn:

* :func:`intra_class_variance`: per class ``sigma^2_c = (1/N_c) sum_{i in c}
  ||z_i - mu_c||^2``, reported as mean and std over classes;
* :func:`inter_class_distances`: distances between class centroids over ``c != c'``,
  plain (the authors' code) and squared (the paper's formula);
* :func:`loss_decay_epochs`: epochs until the loss first falls to 10% of its first value;
  :func:`loss_fall_epochs`: its scale-free companion (epochs until 90% of the loss's own
  fall), which losses with a floor also reach (the follow-up's claim D3);
* active ratio and gradient norm come out of :func:`tsm.train.make_train_step` per step
  (``metrics["active_ratio"]``, ``metrics["grad_norm"]``) and :func:`tsm.fit.fit` already
  writes their per-epoch means to ``metrics.jsonl``; :func:`epoch_means` aggregates step
  metrics of a hand-written loop the same way.

Paper A (Tomchak et al., arXiv 2603.26389) looks at *effective margins*
``d_an - d_ap`` of valid triplets and fits a Gaussian mixture to them:

* :func:`effective_margins`: every valid triplet when they fit in a fixed-size buffer,
  else a seeded uniform sample of valid triplets;
* :func:`fit_gaussian_mixture`: 1-D Gaussian mixture by EM in jax (jittable);
  :func:`mixture_pdf` evaluates it (for plots, see :mod:`tsm.plotting`).

All jax functions are pure, fixed-shape and jittable (static arguments noted per
function); none builds a ``[B, B, B]`` tensor. Embeddings are used as given: paper B
L2-normalises them first (its ``metric.py`` calls ``F.normalize``); tsm models already
output L2-normalised embeddings.

References:
  Zeng, "Comparing Contrastive and Triplet Loss: Variance Analysis and Optimization
  Behavior", arXiv 2510.02161 (code: github.com/ZenzenDatabase/Triplet_Contrastive).
  Tomchak, Marques, Pedroso, Oliveira, Lisboa de Almeida, "Maintaining Difficulty: A
  Margin Scheduler for Triplet Loss in Siamese Networks Training", arXiv 2603.26389.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.distances import check_distance, paired_distances

__all__ = [
    "ClassVariance", "InterClassDistances", "EffectiveMargins", "GaussianMixture",
    "class_centroids", "intra_class_variance", "inter_class_distances",
    "loss_decay_epochs", "loss_fall_epochs", "epoch_means", "effective_margins",
    "fit_gaussian_mixture",
    "mixture_pdf",
]

GMM_INITS = ("quantile", "random")


# ----------------------------------------------------------------------------- helpers


def _check_num_classes(num_classes) -> None:
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive python int, got {num_classes!r}; "
                     "pass the number of classes (labels in [0, num_classes)).")


def _check_ddof(ddof) -> None:
  if ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1, got {ddof!r}; use 0 (population std) or 1 "
                     "(sample std).")


def _masked_mean_std(values: chex.Array, mask: chex.Array,
                     ddof: int) -> tuple[chex.Array, chex.Array]:
  """Mean and std of ``values`` where ``mask``; 0 when fewer than ``ddof + 1`` entries."""
  count = jnp.sum(mask, dtype=jnp.float32)
  mean = jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1.0)
  sq = jnp.sum(jnp.where(mask, jnp.square(values - mean), 0.0))
  var = jnp.where(count > ddof, sq / jnp.maximum(count - ddof, 1.0), 0.0)
  return mean, jnp.sqrt(var)


def class_centroids(embeddings: chex.Array, labels: chex.Array,
                    num_classes: int) -> tuple[chex.Array, chex.Array]:
  """Class centroids by segment sums (fixed shape, jittable).

  Args:
    embeddings: ``[N, D]`` float array.
    labels: ``[N]`` int labels; rows with a label outside ``[0, num_classes)`` (paper
      B's outliers, labelled -1) take part in no class.
    num_classes: ``C``, a static python int.

  Returns:
    ``(centroids, counts)``: ``[C, D]`` class means (zero rows for empty classes) and
    ``[C]`` float32 class sizes.
  """
  _check_num_classes(num_classes)
  return _class_centroids(embeddings, labels, num_classes)


@functools.partial(jax.jit, static_argnums=2)
def _class_centroids(embeddings, labels, num_classes):
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_equal_shape_prefix([embeddings, labels], 1)
  dtype = jnp.promote_types(embeddings.dtype, jnp.float32)
  member = (labels >= 0) & (labels < num_classes)
  ids = jnp.where(member, labels, 0)
  weights = member.astype(dtype)
  sums = jax.ops.segment_sum(embeddings.astype(dtype) * weights[:, None], ids,
                             num_segments=num_classes)
  counts = jax.ops.segment_sum(weights, ids, num_segments=num_classes)
  centroids = sums / jnp.maximum(counts, 1.0)[:, None]
  return centroids, counts.astype(jnp.float32)


# ----------------------------------------------------------------------------- paper B


class ClassVariance(NamedTuple):
  """Intra-class variance of an embedding set (see :func:`intra_class_variance`).

  Attributes:
    per_class: ``[C]`` ``sigma^2_c`` (0 for empty classes).
    counts: ``[C]`` float32 class sizes ``N_c``.
    present: ``[C]`` bool, ``N_c > 0``.
    mean: mean of ``per_class`` over present classes (paper B's ``sigma^2_intra``).
    std: std of ``per_class`` over present classes.
  """
  per_class: chex.Array
  counts: chex.Array
  present: chex.Array
  mean: chex.Array
  std: chex.Array


def intra_class_variance(embeddings: chex.Array, labels: chex.Array, num_classes: int,
                         *, ddof: int = 0) -> ClassVariance:
  """Per-class variance ``sigma^2_c = (1/N_c) sum_{i in c} ||z_i - mu_c||^2`` (paper B).

  Computed with segment sums in two passes (centroids, then squared deviations from
  them), so it is fixed-shape, jittable and free of the cancellation of
  ``E||z||^2 - ||mu||^2``. The mean and std are taken over the classes that have
  members; a class with one member has variance 0 and counts. Rows whose label is
  outside ``[0, num_classes)`` are ignored: paper B's synthetic outliers are labelled
  -1, and any row can be left out by setting its label to -1. (The authors'
  ``metric.py`` loops over ``labels.unique()``, which treats -1 as one more class; to
  reproduce that, map -1 to ``num_classes`` and pass ``num_classes + 1``.)

  Args:
    embeddings: ``[N, D]`` float array (used as given; paper B L2-normalises first).
    labels: ``[N]`` int labels.
    num_classes: ``C``, a static python int.
    ddof: delta degrees of freedom of the std over classes (0: population, numpy's
      default; 1: sample).

  Returns:
    :class:`ClassVariance`. With no present class, mean and std are 0.

  References:
    Zeng, arXiv 2510.02161, Sec. "variance analysis".
  """
  _check_num_classes(num_classes)
  _check_ddof(ddof)
  return _intra_class_variance(embeddings, labels, num_classes, ddof)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _intra_class_variance(embeddings, labels, num_classes, ddof):
  centroids, counts = _class_centroids(embeddings, labels, num_classes)
  member = (labels >= 0) & (labels < num_classes)
  ids = jnp.where(member, labels, 0)
  deviations = jnp.sum(jnp.square(embeddings.astype(centroids.dtype) - centroids[ids]),
                       axis=-1)
  sq = jax.ops.segment_sum(jnp.where(member, deviations, 0.0), ids,
                           num_segments=num_classes)
  per_class = sq / jnp.maximum(counts, 1.0)
  present = counts > 0
  mean, std = _masked_mean_std(per_class, present, ddof)
  return ClassVariance(per_class=per_class, counts=counts, present=present, mean=mean,
                       std=std)


class InterClassDistances(NamedTuple):
  """Distances between class centroids (see :func:`inter_class_distances`).

  Attributes:
    distances: ``[C, C]`` plain Euclidean centroid distances (0 on the diagonal and
      wherever a class is empty).
    pair_mask: ``[C, C]`` bool, ``c != c'`` with both classes present.
    mean: mean plain distance over pairs (paper B's code).
    std: std of the plain distances over unordered pairs ``c < c'``.
    mean_squared: mean squared distance over ``c != c'`` (paper B's ``sigma^2_inter``).
    std_squared: std of the squared distances over unordered pairs.
  """
  distances: chex.Array
  pair_mask: chex.Array
  mean: chex.Array
  std: chex.Array
  mean_squared: chex.Array
  std_squared: chex.Array


def inter_class_distances(embeddings: chex.Array, labels: chex.Array, num_classes: int,
                          *, ddof: int = 1) -> InterClassDistances:
  """Centroid distances over class pairs ``c != c'`` (paper B), plain and squared.

  The paper writes ``sigma^2_inter = 1/(C(C-1)) sum_{c != c'} ||mu_c - mu_c'||^2``
  (``mean_squared``); the authors' code reports mean and std of the plain distances
  ``||mu_c - mu_c'||`` over the upper triangle (``torch.cdist`` then ``.std()``, which is
  the sample std, hence ``ddof=1`` by default). Means over ordered and unordered pairs
  are equal; stds are taken over the ``K (K-1) / 2`` unordered pairs of the ``K`` present
  classes. Distances are differences of centroids, not the Gram-matrix form, so equal
  centroids are at exactly 0. Rows with a label outside ``[0, num_classes)`` are
  ignored, empty classes take part in no pair.

  Args:
    embeddings: ``[N, D]`` float array (used as given).
    labels: ``[N]`` int labels.
    num_classes: ``C``, a static python int.
    ddof: 1 (sample std, as ``torch.std``) or 0 (population std).

  Returns:
    :class:`InterClassDistances`; with fewer than two present classes every statistic
    is 0.

  References:
    Zeng, arXiv 2510.02161; ``metric.py`` of the authors' code.
  """
  _check_num_classes(num_classes)
  _check_ddof(ddof)
  return _inter_class_distances(embeddings, labels, num_classes, ddof)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _inter_class_distances(embeddings, labels, num_classes, ddof):
  centroids, counts = _class_centroids(embeddings, labels, num_classes)
  c, d = centroids.shape
  left = jnp.broadcast_to(centroids[:, None, :], (c, c, d)).reshape(c * c, d)
  right = jnp.broadcast_to(centroids[None, :, :], (c, c, d)).reshape(c * c, d)
  squared = paired_distances(left, right, distance="squared_euclidean").reshape(c, c)
  plain = paired_distances(left, right, distance="euclidean").reshape(c, c)
  present = counts > 0
  pair_mask = present[:, None] & present[None, :] & ~jnp.eye(c, dtype=bool)
  upper = pair_mask & jnp.triu(jnp.ones((c, c), dtype=bool), k=1)
  plain = jnp.where(pair_mask, plain, 0.0)
  squared = jnp.where(pair_mask, squared, 0.0)
  mean, std = _masked_mean_std(plain, upper, ddof)
  mean_sq, std_sq = _masked_mean_std(squared, upper, ddof)
  return InterClassDistances(distances=plain, pair_mask=pair_mask, mean=mean, std=std,
                             mean_squared=mean_sq, std_squared=std_sq)


def loss_decay_epochs(losses: chex.Array, fraction: float = 0.1) -> chex.Array:
  """Epochs until the loss first falls to ``fraction`` of its first value (paper B).

  Definition: the 1-based index ``e`` of the first epoch with
  ``losses[e-1] <= fraction * losses[0]``, or ``-1`` if no epoch reaches it (a
  NaN loss never counts). ``losses[0]`` is the first epoch's (mean) loss, so with
  ``fraction >= 1`` the answer is 1. Losses are assumed positive (every loss in tsm
  is non-negative; a first loss of 0 gives 1).

  Example: ``losses = [1.0, 0.5, 0.09, 0.05]`` gives 3 (the third epoch).

  Args:
    losses: ``[E]`` per-epoch losses (``E >= 1``), e.g. the ``"loss"`` field of the
      epoch records of ``metrics.jsonl``.
    fraction: the target share of the first loss (paper B: 0.1); may be traced.

  Returns:
    int32 scalar (jittable; ``int(...)`` on the host).
  """
  if jnp.ndim(losses) != 1 or jnp.shape(losses)[0] < 1:
    raise ValueError(f"losses must be a non-empty [E] array, got shape "
                     f"{jnp.shape(losses)}; pass one loss per epoch.")
  if isinstance(fraction, (int, float)) and not fraction > 0:
    raise ValueError(f"fraction must be > 0, got {fraction!r}; paper B uses 0.1.")
  return _loss_decay_epochs(losses, fraction)


@jax.jit
def _loss_decay_epochs(losses, fraction):
  hit = losses <= fraction * losses[0]
  first = jnp.argmax(hit).astype(jnp.int32)
  return jnp.where(jnp.any(hit), first + 1, -1).astype(jnp.int32)


def loss_fall_epochs(losses: chex.Array, fraction: float = 0.9) -> chex.Array:
  """Epochs until the loss has made ``fraction`` of its fall (a scale-free loss decay).

  Paper B's :func:`loss_decay_epochs` asks for a fall to 10 % of the first loss, which a
  loss with a floor far above zero (a softmax over many negatives, a proxy loss) may
  never reach, so losses of different forms cannot be ranked by it. This asks instead
  how soon each loss covers ``fraction`` of the fall it makes at all:

  ``e = min{e : losses[0] - losses[e-1] >= fraction * (losses[0] - min(losses))}``
  (1-based), or ``-1`` when the loss never falls below its first value. It is invariant
  to the loss's scale and offset (``a * loss + b`` with ``a > 0`` gives the same epoch).
  A NaN anywhere gives ``-1`` (there is no honest epoch to report).

  Example: ``losses = [2.0, 1.2, 1.05, 1.0]`` (fall 1.0) gives 3 with ``fraction=0.9``.

  Args:
    losses: ``[E]`` per-epoch losses (``E >= 1``).
    fraction: the share of the total fall, in ``(0, 1]``; may be traced.

  Returns:
    int32 scalar (jittable; ``int(...)`` on the host).

  References:
    Zeng, Niu, Li, Taya, arXiv 2601.21450 (claim D3: faster convergence); paper B's
    loss decay, Zeng, arXiv 2510.02161.
  """
  if jnp.ndim(losses) != 1 or jnp.shape(losses)[0] < 1:
    raise ValueError(f"losses must be a non-empty [E] array, got shape "
                     f"{jnp.shape(losses)}; pass one loss per epoch.")
  if isinstance(fraction, (int, float)) and not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction!r}; e.g. 0.9.")
  return _loss_fall_epochs(losses, fraction)


@jax.jit
def _loss_fall_epochs(losses, fraction):
  chex.assert_rank(losses, 1)
  fallen = losses[0] - losses
  total = jnp.max(fallen)
  hit = fallen >= fraction * total
  first = jnp.argmax(hit).astype(jnp.int32)
  ok = (total > 0) & ~jnp.any(jnp.isnan(losses))
  return jnp.where(ok, first + 1, -1).astype(jnp.int32)


def epoch_means(values: chex.Array, epochs: chex.Array, num_epochs: int) -> chex.Array:
  """Per-epoch means of per-step metrics (e.g. ``active_ratio``, ``grad_norm``).

  Paper B reports the active ratio and the gradient norm per epoch: the mean over the
  epoch's steps of the per-step values the train step returns. :func:`tsm.fit.fit`
  writes exactly these means into its epoch records; this helper does the same for a
  hand-written loop, jittably.

  Args:
    values: ``[S]`` per-step values.
    epochs: ``[S]`` int 0-based epoch of each step; steps outside
      ``[0, num_epochs)`` are ignored.
    num_epochs: ``E``, a static python int.

  Returns:
    ``[E]`` float32 means (NaN for an epoch with no step, so a gap shows in a plot).
  """
  if not isinstance(num_epochs, int) or num_epochs < 1:
    raise ValueError(f"num_epochs must be a positive python int, got {num_epochs!r}.")
  return _epoch_means(values, epochs, num_epochs)


@functools.partial(jax.jit, static_argnums=2)
def _epoch_means(values, epochs, num_epochs):
  chex.assert_rank([values, epochs], 1)
  chex.assert_equal_shape([values, epochs])
  inside = (epochs >= 0) & (epochs < num_epochs)
  ids = jnp.where(inside, epochs, 0)
  weights = inside.astype(jnp.float32)
  sums = jax.ops.segment_sum(jnp.where(inside, values, 0.0).astype(jnp.float32), ids,
                             num_segments=num_epochs)
  counts = jax.ops.segment_sum(weights, ids, num_segments=num_epochs)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)


# ----------------------------------------------------------------------------- paper A


class EffectiveMargins(NamedTuple):
  """Effective margins ``d_an - d_ap`` of valid triplets (see :func:`effective_margins`).

  Attributes:
    values: ``[M]`` float ``d(a, n) - d(a, p)``; 0 where not ``mask``.
    mask: ``[M]`` bool, the entries that hold a triplet.
    anchor: ``[M]`` int32 row index of each triplet's anchor (0 where not ``mask``).
    positive: ``[M]`` int32 row index of the positive.
    negative: ``[M]`` int32 row index of the negative.
    num_valid: int32 scalar, ``sum(mask)``: ``min(T, M)`` (exact) or ``M`` (sampled),
      0 when there is no valid triplet.
    num_triplets: float32 scalar ``T``, the number of valid triplets (float32: exact
      up to 2^24).
    exact: bool scalar, true when all ``T`` triplets are listed (``T <= M``).
  """
  values: chex.Array
  mask: chex.Array
  anchor: chex.Array
  positive: chex.Array
  negative: chex.Array
  num_valid: chex.Array
  num_triplets: chex.Array
  exact: chex.Array


def _searchsorted(sorted_values: chex.Array, queries: chex.Array, side: str) -> chex.Array:
  return jnp.searchsorted(sorted_values, queries, side=side,
                          method=mining_lib.SEARCHSORTED_METHOD).astype(jnp.int32)


def _class_layout(labels: chex.Array, valid: chex.Array):
  """Rows sorted by class (valid rows first) and each sorted row's class block."""
  n = labels.shape[0]
  labels = labels.astype(jnp.int32)
  lowest = jnp.iinfo(jnp.int32).min
  # Invalid rows form one extra block after every valid class.
  sentinel = jnp.max(jnp.where(valid, labels, lowest)) + 1
  keys = jnp.where(valid, labels, sentinel)
  iota = jnp.arange(n, dtype=jnp.int32)
  sorted_keys, order = jax.lax.sort((keys, iota), num_keys=1, is_stable=True)
  start = _searchsorted(sorted_keys, sorted_keys, "left")
  end = _searchsorted(sorted_keys, sorted_keys, "right")
  size = end - start
  num_rows = jnp.sum(valid, dtype=jnp.int32)
  row_valid = iota < num_rows
  num_pos = jnp.where(row_valid, size - 1, 0)
  num_neg = jnp.where(row_valid, num_rows - size, 0)
  return order, start, size, num_pos, num_neg, row_valid


def _below(bits: chex.Array, n: chex.Array) -> chex.Array:
  """Integers uniform in ``[0, n)`` from uint32 ``bits`` (0 where ``n <= 0``).

  ``bits % n``: the modulo bias is below ``n / 2^32`` (1.4e-5 relative for n = 60,000).
  """
  n = jnp.maximum(n, 1).astype(jnp.uint32)
  return (bits % n).astype(jnp.int32)


def effective_margins(embeddings: chex.Array, labels: chex.Array, *,
                      distance: str = "euclidean", max_triplets: int = 100_000,
                      seed: chex.Numeric = 0,
                      valid: chex.Array | None = None) -> EffectiveMargins:
  """Effective margins ``d_an - d_ap`` over the valid triplets of an embedding set.

  A valid triplet is ``(a, p, n)`` with ``p != a`` of ``a``'s label and ``n`` of another
  label, as in :mod:`tsm.mining` (labels are compared by equality, so -1 is a class like
  any other; leave rows out with ``valid``). There are ``T = sum_c n_c (n_c - 1)
  (N - n_c)`` of them.

  * ``T <= max_triplets``: every valid triplet, each once (``exact`` is true), in the
    first ``T`` entries, grouped by anchor.
  * ``T > max_triplets``: ``max_triplets`` i.i.d. draws (with replacement) from the
    uniform distribution over valid triplets: the anchor's class ``c`` with probability
    ``n_c (n_c - 1) (N - n_c) / T``, then the anchor uniformly in ``c``, the positive
    uniformly among the other ``n_c - 1`` members, the negative uniformly among the
    ``N - n_c`` rows of other classes. Each valid triplet then has probability ``1 / T``
    (not uniform over anchors, which would over-weight small classes).

  Either way only the chosen triplets' distances are computed (``O(M D)``), after an
  ``O(N log N)`` sort by label: no ``[N, N]`` matrix, so whole training sets work. The
  function is jittable (``distance`` and ``max_triplets`` static; ``seed`` may be
  traced), and both paths live in one program, picked by ``T`` at run time.

  Args:
    embeddings: ``[N, D]`` float array.
    labels: ``[N]`` int labels.
    distance: ``"euclidean"`` (paper A's default), ``"squared_euclidean"`` or
      ``"cosine"``.
    max_triplets: ``M``, the static size of the output.
    seed: int seed of the sample (ignored on the exact path), or a ``jax.random`` key.
    valid: optional ``[N]`` bool mask; rows with ``False`` are in no triplet.

  Returns:
    :class:`EffectiveMargins` with ``[M]`` arrays. Pass ``values`` and ``mask`` on to
    :func:`fit_gaussian_mixture` (``weights=mask``).

  References:
    Tomchak et al., arXiv 2603.26389 (effective margin, GMM of its distribution).
  """
  check_distance(distance)
  if not isinstance(max_triplets, int) or isinstance(max_triplets, bool) or (
      max_triplets < 1 or max_triplets >= 2**24):
    raise ValueError(f"max_triplets must be a python int in [1, 2^24), got "
                     f"{max_triplets!r}; e.g. 100_000.")
  if valid is None:
    valid = jnp.ones((jnp.shape(labels)[0],), dtype=bool)
  key = seed if _is_key(seed) else jax.random.PRNGKey(seed)
  return _effective_margins(embeddings, labels, valid, key, distance, max_triplets)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _effective_margins(embeddings, labels, valid, key, distance, m):
  chex.assert_rank([embeddings, labels], [2, 1])
  chex.assert_equal_shape_prefix([embeddings, labels], 1)
  n = labels.shape[0]
  chex.assert_shape(valid, (n,))
  order, start, size, num_pos, num_neg, row_valid = _class_layout(labels, valid)
  # Triplets per sorted anchor row: int32 for the enumeration (only used when T <= M,
  # then it cannot overflow), float32 for the class weights and the total.
  per_anchor_f = num_pos.astype(jnp.float32) * num_neg.astype(jnp.float32)
  total = jnp.sum(per_anchor_f)
  exact = total <= m
  ks = jnp.arange(m, dtype=jnp.int32)

  # Exact path: the k-th triplet in (anchor, positive rank, negative rank) order.
  per_anchor = num_pos * num_neg
  cum = jnp.cumsum(jnp.where(exact, per_anchor, 0))
  a_exact = jnp.minimum(_searchsorted(cum, ks, "right"), n - 1)
  r = ks - (cum[a_exact] - per_anchor[a_exact])
  neg_count = jnp.maximum(num_neg[a_exact], 1)
  p_rank_exact = r // neg_count
  n_rank_exact = r % neg_count

  # Sampled path: class by weight n_c (n_c-1)(N-n_c), placed at the class's first sorted
  # row (zeros elsewhere keep the float32 cumulative sum exact over the zero entries).
  # One draw of raw bits serves the four choices (cheaper to compile than randint).
  bits = jax.random.bits(key, (4, m), jnp.uint32)
  is_first = row_valid & (start == jnp.arange(n, dtype=jnp.int32))
  class_weight = jnp.where(is_first, size.astype(jnp.float32) * per_anchor_f, 0.0)
  class_cum = jnp.cumsum(class_weight)
  u = (bits[0] >> 8).astype(jnp.float32) * (2.0 ** -24) * class_cum[-1]
  u = jnp.minimum(u, jnp.nextafter(class_cum[-1], jnp.float32(0)))
  first = jnp.minimum(_searchsorted(class_cum, u, "right"), n - 1)
  c_size = size[first]
  a_sampled = first + _below(bits[1], c_size)
  p_rank_sampled = _below(bits[2], c_size - 1)
  n_rank_sampled = _below(bits[3], num_neg[first])

  a_sorted = jnp.where(exact, a_exact, a_sampled).astype(jnp.int32)
  p_rank = jnp.where(exact, p_rank_exact, p_rank_sampled)
  n_rank = jnp.where(exact, n_rank_exact, n_rank_sampled)
  a_start = start[a_sorted]
  a_size = size[a_sorted]
  # The p_rank-th member of the class other than the anchor itself.
  p_sorted = a_start + p_rank + (p_rank >= a_sorted - a_start)
  # The n_rank-th valid row outside the class block [a_start, a_start + a_size).
  n_sorted = n_rank + jnp.where(n_rank >= a_start, a_size, 0)
  clip = lambda i: jnp.clip(i, 0, n - 1).astype(jnp.int32)  # noqa: E731
  anchor = order[clip(a_sorted)]
  positive = order[clip(p_sorted)]
  negative = order[clip(n_sorted)]

  mask = jnp.where(exact, ks < total, total > 0)
  x = jnp.asarray(embeddings)
  d_ap = paired_distances(x[anchor], x[positive], distance=distance)
  d_an = paired_distances(x[anchor], x[negative], distance=distance)
  values = jnp.where(mask, d_an - d_ap, 0.0)
  zero = jnp.zeros_like(anchor)
  return EffectiveMargins(
      values=values, mask=mask,
      anchor=jnp.where(mask, anchor, zero), positive=jnp.where(mask, positive, zero),
      negative=jnp.where(mask, negative, zero),
      num_valid=jnp.sum(mask, dtype=jnp.int32), num_triplets=total, exact=exact)


def _is_key(seed) -> bool:
  if isinstance(seed, (int, float)):
    return False
  seed = jnp.asarray(seed) if not hasattr(seed, "dtype") else seed
  return jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) or (
      seed.shape == (2,) and seed.dtype == jnp.uint32)


class GaussianMixture(NamedTuple):
  """A 1-D Gaussian mixture, components sorted by mean (see :func:`fit_gaussian_mixture`).

  Attributes:
    weights: ``[K]`` mixing weights (sum to 1).
    means: ``[K]`` component means, ascending.
    stds: ``[K]`` component standard deviations (> 0: variance floor).
    log_likelihood: mean log-likelihood per (weighted) sample of the data under the
      fitted mixture (sklearn's ``GaussianMixture.score``).
    num_iters: int32, EM iterations run.
    converged: bool, no parameter moved by ``tol`` or more (standardised units) in the
      last iteration.
  """
  weights: chex.Array
  means: chex.Array
  stds: chex.Array
  log_likelihood: chex.Array
  num_iters: chex.Array
  converged: chex.Array


def _component_log_probs(z, weights, means, variances):
  """``[N, K]`` ``log w_k + log N(z; mean_k, var_k)``."""
  log_norm = -0.5 * (jnp.log(2.0 * jnp.pi) + jnp.log(variances))
  return (jnp.log(weights) + log_norm
          - 0.5 * jnp.square(z[:, None] - means) / variances)


def fit_gaussian_mixture(values: chex.Array, num_components: int = 2, *,
                         weights: chex.Array | None = None, seed: chex.Numeric = 0,
                         num_iters: int = 500, tol: float = 1e-5,
                         min_variance: float = 1e-6,
                         init: str = "quantile") -> GaussianMixture:
  """Fits a 1-D Gaussian mixture by EM (jittable; paper A fits one to effective margins).

  The data are standardised (weighted mean and std) before EM and the parameters
  mapped back after, so the fit behaves the same at any scale. Initialisation
  (deterministic by default): ``"quantile"`` puts the K means at the weighted
  ``(k + 1/2)/K`` quantiles; ``"random"`` at K data points drawn with ``seed`` (weighted
  by ``weights``). Each point is then assigned to its nearest mean and one M-step gives
  the initial weights and variances (like sklearn's k-means-style start, without
  k-means). EM runs in a ``lax.while_loop`` until no parameter (weight, mean, std, in
  standardised units) moves by ``tol`` or more in an iteration, or for ``num_iters``
  iterations. (A test on the change of the log-likelihood, sklearn's, stalls in float32:
  the mean log-likelihood stops changing in its last bit while the parameters still
  drift, so EM stopped early on overlapping components.) On strongly overlapping
  components (a unimodal histogram split in two) the likelihood is flat and EM crawls:
  expect ``num_iters`` iterations and ``converged=False`` there, with a likelihood as
  good as sklearn's. Every variance gets ``min_variance`` times the data variance
  added (sklearn's ``reg_covar``, here relative to the data scale; absolute when the
  data variance is 0), and each component's responsibility mass gets ``10 eps`` (as
  sklearn), so a collapsed or empty component stays finite: all-equal data give finite
  means, stds and likelihood.

  Why not scikit-learn's ``GaussianMixture``: on separated components both give the
  same fit (to 1e-4, tested), but on the overlapping components that effective margins
  usually are, sklearn's stop on the change of the log-likelihood (``tol=1e-3``) ends
  after a few iterations at a worse fit: on 20,000 points of two normals 0.3 apart (sd
  0.3), means -0.061 / 0.358 and log-likelihood -0.3393 against -0.3372 here, so the
  studies' mixture numbers would change. sklearn also takes no sample weights (the
  fixed-shape ``EffectiveMargins`` with its ``mask``), cannot run under ``jax.jit``
  (``effective_margins`` and this fit compose in one jitted function), and is not in
  the core install, which this module belongs to.

  Args:
    values: ``[N]`` float data.
    num_components: ``K``, a static python int.
    weights: optional ``[N]`` non-negative sample weights; pass
      ``EffectiveMargins.mask`` to fit only the filled entries.
    seed: seed of the ``"random"`` init (unused by ``"quantile"``).
    num_iters: static maximum number of EM iterations.
    tol: stop when every parameter (standardised units) moves by less than this.
    min_variance: variance floor, relative to the data variance.
    init: ``"quantile"`` (default) or ``"random"``.

  Returns:
    :class:`GaussianMixture`, components sorted by mean. With all weights zero the
    result is finite but meaningless.

  References:
    Dempster, Laird, Rubin, "Maximum Likelihood from Incomplete Data via the EM
    Algorithm", JRSS-B 1977. Tomchak et al., arXiv 2603.26389.
  """
  if not isinstance(num_components, int) or num_components < 1:
    raise ValueError(f"num_components must be a positive python int, got "
                     f"{num_components!r}; e.g. 2.")
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be a positive python int, got {num_iters!r}.")
  if init not in GMM_INITS:
    raise ValueError(f"unknown init {init!r}; use one of {', '.join(GMM_INITS)}.")
  if isinstance(min_variance, (int, float)) and not min_variance > 0:
    raise ValueError(f"min_variance must be > 0, got {min_variance!r}; e.g. 1e-6.")
  if weights is None:
    weights = jnp.ones(jnp.shape(values), jnp.promote_types(jnp.result_type(values),
                                                            jnp.float32))
  key = seed if _is_key(seed) else jax.random.PRNGKey(seed)
  return _fit_gaussian_mixture(values, weights, key, tol, min_variance, num_components,
                               num_iters, init)


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _fit_gaussian_mixture(values, weights, key, tol, min_variance, k, num_iters, init):
  chex.assert_rank(values, 1)
  dtype = jnp.promote_types(values.dtype, jnp.float32)
  x = values.astype(dtype)
  w = weights.astype(dtype)
  chex.assert_equal_shape([x, w])
  w = jnp.maximum(w, 0.0)
  x = jnp.where(w > 0, x, 0.0)  # NaN/inf in unused entries must not leak.
  total = jnp.maximum(jnp.sum(w), jnp.finfo(dtype).tiny)
  center = jnp.sum(w * x) / total
  scale = jnp.sqrt(jnp.sum(w * jnp.square(x - center)) / total)
  scale = jnp.where(scale > 0, scale, 1.0)
  z = (x - center) / scale
  eps = 10 * jnp.finfo(dtype).eps

  # Initial means.
  if init == "quantile":
    sorted_z, sorted_w = jax.lax.sort((jnp.where(w > 0, z, jnp.inf), w), num_keys=1)
    cum = jnp.cumsum(sorted_w) / total
    targets = (jnp.arange(k, dtype=dtype) + 0.5) / k
    idx = jnp.minimum(jnp.searchsorted(cum, targets, side="left"), x.shape[0] - 1)
    means0 = jnp.where(jnp.isfinite(sorted_z[idx]), sorted_z[idx], 0.0)
  else:
    logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    logits = jnp.where(jnp.any(w > 0), logits, 0.0)
    means0 = jnp.sort(z[jax.random.categorical(key, logits, shape=(k,))])

  def m_step(resp, old_means):
    nk_raw = jnp.sum(w[:, None] * resp, axis=0)
    nk = nk_raw + eps
    means = jnp.sum(w[:, None] * resp * z[:, None], axis=0) / nk
    means = jnp.where(nk_raw > eps, means, old_means)
    variances = (jnp.sum(w[:, None] * resp * jnp.square(z[:, None] - means), axis=0) / nk
                 + min_variance)
    return nk / jnp.sum(nk), means, variances

  def e_step(params):
    log_probs = _component_log_probs(z, *params)
    log_total = jax.nn.logsumexp(log_probs, axis=1)
    ll = jnp.sum(w * log_total) / total
    return ll, jnp.exp(log_probs - log_total[:, None])

  nearest = jnp.argmin(jnp.abs(z[:, None] - means0[None, :]), axis=1)
  params0 = m_step(jax.nn.one_hot(nearest, k, dtype=dtype), means0)

  def cond(carry):
    _, i, converged = carry
    return (i < num_iters) & ~converged

  def body(carry):
    params, i, _ = carry
    _, resp = e_step(params)
    new = m_step(resp, params[1])
    change = jnp.max(jnp.stack([
        jnp.max(jnp.abs(new[0] - params[0])), jnp.max(jnp.abs(new[1] - params[1])),
        jnp.max(jnp.abs(jnp.sqrt(new[2]) - jnp.sqrt(params[2])))]))
    return new, i + 1, change < tol

  init_carry = (params0, jnp.asarray(0, jnp.int32), jnp.asarray(False))
  params, iters, converged = jax.lax.while_loop(cond, body, init_carry)
  ll, _ = e_step(params)
  mix_w, means, variances = params
  order = jnp.argsort(means)
  return GaussianMixture(
      weights=mix_w[order], means=center + scale * means[order],
      stds=scale * jnp.sqrt(variances[order]),
      log_likelihood=ll - jnp.log(scale), num_iters=iters, converged=converged)


def mixture_pdf(x: chex.Array, mixture: GaussianMixture, *,
                components: bool = False) -> chex.Array:
  """Density of a 1-D Gaussian mixture at ``x`` (for plots).

  Args:
    x: array of points, any shape.
    mixture: a :class:`GaussianMixture`.
    components: also return each weighted component's density.

  Returns:
    ``p(x)`` with ``x``'s shape; with ``components=True``, ``[..., K]`` weighted
    component densities ``w_k N(x; mu_k, s_k^2)`` (they sum to ``p(x)``).
  """
  return _mixture_pdf(x, mixture, components)


@functools.partial(jax.jit, static_argnums=2)
def _mixture_pdf(x, mixture, components):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  stds = mixture.stds
  z = (x[..., None] - mixture.means) / stds
  dens = mixture.weights * jnp.exp(-0.5 * jnp.square(z)) / (stds * math.sqrt(2 * math.pi))
  return dens if components else jnp.sum(dens, axis=-1)
