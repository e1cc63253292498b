"""Every loss's ``distance=`` options against brute-force loops of PML's rules.

The references are written the way pytorch-metric-learning 2.9 computes its losses: a
distance object's matrix (``mat[query, ref]``; a similarity for ``CosineSimilarity`` and
``DotProductSimilarity``, ``is_inverted``), its ``margin(x, y)`` (``y - x`` when inverted),
the index lists of all pairs / triplets, then the reducer. The margins are given in
PML's units and mapped to tsm's (distance units: ``-m`` for a dot-product similarity,
``1 - m`` for a cosine similarity), so the tests check the mapping docs/pml.md states.
A row of zero variance has no SNR distance as a query (PML: inf or NaN); tsm and the
references leave its anchor terms out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import distances, losses

INVERTED = ("cosine", "dot_product")
LOSS_DISTANCES = distances.LOSS_DISTANCES


# --- PML's distance objects and rules, in numpy. ---


def pml_mat(x, kind, normalize):
  """PML's ``distance(x)``: ``[B, B]``, row = query."""
  x = np.asarray(x, np.float64)
  if normalize or kind == "cosine":
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norm, 1e-12)  # torch.nn.functional.normalize
  if kind in INVERTED:
    return x @ x.T
  b = len(x)
  out = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      if kind == "snr":
        signal = np.var(x[i], ddof=1)
        out[i, j] = np.var(x[j] - x[i], ddof=1) / signal if signal > 0 else np.nan
      else:
        sq = np.sum((x[i] - x[j]) ** 2)
        out[i, j] = sq if kind == "squared_euclidean" else np.sqrt(sq)
  return out


def pml_margin(kind, x, y):
  return y - x if kind in INVERTED else x - y


def tsm_margin(kind, m):
  """A PML margin that is a position on the distance's scale, in tsm's units."""
  return {"dot_product": -m, "cosine": 1.0 - m}.get(kind, m)


def pml_logits(x, kind, normalize):
  """The softmax losses' matrix: ``if not self.distance.is_inverted: mat = -mat``."""
  mat = pml_mat(x, kind, normalize)
  return mat if kind in INVERTED else -mat


def anchors_of(x, kind):
  """Rows that may be a query (an anchor): all but SNR's rows of zero variance."""
  if kind != "snr":
    return np.ones(len(x), bool)
  return np.var(np.asarray(x, np.float64), axis=1) > 0


def all_pairs(labels, anchors):
  b = len(labels)
  pos = [(i, j) for i in range(b) for j in range(b)
         if i != j and labels[i] == labels[j] and anchors[i]]
  neg = [(i, j) for i in range(b) for j in range(b)
         if labels[i] != labels[j] and anchors[i]]
  return pos, neg


def all_triplets(labels, anchors):
  b = len(labels)
  return [(a, p, n) for a in range(b) for p in range(b) for n in range(b)
          if anchors[a] and a != p and labels[a] == labels[p] and labels[n] != labels[a]]


def logsumexp(values):
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return 0.0  # PML's lmu.logsumexp fills an empty row with 0
  top = values.max()
  return top + np.log(np.sum(np.exp(values - top)))


def avg_nonzero(values):
  values = np.asarray(values, np.float64)
  nonzero = values[values > 0]
  return float(nonzero.mean()) if nonzero.size else 0.0


def mean(values):
  return float(np.mean(values)) if len(values) else 0.0


def ref_triplet(x, labels, kind, margin, normalize=False):
  mat = pml_mat(x, kind, normalize)
  terms = [max(0.0, pml_margin(kind, mat[a, p], mat[a, n]) + margin)
           for a, p, n in all_triplets(labels, anchors_of(x, kind))]
  return avg_nonzero(terms)


def ref_contrastive(x, labels, kind, pos_margin, neg_margin, normalize=False):
  """PML's per-pair hinges, squared and averaged over all pairs as tsm's rule."""
  mat = pml_mat(x, kind, normalize)
  pos, neg = all_pairs(labels, anchors_of(x, kind))
  terms = ([max(0.0, pml_margin(kind, mat[i, j], pos_margin)) ** 2 for i, j in pos]
           + [max(0.0, pml_margin(kind, neg_margin, mat[i, j])) ** 2 for i, j in neg])
  return mean(terms)


