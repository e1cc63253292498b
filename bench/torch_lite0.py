"""A plain PyTorch EfficientNet-Lite0 on the weights package's ``.pth``: the reference
that ``bench/trunk_features.py`` runs in its own PyTorch environment.

Written from the architecture (PAPERS.md section F), not from tsm's code: MBConv blocks
without squeeze-and-excitation, ReLU6, BatchNorm eps 1e-3, TensorFlow "SAME" padding
(asymmetric at stride 2, added with ``F.pad`` before each strided conv), inputs
``(x - 127) / 128``, global average pooling to 1280. Loads the file with
``torch.load(weights_only=True)`` under efficientnet_pytorch's names.

Usage (from bench/trunk_features.py):
  python bench/torch_lite0.py --weights W.pth --photos photos.npy --out DIR
      [--sides 64,224] [--batch 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand, in, out, repeats), EfficientNet-Lite0.
STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2),
          (3, 2, 6, 40, 80, 3), (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4),
          (3, 1, 6, 192, 320, 1))


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
  """TensorFlow's SAME padding for a k x k conv of stride s (extra pixel at the end)."""
  h, w = x.shape[-2:]
  ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
  pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
  return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class Block(nn.Module):

  def __init__(self, k, s, e, cin, cout):
    super().__init__()
    hidden = cin * e
    self.k, self.s, self.residual = k, s, s == 1 and cin == cout
    if e != 1:
      self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
      self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
    self.expand = e != 1
    self._depthwise_conv = nn.Conv2d(hidden, hidden, k, s, groups=hidden, bias=False)
    self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
    self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
    self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x):
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
    y = F.relu6(self._bn1(self._depthwise_conv(same_pad(y, self.k, self.s))))
    y = self._bn2(self._project_conv(y))
    return x + y if self.residual else y


class Lite0(nn.Module):

  def __init__(self):
    super().__init__()
    self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
    self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
    blocks = []
    for k, s, e, cin, cout, n in STAGES:
      for i in range(n):
        blocks.append(Block(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
    self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
    self._fc = nn.Linear(1280, 1000)

  def features(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    x = (x_uint8_nhwc.permute(0, 3, 1, 2).float() - 127.0) / 128.0
    x = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return x.mean(dim=(2, 3))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--weights", required=True)
  parser.add_argument("--photos", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--sides", default="64,224")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  model = Lite0().eval()
  model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
  with torch.inference_mode():
    photos = torch.from_numpy(np.load(args.photos))
    np.save(os.path.join(args.out, "features.npy"), model.features(photos).numpy())
    rows = []
    rng = np.random.default_rng(0)
    for side in (int(s) for s in args.sides.split(",")):
      x = torch.from_numpy(rng.integers(0, 256, (args.batch, side, side, 3),
                                        dtype=np.uint8))
      model.features(x)
      times = []
      for _ in range(args.rounds):
        start = time.perf_counter()
        model.features(x)
        times.append(time.perf_counter() - start)
      rate = args.batch / statistics.median(times)
      rows.append({"side": side, "images_per_s": rate})
      print(f"torch {side:4d} px  batch {args.batch}: {rate:8.1f} images/s", flush=True)
  with open(os.path.join(args.out, "torch.json"), "w") as f:
    json.dump(rows, f)


if __name__ == "__main__":
  main()
