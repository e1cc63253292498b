"""Embedding heads and :class:`EmbeddingModel` (trunk + head + L2 normalisation).

Heads (``EmbeddingHead.kind``):

* ``"none"``: the trunk's own output layer gives the embedding (small trunks end with
  ``Dense(embedding_dim)``; a ResNet / EfficientNet only when ``embedding_dim`` equals
  its feature width).
* ``"linear"``: one ``Dense(embedding_dim)`` on the trunk features.
* ``"paper_a"``: paper A's head, ``Dense(512), ReLU, Dropout(0.5), Dense(256), ReLU,
  Dropout(0.3), Dense(embedding_dim)`` (sizes and rates configurable). Dropout draws
  from the ``'dropout'`` rng, so ``apply(..., train=True)`` needs
  ``rngs={'dropout': key}``.

:class:`EmbeddingModel` ends with :func:`tsm.distances.l2_normalize` (re-exported here),
so an all-zero output stays finite and has finite gradients. With ``freeze_trunk`` the
trunk runs in inference mode (BatchNorm uses and keeps its running statistics) and its
output goes through ``jax.lax.stop_gradient``, so no gradient flows into it and the
backward pass skips it.

References:
  Tomchak et al., arXiv 2603.26389 (paper A: the 512-256 head with dropout).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsm.distances import l2_normalize

__all__ = ["EmbeddingHead", "EmbeddingModel", "l2_normalize"]


class EmbeddingHead(nn.Module):
  """Embedding head on trunk features: ``"none"``, ``"linear"`` or ``"paper_a"``.

  Attributes:
    kind: head name.
    embedding_dim: output width.
    hidden: hidden widths of the ``paper_a`` head.
    dropout: dropout rates after each hidden layer of the ``paper_a`` head.
    dtype: computation dtype.
  """
  kind: str = "linear"
  embedding_dim: int = 128
  hidden: Sequence[int] = (512, 256)
  dropout: Sequence[float] = (0.5, 0.3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.kind == "none":
      return x
    if self.kind == "paper_a":
      for i, (h, rate) in enumerate(zip(self.hidden, self.dropout)):
        x = nn.relu(nn.Dense(h, dtype=self.dtype, name=f"dense{i}")(x))
        x = nn.Dropout(rate, deterministic=not train)(x)
    return nn.Dense(self.embedding_dim, dtype=self.dtype, name="out")(x)


class EmbeddingModel(nn.Module):
  """Trunk + head + L2 normalisation; returns float32 ``[B, embedding_dim]``.

  Attributes:
    trunk: feature extractor, called as ``trunk(x, train=...)``.
    head: the :class:`EmbeddingHead`.
    freeze_trunk: run the trunk in inference mode behind ``stop_gradient``.
    pretrained_path: optional ``.npz`` that :func:`tsm.models.init_variables` loads into
      the trunk.
  """
  trunk: nn.Module
  head: nn.Module
  freeze_trunk: bool = False
  pretrained_path: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Embeds a batch.

    Args:
      x: ``[B, *input_shape]`` float inputs.
      train: training mode (dropout on, BatchNorm batch statistics; pass
        ``mutable=['batch_stats']`` and ``rngs={'dropout': key}`` to ``apply``).

    Returns:
      ``[B, embedding_dim]`` float32 embeddings of unit (or zero) L2 norm.
    """
    features = self.trunk(x, train=train and not self.freeze_trunk)
    if self.freeze_trunk:
      features = jax.lax.stop_gradient(features)
    out = self.head(features, train=train)
    return l2_normalize(out.astype(jnp.float32))
