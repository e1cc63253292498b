"""tsm.tensorboard: the event file and projector files read back independently.

The event file is read with the TFRecord reader of ``event_files`` (its own CRC-32C), and
each record parsed as an ``Event`` protobuf.
"""

import io
import os

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
from PIL import Image  # noqa: E402  # pylint: disable=wrong-import-position
from tensorboardX.proto import plugin_hparams_pb2  # noqa: E402  # pylint: disable=wrong-import-position

from event_files import crc32c, event_files, read_events, shown  # noqa: E402  # pylint: disable=wrong-import-position
from tsm import tensorboard  # noqa: E402  # pylint: disable=wrong-import-position


def test_crc32c_known_value():
  assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


def _read_events(logdir):
  files = event_files(logdir)
  assert len(files) == 1, files
  return read_events(files[0])


def _values(events):
  return [(e.step, v) for e in events for v in e.summary.value]


def test_scalars_image_and_projector_read_back(tmp_path):
  logdir = str(tmp_path / "run")
  png = tmp_path / "figure.png"
  pixels = np.zeros((6, 10, 3), np.uint8)
  pixels[:, :5, 0] = 255  # left half red
  Image.fromarray(pixels).save(png)
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(7, 3)).astype(np.float32)
  labels = np.array([3, 1, 4, 1, 5, 9, 2])
  with tensorboard.make_writer(logdir) as tb:
    assert isinstance(tb, tensorboard.TensorBoardWriter)
    tb.scalars(1, {"loss": 0.5, "margin": np.float32(0.25), "kind": "step",
                   "num_easy": np.array(3)}, prefix="train/")
    tb.scalars(2, {"loss": float("nan")}, prefix="train/")
    tb.scalars(1, {"val_map@r": 0.75}, prefix="epoch/")
    tb.image("training", str(png), 2)
    tb.image("gray", np.linspace(0, 1, 12).reshape(3, 4), 3)
    tb.embeddings(emb, labels, tag="test", step=2)

  values = _values(_read_events(logdir))
  scalars = {(step, v.tag): v.simple_value for step, v in values if v.HasField("simple_value")}
  # NaN (a skipped step's loss) is left out: tensorboardX would warn on each one.
  assert scalars.keys() == {(1, "train/loss"), (1, "train/margin"), (1, "train/num_easy"),
                            (1, "epoch/val_map_r")}  # @ is cleaned
  assert scalars[(1, "train/loss")] == 0.5 and scalars[(1, "train/margin")] == 0.25
  assert scalars[(1, "train/num_easy")] == 3 and scalars[(1, "epoch/val_map_r")] == 0.75

  images = {v.tag: (step, v.image) for step, v in values if v.HasField("image")}
  assert set(images) == {"training", "gray"}
  step, image = images["training"]
  assert step == 2 and (image.height, image.width) == (6, 10)
  np.testing.assert_array_equal(
      np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")), pixels)
  gray = np.asarray(Image.open(io.BytesIO(images["gray"][1].encoded_image_string)))
  gray = gray.reshape(3, 4, -1)
  for channel in range(gray.shape[2]):  # stored as grey or as equal RGB channels
    np.testing.assert_array_equal(gray[:, :, channel],
                                  np.round(np.linspace(0, 1, 12) * 255).reshape(3, 4))

  config = (tmp_path / "run" / "projector_config.pbtxt").read_text()
  assert "embeddings" in config and 'tensor_path: "00002/test/tensors.tsv"' in config
  assert 'metadata_path: "00002/test/metadata.tsv"' in config
  tensors = np.loadtxt(tmp_path / "run" / "00002" / "test" / "tensors.tsv", delimiter="\t")
  np.testing.assert_allclose(tensors, emb, rtol=1e-6)
  metadata = (tmp_path / "run" / "00002" / "test" / "metadata.tsv").read_text().split()
  assert metadata == [str(v) for v in labels]


def test_null_writer_writes_nothing(tmp_path):
  with tensorboard.make_writer(str(tmp_path / "run"), enabled=False) as tb:
    assert isinstance(tb, tensorboard.NullWriter)
    tb.scalars(0, {"loss": 1.0})
    tb.image("x", np.zeros((2, 2)), 0)
    tb.embeddings(np.zeros((2, 2)), [0, 1])
    tb.flush()
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("call,match", [
    (lambda tb, d: tb.image("x", np.zeros((2, 2, 2)), 0), "image must be"),
    (lambda tb, d: tb.image("x", str(d / "missing.png"), 0), "does not exist"),
    (lambda tb, d: tb.image("x", np.full((2, 2), np.nan), 0), "NaN"),
    (lambda tb, d: tb.embeddings(np.zeros(3), [0, 1, 2]), "embeddings must be"),
    (lambda tb, d: tb.embeddings(np.zeros((3, 2)), [0, 1]), "labels has 2 entries"),
])
def test_bad_inputs(tmp_path, call, match):
  with tensorboard.TensorBoardWriter(str(tmp_path / "run")) as tb:
    with pytest.raises(ValueError, match=match):
      call(tb, tmp_path)


def _hparams_data(events):
  """``{tag: HParamsPluginData}`` of the hparams plugin's summaries."""
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.metadata.plugin_data.plugin_name == "hparams":
        out[v.tag] = plugin_hparams_pb2.HParamsPluginData.FromString(
            v.metadata.plugin_data.content)
  return out


def test_hparams_in_the_runs_own_directory(tmp_path):
  logdir = tmp_path / "run"
  with tensorboard.make_writer(str(logdir)) as tb:
    tb.hparams({"train.lr": 1e-3, "loss.name": "triplet", "model.hidden_sizes": (32, 16),
                "train.progress": True, "data.image_size": None},
               {"test/map@r": np.float32(0.75), "test/auc": 0.5, "note": "skipped"}, step=6)
  assert os.listdir(logdir) == [os.path.basename(event_files(logdir)[0])]  # no subdirectory
  events = _read_events(str(logdir))
  data = _hparams_data(events)
  assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info",
                       "_hparams_/session_end_info"}
  start = data["_hparams_/session_start_info"].session_start_info.hparams
  assert start["train.lr"].number_value == pytest.approx(1e-3)
  assert start["loss.name"].string_value == "triplet"
  assert start["model.hidden_sizes"].string_value == "(32, 16)"
  assert start["train.progress"].bool_value is True
  assert "data.image_size" not in start
  experiment = data["_hparams_/experiment"].experiment
  assert sorted(m.name.tag for m in experiment.metric_infos) == ["test/auc", "test/map_r"]
  scalars = {(step, v.tag): v.simple_value for step, v in _values(events)
             if v.HasField("simple_value")}
  assert scalars == {(6, "test/map_r"): 0.75, (6, "test/auc"): 0.5}


def test_purge_step_hides_the_repeated_steps(tmp_path):
  logdir = str(tmp_path / "run")
  with tensorboard.make_writer(logdir) as tb:
    for step in range(1, 6):
      tb.scalars(step, {"loss": float(step)})
  with tensorboard.make_writer(logdir, purge_step=4) as tb:   # resumed after step 3
    for step in range(4, 8):
      tb.scalars(step, {"loss": 10.0 + step})
  raw = [step for path in event_files(logdir) for step, v in _values(read_events(path))]
  assert sorted(raw) == [1, 2, 3, 4, 4, 5, 5, 6, 7]  # both files hold steps 4 and 5
  seen = {step: v.simple_value for step, v in _values(shown(logdir))}
  assert seen == {1: 1.0, 2: 2.0, 3: 3.0, 4: 14.0, 5: 15.0, 6: 16.0, 7: 17.0}
  assert len([1 for _ in _values(shown(logdir))]) == 7
