"""Triplet margin and contrastive losses with exact in-batch mining and statistics.

All losses take embeddings as given (normalising is the model's job), are pure,
fixed-shape and jit/grad/vmap-safe, and take the margin as a (possibly traced)
scalar, so a margin schedule never triggers a recompilation. Every loss returns
``(loss, stats)``; ``stats`` holds float32 scalars (with no gradient) that describe the
batch at the given margin, used by :mod:`tsm.margins` and the studies.

Triplet loss over all valid triplets (``mining="all"``) is exact but never builds the
``[B, B, B]`` tensor of triplets (see :func:`tsm.mining.triplet_pair_counts`):
  * when no anchor has more than ``tsm.mining.DENSE_MAX_POSITIVES`` positives (P x K
    batches), a loop over the k-th positive of every anchor, one vectorised pass over
    the ``[B, B]`` distances per step: ``O(B^2 K)`` time, no sorting;
  * otherwise, per anchor the negative distances are sorted once; for each
    anchor-positive pair with threshold ``t = d_ap + mu`` the number ``c`` of negatives
    with ``d_an < t`` is found by binary search and the sum of their distances from
    prefix sums, ``sum_n max(0, t - d_an) = c t - sum_{k<c} d_(k)``:
    ``O(B^2 log B)`` time.
Both use ``O(B^2)`` memory. The gradient is written in closed form (a
``jax.custom_vjp``): ``dL/dd_ap = c`` and ``dL/dd_an = -#{p: d_an < t_ap}``, counted in
the forward pass, so it equals the gradient of the brute-force sum (with
``relu'(0) = 0``, as ``jax.nn.relu``) exactly.

Floating-point convention: a triplet's loss is ``max(0, t - d_an)`` with
``t = d_ap + mu`` rounded first; it is active (non-zero) iff ``d_an < t``. Triplet types
use the same ``t`` (see :mod:`tsm.mining`). The prefix-sum form (sort path) rounds
differently from summing the hinge terms one by one; the two agree to float32
precision (relative error of order ``1e-7 * B`` of ``c t``, reduced by measuring
distances from the row's closest negative). Counts and gradients are exact.

Counts in the stats are float32: exact integers up to ``2^24`` per batch, float32
rounded above (a batch of 4096 can hold ~7e10 triplets).

References:
  Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition
  and Clustering", CVPR 2015 (triplet loss, semi-hard mining).
  Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
  Re-Identification", arXiv 1703.07737 (batch-hard mining).
  Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
  Mapping", CVPR 2006 (contrastive loss).
  Tomchak et al., arXiv 2603.26389 (triplet types, DAMS); Zeng, arXiv 2510.02161
  (contrastive vs triplet, active ratio).

Families live in private modules and are re-exported here (optax's layout):
``_triplet`` (triplet margin losses), ``_contrastive`` (contrastive losses),
``_explicit`` (the triplet / contrastive losses over explicit tuples in a batch),
``_mined`` (the triplet / contrastive losses over a reference set and mined pair /
triplet weights, :mod:`tsm.miners`), ``_xbm`` (the cross-batch memory wrapper),
``_wrappers`` (weighted sums of losses, the self-supervised two-view form, a loss with a
miner), ``_schedule`` (losses that change with the epoch: the :class:`EpochLoss` protocol,
``for_epoch(epoch) -> loss_fn``, and paper A's :class:`MiningCurriculum`) and ``_base``
(reductions, the statistics contract, :class:`ParametricLoss`).

Statistics contract: every in-batch loss's stats expose ``num_total`` (the terms the loss
is taken over), ``num_active`` (terms with non-zero loss) and ``num_easy``
(``num_total - num_active``), so any margin schedule accumulates from any loss.
"""

from tsm.distances import check_distance
from tsm.losses._base import (REDUCTIONS, LossVariables, ParametricLoss, as_parametric,
                              check_reduction, common_stats)
from tsm.losses._contrastive import PairStats, contrastive_loss, contrastive_loss_from_pairs
from tsm.losses._activity import ActivityStats, negative_active_ratio
from tsm.losses._ap import fast_ap_loss
from tsm.losses._angular import ANGULAR_ALPHA, angular_loss
from tsm.losses._circle import circle_loss
from tsm.losses._center import center_contrastive, center_contrastive_loss, update_centers
from tsm.losses._histogram import histogram_loss
from tsm.losses._instance import instance_loss
from tsm.losses._intra_pair_variance import intra_pair_variance_loss
from tsm.losses._lifted import generalized_lifted_structure_loss, lifted_structure_loss
from tsm.losses._manifold import draw_meta_classes, manifold, manifold_loss
from tsm.losses._margin_loss import margin_beta, margin_loss
from tsm.losses._multi_similarity import multi_similarity_loss
from tsm.losses._nca import nca_loss
from tsm.losses._proxy import arcface, arcface_loss, proxy_anchor, proxy_anchor_loss
from tsm.losses._soft_margin import (dynamic_soft_margin, dynamic_soft_margin_loss,
                                     update_soft_margin_histogram)
