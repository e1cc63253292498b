"""tsm.evaluation.embed: batched, padded, one compilation, arrays and Split objects."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm import evaluation
from tsm.data.splits import Split


class _Counted:
  """A linear embedding whose Python body runs once per trace (counts compilations)."""

  def __init__(self):
    self.traces = 0

  def __call__(self, variables, x):
    self.traces += 1
    return jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w"])


def _data(n=23, shape=(2, 3)):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, *shape)).astype(np.float32)
  w = rng.standard_normal((int(np.prod(shape)), 4)).astype(np.float32)
  return x, {"w": w}


@pytest.mark.parametrize("batch_size", [1, 5, 23, 64])
def test_embed_array_matches_direct_apply(batch_size):
  x, variables = _data()
  fn = _Counted()
  got = evaluation.embed(fn, variables, x, batch_size=batch_size)
  assert got.dtype == np.float32 and got.shape == (23, 4)
  np.testing.assert_allclose(got, np.tanh(x.reshape(23, -1) @ variables["w"]), rtol=1e-5,
                             atol=1e-6)
  assert fn.traces == 1  # the padded last batch reuses the compilation


def test_embed_reuses_compilation_across_calls_and_splits():
  x, variables = _data()
  fn = _Counted()
  evaluation.embed(fn, variables, x, batch_size=8)
  evaluation.embed(fn, variables, x[:17], batch_size=8)  # another split, same batch shape
  assert fn.traces == 1


def test_embed_split_protocol():
  x, variables = _data(n=19)
  calls = []

  def fetch(indices):
    calls.append(np.asarray(indices))
    return x[indices]

  split = Split(np.arange(19) % 3, fetch, (2, 3), name="toy")
  fn = _Counted()
  got = evaluation.embed(fn, variables, split, batch_size=4)
  np.testing.assert_allclose(got, np.tanh(x.reshape(19, -1) @ variables["w"]), rtol=1e-5,
                             atol=1e-6)
  assert all(c.shape == (4,) for c in calls)  # fixed batch shape, last one padded

  class Minimal:  # only __len__ and get
    def __len__(self):
      return 19

    def get(self, indices):
      return x[indices]

  np.testing.assert_allclose(evaluation.embed(fn, variables, Minimal(), batch_size=4), got)
  assert fn.traces == 1


def test_embed_flax_model_with_batch_stats():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Dense(8)(x.reshape(x.shape[0], -1))
      x = nn.BatchNorm(use_running_average=not train)(x)
      return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  x, _ = _data(n=10)
  model = Net()
  variables = model.init(jax.random.PRNGKey(0), x[:2])
  apply_fn = lambda v, b: model.apply(v, b, train=False)  # noqa: E731
  got = evaluation.embed(apply_fn, variables, x, batch_size=3)
  np.testing.assert_allclose(got, model.apply(variables, x, train=False), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_embed_errors():
  x, variables = _data()
  with pytest.raises(ValueError, match="batch_size"):
    evaluation.embed(_Counted(), variables, x, batch_size=0)
  with pytest.raises(ValueError, match="empty"):
    evaluation.embed(_Counted(), variables, x[:0])
  with pytest.raises(ValueError, match=r"\[batch, embedding_dim\]"):
    evaluation.embed(lambda v, b: b, variables, x, batch_size=4)
