"""Miners: pytorch-metric-learning's pair and triplet selection rules as fixed-shape
weights.

Each miner is a pure function of ``(embeddings, labels, ref_embeddings=None,
ref_labels=None)`` (options as keywords) that returns, with no gradient, either
  * ``[B, M]`` float32 **pair weights**: the multiplicity of each (query, reference)
    pair in PML's ``(a1, p, a2, n)`` lists (0/1 for every miner here), or
  * ``[B, M, M]`` float32 **triplet weights**: the multiplicity of each ``(a, p, n)`` in
    PML's ``(a, p, n)`` lists,
with ``M = B`` (the batch is its own reference, the diagonal never a pair) when no
reference set is given. ``ref_valid`` (``[M]`` bool) leaves references out of every pair
(the empty slots of a cross-batch memory). Every pair and triplet loss takes the
weights as ``pair_weights=`` / ``triplet_weights=`` (:mod:`tsm.losses._mined`), and
:func:`tsm.losses.cross_batch_memory` takes a miner as its ``miner``. Which form a
miner returns is in its docstring; :func:`is_triplet_weights` tells them apart.

Distances are tsm's names (:mod:`tsm.distances`) on the embeddings as given; PML's
default ``LpDistance(normalize_embeddings=True)`` is ``"euclidean"`` on L2-normalised
embeddings (tsm's models normalise), and PML's ``CosineSimilarity`` rules are written
here with ``"cosine"`` distance ``1 - s`` (the same selections). Ties in a per-row choice
go to the lowest index.

The in-batch triplet miners that tsm's triplet loss runs exactly without any tensor of
triplets (``TripletMarginMiner``'s types, ``BatchHardMiner``) are its ``mining`` modes;
:func:`triplet_margin_miner` and :func:`batch_hard_miner` give the same selections as
weights, for other losses and for the cross-batch memory.

References:
  Musgrave et al., pytorch-metric-learning 2.9 (``miners/``, ``utils/
  loss_and_miner_utils.py``); Wang et al., "Multi-Similarity Loss with General Pair
  Weighting", CVPR 2019; Yuan et al., "Hard-Aware Deeply Cascaded Embedding", ICCV 2017;
  Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017; Wu et al.,
  "Sampling Matters in Deep Embedding Learning", ICCV 2017; Hermans et al., arXiv
  1703.07737.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp

from tsm.distances import check_distance, pairwise_distances
from tsm.losses._base import check_inputs

BATCH_STRATEGIES = ("hard", "semihard", "easy", "all")
TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


def is_triplet_weights(weights: Any) -> bool:
  """Whether a miner's output is triplet weights (rank 3) rather than pair weights."""
  return jnp.ndim(weights) == 3


def _setup(embeddings, labels, ref_embeddings, ref_labels, distance, ref_valid=None):
  """``(dist [B, M], positive, negative)`` without gradient; the diagonal is no pair
  when the batch is its own reference, and references outside ``ref_valid`` (the empty
  slots of a cross-batch memory) are in no pair."""
  check_inputs(embeddings, labels)
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("ref_embeddings and ref_labels go together; give both or neither.")
  check_distance(distance)
  x = jax.lax.stop_gradient(embeddings)
  if ref_embeddings is None:
    dist = pairwise_distances(x, distance=distance)
    same = labels[:, None] == labels[None, :]
    not_self = ~jnp.eye(labels.shape[0], dtype=bool)
    return dist, same & not_self, ~same
  check_inputs(ref_embeddings, ref_labels, embeddings_name="ref_embeddings",
               labels_name="ref_labels")
  dist = pairwise_distances(x, jax.lax.stop_gradient(ref_embeddings), distance=distance)
  same = labels[:, None] == ref_labels[None, :]
  if ref_valid is None:
    return dist, same, ~same
  return dist, same & ref_valid[None, :], ~same & ref_valid[None, :]


def _weights(mask: chex.Array) -> chex.Array:
  return mask.astype(jnp.float32)


