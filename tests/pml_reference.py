"""Independent numpy references of pytorch-metric-learning 2.9's rules (index lists, loops).

Written from PML's source (miners/, losses/cross_batch_memory.py,
utils/loss_and_miner_utils.py), in PML's own representation: lists of index tuples
``(a1, p, a2, n)`` or ``(a, p, n)`` with repetitions; :func:`pair_weights` and
:func:`triplet_weights` count them into the fixed-shape arrays tsm uses.
"""

from __future__ import annotations

import math

import numpy as np


def distances(x, r=None, kind="euclidean"):
  x = np.asarray(x, np.float64)
  r = x if r is None else np.asarray(r, np.float64)
  if kind == "cosine":
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    return 1.0 - np.clip(xn @ rn.T, -1, 1)
  sq = ((x[:, None, :] - r[None, :, :]) ** 2).sum(-1)
  return sq if kind == "squared_euclidean" else np.sqrt(sq)


def all_pairs(labels, ref_labels=None):
  """PML's ``get_all_pairs_indices``: (a1, p, a2, n) index lists."""
  labels = np.asarray(labels)
  same_set = ref_labels is None
  ref = labels if same_set else np.asarray(ref_labels)
  a1, p, a2, n = [], [], [], []
  for i in range(len(labels)):
    for j in range(len(ref)):
      if labels[i] == ref[j]:
        if not (same_set and i == j):
          a1.append(i)
          p.append(j)
      else:
        a2.append(i)
        n.append(j)
  return a1, p, a2, n


def all_triplets(labels, ref_labels=None):
  a1, p, a2, n = all_pairs(labels, ref_labels)
  return to_triplets((a1, p, a2, n))


def to_triplets(pairs):
  """PML's ``convert_to_triplets`` of (a1, p, a2, n)."""
  if len(pairs) == 3:
    return pairs
  a1, p, a2, n = pairs
  out = ([], [], [])
  for i in range(len(a1)):
    for j in range(len(a2)):
      if a1[i] == a2[j]:
        out[0].append(a1[i])
        out[1].append(p[i])
        out[2].append(n[j])
  return out


def to_pairs(tuples):
  """PML's ``convert_to_pairs``."""
  if len(tuples) == 4:
    return tuples
  a, p, n = tuples
  return list(a), list(p), list(a), list(n)


def pair_weights(pairs, b, m):
  a1, p, a2, n = to_pairs(pairs)
  w = np.zeros((b, m))
  np.add.at(w, (np.asarray(a1, int), np.asarray(p, int)), 1)
  np.add.at(w, (np.asarray(a2, int), np.asarray(n, int)), 1)
  return w


def triplet_weights(triplets, b, m):
  a, p, n = triplets
  w = np.zeros((b, m, m))
  np.add.at(w, (np.asarray(a, int), np.asarray(p, int), np.asarray(n, int)), 1)
  return w


def _reduce(terms, reduction):
  terms = np.asarray(terms, np.float64)
  if reduction == "sum":
    return terms.sum()
  if reduction == "mean":
    return terms.sum() / max(len(terms), 1)
  return terms.sum() / max(int(np.count_nonzero(terms > 0)), 1)


def triplet_loss(x, labels, margin, tuples, r=None, distance="euclidean",
                 reduction="mean_nonzero"):
  """PML's ``TripletMarginLoss`` over the triplets of ``tuples`` (pairs converted)."""
  d = distances(x, r, distance)
  a, p, n = to_triplets(tuples)
  terms = [max(0.0, d[i, j] - d[i, k] + margin) for i, j, k in zip(a, p, n)]
  return _reduce(terms, reduction)


def contrastive_loss(x, labels, margin, tuples, r=None, ref_labels=None,
                     distance="euclidean", reduction="mean", positive_margin=0.0):
  """tsm's contrastive terms (``relu(d - m_pos)^2``, ``relu(m - d)^2``) over the pairs of
  ``tuples`` (PML's ``convert_to_pairs``, duplicates kept)."""
  d = distances(x, r, distance)
  a1, p, a2, n = to_pairs(tuples)
  terms = [max(0.0, d[i, j] - positive_margin) ** 2 for i, j in zip(a1, p)]
  terms += [max(0.0, margin - d[i, j]) ** 2 for i, j in zip(a2, n)]
  return _reduce(terms, reduction)


# ---------------------------------------------------------------- miners (PML's rules)


def _ref(x, labels, r, ref_labels):
  same = r is None
  return (np.asarray(x) if same else np.asarray(r),
          np.asarray(labels) if same else np.asarray(ref_labels), same)