def ref_lifted(x, labels, kind, pos_margin, neg_margin, normalize=True):
  mat = pml_mat(x, kind, normalize)
  pos, neg = all_pairs(labels, anchors_of(x, kind))
  if not pos or not neg:
    return 0.0
  out = []
  for a, p in pos:
    rest = [pml_margin(kind, neg_margin, mat[i, n]) for i, n in neg if i in (a, p)]
    j = logsumexp(rest) + pml_margin(kind, mat[a, p], pos_margin)
    out.append(max(0.0, j) ** 2 / 2)
  return mean(out)


def ref_generalized_lifted(x, labels, kind, pos_margin, neg_margin, normalize=True):
  mat = pml_mat(x, kind, normalize)
  anchors = anchors_of(x, kind)
  pos, neg = all_pairs(labels, anchors)
  out = []
  for a in np.flatnonzero(anchors):
    lp = logsumexp([pml_margin(kind, mat[i, j], pos_margin) for i, j in pos if i == a])
    ln = logsumexp([pml_margin(kind, neg_margin, mat[i, j]) for i, j in neg if i == a])
    out.append(max(0.0, lp + ln))
  return mean(out)


def ref_margin(x, labels, kind, alpha, beta, normalize=True):
  mat = pml_mat(x, kind, normalize)
  pos_l, neg_l = [], []
  for a, p, n in all_triplets(labels, anchors_of(x, kind)):
    pos_l.append(max(0.0, pml_margin(kind, mat[a, p], beta) + alpha))
    neg_l.append(max(0.0, pml_margin(kind, beta, mat[a, n]) + alpha))
  divisor = sum(v > 0 for v in pos_l) + sum(v > 0 for v in neg_l)
  return (sum(pos_l) + sum(neg_l)) / divisor if divisor else 0.0


def ref_nca(x, labels, kind, scale, normalize=True):
  mat = pml_logits(x, kind, normalize)
  anchors = anchors_of(x, kind)
  out = []
  for i in np.flatnonzero(anchors):
    z = scale * np.delete(mat[i], i)
    same = np.delete(labels == labels[i], i)
    if not same.any():
      continue
    lse = logsumexp(z)
    out.append(lse - logsumexp(z[same]))
  return mean(out)


def ref_ntxent(x, labels, kind, temperature, normalize=True):
  mat = pml_logits(x, kind, normalize)
  pos, neg = all_pairs(labels, anchors_of(x, kind))
  if not pos or not neg:
    return 0.0
  out = []
  for a, p in pos:
    z_ap = mat[a, p] / temperature
    z_an = [mat[i, n] / temperature for i, n in neg if i == a]
    out.append(logsumexp([z_ap] + z_an) - z_ap)
  return mean(out)


def ref_supcon(x, labels, kind, temperature, normalize=True):
  mat = pml_logits(x, kind, normalize)
  pos, neg = all_pairs(labels, anchors_of(x, kind))
  if not pos or not neg:
    return 0.0
  out = []
  for a in range(len(labels)):
    p_a = [j for i, j in pos if i == a]
    others = p_a + [j for i, j in neg if i == a]
    if not p_a:
      out.append(0.0)
      continue
    lse = logsumexp([mat[a, j] / temperature for j in others])
    out.append(-np.mean([mat[a, j] / temperature - lse for j in p_a]))
  return avg_nonzero(out)


# --- batches (one shape: the loss's operations are compiled once): random with ties,
# and the degenerate ones. ---


def _ties(seed=0):
  """Small integer components: many exactly equal distances; two duplicate rows."""
  rng = np.random.default_rng(seed)
  x = rng.integers(-2, 3, size=(9, 5)).astype(np.float32)
  x[np.all(x == 0, axis=1)] = 1.0
  x[4] = x[1]
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0])
  return x, labels


def _random(seed=1):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(9, 5)).astype(np.float32),
          np.array([0, 1, 1, 2, 0, 2, 1, 0, 2]))


def _one_class():
  x, _ = _random(2)
  return x, np.zeros(9, np.int64)


def _identical():
  x = np.tile(np.array([[0.3, -0.5, 0.2, 0.9, -0.1]], np.float32), (9, 1))
  return x, np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])


def _degenerate_rows():
  """A zero row and a constant row (zero variance: no SNR distance as a query)."""
  x, labels = _random(3)
  x[2] = 0.0
  x[5] = 0.25
  return x, labels


BATCHES = {"ties": _ties, "random": _random, "one_class": _one_class,
           "identical": _identical, "degenerate_rows": _degenerate_rows}


# --- (tsm call, reference) per loss, margins in PML units. ---