def multi_similarity_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                           epsilon: float = 0.1, distance: str = "cosine") -> chex.Array:
  """PML's ``MultiSimilarityMiner``: pairs harder than the row's hardest other kind.

  A positive pair is kept when ``d_ap + epsilon > min_n d_an`` and a negative pair when
  ``d_an - epsilon < max_p d_ap`` (the anchor's negatives / positives). With PML's
  default ``CosineSimilarity`` this is ``s_ap - epsilon < max s_an`` and
  ``s_an + epsilon > min s_ap``.

  Args:
    embeddings: ``[B, D]`` queries.
    labels: ``[B]`` integer labels.
    ref_embeddings: optional ``[M, D]`` references (default: the batch).
    ref_labels: ``[M]`` labels of the references.
    epsilon: PML's ``epsilon`` (default 0.1).
    distance: tsm distance name (default ``"cosine"``, PML's ``CosineSimilarity``).

  Returns:
    ``[B, M]`` pair weights.
  """
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  min_neg = jnp.min(jnp.where(neg, dist, jnp.inf), axis=1, keepdims=True)
  max_pos = jnp.max(jnp.where(pos, dist, -jnp.inf), axis=1, keepdims=True)
  return _weights((pos & (dist + epsilon > min_neg)) | (neg & (dist - epsilon < max_pos)))


def pair_margin_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                      pos_margin: float = 0.2, neg_margin: float = 0.8,
                      distance: str = "euclidean") -> chex.Array:
  """PML's ``PairMarginMiner``: positives farther than ``pos_margin``, negatives closer
  than ``neg_margin``.

  Returns:
    ``[B, M]`` pair weights.
  """
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  return _weights((pos & (dist > pos_margin)) | (neg & (dist < neg_margin)))


def _rank_in(mask: chex.Array, key: chex.Array) -> chex.Array:
  """Each ``mask`` entry's rank among the ``mask`` entries by ascending ``key`` (ties by
  flat index); other entries get the number of ``mask`` entries or more."""
  flat_key = jnp.where(mask, key, jnp.inf).ravel()
  order = jnp.argsort(flat_key, stable=True)
  ranks = jnp.zeros(order.shape, jnp.int32).at[order].set(
      jnp.arange(order.size, dtype=jnp.int32))
  return ranks.reshape(mask.shape)


def hdc_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
              filter_percentage: float = 0.5, distance: str = "euclidean") -> chex.Array:
  """PML's ``HDCMiner``: the hardest ``ceil(filter_percentage * n)`` positive pairs
  (largest distances) and negative pairs (smallest), over the whole batch.

  Returns:
    ``[B, M]`` pair weights.
  """
  if not 0.0 < filter_percentage <= 1.0:
    raise ValueError(f"filter_percentage must be in (0, 1]; got {filter_percentage}.")
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  out = jnp.zeros(dist.shape, bool)
  for mask, key in ((pos, -dist), (neg, dist)):
    n = jnp.sum(mask, dtype=jnp.int32)
    keep = jnp.ceil(filter_percentage * n.astype(jnp.float32)).astype(jnp.int32)
    out = out | (mask & (_rank_in(mask, key) < keep))
  return _weights(out)


def _per_row(dist, mask, pick, lo_hi=None, thresholds=None):
  """PML's ``get_x_per_row``: per row the min / max of ``dist`` over ``mask``
  (restricted by the semi-hard ``thresholds`` and the allowed range); returns
  ``(values, indices, kept)``."""
  ok = mask
  if thresholds is not None:
    ok = ok & ((dist > thresholds[:, None]) if pick == "min"
               else (dist < thresholds[:, None]))
  if lo_hi is not None:
    ok = ok & (dist >= lo_hi[0]) & (dist <= lo_hi[1])
  fill = jnp.inf if pick == "min" else -jnp.inf
  masked = jnp.where(ok, dist, fill)
  index = jnp.argmin(masked, axis=1) if pick == "min" else jnp.argmax(masked, axis=1)
  values = jnp.take_along_axis(masked, index[:, None], axis=1)[:, 0]
  return values, index, jnp.any(ok, axis=1)


def check_batch_strategies(pos_strategy: str, neg_strategy: str) -> None:
  """PML's rules for ``BatchEasyHardMiner``'s strategies (one-line ValueError)."""
  for name, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
    if value not in BATCH_STRATEGIES:
      raise ValueError(f"{name}={value!r} is unknown; use one of "
                       f"{', '.join(BATCH_STRATEGIES)}.")
  if pos_strategy == neg_strategy == "semihard":
    raise ValueError("pos_strategy and neg_strategy cannot both be 'semihard'.")
  if {pos_strategy, neg_strategy} == {"all", "semihard"}:
    raise ValueError("'semihard' cannot be used together with 'all'.")


