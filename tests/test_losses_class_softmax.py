"""ProxyNCA, Normalized Softmax, SoftTriple, SphereFace, Sub-center ArcFace and P2SGrad
against brute-force numpy loops.

Each reference is written from the loss's definition (PML's, see the docstrings): plain
Python loops over samples and class vectors in float64, with ``math.acos`` /
``math.cos(m theta)`` where tsm uses polynomial forms, sharing no code with tsm. Values,
statistics and gradients (embeddings and class vectors, against central finite
differences of the reference) are compared in float64; one float32 case per loss checks
the production precision. The batches (random, ties, one class, singletons, identical
rows, absent classes) are those of ``test_loss_zoo``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_checks as lc
from test_loss_zoo import B, C, D, KINDS, fd_grad, lse, make_batch, unit
from tsm import losses

K = 3  # centres per class (SoftTriple, Sub-center ArcFace)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# ------------------------------------------------------------------- references


def dot(u, v):
  return sum(a * b for a, b in zip(u, v))


def cosines(x, w):
  """``[[cos(x_i, w_k)]]`` by loops, each row normalised once."""
  xs, ws = [unit(r) for r in x], [unit(r) for r in w]
  return [[dot(a, b) for b in ws] for a in xs]


def softmax_ce(logits, target):
  """``(loss, active, neg_total, neg_active)`` of one sample (the class-softmax rule)."""
  others = [v for k, v in enumerate(logits) if k != target]
  zt = logits[target]
  return (lse(logits) - zt, bool(others) and max(others) > zt - 1, len(others),
          sum(o > zt - 1 for o in others))


def mean_ce(per_sample):
  """Mean loss and the ActivityStats counts over ``[(logits, target)]``."""
  stats = dict(num_total=0, num_active=0, num_neg_total=0, num_neg_active=0)
  total = 0.0
  for logits, target in per_sample:
    loss, active, neg_total, neg_active = softmax_ce(logits, target)
    total += loss
    stats["num_total"] += 1
    stats["num_active"] += active
    stats["num_neg_total"] += neg_total
    stats["num_neg_active"] += neg_active
  return total / max(len(per_sample), 1), stats


def ref_proxy_nca(x, y, p, softmax_scale=1.0):
  rows = []
  for i in range(len(y)):
    xi = unit(x[i])
    d = [sum((a - b) ** 2 for a, b in zip(xi, unit(pk))) for pk in p]
    rows.append(([-softmax_scale * dk for dk in d], y[i]))
  return mean_ce(rows)


def ref_normalized_softmax(x, y, w, temperature=0.05):
  c = cosines(x, w)
  return mean_ce([([t / temperature for t in c[i]], y[i]) for i in range(len(y))])


def ref_soft_triple(x, y, centers, margin=0.01, la=20.0, gamma=0.1):
  rows = []
  per_class = len(centers[0])
  cs = cosines(x, [centers[c][k] for c in range(len(centers)) for k in range(per_class)])
  for i in range(len(y)):
    logits = []
    for c in range(len(centers)):
      s = cs[i][c * per_class:(c + 1) * per_class]
      top = max(s)
      e = [math.exp((t - top) / gamma) for t in s]
      sim = sum(ek * t for ek, t in zip(e, s)) / sum(e)
      logits.append(la * (sim - (margin if c == y[i] else 0.0)))
    rows.append((logits, y[i]))
  return mean_ce(rows)


def ref_sphereface(x, y, w, margin=4, scale=1.0):
  rows = []
  cs = cosines(x, w)
  for i in range(len(y)):
    norm = math.sqrt(sum(t * t for t in x[i]))
    c = cs[i]
    theta = math.acos(min(1.0, max(-1.0, c[y[i]])))
    k = math.floor(theta / (math.pi / margin))
    psi = (-1) ** k * math.cos(margin * theta) - 2 * k
    rows.append(([scale * norm * (psi if j == y[i] else c[j]) for j in range(len(w))],
                 y[i]))
  return mean_ce(rows)


def arcface_target(c, margin):
  theta = math.acos(min(1.0, max(-1.0, c)))
  if theta <= math.pi - margin:
    return math.cos(theta + margin)
  return math.cos(theta) - margin * math.sin(margin)


def ref_subcenter_arcface(x, y, w, margin=math.radians(28.6), scale=64.0):
  rows = []
  per_class = len(w[0])
  cs = cosines(x, [w[j][k] for j in range(len(w)) for k in range(per_class)])
  for i in range(len(y)):
    c = [max(cs[i][j * per_class:(j + 1) * per_class]) for j in range(len(w))]
    rows.append(([scale * (arcface_target(c[j], margin) if j == y[i] else c[j])
                  for j in range(len(w))], y[i]))
  return mean_ce(rows)


def ref_p2sgrad(x, y, w):
  c = cosines(x, w)
  total = sum((min(1.0, max(-1.0, c[i][k])) - (k == y[i])) ** 2 for i in range(len(y))
              for k in range(len(w)))
  _, stats = mean_ce([(c[i], y[i]) for i in range(len(y))])  # the cosines as logits
  return total / (len(y) * len(w)), stats


# ------------------------------------------------------- the cases under test

# name -> (tsm fn (x, y, w, valid), reference (x, y, w), shape of w, constructor,
# params key)
CASES = {
    "proxy_nca": (lambda x, y, w, v: losses.proxy_nca_loss(x, y, w, valid=v),
                  ref_proxy_nca, (C, D), losses.proxy_nca, "proxies"),
    "proxy_nca_scale": (
        lambda x, y, w, v: losses.proxy_nca_loss(x, y, w, softmax_scale=3.0, valid=v),
        lambda x, y, w: ref_proxy_nca(x, y, w, softmax_scale=3.0), (C, D), None, None),
    "normalized_softmax": (
        lambda x, y, w, v: losses.normalized_softmax_loss(x, y, w, valid=v),
        ref_normalized_softmax, (C, D), losses.normalized_softmax, "class_weights"),
    "soft_triple": (lambda x, y, w, v: losses.soft_triple_loss(x, y, w, valid=v),
                    ref_soft_triple, (C, K, D), None, None),
    "soft_triple_margin": (
        lambda x, y, w, v: losses.soft_triple_loss(x, y, w, margin=0.3, la=5.0, gamma=0.5,
                                                   valid=v),
        lambda x, y, w: ref_soft_triple(x, y, w, margin=0.3, la=5.0, gamma=0.5),
        (C, K, D), None, None),
    "sphereface": (lambda x, y, w, v: losses.sphereface_loss(x, y, w, valid=v),
                   ref_sphereface, (C, D), losses.sphereface, "class_weights"),
    "sphereface_m3": (
        lambda x, y, w, v: losses.sphereface_loss(x, y, w, margin=3, scale=2.0, valid=v),
        lambda x, y, w: ref_sphereface(x, y, w, margin=3, scale=2.0), (C, D), None, None),
    "subcenter_arcface": (
        lambda x, y, w, v: losses.subcenter_arcface_loss(x, y, w, valid=v),
        ref_subcenter_arcface, (C, K, D), None, None),
    "p2sgrad": (lambda x, y, w, v: losses.p2sgrad_loss(x, y, w, valid=v), ref_p2sgrad,
                (C, D), None, None),
}
ALL = np.ones(B, bool)


def class_vectors(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape)


_JITTED = {}


def run(name, x, y, w=None, valid=ALL, dtype=jnp.float32):
  """``((loss, stats), (d/dx, d/dw))`` of a case, from one jitted function per loss."""
  if name not in _JITTED:
    _JITTED[name] = jax.jit(jax.value_and_grad(CASES[name][0], argnums=(0, 2),
                                               has_aux=True))
  w = class_vectors(CASES[name][2]) if w is None else w
  return _JITTED[name](jnp.asarray(x, dtype), jnp.asarray(y), jnp.asarray(w, dtype),
                       jnp.asarray(valid))


VARIANTS = ("proxy_nca_scale", "soft_triple_margin", "sphereface_m3")
BASE = [name for name in CASES if name not in VARIANTS]  # the other tests: defaults only
SWEEP = ([p for name in CASES if name not in VARIANTS for p in lc.kinds(KINDS, name)] +
         [pytest.param(name, kind, marks=pytest.mark.slow)  # one more compilation each
          for name in VARIANTS for kind in ("random", "ties")])


@pytest.mark.parametrize("name,kind", SWEEP)
def test_value_stats_and_gradient_match_brute_force(name, kind, x64):
  _, ref, shape, _, _ = CASES[name]
  x, y = make_batch(kind)
  w = class_vectors(shape)
  want, want_stats = ref(x, y, w)
  (loss, stats), (gx, gw) = run(name, x, y, w, dtype=jnp.float64)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(float(loss), want, rtol=1e-9, atol=1e-12)
  for field, value in want_stats.items():
    assert float(getattr(stats, field)) == value, field
  assert float(stats.num_easy) == want_stats["num_total"] - want_stats["num_active"]
  np.testing.assert_allclose(np.asarray(gx), fd_grad(lambda a: ref(a, y, w)[0], x),
                             rtol=1e-5, atol=1e-7)
  if kind in ("random", "absent"):  # the class vectors' gradient: two batches suffice
    np.testing.assert_allclose(np.asarray(gw), fd_grad(lambda a: ref(x, y, a)[0], w),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", BASE)
def test_float32_matches_reference(name):
  _, ref, shape, _, _ = CASES[name]
  x, y = make_batch("random", seed=3)
  w = class_vectors(shape)
  want, _ = ref(x, y, w)
  (loss, _), (gx, _) = run(name, x, y, w)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  want_gx = fd_grad(lambda a: ref(a, y, w)[0], x)
  np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-3,
                             atol=1e-5 * np.max(np.abs(want_gx)))


@pytest.mark.parametrize("name", BASE)
def test_finite_on_every_batch_kind_with_a_zero_row_and_a_zero_class_vector(name):
  for kind in KINDS:
    x, y = make_batch(kind)
    x[4] = 0.0  # no direction: cosine 0 to everything, finite gradients
    w = class_vectors(CASES[name][2])
    w[y[0]] = 0.0
    (loss, stats), (gx, gw) = run(name, x, y, w)
    for value in (loss, gx, gw, *stats):
      assert np.all(np.isfinite(np.asarray(value))), kind


@pytest.mark.parametrize("name", BASE)
def test_labels_outside_the_classes_are_no_term(name, x64):
  # Labels C and C + 3 have no class vector: those samples are left out of the mean.
  _, ref, shape, _, _ = CASES[name]
  x, y = make_batch("random", seed=4)
  y = y.copy()
  y[[2, 6]] = [C, C + 3]
  w = class_vectors(shape)
  keep = np.ones(B, bool)
  keep[[2, 6]] = False
  want, want_stats = ref(x[keep], y[keep], w)
  (loss, stats), (gx, _) = run(name, x, y, w, dtype=jnp.float64)
  np.testing.assert_allclose(float(loss), want, rtol=1e-9)
  assert float(stats.num_total) == want_stats["num_total"] == B - 2
  np.testing.assert_array_equal(np.asarray(gx)[~keep], 0.0)


@pytest.mark.parametrize("kind", ["random", "singletons"])
@pytest.mark.parametrize("name", BASE)
def test_nan_in_gives_nan_out(name, kind):
  x, y = make_batch(kind)
  x[2, 1] = np.nan
  (loss, _), _ = run(name, x, y)
  assert np.isnan(float(loss))


@pytest.mark.parametrize("name", BASE)
def test_padding_rows_are_ignored(name):
  _, ref, shape, _, _ = CASES[name]
  x, y = make_batch("random", seed=7)
  keep = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
  w = class_vectors(shape)
  want, _ = ref(x[keep], y[keep], w)
  xp = x.copy()
  xp[~keep] = np.nan  # junk in the padding rows
  (loss, _), (gx, gw) = run(name, xp, y, w, valid=keep)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(gx)[~keep], 0.0)
  assert np.all(np.isfinite(np.asarray(gw)))


@pytest.mark.parametrize("name", BASE)
def test_jit_and_vmap_agree_with_one_batch_at_a_time(name):
  fn, _, shape, _, _ = CASES[name]
  batches = [make_batch(k, seed=s) for s, k in enumerate(("random", "ties", "absent"))]
  xs = jnp.asarray(np.stack([b[0] for b in batches]), jnp.float32)
  ys = jnp.asarray(np.stack([b[1] for b in batches]))
  w = jnp.asarray(class_vectors(shape), jnp.float32)
  batched = jax.jit(jax.vmap(lambda a, b: fn(a, b, w, None)[0]))(xs, ys)
  one = [float(run(name, xs[i], ys[i])[0][0]) for i in range(len(batches))]
  np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-5)


# ------------------------------------------------------------ parametric losses

PARAMETRIC = [
    (losses.proxy_nca, "proxies", (C, D), ref_proxy_nca),
    (losses.normalized_softmax, "class_weights", (C, D), ref_normalized_softmax),
    (lambda n, **kw: losses.soft_triple(n, centers_per_class=K, **kw), "centers",
     (C, K, D), ref_soft_triple),
    (losses.sphereface, "class_weights", (C, D), ref_sphereface),
    (lambda n, **kw: losses.subcenter_arcface(n, sub_centers=K, **kw), "class_weights",
     (C, K, D), ref_subcenter_arcface),
    (losses.p2sgrad, "class_weights", (C, D), ref_p2sgrad),
]


@pytest.mark.parametrize("make,key,shape,ref", PARAMETRIC)
def test_parametric_init_and_apply(make, key, shape, ref):
  pl = make(C)
  variables = pl.init(jax.random.PRNGKey(0), D)
  w = variables.params[key]
  assert w.shape == shape and w.dtype == jnp.float32 and variables.state == {}
  x, y = make_batch("random", seed=8)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  loss, stats, state = jax.jit(pl.apply)(variables.params, {}, xj, yj, 0.25)
  assert state == {}
  # The schedule's margin is ignored by default.
  np.testing.assert_allclose(float(loss), ref(x, y, np.asarray(w, np.float64))[0],
                             rtol=1e-5)
  grads = jax.jit(jax.grad(lambda p: pl.apply(p, {}, xj, yj, 0.0)[0]))(variables.params)
  assert grads[key].shape == shape and np.all(np.isfinite(grads[key]))
  assert np.any(grads[key] != 0)


def test_margin_from_schedule_replaces_the_margin():
  x, y = make_batch("random", seed=9)
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  for make, key, ref in (
      (losses.soft_triple, "centers", ref_soft_triple),
      (losses.subcenter_arcface, "class_weights", ref_subcenter_arcface)):
    pl = make(C, margin_from_schedule=True)
    params = pl.init(jax.random.PRNGKey(2), D).params
    loss, _, _ = jax.jit(pl.apply)(params, {}, xj, yj, 0.2)
    np.testing.assert_allclose(
        float(loss), ref(x, y, np.asarray(params[key], np.float64), margin=0.2)[0],
        rtol=1e-5)


def test_p2sgrad_init_has_unit_rows():
  w = losses.p2sgrad(7).init(jax.random.PRNGKey(3), 16).params["class_weights"]
  np.testing.assert_allclose(np.linalg.norm(np.asarray(w), axis=1), 1.0, rtol=1e-6)


def test_soft_triple_init_follows_pml_kaiming_uniform():
  # kaiming_uniform_(a=sqrt(5)) on PML's [D, C K] tensor: U(-1/sqrt(C K), 1/sqrt(C K)).
  w = losses.soft_triple(100, centers_per_class=10).init(jax.random.PRNGKey(1),
                                                         64).params["centers"]
  bound = 1 / math.sqrt(1000)
  assert float(jnp.max(jnp.abs(w))) <= bound
  np.testing.assert_allclose(float(jnp.std(w)), bound / math.sqrt(3), rtol=0.02)


# ----------------------------------------------------------------- by-hand cases


def test_sphereface_psi_by_hand_across_the_branches():
  # One sample at angle theta to its class weight (2-D), m = 4: psi = (-1)^k cos(4 theta)
  # - 2k with k = floor(4 theta / pi); the other class weight is orthogonal (cos = 0).
  fn = jax.jit(lambda a, b: losses.sphereface_loss(a, jnp.array([0]), b)[0])
  for theta in (0.0, 0.3, 1.0, 2.0, 3.0, math.pi):
    x = jnp.array([[2.0 * math.cos(theta), 2.0 * math.sin(theta)]])
    w = jnp.array([[1.0, 0.0], [0.0, -1.0 if theta < 1.6 else 1.0]])
    loss = fn(x, w)
    k = math.floor(4 * theta / math.pi)
    psi = (-1) ** k * math.cos(4 * theta) - 2 * k
    other = 2.0 * (-math.sin(theta) if theta < 1.6 else math.sin(theta))
    np.testing.assert_allclose(float(loss), math.log1p(math.exp(other - 2.0 * psi)),
                               rtol=1e-5, atol=1e-6)


def test_subcenter_arcface_with_one_sub_centre_is_arcface():
  x, y = make_batch("random", seed=10)
  w = class_vectors((C, D))
  args = jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(w, jnp.float32)
  a, sa = jax.jit(losses.arcface_loss)(*args)
  b, sb = jax.jit(lambda e, l, v: losses.subcenter_arcface_loss(e, l, v[:, None]))(*args)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  assert sa == sb


def test_subcenter_arcface_outliers_by_hand():
  # Class 0: sub-centres e1, e2; three samples near e1 (one at 80 degrees from it),
  # one near e2. Dominant: e1 (3 votes vs 1); outliers: the 80-degree one and the e2 one.
  a80 = math.radians(80)
  x = jnp.array([[1.0, 0.1], [1.0, -0.1], [math.cos(a80), -math.sin(a80)], [0.0, 1.0],
                 [0.0, 1.0]])
  y = jnp.array([0, 0, 0, 0, 2])
  w = jnp.array([[[1.0, 0.0], [0.0, 1.0]],
                 [[0.0, 1.0], [1.0, 0.0]],
                 [[-1.0, 0.0], [0.0, 3.0]]])
  outliers, dominant = jax.jit(losses.subcenter_arcface_outliers)(x, y, w)
  np.testing.assert_array_equal(np.asarray(outliers), [False, False, True, True, False])
  np.testing.assert_array_equal(np.asarray(dominant), [[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,match", [
    (lambda: losses.proxy_nca_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 5))),
     "proxies"),
    (lambda: losses.proxy_nca_loss(jnp.ones((4, 2)), jnp.zeros(4), jnp.ones((3, 2))),
     "labels"),
    (lambda: losses.normalized_softmax_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                            jnp.ones((3, 2)), temperature=0.0),
     "temperature"),
    (lambda: losses.soft_triple_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 2))),
     "centers"),
    (lambda: losses.soft_triple(3, centers_per_class=0), "centers_per_class"),
    (lambda: losses.sphereface_loss(jnp.ones((4, 2)), jnp.zeros(4, int), jnp.ones((3, 2)),
                                    margin=1.5), "margin"),
    (lambda: losses.subcenter_arcface_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                           jnp.ones((3, 2, 2)), margin=28.6), "radians"),
    (lambda: losses.subcenter_arcface_loss(jnp.ones((4, 2)), jnp.zeros(4, int),
                                           jnp.ones((3, 2))), "class_weights"),
    (lambda: losses.subcenter_arcface(3, sub_centers=0), "sub_centers"),
    (lambda: losses.proxy_nca(0), "num_classes"),
])
def test_bad_inputs_raise_one_line_value_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)