# Each gives ``(loss of the embeddings, PML's value)`` (``reference=False``: no value,
# for tracing). Margins are not round numbers:
# the integer batch's distances are rationals, and a hinge exactly at 0 is a rounding tie
# for the reducers that count non-zero terms.


def _triplet(x, labels, kind, reference=True):
  m = 0.37
  return (lambda e: losses.triplet_margin_loss(e, labels, m, distance=kind,
                                               reduction="mean_nonzero"),
          reference and ref_triplet(x, labels, kind, m))


def _contrastive(x, labels, kind, reference=True):
  pm, nm = {"dot_product": (0.6, 0.2), "cosine": (0.8, 0.3)}.get(kind, (0.1, 1.2))
  return (lambda e: losses.contrastive_loss(e, labels, tsm_margin(kind, nm),
                                            distance=kind,
                                            positive_margin=tsm_margin(kind, pm)),
          reference and ref_contrastive(x, labels, kind, pm, nm))


def _lifted(x, labels, kind, reference=True):
  pm, nm = {"dot_product": (0.9, 0.1), "cosine": (0.9, 0.1)}.get(kind, (0.1, 1.0))
  return (lambda e: losses.lifted_structure_loss(e, labels, neg_margin=tsm_margin(kind, nm),
                                                 pos_margin=tsm_margin(kind, pm),
                                                 distance=kind),
          reference and ref_lifted(x, labels, kind, pm, nm))


def _generalized_lifted(x, labels, kind, reference=True):
  pm, nm = {"dot_product": (0.9, 0.1), "cosine": (0.9, 0.1)}.get(kind, (0.1, 1.0))
  return (lambda e: losses.generalized_lifted_structure_loss(
      e, labels, neg_margin=tsm_margin(kind, nm), pos_margin=tsm_margin(kind, pm),
      distance=kind), reference and ref_generalized_lifted(x, labels, kind, pm, nm))


def _margin(x, labels, kind, reference=True):
  # beta +- alpha != 1: a zero row is at Euclidean distance 1 from every unit row.
  alpha, beta = 0.137, {"dot_product": 0.411, "cosine": 0.411}.get(kind, 1.171)
  return (lambda e: losses.margin_loss(e, labels, margin=alpha,
                                       beta=tsm_margin(kind, beta), distance=kind),
          reference and ref_margin(x, labels, kind, alpha, beta))


def _nca(x, labels, kind, reference=True):
  return (lambda e: losses.nca_loss(e, labels, softmax_scale=2.0, distance=kind),
          reference and ref_nca(x, labels, kind, 2.0))


def _ntxent(x, labels, kind, reference=True):
  return (lambda e: losses.ntxent_loss(e, labels, temperature=0.5, distance=kind),
          reference and ref_ntxent(x, labels, kind, 0.5))


def _supcon(x, labels, kind, reference=True):
  return (lambda e: losses.supcon_loss(e, labels, temperature=0.5, distance=kind),
          reference and ref_supcon(x, labels, kind, 0.5))


LOSSES = {"triplet": _triplet, "contrastive": _contrastive, "lifted": _lifted,
          "generalized_lifted": _generalized_lifted, "margin": _margin, "nca": _nca,
          "ntxent": _ntxent, "supcon": _supcon}


@pytest.mark.parametrize("kind", LOSS_DISTANCES)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_matches_pml_rule_with_finite_gradients(loss, kind):
  def value_and_grad(x, labels):
    fn, _ = LOSSES[loss](x, labels, kind, reference=False)
    return jax.value_and_grad(lambda e: fn(e)[0])(x)

  compiled = jax.jit(value_and_grad)  # One compilation: the batches share a shape.
  for batch, make in BATCHES.items():
    x, labels = make()
    _, want = LOSSES[loss](x, labels, kind)
    value, grad = compiled(jnp.asarray(x), jnp.asarray(labels))
    np.testing.assert_allclose(float(value), want, rtol=2e-5, atol=2e-6, err_msg=batch)
    assert np.all(np.isfinite(np.asarray(grad))), batch


# --- the paths with explicit tuples, a reference set and the mining modes. ---


def _pml_cross(x, r, kind):
  """PML's ``distance(query=x, ref=r)`` for embeddings taken as given."""
  x, r = np.asarray(x, np.float64), np.asarray(r, np.float64)
  if kind == "dot_product":
    return x @ r.T
  # A query of zero variance: inf, as PML's.
  return np.array([[np.var(b - a, ddof=1) / np.var(a, ddof=1) if np.var(a) > 0 else np.inf
                    for b in r] for a in x])


