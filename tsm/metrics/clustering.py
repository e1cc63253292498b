"""Clustering quality of embeddings: NMI and AMI of k-means (Musgrave et al. 2020).

k-means with k = the number of distinct labels (scikit-learn ``KMeans``, k-means++
initialisation, seeded), scored against the labels with scikit-learn's normalized and
adjusted mutual information. scikit-learn (the training extra) is imported when the
function runs, so ``tsm.metrics`` imports with the core install.
"""

from __future__ import annotations

import numpy as np

from tsm.metrics.neighbors import check_embeddings
from tsm.metrics.retrieval import check_labels


def clustering_metrics(embeddings, labels, seed: int, *, n_init: int = 1) -> dict[str, float]:
  """NMI and AMI between k-means clusters of ``embeddings`` and ``labels``.

  Args:
    embeddings: ``[N, D]`` float embeddings.
    labels: ``[N]`` integer labels; k = number of distinct labels (at least 2, at most N).
    seed: k-means random state.
    n_init: k-means restarts (the best inertia is kept).

  Returns:
    ``{"nmi": ..., "ami": ...}`` as Python floats.
  """
  x = check_embeddings(embeddings, "embeddings")
  labels = check_labels(labels, x.shape[0], "labels")
  k = np.unique(labels).shape[0]
  if not 2 <= k <= x.shape[0]:
    raise ValueError(f"labels have {k} classes; clustering needs between 2 and the number "
                     f"of embeddings ({x.shape[0]}).")
  try:
    # pylint: disable=import-outside-toplevel
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
  except ModuleNotFoundError:
    raise ImportError("clustering_metrics needs scikit-learn: pip install 'tsm[train]'"
                      ) from None
  clusters = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
  return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
          "ami": float(adjusted_mutual_info_score(labels, clusters))}
