"""tsm.tensorboard: the event file and projector files read back independently.

The event file is read with a TFRecord reader written here (length, masked CRC-32C of the
length, data, masked CRC-32C of the data; CRC-32C computed bit by bit below), and each
record parsed as an ``Event`` protobuf.
"""

import io
import os
import struct

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
from PIL import Image  # noqa: E402  # pylint: disable=wrong-import-position
from tensorboardX.proto import event_pb2  # noqa: E402  # pylint: disable=wrong-import-position

from tsm import tensorboard  # noqa: E402  # pylint: disable=wrong-import-position


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_value():
  assert _crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


def _read_events(logdir):
  names = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")]
  assert len(names) == 1, names
  events = []
  with open(os.path.join(logdir, names[0]), "rb") as f:
    while header := f.read(12):
      (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      assert _masked(_crc32c(header[:8])) == length_crc
      data = f.read(length)
      (data_crc,) = struct.unpack("<I", f.read(4))
      assert _masked(_crc32c(data)) == data_crc
      events.append(event_pb2.Event.FromString(data))
  return events


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