def multi_similarity(x, labels, r=None, ref_labels=None, epsilon=0.1):
  """``MultiSimilarityMiner`` with ``CosineSimilarity`` (similarities, PML's form)."""
  rr, rl, same = _ref(x, labels, r, ref_labels)
  s = 1.0 - distances(x, rr, "cosine")
  a1, p, a2, n = all_pairs(labels, None if same else rl)
  out = ([], [], [], [])
  for i in range(len(labels)):
    negs = [s[i, j] for ii, j in zip(a2, n) if ii == i]
    poss = [s[i, j] for ii, j in zip(a1, p) if ii == i]
    for ii, j in zip(a1, p):
      if ii == i and negs and s[i, j] - epsilon < max(negs):
        out[0].append(i)
        out[1].append(j)
    for ii, j in zip(a2, n):
      if ii == i and poss and s[i, j] + epsilon > min(poss):
        out[2].append(i)
        out[3].append(j)
  return out


def pair_margin(x, labels, r=None, ref_labels=None, pos_margin=0.2, neg_margin=0.8):
  rr, rl, same = _ref(x, labels, r, ref_labels)
  d = distances(x, rr)
  a1, p, a2, n = all_pairs(labels, None if same else rl)
  keep_p = [k for k in range(len(a1)) if d[a1[k], p[k]] > pos_margin]
  keep_n = [k for k in range(len(a2)) if d[a2[k], n[k]] < neg_margin]
  return ([a1[k] for k in keep_p], [p[k] for k in keep_p],
          [a2[k] for k in keep_n], [n[k] for k in keep_n])


def hdc(x, labels, r=None, ref_labels=None, filter_percentage=0.5):
  rr, rl, same = _ref(x, labels, r, ref_labels)
  d = distances(x, rr)
  a1, p, a2, n = all_pairs(labels, None if same else rl)
  out = []
  for a, o, largest in ((a1, p, True), (a2, n, False)):
    if not a:
      out += [[], []]
      continue
    vals = np.array([d[i, j] for i, j in zip(a, o)])
    k = int(math.ceil(filter_percentage * len(vals)))
    order = np.argsort(-vals if largest else vals, kind="stable")[:k]
    out += [[a[t] for t in order], [o[t] for t in order]]
  return tuple(out)


def batch_easy_hard(x, labels, r=None, ref_labels=None, pos_strategy="easy",
                    neg_strategy="semihard", allowed_pos_range=None,
                    allowed_neg_range=None):
  """``BatchEasyHardMiner`` with ``LpDistance`` (loops per anchor)."""
  rr, rl, same = _ref(x, labels, r, ref_labels)
  d = distances(x, rr)
  labels = np.asarray(labels)

  def choose(i, kind, strategy, rng, threshold=None):
    cands = [j for j in range(len(rl))
             if (rl[j] == labels[i] and not (same and i == j)) == (kind == "pos")
             and (kind == "pos" or rl[j] != labels[i])]
    if threshold is not None:
      cands = [j for j in cands if (d[i, j] < threshold if kind == "pos"
                                    else d[i, j] > threshold)]
    if rng is not None:
      cands = [j for j in cands if rng[0] <= d[i, j] <= rng[1]]
    if not cands:
      return None
    farthest = (strategy in ("hard", "semihard")) if kind == "pos" else strategy == "easy"
    vals = [d[i, j] for j in cands]
    return cands[int(np.argmax(vals) if farthest else np.argmin(vals))]

  out = ([], [], [], [])
  a1, p, a2, n = all_pairs(labels, None if same else rl)
  for i in range(len(labels)):
    if pos_strategy == "semihard":
      nj = choose(i, "neg", neg_strategy, allowed_neg_range)
      pj = None if nj is None else choose(i, "pos", "semihard", allowed_pos_range,
                                          d[i, nj])
    elif neg_strategy == "semihard":
      pj = choose(i, "pos", pos_strategy, allowed_pos_range)
      nj = None if pj is None else choose(i, "neg", "semihard", allowed_neg_range,
                                          d[i, pj])
    else:
      pj = None if pos_strategy == "all" else choose(i, "pos", pos_strategy,
                                                     allowed_pos_range)
      nj = None if neg_strategy == "all" else choose(i, "neg", neg_strategy,
                                                     allowed_neg_range)
    if pos_strategy == "all":
      out[0].extend(a for a in a1 if a == i)
      out[1].extend(pp for a, pp in zip(a1, p) if a == i)
      if neg_strategy == "all":
        out[2].extend(a for a in a2 if a == i)
        out[3].extend(nn for a, nn in zip(a2, n) if a == i)
      elif nj is not None:
        out[2].append(i)
        out[3].append(nj)
    elif neg_strategy == "all":
      if pj is not None:
        out[0].append(i)
        out[1].append(pj)
      out[2].extend(a for a in a2 if a == i)
      out[3].extend(nn for a, nn in zip(a2, n) if a == i)
    elif pj is not None and nj is not None:
      out[0].append(i)
      out[1].append(pj)
      out[2].append(i)
      out[3].append(nj)
  return out


