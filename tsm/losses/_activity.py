"""The statistics of the softmax, proxy and centre losses, and what "active" means per loss.

Every tsm loss returns ``(loss, stats)`` with ``num_total`` (the terms the loss is taken
over), ``num_active`` and ``num_easy = num_total - num_active``. For hinge losses a term
is active when its loss is non-zero. A softmax (log-sum-exp) term is never exactly zero,
so "non-zero loss" would be true by construction; these losses instead call a term active
when a competitor still carries real weight in it, measured in the loss's own logit units
(temperature, scale, alpha): a competitor logit within one unit of the target logit, i.e.
a softmax weight of at least ``e^-1`` times the target's. This moves with the loss's own
hyper-parameters and goes to zero as the batch is learnt.

Active terms per loss (``z`` = the loss's logits: similarity / temperature, or scale x
cosine; ``s`` = cosine similarity; ``P(a)``, ``N(a)`` = positives / negatives of ``a``):

=======================  ============================  ==================================
loss                     terms (``num_total``)          active (``num_active``)
=======================  ============================  ==================================
triplet_margin_loss      valid triplets ``(a, p, n)``   ``d_an < d_ap + mu`` (hinge > 0),
                         whatever the mining mode       whatever the mining mode (the
                                                        mined ones: ``num_mined``,
                                                        ``num_mined_active``)
contrastive_loss         pairs ``i < j``                pair loss > 0: positive with
                                                        ``d > m_pos``, negative ``d < m``
ntxent_loss              positive pairs ``(a, p)``,     ``max_{n in N(a)} z_an > z_ap - 1``
                         ``a != p`` (PML's terms)
supcon_loss              anchors with a positive (none  some ``p in P(a)`` active as in
                         if the batch has no negative:  ntxent
                         the loss is 0 there, as PML)
npair_loss               one anchor per class with      ``max_c z(a, p_c) > z(a, p_y) - 1``
                         >= 2 samples (PML's pairs)     over the other classes' positives
multi_similarity_loss    valid anchors (PML's terms)    the anchor has an informative pair
                                                        by the MS paper's mining rule:
                                                        negative ``s_an > min_P s_ap - eps``
                                                        or positive ``s_ap < max_N s_an +
                                                        eps`` (``eps = 0.1``)
arcface_loss             valid samples                  ``max_{k != y} z_k > z_y - 1`` with
                                                        the margin-penalised target logit
proxy_anchor_loss        (sample, proxy) pairs          exponent ``alpha (delta - s) >= -1``
                                                        (positive) or ``alpha (s + delta)
                                                        >= -1`` (negative): the term weighs
                                                        at least ``e^-1`` of the ``1`` in
                                                        ``log(1 + sum exp)``
center_contrastive_loss  valid samples of a class with  as arcface, over the classes that
                         a centre                       have a centre
vicreg_loss              variance hinges, one per       the dimension's standard deviation
                         dimension and view (``2 D``)   below 1 (hinge > 0)
=======================  ============================  ==================================

Negative terms only (``num_neg_total``, ``num_neg_active``, ``neg_active_ratio``: a
companion of the active ratio that does not follow from the loss's form): the
anchor-negative pairs (or sample / wrong-class pairs) of the same losses, active when
that negative alone passes the criterion above: ntxent and supcon ``z_an > min_P z_ap
- 1``; npair ``z(a, p_c) > z(a, p_y) - 1``; multi-similarity ``s_an > min_P s_ap - eps``;
arcface and centre ``z_k > z_y - 1``; proxy-anchor the negative pairs' exponent rule.
(Every triplet term holds a negative, so the triplet loss has no separate companion;
for the contrastive loss it is ``PairStats.num_negative_active``: negative pairs with
``d < m``.)

Caveat: N-pair on L2-normalised embeddings has cosine logits in ``[-1, 1]`` and no
temperature, so a competitor is almost always within one logit unit of the target: its
active ratio is about 1 by construction (measured 0.98-1.0 on the offline sets); compare
it across losses only with that in mind.

``mean_pos_dist`` and ``mean_neg_dist`` are Euclidean distances between the embeddings
as given, over the positive / negative pairs ``i < j`` of the batch (as
:class:`tsm.losses.PairStats`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.distances import l2_normalize, pairwise_euclidean, safe_norm
from tsm.losses._base import _no_grad


class ActivityStats(NamedTuple):
  """Batch statistics of the softmax, proxy and centre losses (float32 scalars).

  Attributes:
    num_total: terms the loss is taken over (see the module's table).
    num_active: terms that still carry a competitor of real weight (the table).
    active_ratio: ``num_active / max(num_total, 1)``.
    num_neg_total: negative terms (anchor-negative or sample / wrong-class pairs).
    num_neg_active: negative terms that pass the criterion on their own.
    neg_active_ratio: ``num_neg_active / max(num_neg_total, 1)``.
    mean_pos_dist: mean Euclidean distance over positive pairs of the batch.
    mean_neg_dist: mean Euclidean distance over negative pairs of the batch.
  """
  num_total: chex.Array
  num_active: chex.Array
  active_ratio: chex.Array
  num_neg_total: chex.Array
  num_neg_active: chex.Array
  neg_active_ratio: chex.Array
  mean_pos_dist: chex.Array
  mean_neg_dist: chex.Array

  @property
  def num_easy(self) -> chex.Array:
    """Terms with no competitor of real weight, ``num_total - num_active``."""
    return self.num_total - self.num_active


def valid_rows(labels: chex.Array, valid: chex.Array | None) -> chex.Array:
  """``[B]`` bool mask of the rows to use (all when ``valid`` is None)."""
  if valid is None:
    return jnp.ones(labels.shape, bool)
  chex.assert_shape(valid, labels.shape)
  return valid.astype(bool)


def pair_masks(labels: chex.Array, valid: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Ordered positive (``i != j``, same class) and negative ``[B, B]`` masks, valid rows."""
  both = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  return same & ~eye & both, ~same & both


def cosine_similarity(x: chex.Array, y: chex.Array | None = None) -> chex.Array:
  """``[N, M]`` cosine similarities, unclipped (as PML's ``CosineSimilarity``).

  Zero rows have no direction: their similarity to everything is 0, with finite
  gradients (:func:`tsm.distances.l2_normalize`).
  """
  xn = l2_normalize(x)
  yn = xn if y is None else l2_normalize(y)
  return jnp.matmul(xn, yn.T, precision=jax.lax.Precision.HIGHEST)


def masked_log1p_sum_exp(x: chex.Array, mask: chex.Array, axis: int) -> chex.Array:
  """``log(1 + sum_{mask} exp(x))`` along ``axis``; 0 where the mask is empty.

  Stable (shifted by ``max(0, max x)``) with finite gradients: the sum always holds the
  ``1``, so the log never sees 0.
  """
  top = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  shift = jax.lax.stop_gradient(jnp.maximum(top, 0.0))
  # Masked entries go to exp(-inf) = 0 before the exp: an overflowing exp there
  # would make the (zero) gradient 0 * inf = NaN.
  total = jnp.exp(-shift) + jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)),
                                    axis=axis, keepdims=True)
  return jnp.squeeze(shift + jnp.log(total), axis)