def batch_easy_hard_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                          pos_strategy: str = "easy", neg_strategy: str = "semihard",
                          allowed_pos_range: tuple[float, float] | None = None,
                          allowed_neg_range: tuple[float, float] | None = None,
                          distance: str = "euclidean") -> chex.Array:
  """PML's ``BatchEasyHardMiner``: per anchor one positive and one negative by strategy.

  Positives: ``"hard"`` the farthest, ``"easy"`` the closest, ``"semihard"`` the
  farthest closer than the chosen negative. Negatives: ``"hard"`` the closest,
  ``"easy"`` the farthest, ``"semihard"`` the closest farther than the chosen positive.
  ``"all"`` keeps every pair of that kind. Anchors lacking a choice are dropped
  (unless the other kind is ``"all"``). ``allowed_*_range``: ``(lo, hi)`` distances
  a choice may have.

  Returns:
    ``[B, M]`` pair weights (with neither strategy ``"all"``: one positive and one
    negative per kept anchor, i.e. one triplet each).
  """
  check_batch_strategies(pos_strategy, neg_strategy)
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  pos_pick = "min" if pos_strategy == "easy" else "max"
  neg_pick = "max" if neg_strategy == "easy" else "min"
  if pos_strategy == "semihard":
    neg_v, neg_i, neg_keep = _per_row(dist, neg, neg_pick, allowed_neg_range)
    _, pos_i, pos_keep = _per_row(dist, pos, pos_pick, allowed_pos_range, neg_v)
  elif neg_strategy == "semihard":
    pos_v, pos_i, pos_keep = _per_row(dist, pos, pos_pick, allowed_pos_range)
    _, neg_i, neg_keep = _per_row(dist, neg, neg_pick, allowed_neg_range, pos_v)
  else:
    _, pos_i, pos_keep = _per_row(dist, pos, pos_pick, allowed_pos_range)
    _, neg_i, neg_keep = _per_row(dist, neg, neg_pick, allowed_neg_range)
  m = dist.shape[1]
  one_pos = jax.nn.one_hot(pos_i, m, dtype=bool)
  one_neg = jax.nn.one_hot(neg_i, m, dtype=bool)
  if pos_strategy == "all" and neg_strategy == "all":
    return _weights(pos | neg)
  if pos_strategy == "all":
    return _weights(pos | (one_neg & neg_keep[:, None]))
  if neg_strategy == "all":
    return _weights((one_pos & pos_keep[:, None]) | neg)
  keep = (pos_keep & neg_keep)[:, None]
  return _weights((one_pos | one_neg) & keep)


def batch_hard_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                     distance: str = "euclidean") -> chex.Array:
  """PML's ``BatchHardMiner`` (Hermans et al.): per anchor its farthest positive and
  closest negative; the triplet loss's ``mining="batch_hard"`` as weights.

  Returns:
    ``[B, M]`` pair weights: one triplet per anchor that has both.
  """
  return batch_easy_hard_miner(embeddings, labels, ref_embeddings, ref_labels,
                               ref_valid, pos_strategy="hard", neg_strategy="hard",
                               distance=distance)


def _triplet_valid(pos, neg):
  return pos[:, :, None] & neg[:, None, :]


def triplet_margin_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                         margin: float = 0.2, type_of_triplets: str = "all",
                         distance: str = "euclidean") -> chex.Array:
  """PML's ``TripletMarginMiner``: triplets by ``m = d_an - d_ap`` against ``margin``.

  ``"all"``: ``m <= margin``; ``"hard"``: ``m <= 0``; ``"semihard"``: ``0 < m <=
  margin``; ``"easy"``: ``m > margin``. (The triplet loss's ``mining`` modes give the
  in-batch selections exactly without this ``[B, M, M]`` tensor.)

  Returns:
    ``[B, M, M]`` triplet weights.
  """
  if type_of_triplets not in TRIPLET_TYPES:
    raise ValueError(f"type_of_triplets={type_of_triplets!r} is unknown; use one of "
                     f"{', '.join(TRIPLET_TYPES)}.")
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  tm = dist[:, None, :] - dist[:, :, None]       # [a, p, n]: d_an - d_ap
  if type_of_triplets == "easy":
    cond = tm > margin
  else:
    cond = tm <= margin
    if type_of_triplets == "hard":
      cond = cond & (tm <= 0)
    elif type_of_triplets == "semihard":
      cond = cond & (tm > 0)
  return _weights(_triplet_valid(pos, neg) & cond)


