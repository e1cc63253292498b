"""Evaluation metrics: retrieval, k-NN classification, verification and clustering.

Submodules: ``neighbors`` (exact chunked k-nearest-neighbour search shared by retrieval and
k-NN), ``retrieval``, ``knn``, ``verification``, ``clustering``.
"""

from tsm.metrics.clustering import clustering_metrics
from tsm.metrics.knn import knn_accuracy, knn_predict
from tsm.metrics.neighbors import iter_nearest_neighbors, nearest_neighbors
from tsm.metrics.retrieval import retrieval_metrics
from tsm.metrics.verification import (accuracy_at_threshold, balanced_accuracy_at_threshold,
                                      choose_threshold_closest_to_corner,
                                      choose_threshold_eer, eer, far_key,
                                      min_negatives_for_far, pair_distances, roc_curve,
                                      tar_at_far, tar_unmeasurable_reason,
                                      verification_metrics)

__all__ = [
    "accuracy_at_threshold", "balanced_accuracy_at_threshold",
    "choose_threshold_closest_to_corner", "choose_threshold_eer", "far_key",
    "min_negatives_for_far", "pair_distances", "tar_unmeasurable_reason",
    "clustering_metrics", "eer", "iter_nearest_neighbors", "knn_accuracy", "knn_predict",
    "nearest_neighbors", "retrieval_metrics", "roc_curve", "tar_at_far",
    "verification_metrics",
]
