"""The softmax, proxy and centre losses against brute-force numpy loops.

Each reference is written from the loss's definition (PML's, see the docstrings): plain
Python loops over anchors, pairs, proxies or classes, in float64, with ``np.arccos`` and
explicit index lists, sharing no code with tsm. Values, statistics and gradients are
compared under ``jax.enable_x64`` (tsm computes in float64 when given float64), the
gradients against central finite differences of the numpy reference; one float32 case
per loss checks the production precision.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses

B, D, C = 10, 4, 12  # one batch shape for every case: one compilation per loss


# ----------------------------------------------------------------------------- data


def make_batch(kind: str, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=B)
  if kind == "random":
    x = rng.normal(size=(B, D))
  elif kind == "ties":
    # A small grid without zero: duplicated rows, many exactly repeated similarities.
    x = rng.choice([-1.0, 1.0, 2.0], size=(B, D))
    x[3] = x[0]
    x[7] = x[1]
    labels[7] = labels[1]
  elif kind == "one_class":
    x = rng.normal(size=(B, D))
    labels = np.zeros(B, int)
  elif kind == "singletons":
    x = rng.normal(size=(B, D))
    labels = rng.permutation(B)
  elif kind == "identical":
    x = np.tile(rng.normal(size=(1, D)), (B, 1))
  elif kind == "absent":  # classes 1 and 4 never appear
    x = rng.normal(size=(B, D))
    labels = rng.choice([0, 2, 3, 5], size=B)
  else:
    raise ValueError(kind)
  return x.astype(np.float64), labels.astype(np.int32)


KINDS = ("random", "ties", "one_class", "singletons", "identical", "absent")


def class_vectors(seed: int = 1):
  return np.random.default_rng(seed).normal(size=(C, D))


def unit(v):
  n = math.sqrt(sum(t * t for t in v))
  return [t / n for t in v] if n > 0 else [0.0 for _ in v]


def cos(u, v):
  return sum(a * b for a, b in zip(unit(u), unit(v)))


def lse(values):
  m = max(values)
  return m + math.log(sum(math.exp(t - m) for t in values))


# ------------------------------------------------------------------- references


def ref_ntxent(x, y, temperature=0.07):
  n = len(y)
  z = [[cos(x[i], x[j]) / temperature for j in range(n)] for i in range(n)]
  pairs = [(a, p) for a in range(n) for p in range(n) if a != p and y[a] == y[p]]
  negs = {a: [k for k in range(n) if y[k] != y[a]] for a in range(n)}
  stats = dict(num_total=len(pairs), num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for a, p in pairs:
    if negs[a]:  # PML: a batch without negatives gives 0; so does an anchor
      total += lse([z[a][p]] + [z[a][k] for k in negs[a]]) - z[a][p]
      stats["num_active"] += max(z[a][k] for k in negs[a]) > z[a][p] - 1
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    if ps:
      for k in negs[a]:
        stats["num_neg_total"] += 1
        stats["num_neg_active"] += z[a][k] > min(z[a][p] for p in ps) - 1
  return total / max(len(pairs), 1), stats


def ref_supcon(x, y, temperature=0.1):
  n = len(y)
  z = [[cos(x[i], x[j]) / temperature for j in range(n)] for i in range(n)]
  has_pos = any(y[i] == y[j] for i in range(n) for j in range(n) if i != j)
  has_neg = any(y[i] != y[j] for i in range(n) for j in range(n))
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  nonzero = []
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    if not ps:
      continue
    for k in ns:
      stats["num_neg_total"] += 1
      stats["num_neg_active"] += z[a][k] > min(z[a][p] for p in ps) - 1
    if not has_neg:
      continue
    stats["num_total"] += 1
    stats["num_active"] += (bool(ns) and
                            max(z[a][k] for k in ns) > min(z[a][p] for p in ps) - 1)
    denom = lse([z[a][j] for j in range(n) if j != a])
    la = sum(denom - z[a][p] for p in ps) / len(ps)
    if la > 0:
      nonzero.append(la)
  if not (has_pos and has_neg) or not nonzero:
    return 0.0, stats
  return sum(nonzero) / len(nonzero), stats


def ref_npair(x, y, l2_reg=0.0):
  n = len(y)
  pairs = []  # (anchor, positive) per class, in order of the class's first sample
  for c in sorted(set(y.tolist())):
    idx = [i for i in range(n) if y[i] == c]
    if len(idx) >= 2:
      pairs.append((idx[0], idx[1]))
  stats = dict(num_total=len(pairs), num_active=0, num_neg_total=0, num_neg_active=0)
  if not pairs:
    return 0.0, stats
  total = 0.0
  for a, p in pairs:
    logits = [cos(x[a], x[q]) for _, q in pairs]
    target = cos(x[a], x[p])
    total += lse(logits) - target
    others = [cos(x[a], x[q]) for _, q in pairs if q != p]
    stats["num_active"] += bool(others) and max(others) > target - 1
    stats["num_neg_total"] += len(others)
    stats["num_neg_active"] += sum(o > target - 1 for o in others)
  loss = total / len(pairs)
  sq = lambda i: sum(t * t for t in x[i])
  loss += l2_reg * 0.25 * (sum(sq(a) for a, _ in pairs) / len(pairs) +
                           sum(sq(p) for _, p in pairs) / len(pairs))
  return loss, stats


def ref_ms(x, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
  n = len(y)
  s = [[cos(x[i], x[j]) for j in range(n)] for i in range(n)]
  stats = dict(num_total=n, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for a in range(n):
    ps = [p for p in range(n) if p != a and y[p] == y[a]]
    ns = [k for k in range(n) if y[k] != y[a]]
    total += math.log(1 + sum(math.exp(-alpha * (s[a][p] - base)) for p in ps)) / alpha
    total += math.log(1 + sum(math.exp(beta * (s[a][k] - base)) for k in ns)) / beta
    hard_n = [k for k in ns if ps and s[a][k] > min(s[a][p] for p in ps) - eps]
    hard_p = [p for p in ps if ns and s[a][p] < max(s[a][k] for k in ns) + eps]
    stats["num_active"] += bool(hard_n or hard_p)
    stats["num_neg_total"] += len(ns)
    stats["num_neg_active"] += len(hard_n)
  return total / n, stats


def ref_arcface(x, y, w, margin=math.radians(28.6), scale=64.0):
  n = len(y)
  stats = dict(num_total=n, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for i in range(n):
    c = [cos(x[i], w[k]) for k in range(len(w))]
    theta = math.acos(min(1.0, max(-1.0, c[y[i]])))
    if theta <= math.pi - margin:
      target = math.cos(theta + margin)
    else:
      target = math.cos(theta) - margin * math.sin(margin)
    logits = [scale * (target if k == y[i] else c[k]) for k in range(len(w))]
    total += lse(logits) - logits[y[i]]
    others = [logits[k] for k in range(len(w)) if k != y[i]]
    stats["num_active"] += max(others) > logits[y[i]] - 1
    stats["num_neg_total"] += len(others)
    stats["num_neg_active"] += sum(o > logits[y[i]] - 1 for o in others)
  return total / n, stats


def ref_proxy_anchor(x, y, proxies, margin=0.1, alpha=32.0):
  n, num_classes = len(y), len(proxies)
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  pos_total, neg_total, with_pos = 0.0, 0.0, 0
  for c in range(num_classes):
    pos = [i for i in range(n) if y[i] == c]
    neg = [i for i in range(n) if y[i] != c]
    pos_exp = [alpha * (margin - cos(x[i], proxies[c])) for i in pos]
    neg_exp = [alpha * (cos(x[i], proxies[c]) + margin) for i in neg]
    if pos:
      with_pos += 1
      pos_total += math.log(1 + sum(math.exp(e) for e in pos_exp))
    neg_total += math.log(1 + sum(math.exp(e) for e in neg_exp))
    stats["num_total"] += len(pos) + len(neg)
    stats["num_active"] += sum(e >= -1 for e in pos_exp + neg_exp)
    stats["num_neg_total"] += len(neg)
    stats["num_neg_active"] += sum(e >= -1 for e in neg_exp)
  loss = (pos_total / with_pos if with_pos else 0.0) + neg_total / num_classes
  return loss, stats


def ref_center(x, y, centers, scale=16.0, margin=0.0):
  n = len(y)
  seen = [k for k in range(len(centers)) if any(t != 0 for t in centers[k])]
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for i in range(n):
    if y[i] not in seen:
      continue
    logits = {k: scale * (cos(x[i], centers[k]) - (margin if k == y[i] else 0.0))
              for k in seen}
    total += lse(list(logits.values())) - logits[y[i]]
    others = [v for k, v in logits.items() if k != y[i]]
    stats["num_total"] += 1
    stats["num_active"] += bool(others) and max(others) > logits[y[i]] - 1
    stats["num_neg_total"] += len(others)
    stats["num_neg_active"] += sum(o > logits[y[i]] - 1 for o in others)
  return total / max(stats["num_total"], 1), stats


def ref_update_centers(centers, x, y, momentum):
  out = [list(c) for c in centers]
  for k in range(len(centers)):
    rows = [unit(x[i]) for i in range(len(y)) if y[i] == k]
    if not rows:
      continue
    mean = [sum(r[d] for r in rows) / len(rows) for d in range(len(x[0]))]
    if any(t != 0 for t in centers[k]):
      mean = [momentum * c + (1 - momentum) * m for c, m in zip(centers[k], mean)]
    out[k] = unit(mean)
  return np.array(out)


# ------------------------------------------------------- the cases under test

BANK = ref_update_centers(np.zeros((C, D)), *make_batch("random", seed=5), 0.0)

# name -> (tsm fn (x, y, class vectors, valid) -> (loss, stats), reference, has class
# vectors); every test goes through one compiled function per loss and dtype.
CASES = {
    "ntxent": (lambda x, y, w, v: losses.ntxent_loss(x, y, valid=v), ref_ntxent, False),
    "supcon": (lambda x, y, w, v: losses.supcon_loss(x, y, valid=v), ref_supcon, False),
    "npair": (lambda x, y, w, v: losses.npair_loss(x, y, valid=v), ref_npair, False),
    "npair_l2": (lambda x, y, w, v: losses.npair_loss(x, y, l2_reg=0.002, valid=v),
                 lambda x, y: ref_npair(x, y, l2_reg=0.002), False),
    "multi_similarity": (lambda x, y, w, v: losses.multi_similarity_loss(x, y, valid=v),
                         ref_ms, False),
    "arcface": (lambda x, y, w, v: losses.arcface_loss(x, y, w, valid=v), ref_arcface,
                True),
    "proxy_anchor": (lambda x, y, w, v: losses.proxy_anchor_loss(x, y, w, valid=v),
                     ref_proxy_anchor, True),
    "center": (lambda x, y, w, v: losses.center_contrastive_loss(
        x, y, jnp.asarray(BANK, x.dtype), valid=v), lambda x, y: ref_center(x, y, BANK),
               False),
    "center_margin": (
        lambda x, y, w, v: losses.center_contrastive_loss(
            x, y, jnp.asarray(BANK, x.dtype), margin=0.2, valid=v),
        lambda x, y: ref_center(x, y, BANK, margin=0.2), False),
}
ALL = np.ones(B, bool)


def reference(name, x, y, w):
  _, ref, with_w = CASES[name]
  return ref(x, y, w) if with_w else ref(x, y)


def fd_grad(f, a, h=1e-6):
  """Central finite differences of a float64 scalar function of an array."""
  g = np.zeros_like(a)
  for idx in np.ndindex(a.shape):
    ap, am = a.copy(), a.copy()
    ap[idx] += h
    am[idx] -= h
    g[idx] = (f(ap) - f(am)) / (2 * h)
  return g


_JITTED = {}


def run(name, x, y, w=None, valid=ALL, dtype=jnp.float32):
  """``((loss, stats), (d/dx, d/dw))`` of a case, from one jitted function per loss."""
  if name not in _JITTED:
    fn = CASES[name][0]
    _JITTED[name] = jax.jit(jax.value_and_grad(fn, argnums=(0, 2), has_aux=True))
  w = class_vectors() if w is None else w
  return _JITTED[name](jnp.asarray(x, dtype), jnp.asarray(y), jnp.asarray(w, dtype),
                       jnp.asarray(valid))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_value_stats_and_gradient_match_brute_force(name, kind):
  _, _, with_w = CASES[name]
  x, y = make_batch(kind)
  w = class_vectors()
  want, want_stats = reference(name, x, y, w)
  with jax.enable_x64(True):
    (loss, stats), (gx, gw) = run(name, x, y, w, dtype=jnp.float64)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), want, rtol=1e-9, atol=1e-12)
  for field, value in want_stats.items():
    assert float(getattr(stats, field)) == value, field
  assert float(stats.num_easy) == want_stats["num_total"] - want_stats["num_active"]
  np.testing.assert_allclose(
      float(stats.active_ratio), want_stats["num_active"] / max(want_stats["num_total"], 1))
  want_gx = fd_grad(lambda a: reference(name, a, y, w)[0], x)
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(gx))
  if with_w:
    want_gw = fd_grad(lambda a: reference(name, x, y, a)[0], w)
    np.testing.assert_allclose(np.asarray(gw), want_gw, rtol=1e-5, atol=1e-7)
  else:
    np.testing.assert_array_equal(np.asarray(gw), 0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_matches_reference(name):
  x, y = make_batch("random", seed=3)
  w = class_vectors()
  want, _ = reference(name, x, y, w)
  (loss, _), (gx, _) = run(name, x, y, w)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  want_gx = fd_grad(lambda a: reference(name, a, y, w)[0], x)
  scale = np.max(np.abs(want_gx))
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_finite_on_every_batch_kind_and_a_zero_row(name):
  for kind in KINDS:
    x, y = make_batch(kind)
    x[4] = 0.0  # no direction: cosine 0 to everything, finite gradients
    (loss, stats), (gx, gw) = run(name, x, y)
    for value in (loss, gx, gw, *stats):
      assert np.all(np.isfinite(np.asarray(value))), kind


@pytest.mark.parametrize("kind,name", [
    (kind, name) for kind in ("singletons", "one_class") for name in ("ntxent", "supcon",
                                                                       "npair")])
def test_degenerate_batches_learn_nothing_where_nothing_can_be_learnt(kind, name):
  # Zero loss and zero gradient: no positive pair (N-pair, NT-Xent, SupCon on
  # singletons), a single class (no negative: NT-Xent, SupCon; one pair: N-pair).
  (loss, stats), (gx, _) = run(name, *make_batch(kind))
  assert float(loss) == 0.0
  np.testing.assert_array_equal(np.asarray(gx), 0.0)
  assert float(stats.num_active) == 0.0


def test_supcon_averages_over_anchors_with_non_zero_loss_like_pml():
  # Class 0 (two copies of e1) is solved: its anchors' loss log(1 + 2 e^-100) rounds to
  # exactly 0 and PML's AvgNonZeroReducer leaves them out of the mean. Class 1 (e2,
  # -e2): each anchor's softmax is over {e1, e1, -e2} with logits 0, 0, -100.
  x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  y = jnp.array([0, 0, 1, 1])
  loss, stats = jax.jit(lambda a: losses.supcon_loss(a, y, temperature=0.01))(x)
  np.testing.assert_allclose(float(loss), 100.0 + math.log(2.0), rtol=1e-6)
  assert float(stats.num_total) == 4 and float(stats.num_active) == 2


@pytest.mark.parametrize("name", ["ntxent", "supcon", "npair", "multi_similarity"])
def test_identical_embeddings_have_zero_gradient_through_the_normalisation(name):
  # All rows equal: every cosine is 1 and stays 1 under any common move of the rows.
  (_, _), (gx, _) = run(name, *make_batch("identical"))
  np.testing.assert_allclose(np.asarray(gx), 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "singletons"])
@pytest.mark.parametrize("name", list(CASES))
def test_nan_in_gives_nan_out(name, kind):
  x, y = make_batch(kind)
  x[2, 1] = np.nan
  (loss, _), _ = run(name, x, y)
  assert np.isnan(float(loss))


@pytest.mark.parametrize("name", list(CASES))
def test_padding_rows_are_ignored(name):
  x, y = make_batch("random", seed=7)
  keep = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
  want, _ = reference(name, x[keep], y[keep], class_vectors())
  xp = x.copy()
  xp[~keep] = 1e3  # junk in the padding rows
  (loss, stats), (gx, _) = run(name, xp, y, valid=keep)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(gx)[~keep], 0.0)
  pos = [np.linalg.norm(x[i] - x[j]) for i in range(B) for j in range(i + 1, B)
         if keep[i] and keep[j] and y[i] == y[j]]
  np.testing.assert_allclose(float(stats.mean_pos_dist), np.mean(pos), rtol=1e-5)


def test_margin_schedules_accumulate_the_new_stats():
  from tsm import margins
  sched = margins.dams(initial_margin=0.2, threshold=0.95, increment=0.05)
  state, total, easy = sched.init(), 0.0, 0.0
  for name in ("ntxent", "arcface", "proxy_anchor"):
    (_, stats), _ = run(name, *make_batch("random"))
    state = sched.accumulate(state, stats)
    total += float(stats.num_total)
    easy += float(stats.num_total) - float(stats.num_active)
  assert float(state.num_total) == total and float(state.num_easy) == easy


def test_mean_pair_distances_are_euclidean_over_the_batch_pairs():
  x, y = make_batch("random", seed=2)
  (_, stats), _ = run("ntxent", x, y)
  pos = [np.linalg.norm(x[i] - x[j]) for i in range(B) for j in range(i + 1, B)
         if y[i] == y[j]]
  neg = [np.linalg.norm(x[i] - x[j]) for i in range(B) for j in range(i + 1, B)
         if y[i] != y[j]]
  np.testing.assert_allclose(float(stats.mean_pos_dist), np.mean(pos), rtol=1e-5)
  np.testing.assert_allclose(float(stats.mean_neg_dist), np.mean(neg), rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_jit_and_vmap_agree_with_one_batch_at_a_time(name):
  fn = CASES[name][0]
  batches = [make_batch(k, seed=s) for s, k in enumerate(("random", "ties", "absent"))]
  xs = jnp.asarray(np.stack([b[0] for b in batches]), jnp.float32)
  ys = jnp.asarray(np.stack([b[1] for b in batches]))
  w = jnp.asarray(class_vectors(), jnp.float32)
  batched = jax.jit(jax.vmap(lambda a, b: fn(a, b, w, None)[0]))(xs, ys)
  one = [float(run(name, xs[i], ys[i])[0][0]) for i in range(len(batches))]
  np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)


# ------------------------------------------------------------------- centre rule


def test_update_centers_by_hand():
  centers = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
  x = jnp.array([[0.0, 2.0], [0.0, 5.0], [3.0, 4.0], [-1.0, 0.0]])
  y = jnp.array([0, 0, 1, 1])
  update = jax.jit(losses.update_centers, static_argnames="momentum")
  new = update(centers, x, y, momentum=0.5)
  # Class 0: mean of unit rows (0, 1); 0.5 (1, 0) + 0.5 (0, 1) renormalised.
  np.testing.assert_allclose(new[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
  # Class 1 had no centre: its mean direction, mean((0.6, 0.8), (-1, 0)) = (-0.2, 0.4).
  np.testing.assert_allclose(new[1], np.array([-0.2, 0.4]) / math.hypot(0.2, 0.4),
                             rtol=1e-6)
  # Class 2 is absent from the batch: unchanged.
  np.testing.assert_array_equal(new[2], centers[2])
  # Momentum 1 keeps seen centres (renormalised), 0 takes the batch direction.
  np.testing.assert_allclose(update(centers, x, y, momentum=1.0)[0], [1.0, 0.0])
  np.testing.assert_allclose(update(centers, x, y, momentum=0.0)[0], [0.0, 1.0])
  # Against the loop reference on a random batch, with padding ignored.
  xr, yr = make_batch("absent", seed=4)
  bank = np.asarray(BANK)
  got = update(jnp.asarray(bank, jnp.float32), jnp.asarray(xr, jnp.float32),
               jnp.asarray(yr), momentum=0.9, valid=jnp.asarray(np.arange(B) < 8))
  np.testing.assert_allclose(np.asarray(got),
                             ref_update_centers(bank, xr[:8], yr[:8], 0.9), rtol=1e-5,
                             atol=1e-6)


def test_center_contrastive_apply_updates_then_scores_and_never_trains_the_bank():
  pl = losses.center_contrastive(C, momentum=0.5)
  variables = pl.init(jax.random.PRNGKey(0), D)
  assert variables.params == {}
  np.testing.assert_array_equal(variables.state["centers"], np.zeros((C, D)))
  x, y = make_batch("absent", seed=6)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  loss, stats, state = jax.jit(pl.apply)(variables.params, variables.state, x, y, 0.3)
  want_bank = ref_update_centers(np.zeros((C, D)), np.asarray(x, np.float64),
                                 np.asarray(y), 0.5)
  np.testing.assert_allclose(state["centers"], want_bank, rtol=1e-5, atol=1e-6)
  want, _ = ref_center(np.asarray(x, np.float64), np.asarray(y), want_bank)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)  # margin 0: schedule ignored
  assert float(stats.num_total) == B  # every batch class has a centre after the update
  g = jax.jit(jax.grad(lambda s: pl.apply({}, s, x, y, 0.0)[0]))(variables.state)
  np.testing.assert_array_equal(g["centers"], 0.0)
  # With the schedule's margin.
  pm = losses.center_contrastive(C, momentum=0.5, margin_from_schedule=True)
  loss_m, _, _ = jax.jit(pm.apply)({}, variables.state, x, y, 0.3)
  want_m, _ = ref_center(np.asarray(x, np.float64), np.asarray(y), want_bank, margin=0.3)
  np.testing.assert_allclose(float(loss_m), want_m, rtol=1e-5)


# ------------------------------------------------------------ parametric losses


@pytest.mark.parametrize("make,key,ref", [
    (losses.arcface, "class_weights", ref_arcface),
    (losses.proxy_anchor, "proxies", ref_proxy_anchor),
])
def test_parametric_init_and_apply(make, key, ref):
  pl = make(C)
  variables = pl.init(jax.random.PRNGKey(0), D)
  w = variables.params[key]
  assert w.shape == (C, D) and w.dtype == jnp.float32 and variables.state == {}
  x, y = make_batch("random", seed=8)
  loss, stats, state = jax.jit(pl.apply)(variables.params, {}, jnp.asarray(x, jnp.float32),
                                         jnp.asarray(y), 0.25)
  assert state == {}
  # The schedule's margin is ignored by default, used with margin_from_schedule.
  np.testing.assert_allclose(float(loss), ref(x, y, np.asarray(w, np.float64))[0],
                             rtol=1e-5)
  loss_m, _, _ = jax.jit(make(C, margin_from_schedule=True).apply)(
      variables.params, {}, jnp.asarray(x, jnp.float32), jnp.asarray(y), 0.25)
  np.testing.assert_allclose(float(loss_m),
                             ref(x, y, np.asarray(w, np.float64), margin=0.25)[0],
                             rtol=1e-5)
  grads = jax.jit(jax.grad(lambda p: pl.apply(p, {}, jnp.asarray(x, jnp.float32),
                                      jnp.asarray(y), 0.0)[0]))(variables.params)
  assert grads[key].shape == (C, D) and np.all(np.isfinite(grads[key]))
  assert np.any(grads[key] != 0)


def test_proxy_anchor_init_follows_pml_kaiming_fan_out():
  w = losses.proxy_anchor(400).init(jax.random.PRNGKey(1), 64).params["proxies"]
  np.testing.assert_allclose(float(jnp.std(w)), math.sqrt(2 / 400), rtol=0.02)


def test_arcface_continuation_beyond_pi_minus_margin():
  # A sample opposite its class weight: theta = pi > pi - m, PML's cos(theta) - m sin(m).
  m = 0.5
  x = jnp.array([[1.0, 0.0]])
  w = jnp.array([[-1.0, 0.0], [0.0, 1.0]])
  loss, _ = jax.jit(lambda a: losses.arcface_loss(a, jnp.array([0]), w, margin=m,
                                                  scale=1.0))(x)
  target = -1.0 - m * math.sin(m)
  np.testing.assert_allclose(float(loss), math.log(math.exp(target) + 1.0) - target,
                             rtol=1e-6)
  g = jax.jit(jax.grad(lambda a: losses.arcface_loss(a, jnp.array([0]), w, margin=m)[0]))(x)
  assert np.all(np.isfinite(g))
  # A sample exactly on its class weight (cos = 1, where d acos / d cos is infinite).
  xw = jnp.array([[-3.0, 0.0]])
  g = jax.jit(jax.grad(lambda a: losses.arcface_loss(a, jnp.array([0]), w, margin=m)[0]))(xw)
  assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,match", [
    (lambda: losses.ntxent_loss(jnp.ones((4,)), jnp.zeros(4, int)), "embeddings"),
    (lambda: losses.supcon_loss(jnp.ones((4, 2)), jnp.zeros(4)), "labels"),
    (lambda: losses.npair_loss(jnp.ones((4, 2)), jnp.zeros(3, int)), "labels"),
    (lambda: losses.ntxent_loss(jnp.ones((4, 2)), jnp.zeros(4, int), temperature=0.0),
     "temperature"),
    (lambda: losses.multi_similarity_loss(jnp.ones((4, 2)), jnp.zeros(4, int), beta=-1),
     "beta"),
    (lambda: losses.arcface_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 5))),
     "class_weights"),
    (lambda: losses.proxy_anchor_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones(3)),
     "proxies"),
    (lambda: losses.center_contrastive_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                            jnp.ones((3, 4))), "centers"),
    (lambda: losses.update_centers(jnp.ones((3, 2)), jnp.ones((4, 2)), jnp.zeros(4, int),
                                   momentum=1.5), "momentum"),
    (lambda: losses.arcface(0), "num_classes"),
    (lambda: losses.arcface_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 2)),
                                 margin=28.6), "radians"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