def angular_miner(embeddings, labels, ref_embeddings=None, ref_labels=None,
    ref_valid=None, *,
                  angle: float = 20.0) -> chex.Array:
  """PML's ``AngularMiner``: triplets whose angle at the negative,
  ``atan(d_ap / (2 d(n, (a + p) / 2)))``, exceeds ``angle`` degrees (euclidean
  distances; PML requires normalised embeddings, as tsm's models give).

  ``d(n, c)^2`` comes from Gram matrices (``|n|^2 - n.a - n.p + |a + p|^2 / 4``), so no
  ``[B, M, M, D]`` tensor is built.

  Returns:
    ``[B, M, M]`` triplet weights.
  """
  _, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, "euclidean",
                          ref_valid)
  x = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
  r = x if ref_embeddings is None else jax.lax.stop_gradient(ref_embeddings).astype(
      jnp.float32)
  xr = x @ r.T                                    # [a, j]
  rr = r @ r.T                                    # [p, n]
  xx = jnp.sum(x * x, axis=1)
  rn = jnp.sum(r * r, axis=1)
  d_ap = jnp.sqrt(jnp.maximum(xx[:, None] + rn[None, :] - 2 * xr, 0.0))
  center_sq = (xx[:, None] + rn[None, :] + 2 * xr) / 4          # |(a + p) / 2|^2
  d_nc_sq = (rn[None, None, :] - xr[:, None, :] - rr[None, :, :]
             + center_sq[:, :, None])
  d_nc = jnp.sqrt(jnp.maximum(d_nc_sq, 0.0))
  angles = jnp.arctan2(d_ap[:, :, None], 2 * d_nc)
  return _weights(_triplet_valid(pos, neg) & (angles > math.radians(angle)))


def distance_weighted_probabilities(embeddings, labels, ref_embeddings=None,
                                    ref_labels=None, ref_valid=None, *,
                                    cutoff: float = 0.5,
                                    nonzero_loss_cutoff: float = 1.4) -> chex.Array:
  """PML's ``DistanceWeightedMiner`` negative-sampling distribution, ``[B, M]``.

  ``q(d) ∝ d^(2 - D) (1 - d^2 / 4)^((3 - D) / 2)`` (Wu et al.) on euclidean distances
  clamped below at ``cutoff``, zero for same-class pairs and for ``d >=
  nonzero_loss_cutoff``, each row normalised (a row with no weight is NaN, as PML's).
  The log-weights are shifted by their maximum over the whole matrix, same-class
  entries (0 after PML's masking) included, exactly as PML does.
  """
  dist, _, _ = _setup(embeddings, labels, ref_embeddings, ref_labels, "euclidean",
                          ref_valid)
  ref = labels if ref_labels is None else ref_labels
  same = labels[:, None] == ref[None, :]
  d = float(embeddings.shape[1])
  mat = jnp.maximum(dist, cutoff)
  log_w = (2.0 - d) * jnp.log(mat) - ((d - 3) / 2) * jnp.log(1.0 - 0.25 * mat ** 2)
  bad = ~jnp.isfinite(log_w)
  if ref_valid is not None:     # a memory's empty slots are not in PML's reference set
    bad = bad | ~ref_valid[None, :]
  log_w = jnp.where(same, 0.0, log_w)
  w = jnp.exp(log_w - jnp.max(jnp.where(bad, -jnp.inf, log_w)))
  w = jnp.where(same | bad | (mat >= nonzero_loss_cutoff), 0.0, w)
  return w / jnp.sum(w, axis=1, keepdims=True)


