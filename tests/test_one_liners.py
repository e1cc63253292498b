"""Faults that used to give a traceback or a silently wrong number: each is one line (an
error, or a warning where the run is still useful)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tsm import artifacts, cli, evaluation, losses, margins, search
from tsm import config as config_lib
from tsm import fit as fit_lib
from tsm.data import samplers

from fit_helpers import jax_compilation_cache  # noqa: F401  pylint: disable=unused-import
from fit_helpers import tiny_config


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(4)(x)


class _Scalar(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return jnp.sum(nn.Dense(4)(x))


class _Constant(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(4)(x) * 0.0 + 1.0


def _data(val=True):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(4), 12).astype(np.int32)
  x = (rng.normal(size=(48, 3)) + 2 * np.eye(4, 3)[y]).astype(np.float32)
  data = {"train": (x[0::2], y[0::2]), "test": (x[3::4], y[3::4])}
  if val:
    data["val"] = (x[1::4], y[1::4])
  return data


def _fit(workdir, model=None, data=None, **kw):
  data = data or _data()
  sampler = samplers.PKSampler(data["train"][1], 2, 3, seed=0, steps_per_epoch=2)
  return fit_lib.fit(model or _Net(), losses.triplet_margin_loss, margins.constant(0.2),
                     optax.adam(1e-2), data, workdir=str(workdir), epochs=1,
                     sampler=sampler, final_evaluators=[evaluation.Retrieval("test")],
                     checkpoint=fit_lib.CheckpointOptions(async_save=False), hooks=[], **kw)


def test_a_model_returning_a_scalar_is_one_line_before_training(tmp_path):
  with pytest.raises(ValueError, match=r"the model returns \(\) for a batch of one input "
                     r"of shape \(3,\); a model must return \[batch, D\]") as info:
    _fit(tmp_path, model=_Scalar())
  assert "\n" not in str(info.value)


def test_an_unknown_best_metric_is_a_warning_naming_the_records(tmp_path, capsys):
  _fit(tmp_path, best_metric="val_nonexistent", evaluators=[evaluation.Retrieval("val")])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no epoch record holds best_metric='val_nonexistent'" in err[0]
  assert "val_map@r" in err[0]


def test_a_run_without_validation_warns_that_the_summary_is_the_last_epochs(tmp_path, capsys):
  result = _fit(tmp_path, data=_data(val=False))
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no validation split" in err
  assert result.summary["best_value"] is None


def test_collapsed_embeddings_are_a_warning(tmp_path, capsys):
  _fit(tmp_path, model=_Constant())
  err = capsys.readouterr().err
  assert err.count("\n") == 2 and "the test embeddings are all the same point" in err


def test_a_healthy_run_warns_of_nothing(tmp_path, capsys):
  _fit(tmp_path, evaluators=[evaluation.Retrieval("val")], best_metric="val_map@r",
       best_mode="max")
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04" + b"\0" * 30])
def test_a_damaged_npz_is_one_line(tmp_path, content):
  path = tmp_path / "x.npz"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="is not a readable .npz file") as info:
    artifacts.read_npz(str(path))
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="is not a readable .npz file"):
    search.Index.load(str(path))


def test_a_truncated_index_file_is_one_line(tmp_path):
  index = search.Index(np.eye(3, dtype=np.float32), np.arange(3))
  index.save(str(tmp_path / "i.npz"))
  data = (tmp_path / "i.npz").read_bytes()
  (tmp_path / "i.npz").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="is not a readable .npz file"):
    search.Index.load(str(tmp_path / "i.npz"))


def test_a_config_that_is_not_a_full_configdict_is_one_line():
  with pytest.raises(config_lib.ConfigError, match="the config is a dict, not an "
                     "ml_collections.ConfigDict"):
    config_lib.train_and_evaluate({"train": {"epochs": 1}}, "unused")
  partial = ml_collections.ConfigDict({"train": {"epochs": 1}})
  with pytest.raises(config_lib.ConfigError, match="the config lacks checkpoint, data"):
    config_lib.train_and_evaluate(partial, "unused")
  cfg = tiny_config()
  del cfg.train["nonfinite"]
  with pytest.raises(config_lib.ConfigError, match="the config lacks train.nonfinite;"):
    config_lib.train_and_evaluate(cfg, "unused")


def test_a_config_file_that_raises_keeps_its_cause():
  text = ('flag --config=c.py: Error whilst parsing config file:\n\nTraceback (most recent '
          'call last):\n  File "/x/site-packages/ml_collections/config_flags/config_flags.py"'
          ', line 684, in parse\n    config = ...\n  File "c.py", line 4, in get_config\n'
          '    cfg.train.epochs = "three"\n  File "/x/site-packages/ml_collections/config_dict'
          '/config_dict.py", line 890, in __setitem__\n    raise TypeError(\nTypeError: '
          "Could not override field 'epochs'\n")
  assert cli._flag_error(text) == ("flag --config=c.py: the config file raised at c.py line "
                                   "4: TypeError: Could not override field 'epochs'")


def test_knn_k_beyond_the_train_split_is_refused_and_a_long_warmup_warned(tmp_path, capsys):
  cfg = tiny_config()
  cfg.data.split = "by_image"
  cfg.eval.knn_k = 100000
  with pytest.raises(config_lib.ConfigError, match=r"eval.knn_k=100000 exceeds the \d+ "
                     "train examples"):
    config_lib.prepare(cfg, str(tmp_path / "w"))
  cfg.eval.knn_k = 5
  cfg.train.warmup_steps = 100000
  config_lib.prepare(cfg, str(tmp_path / "w"))
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "train.warmup_steps=100000 exceeds the run's 12 steps" in err
