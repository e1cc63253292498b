"""VICReg: variance-invariance-covariance regularisation of two views (self-supervised)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from tsm import mining as mining_lib
from tsm.losses._base import _float_dtype, _no_grad, check_tuple_inputs


class VICRegStats(NamedTuple):
  """Batch statistics of :func:`vicreg_loss` (float32 scalars).

  Attributes:
    num_total: the variance hinge terms, one per embedding dimension and view (``2 D``).
    num_active: those with non-zero loss (the dimension's standard deviation below 1).
    active_ratio: ``num_active / num_total``.
    invariance: the mean squared difference between the views (unweighted).
    variance: the variance part, both views (unweighted).
    covariance: the covariance part, both views (unweighted).
  """
  num_total: chex.Array
  num_active: chex.Array
  active_ratio: chex.Array
  invariance: chex.Array
  variance: chex.Array
  covariance: chex.Array

  @property
  def num_easy(self) -> chex.Array:
    """Dimensions already spread enough, ``num_total - num_active``."""
    return self.num_total - self.num_active


def _variance_and_covariance(z: chex.Array, eps: float):
  """One view's hinge terms ``max(0, 1 - std_d) / 2`` ``[D]`` and its covariance part."""
  n, d = z.shape
  centred = z - jnp.mean(z, axis=0)
  var = jnp.sum(jnp.square(centred), axis=0) / (n - 1)
  hinge = jax.nn.relu(1.0 - jnp.sqrt(var + eps)) / 2.0
  cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / (n - 1)
  off = jnp.where(jnp.eye(d, dtype=bool), 0.0, cov)
  return hinge, jnp.sum(jnp.square(off)) / d


def vicreg_loss(
    embeddings: chex.Array,
    ref_embeddings: chex.Array,
    *,
    invariance_lambda: float = 25.0,
    variance_mu: float = 25.0,
    covariance_v: float = 1.0,
    eps: float = 1e-4,
) -> tuple[chex.Array, VICRegStats]:
  """VICReg loss between two views of a batch (no labels: self-supervised).

  ``lambda s(Z, Z') + mu (v(Z) + v(Z')) + nu (c(Z) + c(Z'))`` with
  ``s = mean_i mean_d (z_id - z'_id)^2``,
  ``v(Z) = mean_d max(0, 1 - sqrt(var(z_d) + eps)) / 2`` (unbiased variance over the
  batch) and ``c(Z) = sum_{d != e} cov(Z)_de^2 / D`` (PML ``VICRegLoss``, the sum of its
  sub-losses, each with its ``MeanReducer``). Row ``i`` of ``ref_embeddings`` is the
  other view of row ``i`` of ``embeddings``; the embeddings are used as given (no
  normalisation). Memory ``O(B D + D^2)``.

  PML and the authors' code halve each view's variance term (``/ 2``: "for averaging");
  the paper's formula does not. tsm follows PML and the code.

  Differences from PML: none in the value; tsm takes no ``valid`` mask (the batch
  statistics would need every row) and requires ``B >= 2`` (the unbiased variance of
  one row is undefined; PML returns NaN).

  Statistics (:class:`VICRegStats`): the terms are the ``2 D`` variance hinges, active
  when the dimension's standard deviation is below 1; the three parts unweighted.

  Args:
    embeddings: ``[B, D]`` float embeddings of the first view.
    ref_embeddings: ``[B, D]`` float embeddings of the second view.
    invariance_lambda: ``lambda`` (PML default 25).
    variance_mu: ``mu`` (PML default 25).
    covariance_v: ``nu`` (PML default 1).
    eps: added to the variance under the square root (PML default 1e-4).

  Returns:
    ``(loss, stats)`` with :class:`VICRegStats`.

  References:
    Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022; PML ``VICRegLoss``.
  """
  check_tuple_inputs({"embeddings": embeddings, "ref_embeddings": ref_embeddings})
  if embeddings.shape[0] < 2:
    raise ValueError(f"vicreg_loss needs at least 2 rows per view (it takes variances "
                     f"over the batch); got {embeddings.shape[0]}.")
  for name, value in (("invariance_lambda", invariance_lambda),
                      ("variance_mu", variance_mu), ("covariance_v", covariance_v)):
    if not value >= 0:
      raise ValueError(f"{name} must be >= 0; got {value}.")
  if not eps > 0:
    raise ValueError(f"eps must be > 0; got {eps}.")
  dtype = jnp.promote_types(_float_dtype(embeddings), _float_dtype(ref_embeddings))
  z1, z2 = embeddings.astype(dtype), ref_embeddings.astype(dtype)
  invariance = jnp.mean(jnp.square(z1 - z2))
  hinge1, cov1 = _variance_and_covariance(z1, eps)
  hinge2, cov2 = _variance_and_covariance(z2, eps)
  variance = jnp.mean(hinge1) + jnp.mean(hinge2)
  covariance = cov1 + cov2
  loss = (invariance_lambda * invariance + variance_mu * variance +
          covariance_v * covariance)
  hinges = jax.lax.stop_gradient(jnp.stack([hinge1, hinge2]))
  num_active = mining_lib.count_sum(hinges > 0)
  stats = VICRegStats(
      num_total=jnp.asarray(hinges.size, jnp.float32),
      num_active=num_active, active_ratio=num_active / hinges.size,
      invariance=invariance.astype(jnp.float32),
      variance=variance.astype(jnp.float32),
      covariance=covariance.astype(jnp.float32))
  return loss, _no_grad(stats)