def distance_weighted_miner(key: chex.PRNGKey, embeddings, labels, ref_embeddings=None,
                            ref_labels=None, ref_valid=None, *, cutoff: float = 0.5,
                            nonzero_loss_cutoff: float = 1.4) -> chex.Array:
  """PML's ``DistanceWeightedMiner``: random triplets, negatives drawn by distance.

  PML's ``get_random_triplet_indices``: every anchor whose class has enough references
  (2 in the batch itself, 1 in a reference set) and a negative with weight draws
  ``k`` positives uniformly with replacement (``k``: its class's reference count) and
  for each a negative from :func:`distance_weighted_probabilities`.

  Args:
    key: PRNG key.

  Returns:
    ``[B, M, M]`` triplet weights (counts of each drawn triplet).
  """
  probs = distance_weighted_probabilities(embeddings, labels, ref_embeddings, ref_labels,
                                          ref_valid, cutoff=cutoff,
                                          nonzero_loss_cutoff=nonzero_loss_cutoff)
  _, pos, _ = _setup(embeddings, labels, ref_embeddings, ref_labels, "euclidean",
                          ref_valid)
  ref = labels if ref_labels is None else ref_labels
  b, m = probs.shape
  class_refs = jnp.sum(labels[:, None] == ref[None, :], axis=1)        # k per anchor
  num_pos = jnp.sum(pos, axis=1)
  rows_ok = jnp.all(jnp.isfinite(probs), axis=1) & (jnp.sum(jnp.nan_to_num(probs),
                                                            axis=1) > 0)
  min_refs = 2 if ref_labels is None else 1
  anchor_ok = (class_refs >= min_refs) & rows_ok & (num_pos > 0)
  kp, kn = jax.random.split(key)
  # Draw slot j < k of each anchor: a uniform positive and a weighted negative.
  pos_logits = jnp.where(pos, 0.0, -jnp.inf)
  p_draw = jax.random.categorical(kp, pos_logits[:, None, :], shape=(b, m))
  neg_logits = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
  n_draw = jax.random.categorical(kn, neg_logits[:, None, :], shape=(b, m))
  used = anchor_ok[:, None] & (jnp.arange(m)[None, :] < class_refs[:, None])
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, m))
  return jnp.zeros((b, m, m), jnp.float32).at[rows, p_draw, n_draw].add(
      used.astype(jnp.float32))


def _uniform_per_bin(key, dist, mask, num_bins, per_bin):
  """``[B, M]`` counts: ``per_bin`` uniform draws (with replacement) among the ``mask``
  pairs of each non-empty distance bin (PML's ``filter_by_bin``)."""
  flat_d = dist.ravel()
  flat_m = mask.ravel()
  n = flat_d.size
  lo = jnp.min(jnp.where(flat_m, flat_d, jnp.inf))
  hi = jnp.max(jnp.where(flat_m, flat_d, -jnp.inf))
  edges = jnp.linspace(lo, hi, num_bins + 1)
  # Bin i holds edges[i] <= d < edges[i + 1]; the last bin also holds d == edges[-1].
  bins = jnp.clip(jnp.searchsorted(edges, flat_d, side="right") - 1, 0, num_bins - 1)
  bins = jnp.where(flat_m, bins, num_bins)                     # outside: after the bins
  order = jnp.argsort(bins * n + jnp.arange(n), stable=True)
  counts = jnp.bincount(bins, length=num_bins + 1)[:num_bins]
  starts = jnp.cumsum(counts) - counts
  r = jax.random.randint(key, (num_bins, per_bin), 0, jnp.maximum(counts, 1)[:, None])
  picks = order[starts[:, None] + r]
  used = jnp.broadcast_to((counts > 0)[:, None], picks.shape)
  out = jnp.zeros((n,), jnp.float32).at[picks.ravel()].add(used.ravel().astype(jnp.float32))
  return out.reshape(dist.shape)


def uniform_histogram_miner(key: chex.PRNGKey, embeddings, labels, ref_embeddings=None,
                            ref_labels=None, ref_valid=None, *, num_bins: int = 100,
                            pos_per_bin: int = 10, neg_per_bin: int = 10,
                            distance: str = "euclidean") -> chex.Array:
  """PML's ``UniformHistogramMiner``: pairs spread evenly over the range of distances.

  Positive and negative pairs separately: their distances' range ``[min, max]`` is cut
  into ``num_bins`` equal bins and each non-empty bin gives ``pos_per_bin`` (or
  ``neg_per_bin``) pairs drawn uniformly with replacement among its pairs.

  Args:
    key: PRNG key.

  Returns:
    ``[B, M]`` pair weights (counts of each drawn pair).
  """
  if num_bins < 1 or pos_per_bin < 0 or neg_per_bin < 0:
    raise ValueError(f"num_bins must be >= 1 and the per-bin counts >= 0; got "
                     f"{num_bins}, {pos_per_bin}, {neg_per_bin}.")
  dist, pos, neg = _setup(embeddings, labels, ref_embeddings, ref_labels, distance,
                          ref_valid)
  kp, kn = jax.random.split(key)
  return (_uniform_per_bin(kp, dist, pos, num_bins, pos_per_bin)
          + _uniform_per_bin(kn, dist, neg, num_bins, neg_per_bin))