def masked_logsumexp(x: chex.Array, mask: chex.Array | None, axis: int) -> chex.Array:
  """``log sum_{mask} exp(x)`` along ``axis``; ``-inf`` where the mask is empty.

  Gradients stay finite (zero) on empty rows: the log only ever sees a positive sum.
  ``mask=None`` takes every entry (``jax.nn.logsumexp``: no mask passes, which the class
  losses' ``[B, C]`` cross-entropies notice at a few ms a step).
  """
  if mask is None:
    return jax.nn.logsumexp(x, axis=axis)
  top = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  # exp(-inf) = 0 on masked entries (an overflowing exp there: NaN gradients).
  total = jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis, keepdims=True)
  # total >= 1 (the top's own term) on a row with a finite entry; 0 on an empty row or
  # one of -inf entries, whose log-sum-exp is -inf: no second pass over the mask.
  some = total > 0
  out = jnp.where(some, shift + jnp.log(jnp.where(some, total, 1.0)), -jnp.inf)
  # A NaN anywhere in the row must not be hidden behind the max.
  out = jnp.where(jnp.isnan(top), jnp.nan, out)
  return jnp.squeeze(out, axis)


def nan_guard(loss: chex.Array, embeddings: chex.Array, valid: chex.Array) -> chex.Array:
  """``loss``, or NaN when a used row of ``embeddings`` holds a NaN.

  The masks of these losses can leave a row out of every term (a singleton class in
  N-pair); NaN in must still give NaN out rather than a plausible number.
  """
  has_nan = jnp.any(jnp.isnan(embeddings) & valid[:, None])
  return jnp.where(has_nan, jnp.nan, loss)