from tsm.losses._softmax import npair_loss, ntxent_loss, supcon_loss
from tsm.losses._softmax_margin import (cosface, cosface_loss, large_margin_softmax,
                                        large_margin_softmax_loss)
from tsm.losses._explicit import explicit_pairs_loss, explicit_triplets_loss
from tsm.losses._schedule import EpochLoss, MiningCurriculum, check_curriculum
from tsm.losses._wrappers import (multiple_losses, self_supervised_loss, stacked_views,
                                   with_miner)
from tsm.losses._xbm import MemoryState, cross_batch_memory, enqueue, init_memory
# PML losses, second half: class-vector softmaxes, pair and self-supervised losses.
from tsm.losses._ap_surrogates import PNP_VARIANTS, pnp_loss, smooth_ap_loss
from tsm.losses._angular_margin import (sphereface, sphereface_loss, subcenter_arcface,
                                        subcenter_arcface_loss, subcenter_arcface_outliers)
from tsm.losses._proxy_softmax import (normalized_softmax, normalized_softmax_loss,
                                       p2sgrad, p2sgrad_loss, proxy_nca, proxy_nca_loss)
from tsm.losses._ranked_list import ranked_list_loss
from tsm.losses._snr import snr_contrastive_loss, snr_distances
from tsm.losses._soft_triple import soft_triple, soft_triple_loss
from tsm.losses._tcm import tcm_loss
from tsm.losses._tuplet import TUPLET_MARGIN, tuplet_margin_loss
from tsm.losses._vicreg import VICRegStats, vicreg_loss
from tsm.losses._triplet import (MINING, TripletStats, check_mining, curriculum_mining,
                                 triplet_margin_loss, triplet_margin_loss_from_triplets)

__all__ = [
    "MINING", "REDUCTIONS", "LossVariables", "ParametricLoss", "PairStats",
    "TripletStats", "as_parametric", "check_distance", "check_mining", "check_reduction",
    "common_stats", "contrastive_loss", "curriculum_mining", "contrastive_loss_from_pairs",
    "triplet_margin_loss", "triplet_margin_loss_from_triplets",
]
__all__ += [
    "ActivityStats", "arcface", "arcface_loss", "center_contrastive",
    "center_contrastive_loss", "multi_similarity_loss", "negative_active_ratio",
    "npair_loss", "ntxent_loss",
    "proxy_anchor", "proxy_anchor_loss", "supcon_loss", "update_centers",
]
__all__ += ["MemoryState", "cross_batch_memory", "enqueue", "init_memory",
            "multiple_losses", "self_supervised_loss", "stacked_views", "with_miner"]
__all__ += [
    "EpochLoss", "MiningCurriculum", "check_curriculum", "explicit_pairs_loss",
    "explicit_triplets_loss",
]
__all__ += [
    "normalized_softmax", "normalized_softmax_loss", "proxy_nca", "proxy_nca_loss",
    "soft_triple", "soft_triple_loss", "sphereface", "sphereface_loss",
    "subcenter_arcface", "subcenter_arcface_loss", "subcenter_arcface_outliers",
    "snr_contrastive_loss", "snr_distances", "TUPLET_MARGIN", "tuplet_margin_loss",
    "VICRegStats", "vicreg_loss", "ranked_list_loss", "smooth_ap_loss", "p2sgrad",
    "p2sgrad_loss", "PNP_VARIANTS", "pnp_loss", "tcm_loss",
    "ANGULAR_ALPHA", "angular_loss", "circle_loss", "cosface", "cosface_loss",
    "draw_meta_classes", "dynamic_soft_margin", "dynamic_soft_margin_loss",
    "fast_ap_loss", "generalized_lifted_structure_loss", "histogram_loss",
    "instance_loss", "intra_pair_variance_loss", "large_margin_softmax",
    "large_margin_softmax_loss", "lifted_structure_loss", "manifold", "manifold_loss",
    "margin_beta", "margin_loss", "nca_loss", "update_soft_margin_histogram",
]
