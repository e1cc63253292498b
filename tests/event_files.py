"""Reading TensorBoard event files back, independently of the writer (not a test module).

An event file is a TFRecord file: records of (length, masked CRC-32C of the length, data,
masked CRC-32C of the data), CRC-32C computed bit by bit here; each record's data an
``Event`` protobuf (tensorboardX's copy of the proto). :func:`shown` applies
TensorBoard's purge rule: an event with ``session_log.status == START`` at step ``s``
hides the events read before it whose step is ``s`` or later (a restarted run's marker).
"""

from __future__ import annotations

import os
import struct

from tensorboardX.proto import event_pb2


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def event_files(logdir) -> list[str]:
  """The event files of ``logdir`` in TensorBoard's reading order (by name: the names
  hold the time in seconds)."""
  names = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")]
  return [os.path.join(logdir, n) for n in sorted(names)]


def read_events(path) -> list:
  """The ``Event`` protos of one event file, checking both CRCs of every record."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      assert masked(crc32c(header[:8])) == length_crc
      data = f.read(length)
      (data_crc,) = struct.unpack("<I", f.read(4))
      assert masked(crc32c(data)) == data_crc
      events.append(event_pb2.Event.FromString(data))
  return events


def shown(logdir) -> list:
  """The events TensorBoard shows for ``logdir``: every file's, oldest first, with the
  events hidden by a later purge marker left out."""
  kept = []
  for path in event_files(logdir):
    for event in read_events(path):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        kept = [e for e in kept if e.step < event.step]
      kept.append(event)
  return kept


def values(events) -> list:
  """``(step, Summary.Value)`` of every value of ``events``."""
  return [(e.step, v) for e in events for v in e.summary.value]