def triplet_margin(x, labels, r=None, ref_labels=None, margin=0.2, type_of_triplets="all"):
  rr, rl, same = _ref(x, labels, r, ref_labels)
  d = distances(x, rr)
  a, p, n = all_triplets(labels, None if same else rl)
  out = ([], [], [])
  for i, j, k in zip(a, p, n):
    tm = d[i, k] - d[i, j]
    if type_of_triplets == "easy":
      ok = tm > margin
    else:
      ok = tm <= margin
      if type_of_triplets == "hard":
        ok = ok and tm <= 0
      elif type_of_triplets == "semihard":
        ok = ok and tm > 0
    if ok:
      out[0].append(i)
      out[1].append(j)
      out[2].append(k)
  return out


def angular(x, labels, r=None, ref_labels=None, angle=20.0):
  rr, rl, same = _ref(x, labels, r, ref_labels)
  x = np.asarray(x, np.float64)
  rr = np.asarray(rr, np.float64)
  a, p, n = all_triplets(labels, None if same else rl)
  out = ([], [], [])
  for i, j, k in zip(a, p, n):
    center = (x[i] + rr[j]) / 2
    ap = np.linalg.norm(x[i] - rr[j])
    nc = np.linalg.norm(rr[k] - center)
    if np.arctan(ap / (2 * nc)) > np.radians(angle):
      out[0].append(i)
      out[1].append(j)
      out[2].append(k)
  return out


def distance_weighted_probabilities(x, labels, r=None, ref_labels=None, cutoff=0.5,
                                    nonzero_loss_cutoff=1.4):
  rr, rl, _ = _ref(x, labels, r, ref_labels)
  d = float(np.asarray(x).shape[1])
  mat = np.maximum(distances(x, rr), cutoff)
  with np.errstate(all="ignore"):
    log_w = (2.0 - d) * np.log(mat) - ((d - 3) / 2) * np.log(1.0 - 0.25 * mat ** 2)
    bad = ~np.isfinite(log_w)
    mask = np.ones_like(log_w)
    mask[np.asarray(labels)[:, None] == rl[None, :]] = 0
    log_w = log_w * mask
    w = np.exp(log_w - np.max(log_w[~bad]))
    w = w * mask * (mat < nonzero_loss_cutoff)
    w[bad] = 0
    return w / w.sum(axis=1, keepdims=True)


# ----------------------------------------------------------- CrossBatchMemory (PML's)


class CrossBatchMemory:
  """PML's ``CrossBatchMemory`` queue and pair selection, with a pluggable loss."""

  def __init__(self, loss, memory_size, dim, miner=None):
    self.loss, self.memory_size, self.miner = loss, memory_size, miner
    self.embedding_memory = np.zeros((memory_size, dim))
    self.label_memory = np.zeros(memory_size, int)
    self.has_been_filled = False
    self.queue_idx = 0

  def __call__(self, embeddings, labels):
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    b = len(embeddings)
    curr = np.arange(self.queue_idx, self.queue_idx + b) % self.memory_size
    self.embedding_memory[curr] = embeddings
    self.label_memory[curr] = labels
    prev = self.queue_idx
    self.queue_idx = (self.queue_idx + b) % self.memory_size
    if not self.has_been_filled and self.queue_idx <= prev:
      self.has_been_filled = True
    end = self.memory_size if self.has_been_filled else self.queue_idx
    e_mem, l_mem = self.embedding_memory[:end], self.label_memory[:end]
    if self.miner is not None:
      tuples = self.miner(embeddings, labels, e_mem, l_mem)
    else:
      tuples = all_pairs(labels, l_mem)
    tuples = self._remove_self(tuples, curr)
    return self.loss(embeddings, labels, tuples, e_mem, l_mem)

  @staticmethod
  def _remove_self(tuples, curr):
    """PML's ``remove_self_comparisons``: drop (a, p) with p the anchor's own slot."""
    keep = [k for k in range(len(tuples[0])) if tuples[1][k] != curr[tuples[0][k]]]
    if len(tuples) == 3:
      return tuple([t[k] for k in keep] for t in tuples)
    return ([tuples[0][k] for k in keep], [tuples[1][k] for k in keep],
            list(tuples[2]), list(tuples[3]))


def histogram_bins(values, num_bins):
  """PML's ``UniformHistogramMiner`` bin of each value (``s <= v < e``, last bin closed)."""
  values = np.asarray(values, np.float64)
  edges = np.linspace(values.min(), values.max(), num_bins + 1)
  out = np.empty(len(values), int)
  for k, v in enumerate(values):
    for i in range(num_bins):
      last = i == num_bins - 1
      if edges[i] <= v and (v <= edges[i + 1] if last else v < edges[i + 1]):
        out[k] = i
        break
  return out
