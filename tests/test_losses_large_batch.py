"""The class-vector, pair and self-supervised losses at B = 1024, D = 128 never build an
array bigger than ``O(B^2)`` (the class losses' statistics hold the batch's pair
distances) or ``O(B C K)`` (``K`` vectors for each of ``C`` classes); VICReg not even
``O(B^2)``: every intermediate of the value-and-gradient's jaxpr is bounded (tracing
only, nothing is run)."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import losses

B, D, C, K = 1024, 128, 100, 10
X = jax.ShapeDtypeStruct((B, D), jnp.float32)
Y = jax.ShapeDtypeStruct((B,), jnp.int32)

# name -> (loss of (x, w), shape of w or None, the bound)
CASES = {
    "proxy_nca": (lambda x, w: losses.proxy_nca_loss(x, Y_, w)[0], (C, D), B * B),
    "normalized_softmax": (lambda x, w: losses.normalized_softmax_loss(x, Y_, w)[0],
                           (C, D), B * B),
    "soft_triple": (lambda x, w: losses.soft_triple_loss(x, Y_, w)[0], (C, K, D),
                    B * max(B, C * K)),
    "sphereface": (lambda x, w: losses.sphereface_loss(x, Y_, w)[0], (C, D), B * B),
    "subcenter_arcface": (lambda x, w: losses.subcenter_arcface_loss(x, Y_, w)[0],
                          (C, 3, D), B * B),
    "tuplet_margin": (lambda x, w: losses.tuplet_margin_loss(x, Y_)[0], None, B * B),
    "snr_contrastive": (lambda x, w: losses.snr_contrastive_loss(x, Y_)[0], None, B * B),
    "smooth_ap": (lambda x, w: losses.smooth_ap_loss(x, Y_)[0], None, B * B),
    "p2sgrad": (lambda x, w: losses.p2sgrad_loss(x, Y_, w)[0], (C, D), B * B),
    "pnp": (lambda x, w: losses.pnp_loss(x, Y_)[0], None, B * B),
    "tcm": (lambda x, w: losses.tcm_loss(x, Y_)[0], None, B * B),
    "ranked_list": (lambda x, w: losses.ranked_list_loss(x, Y_, 0.4, tn=10.0)[0], None,
                    B * B),
    "vicreg": (lambda x, w: losses.vicreg_loss(x, x[::-1])[0], None, B * D),
}
Y_ = jnp.zeros((B,), jnp.int32)  # traced values do not matter: only the shapes


def intermediate_sizes(jaxpr):
  sizes = []
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      sizes.append(int(np.prod(getattr(var.aval, "shape", ()))))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      sizes.extend(intermediate_sizes(sub))
  return sizes


@pytest.mark.parametrize("name", list(CASES))
def test_no_intermediate_beyond_the_pairs_or_the_class_vectors(name):
  fn, w_shape, bound = CASES[name]
  w = jax.ShapeDtypeStruct(w_shape if w_shape else (1,), jnp.float32)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=(0, 1) if w_shape else 0))(X, w)
  assert max(intermediate_sizes(jaxpr.jaxpr)) <= max(bound, B * D, D * D), name