@pytest.mark.parametrize("kind", ("dot_product", "snr"))
def test_reference_set_and_explicit_tuples_follow_the_query_orientation(kind):
  x, labels = _random(4)
  r, ref_labels = _random(5)
  mat, m = _pml_cross(x, r, kind), 0.37
  terms = [max(0.0, pml_margin(kind, mat[a, p], mat[a, n]) + m)
           for a in range(9) for p in range(9) for n in range(9)
           if labels[a] == ref_labels[p] and labels[a] != ref_labels[n]]
  got, _ = losses.triplet_margin_loss(x, labels, m, distance=kind, ref_embeddings=r,
                                      ref_labels=ref_labels, reduction="mean_nonzero")
  np.testing.assert_allclose(float(got), avg_nonzero(terms), rtol=2e-5)
  # Explicit triplets (anchor, positive, negative) = rows of x, r and r reversed.
  anchor, positive, negative = x, r, r[::-1]
  d_ap = np.diag(_pml_cross(anchor, positive, kind))
  d_an = np.diag(_pml_cross(anchor, negative, kind))
  want = np.mean(np.maximum(pml_margin(kind, d_ap, d_an) + m, 0.0))
  got, _ = losses.triplet_margin_loss_from_triplets(anchor, positive, negative, m,
                                                    distance=kind)
  np.testing.assert_allclose(float(got), want, rtol=2e-5)
  same = labels == ref_labels
  nm = 0.2 if kind == "dot_product" else 1.2
  hinge = np.where(same, np.maximum(pml_margin(kind, d_ap, 0.0), 0.0),
                   np.maximum(pml_margin(kind, nm, d_ap), 0.0))
  got, _ = losses.contrastive_loss_from_pairs(anchor, positive, same,
                                              tsm_margin(kind, nm), distance=kind,
                                              positive_margin=tsm_margin(kind, 0.0))
  np.testing.assert_allclose(float(got), np.mean(hinge ** 2), rtol=2e-5)


def _band_reference(dist, labels, margin, mining):
  """tsm's triplet modes (module docstring of tsm.losses._triplet), brute force."""
  b = len(labels)
  terms = []
  for a in range(b):
    pos = [p for p in range(b) if p != a and labels[p] == labels[a]]
    neg = [n for n in range(b) if labels[n] != labels[a]]
    if mining == "batch_hard":
      if pos and neg:
        p = max(pos, key=lambda j: dist[a, j])
        n = min(neg, key=lambda j: dist[a, j])
        terms.append(max(0.0, dist[a, p] + margin - dist[a, n]))
      continue
    for p in pos:
      for n in neg:
        t = dist[a, p] + margin
        if mining == "semihard" and not dist[a, p] < dist[a, n] < t:
          continue
        if mining == "hard" and not dist[a, n] < dist[a, p]:
          continue
        terms.append(max(0.0, t - dist[a, n]))
  return mean(terms)


@pytest.mark.parametrize("kind", ("dot_product", "snr"))
def test_triplet_mining_modes_with_the_new_distances(kind):
  x, labels = _random(6)
  dist = -pml_mat(x, kind, False) if kind == "dot_product" else pml_mat(x, kind, False)
  for mining in ("semihard", "hard", "batch_hard"):
    got, _ = losses.triplet_margin_loss(x, labels, 0.37, distance=kind, mining=mining)
    np.testing.assert_allclose(float(got), _band_reference(dist, labels, 0.37, mining),
                               rtol=2e-5, atol=2e-6, err_msg=mining)


# --- tsm.distances and evaluation by the dot product. ---


def test_pairwise_and_paired_new_distances_match_numpy():
  x, _ = _degenerate_rows()
  y, _ = _random(7)
  np.testing.assert_allclose(distances.pairwise_distances(x, y, distance="dot_product"),
                             -(x.astype(np.float64) @ y.T), rtol=1e-5, atol=1e-6)
  want = _pml_cross(x, y, "snr")       # rows 2 and 5 have no variance: inf, as PML
  got = np.asarray(distances.pairwise_distances(x, y, distance="snr"))
  assert np.all(np.isinf(got[[2, 5]])) and np.all(np.isinf(want[[2, 5]]))
  keep = [i for i in range(9) if i not in (2, 5)]
  np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(distances.paired_distances(x, y, distance="snr"))[keep],
                             np.diag(want)[keep], rtol=1e-5)
  self_snr = np.asarray(distances.pairwise_snr(x))
  assert np.all(np.diag(self_snr)[keep] == 0.0)
  g = jax.grad(lambda e: jnp.sum(jnp.where(jnp.isfinite(distances.pairwise_snr(e)),
                                           distances.pairwise_snr(e), 0.0)))(x)
  assert np.all(np.isfinite(np.asarray(g)))


