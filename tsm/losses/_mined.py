"""Triplet and contrastive terms over a reference set and mined pair / triplet weights.

The general path of :func:`tsm.losses.triplet_margin_loss` and
:func:`tsm.losses.contrastive_loss`, taken when a miner's output (``pair_weights`` /
``triplet_weights``) or a reference set (``ref_embeddings`` / ``ref_labels``, e.g. a
cross-batch memory) is given; without them those losses keep their exact in-batch
paths. Queries are the ``B`` batch rows, references the ``M`` rows of the reference set
(the batch itself when none is given, the diagonal then left out of the positives).

Weights follow pytorch-metric-learning's index tuples, as fixed-shape arrays:
  * ``pair_weights`` ``[B, M]``: the multiplicity of each (query, reference) pair in the
    miner's pair lists (0: not mined; a 0/1 mask for the usual miners). The labels say
    which pairs are positive. A triplet loss takes every ``(a, p, n)`` with both of its
    pairs mined, with weight ``w[a, p] w[a, n]`` (PML's ``convert_to_triplets``).
  * ``triplet_weights`` ``[B, M, M]``: the multiplicity of each triplet ``(a, p, n)``. A
    pair loss takes each of its pairs ``w[a, p] = sum_n w[a, p, n]``,
    ``w[a, n] = sum_p w[a, p, n]`` times (PML's ``convert_to_pairs`` keeps duplicates).
Reductions weigh each term by its multiplicity: ``mean`` divides the weighted sum by the
summed weights, ``mean_nonzero`` by the summed weights of the non-zero terms (PML's
``AvgNonZeroReducer`` over the repeated index lists), and so do :func:`tsm.reducers`
thresholds and class weights; a per-anchor reduction counts each distinct pair or
triplet once (PML's ``PerAnchorReducer`` writes pairs into a ``[B, B]`` array).

The triplet loss's in-batch modes ``"all"`` / ``"semihard"`` / ``"hard"`` / ``"easy"``
come here too when their reduction is a :mod:`tsm.reducers` value (a threshold, class
weights or per-anchor means need each triplet's loss, which the exact band path never
forms): ``band`` then selects the mode's triplets.

Cost: triplets are summed densely, ``O(B M^2)`` time; memory is ``O(M^2)`` per anchor
chunk (a ``lax.map`` over anchors, about 4M ``[M, M]`` entries at once), PML's own cost
for the same triplets, which PML holds as ``[B M^2]`` index lists.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm import reducers
from tsm.distances import query_distances
from tsm.losses._base import _float_dtype, _nan_out, _no_grad, _nonfinite_rows, check_inputs

# Triplet terms summed per chunk of anchors: about this many [M, M] entries at once.
_CHUNK_ENTRIES = 1 << 22


def uses_general_path(ref_embeddings: Any, ref_labels: Any, pair_weights: Any,
                      triplet_weights: Any = None) -> bool:
  """Whether a loss call needs the general (reference set / weights) path."""
  return any(x is not None for x in (ref_embeddings, ref_labels, pair_weights,
                                     triplet_weights))


def check_general_inputs(embeddings: Any, ref_embeddings: Any, ref_labels: Any,
                         pair_weights: Any, triplet_weights: Any) -> int:
  """Validates the reference set and the weights before tracing; returns ``M``.

  Raises:
    ValueError: one line naming the argument and the fix.
  """
  if (ref_embeddings is None) != (ref_labels is None):
    raise ValueError("ref_embeddings and ref_labels go together; give both or neither.")
  if ref_embeddings is not None:
    check_inputs(ref_embeddings, ref_labels, embeddings_name="ref_embeddings",
                 labels_name="ref_labels")
    if ref_embeddings.shape[1] != embeddings.shape[1]:
      raise ValueError(f"ref_embeddings has dimension {ref_embeddings.shape[1]} but "
                       f"embeddings has {embeddings.shape[1]}; embed both alike.")
  b = embeddings.shape[0]
  m = b if ref_embeddings is None else ref_embeddings.shape[0]
  if pair_weights is not None and triplet_weights is not None:
    raise ValueError("give pair_weights or triplet_weights, not both (a miner returns "
                     "one of them).")
  for name, w, shape in (("pair_weights", pair_weights, (b, m)),
                         ("triplet_weights", triplet_weights, (b, m, m))):
    if w is None:
      continue
    _check_weights_dtype(name, w)
    if tuple(getattr(w, "shape", ())) != shape:
      raise ValueError(f"{name} must have shape {shape} ([queries, references"
                       f"{', references' if len(shape) == 3 else ''}]); got "
                       f"{tuple(getattr(w, 'shape', ()))}.")
  return m


def _pair_setup(embeddings, labels, valid, ref_embeddings, ref_labels, distance, dtype):
  """``(dist, positive, negative, inputs)`` of the general path; ``inputs`` are the
  embedding arrays (padding rows zeroed) whose non-finite rows poison the loss. A query
  without a distance (``"snr"``: zero variance) is the anchor of no pair."""
  rows = jnp.ones(labels.shape, bool) if valid is None else valid.astype(bool)
  x = jnp.where(rows[:, None], embeddings.astype(dtype), 0)
  if ref_embeddings is None:
    dist, defined = query_distances(x, distance=distance)
    positive, negative = mining_lib.label_masks(labels, rows)
    return dist, positive & defined[:, None], negative & defined[:, None], (x,)
  r = ref_embeddings.astype(dtype)
  dist, defined = query_distances(x, r, distance=distance)
  same = labels[:, None] == ref_labels[None, :]
  positive = same & (rows & defined)[:, None]
  negative = ~same & (rows & defined)[:, None]
  return dist, positive, negative, (x, r)


def _pair_weights_of_triplets(triplet_weights, dtype):
  """``[B, M]`` pair multiplicities of triplet weights (PML's ``convert_to_pairs``)."""
  w = triplet_weights.astype(dtype)
  return jnp.sum(w, axis=2) + jnp.sum(w, axis=1)


def _triplet_chunk(margin, reduction, band):
  def per_anchor(args):
    d, pos, neg, wp, wn, wt = args           # [M], [M], [M], [M], [M], [M, M] or None
    t = d[:, None] + margin                  # [p, 1]
    dn = d[None, :]                          # [1, n]
    valid = pos[:, None] & neg[None, :]
    w = wp[:, None] * wn[None, :] if wt is None else wt
    w = jnp.where(valid, w, 0.0)
    hinge = jax.nn.relu(t - dn)
    counted = valid & (w > 0)
    active = counted & (dn < t)
    sd = jax.lax.stop_gradient(d)
    st = jax.lax.stop_gradient(t)
    sdn = sd[None, :]
    easy = sdn >= st
    hard = sdn < sd[:, None]
    mined = {"all": counted, "semihard": counted & (sd[:, None] < sdn) & ~easy,
             "hard": counted & hard, "easy": counted & easy}[band]
    wm = jax.lax.stop_gradient(jnp.where(mined, w, 0.0))
    s, c = reducers.term_sums(hinge, wm, reduction, axis=(0, 1))
    f32 = lambda c: jnp.sum(c, dtype=jnp.float32)
    return (s, c,
            f32(counted), f32(counted & easy),
            f32(counted & (sd[:, None] < sdn) & (sdn < st)),
            f32(counted & (sdn <= sd[:, None])), f32(active),
            jnp.sum(wm), jnp.sum(jnp.where(mined & (dn < t), wm, 0.0)))
  return per_anchor


def triplet_general(embeddings, labels, margin, *, distance, reduction, valid,
                    ref_embeddings, ref_labels, pair_weights, triplet_weights,
                    band="all"):
  """The triplet margin loss over mined triplets of a reference set (see the module);
  ``band``: the in-batch mining mode whose triplets are taken (``"all"``: every one)."""
  from tsm.losses._triplet import TripletStats  # pylint: disable=import-outside-toplevel
  dtype = _float_dtype(embeddings)
  dist, positive, negative, inputs = _pair_setup(embeddings, labels, valid,
                                                 ref_embeddings, ref_labels, distance,
                                                 dtype)
  margin = jnp.asarray(margin, dtype)
  b, m = dist.shape
  if triplet_weights is None:
    w = (jnp.ones((b, m), dtype) if pair_weights is None
         else jax.lax.stop_gradient(pair_weights).astype(dtype))
    xs = (dist, positive, negative, w, w, None)
    pos_pairs = positive & (w > 0)
    neg_pairs = negative & (w > 0)
  else:
    wt = jax.lax.stop_gradient(triplet_weights).astype(dtype)
    ones = jnp.ones((b, m), dtype)
    xs = (dist, positive, negative, ones, ones, wt)
    pw = _pair_weights_of_triplets(wt, dtype)
    pos_pairs = positive & (pw > 0)
    neg_pairs = negative & (pw > 0)
  chunk = max(1, min(b, _CHUNK_ENTRIES // max(m * m, 1)))
  per_anchor = _triplet_chunk(margin, reduction, band)
  if xs[5] is None:
    fn = lambda a: per_anchor((*a, None))
    out = jax.lax.map(fn, xs[:5], batch_size=chunk)
  else:
    out = jax.lax.map(per_anchor, xs, batch_size=chunk)
  sums, counts = out[:2]
  (n_trip, n_easy, n_semi, n_hard, n_active, n_mined,
   n_mined_active) = (jnp.sum(o).astype(jnp.float32) for o in out[2:])
  rows = jnp.ones(labels.shape, bool) if valid is None else valid.astype(bool)
  loss = reducers.combine(sums, counts, reduction, labels=labels, rows=rows)
  sdist = jax.lax.stop_gradient(dist)
  stats = TripletStats(
      num_triplets=n_trip, num_easy=n_easy, num_semihard=n_semi, num_hard=n_hard,
      num_mined=n_mined, num_active=n_active, num_mined_active=n_mined_active,
      active_ratio=n_active / jnp.maximum(n_trip, 1.0),
      mean_pos_dist=mining_lib.masked_mean(sdist, pos_pairs).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(sdist, neg_pairs).astype(jnp.float32))
  bad = (jnp.any(jnp.stack([jnp.any(_nonfinite_rows(x)) for x in inputs]))
         | ~jnp.isfinite(margin)
         | jnp.any(~jnp.isfinite(sdist) & (positive | negative)))
  dependents = sum(jnp.sum(x) for x in inputs) + margin
  return _nan_out(loss, _no_grad(stats), bad, dependents)


def contrastive_general(embeddings, labels, margin, *, distance, reduction,
                        positive_margin, valid, ref_embeddings, ref_labels, pair_weights,
                        triplet_weights):
  """The contrastive loss over mined (query, reference) pairs (see the module)."""
  # pylint: disable-next=import-outside-toplevel
  from tsm.losses._contrastive import _contrastive
  dtype = _float_dtype(embeddings)
  dist, positive, negative, inputs = _pair_setup(embeddings, labels, valid,
                                                 ref_embeddings, ref_labels, distance,
                                                 dtype)
  b, m = dist.shape
  if triplet_weights is not None:
    w = _pair_weights_of_triplets(jax.lax.stop_gradient(triplet_weights), dtype)
  elif pair_weights is not None:
    w = jax.lax.stop_gradient(pair_weights).astype(dtype)
  else:
    w = jnp.ones((b, m), dtype)
  same = labels[:, None] == (labels if ref_labels is None else ref_labels)[None, :]
  mask = (positive | negative) & (w > 0)
  return _contrastive(dist, same, mask, margin, positive_margin, reduction, inputs,
                      weights=w, labels=labels,
                      rows=None if valid is None else valid.astype(bool))


def _check_weights_dtype(name: str, w: chex.Array) -> None:
  """Weights must be numbers (bool masks count as 0/1)."""
  if not (jnp.issubdtype(w.dtype, jnp.floating)
                            or jnp.issubdtype(w.dtype, jnp.integer) or w.dtype == bool):
    raise ValueError(f"{name} must be a float, integer or bool array; got {w.dtype}.")
