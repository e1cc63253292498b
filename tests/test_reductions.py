"""tsm.reductions.row_sums against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsm.reductions import row_sums


@pytest.mark.parametrize("kinds", ["mixed", "ints", "floats", "one"])
def test_row_sums_match_numpy(kinds):
  rng = np.random.default_rng(0)
  d = rng.random((37, 53)).astype(np.float32)
  mask = rng.random((37, 53)) < 0.4

  def fn(d, mask):
    ints = (mask.astype(jnp.int32), (d < 0.3).astype(jnp.int32))
    floats = (jnp.where(mask, d, 0.0), jnp.where(mask, 1.0 - d, 0.0))
    arrays = {"mixed": ints + floats, "ints": ints, "floats": floats,
              "one": floats[:1]}[kinds]
    return row_sums(*arrays)

  got = jax.jit(fn)(d, mask)
  want = {"ints": [mask.sum(1), (d < 0.3).sum(1)],
          "floats": [np.where(mask, d, 0).sum(1), np.where(mask, 1 - d, 0).sum(1)]}
  want = {"mixed": want["ints"] + want["floats"], "ints": want["ints"],
          "floats": want["floats"], "one": want["floats"][:1]}[kinds]
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.shape == (37,)
    if np.issubdtype(g.dtype, np.integer):
      np.testing.assert_array_equal(g, w)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-6)
  # Batched leading axes reduce the last one.
  stacked = jax.vmap(fn)(np.stack([d, d[::-1]]), np.stack([mask, mask[::-1]]))
  np.testing.assert_allclose(stacked[0][1], got[0][::-1], rtol=1e-6)


def test_row_sums_propagate_nan_and_need_an_array():
  d = jnp.asarray([[1.0, jnp.nan], [2.0, 3.0]])
  (s,) = row_sums(d)
  assert np.isnan(s[0]) and s[1] == 5.0
  with pytest.raises(ValueError, match="at least one array"):
    row_sums()