def test_evaluation_and_search_take_dot_product_not_snr():
  from tsm import search  # pylint: disable=import-outside-toplevel
  from tsm.metrics import neighbors  # pylint: disable=import-outside-toplevel
  x, _ = _random(8)
  r, _ = _random(9)
  idx, dist = neighbors.nearest_neighbors(x, r, k=4, distance="dot_product")
  keys = -(x.astype(np.float64) @ r.T)
  want = np.argsort(keys, axis=1, kind="stable")[:, :4]
  np.testing.assert_array_equal(idx, want)
  np.testing.assert_allclose(dist, np.take_along_axis(keys, want, 1), rtol=1e-5)
  ids, _ = search.Index.build(r, distance="dot_product").search(x, k=4)
  np.testing.assert_array_equal(ids, want)
  with pytest.raises(ValueError, match="snr is a loss distance") as info:
    neighbors.nearest_neighbors(x, r, k=4, distance="snr")
  assert "\n" not in str(info.value)


# --- the config: loss.distance, eval.distance. ---


def _config(**loss):
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = config_lib.default_config()
  cfg.data.name = "digits"
  cfg.train.classes_per_batch = 4      # digits' class-disjoint train split has 5 classes
  cfg.loss.update(loss)
  return cfg


@pytest.mark.parametrize("loss, match", [
    (dict(name="ntxent", distance="cosine"),
     "loss.distance='cosine' does not apply to loss.name=ntxent"),
    (dict(distance="snr"), "loss.distance='snr' is not a distance evaluation can rank"),
    (dict(distance="hamming"), "loss.distance: unknown distance 'hamming'"),
])
def test_config_distance_errors_are_one_line(loss, match):
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    config_lib.check_config(_config(**loss))
  assert "\n" not in str(info.value)
  cfg = _config(**loss)
  cfg.eval.distance = "snr"
  with pytest.raises(config_lib.ConfigError):
    config_lib.check_config(cfg)


@pytest.mark.parametrize("name", ("lifted_structure", "generalized_lifted_structure",
                                  "margin", "contrastive", "triplet"))
def test_config_passes_loss_distance(name):
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = _config(name=name, distance="snr")
  cfg.eval.distance = "euclidean"
  config_lib.check_config(cfg)
  fn = config_lib.build_loss(cfg)
  x, labels = _random(10)
  direct = {"lifted_structure": losses.lifted_structure_loss,
            "generalized_lifted_structure": losses.generalized_lifted_structure_loss,
            "margin": losses.margin_loss}
  margin = 0.37
  if name in direct:
    keyword = "margin" if name == "margin" else "neg_margin"
    want, _ = direct[name](x, labels, distance="snr", **{keyword: margin})
  elif name == "triplet":
    want, _ = losses.triplet_margin_loss(x, labels, margin, distance="snr")
  else:
    want, _ = losses.contrastive_loss(x, labels, margin, distance="snr")
  got, _ = fn(jnp.asarray(x), jnp.asarray(labels), margin)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_config_trains_one_step_with_dot_product(tmp_path):
  from fit_helpers import run_config  # pylint: disable=import-outside-toplevel
  cfg = _config(distance="dot_product")
  cfg.model.hidden_sizes = (16,)
  cfg.model.embedding_dim = 8
  cfg.train.epochs = 1
  cfg.train.steps_per_epoch = 1
  cfg.train.progress = False
  cfg.train.tensorboard = False
  cfg.eval.num_negatives = 200
  cfg.eval.max_positives = 1000
  cfg.eval.knn_k = 0
  summary = run_config(cfg, tmp_path / "run")
  assert np.isfinite(summary["test"]["recall@1"]), summary
  # Evaluation ranked by the loss's distance, -x.y: a Euclidean threshold is never < 0.
  assert summary["test"]["threshold"] < 0, summary["test"]


def test_run_directory_without_eval_distance_resumes(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  cfg = _config()
  saved = json.loads(cfg.to_json())
  del saved["eval"]["distance"]        # a run written before the field existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config_lib.prepare(cfg, str(tmp_path))   # no ConfigError: the field is at its default
  cfg.eval.distance = "cosine"
  with pytest.raises(config_lib.ConfigError, match="eval.distance"):
    config_lib.prepare(cfg, str(tmp_path))