def _pair_distances(x: chex.Array, cosines: chex.Array | None) -> chex.Array:
  """``[B, B]`` Euclidean distances of the rows of ``x`` (no gradient needed), from
  their :func:`cosine_similarity` when given: ``x_i . x_j = cos_ij r_i r_j`` with ``r``
  the divisors of :func:`tsm.distances.l2_normalize` (the norm, 1 for a zero row)."""
  if cosines is None:
    return pairwise_euclidean(x)
  cosines = jax.lax.stop_gradient(cosines)
  sq_norm = jnp.sum(jnp.square(x), axis=-1)
  norm = safe_norm(x, axis=-1)
  r = jnp.where(norm > 0, norm, 1.0)
  sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (r[:, None] * cosines * r[None, :])
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def activity_stats(*, terms: chex.Array, active: chex.Array, neg_terms: chex.Array,
                   neg_active: chex.Array, embeddings: chex.Array, labels: chex.Array,
                   valid: chex.Array, cosines: chex.Array | None = None) -> ActivityStats:
  """:class:`ActivityStats` from boolean term masks (any shapes) and the batch.

  Args:
    terms: mask of the loss's terms.
    active: mask of the active terms (a subset of ``terms``).
    neg_terms: mask of the negative terms.
    neg_active: mask of the active negative terms.
    embeddings: ``[B, D]`` embeddings as given (for the pair distances).
    labels: ``[B]`` labels.
    valid: ``[B]`` bool mask of used rows.
    cosines: optional ``[B, B]`` :func:`cosine_similarity` of ``embeddings``, where the
      loss has it: the pair distances are then taken from it rather than from a second
      ``[B, D] x [D, B]`` product (the same distances to rounding).

  Returns:
    The statistics, without gradient.
  """
  num_total = mining_lib.count_sum(terms)
  num_active = mining_lib.count_sum(terms & active)
  num_neg_total = mining_lib.count_sum(neg_terms)
  num_neg_active = mining_lib.count_sum(neg_terms & neg_active)
  dist = _pair_distances(jax.lax.stop_gradient(embeddings), cosines)
  pos, neg = pair_masks(labels, valid)
  upper = jnp.triu(jnp.ones(pos.shape, bool), k=1)
  return _no_grad(ActivityStats(
      num_total=num_total,
      num_active=num_active,
      active_ratio=num_active / jnp.maximum(num_total, 1.0),
      num_neg_total=num_neg_total,
      num_neg_active=num_neg_active,
      neg_active_ratio=num_neg_active / jnp.maximum(num_neg_total, 1.0),
      mean_pos_dist=mining_lib.masked_mean(dist, pos & upper).astype(jnp.float32),
      mean_neg_dist=mining_lib.masked_mean(dist, neg & upper).astype(jnp.float32),
  ))


def negative_active_ratio(stats: Mapping[str, Any]) -> float:
  """Active share of a loss's negative terms, from its statistics (host-side).

  Reads the statistics as a mapping: an epoch or step record of ``metrics.jsonl``, or a
  stats NamedTuple's ``_asdict()``. By the fields the loss reports (the module's
  table): ``neg_active_ratio`` (:class:`ActivityStats`) as given; the triplet losses'
  ``active_ratio`` (every triplet term holds a negative; :class:`TripletStats`, known
  by ``num_triplets``); the contrastive loss's ``num_negative_active / num_negative``
  (:class:`PairStats`; NaN without a negative pair).

  Args:
    stats: the loss's statistics by field name.

  Returns:
    The ratio, or NaN where the statistics do not say (none of those fields).
  """
  if "neg_active_ratio" in stats:
    return float(stats["neg_active_ratio"])
  if "num_triplets" in stats:
    return float(stats["active_ratio"])
  if "num_negative_active" in stats and stats.get("num_negative", 0) > 0:
    return float(stats["num_negative_active"]) / float(stats["num_negative"])
  return math.nan
