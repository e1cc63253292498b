"""Benchmark: frozen EfficientNet-Lite0 feature extraction (the feature cache's cost).

Times ``tsm.models.imagenet_pretrained("efficientnet_lite0", image_size=S).features`` on
uint8 batches at several sides S (one warm-up call compiles; medians over rounds), and
converts the rate into what building a study's feature cache costs: the images of
Fashion-MNIST (70,000) and of the subsample a CPU config uses.

With ``--torch-python PATH`` (an interpreter with PyTorch, e.g. a venv with
``pip install torch==2.13.0``; the baseline runs in its own environment) it also runs
``bench/torch_lite0.py``, a plain PyTorch EfficientNet-Lite0 on the same ``.pth``, in
the same rounds, and checks that both give the same features for the bundled photos
(scikit-image's chelsea and coffee, scikit-learn's china and flower).

With ``--alternate`` (this Python has torch too) the PyTorch Lite0 runs in this process
and every round times each tsm dtype of ``--dtypes`` and PyTorch in turn (medians), the
pattern of the other benches on a shared machine; the ratio is the figure.

Usage:
  python bench/trunk_features.py [--sides 32,64,96,128,224] [--batch 64] [--rounds 3]
      [--dtype float32] [--torch-python /tmp/torchenv/bin/python] [--json out.json]
  taskset -c 0,1 python bench/trunk_features.py --alternate --sides 224 --batch 64
      --rounds 5 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tsm.models import imagenet  # pylint: disable=wrong-import-position

FASHION_MNIST_IMAGES = 70_000


def _photos() -> np.ndarray:
  from skimage import data  # pylint: disable=import-outside-toplevel
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  from tsm.data import preprocess  # pylint: disable=import-outside-toplevel
  images = [data.chelsea(), data.coffee()] + list(load_sample_images().images)
  return np.stack([preprocess.resize_image(im, 224) for im in images])


def alternate(sides, batch, rounds, dtypes, json_path) -> None:
  """tsm (each dtype) and PyTorch's Lite0 in this process, alternating; medians."""
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_lite0  # pylint: disable=import-outside-toplevel
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  print(f"threads {threads}, load average {os.getloadavg()[0]:.2f}, torch "
        f"{torch.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}", flush=True)
  model = torch_lite0.Lite0().eval()
  model.load_state_dict(torch.load(imagenet.weights_file(), map_location="cpu",
                                   weights_only=True))
  rng = np.random.default_rng(0)
  rows = []
  for side in sides:
    x = rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
    xt = torch.from_numpy(x)
    runners = {}
    for dtype in dtypes:
      trunk = imagenet.imagenet_pretrained(image_size=side, dtype=dtype)
      runners[f"tsm-{dtype}"] = (lambda t=trunk: t.features(x, batch_size=batch))

    def run_torch():
      with torch.inference_mode():
        return model.features(xt).numpy()
    runners["torch"] = run_torch
    outs = {k: np.asarray(f(), np.float32) for k, f in runners.items()}  # warm-up
    times = {k: [] for k in runners}
    for _ in range(rounds):
      for k, f in runners.items():
        start = time.perf_counter()
        f()
        times[k].append(time.perf_counter() - start)
    rates = {k: batch / statistics.median(v) for k, v in times.items()}
    row = {"side": side, "images_per_s": rates,
           "over_torch": {k: v / rates["torch"] for k, v in rates.items()},
           "max_abs_diff_vs_torch": {k: float(np.abs(v - outs["torch"]).max())
                                     for k, v in outs.items()}}
    rows.append(row)
    for k in runners:
      print(f"{side:4d} px batch {batch} {k:15s} {rates[k]:7.1f} images/s  "
            f"{row['over_torch'][k]:.2f}x PyTorch  max|diff| "
            f"{row['max_abs_diff_vs_torch'][k]:.2e}", flush=True)
  print(f"load average at end {os.getloadavg()[0]:.2f}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"rows": rows, "batch": batch, "rounds": rounds}, f, indent=2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sides", default="32,64,96,128,224")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--torch-python", default=None)
  parser.add_argument("--alternate", action="store_true",
                      help="PyTorch in this process, alternating rounds with tsm")
  parser.add_argument("--dtypes", default="float32",
                      help="with --alternate: tsm compute dtypes to time, comma-separated")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  sides = [int(s) for s in args.sides.split(",")]
  if args.alternate:
    alternate(sides, args.batch, args.rounds, args.dtypes.split(","), args.json)
    return
  rng = np.random.default_rng(0)
  rows = []
  for side in sides:
    trunk = imagenet.imagenet_pretrained(image_size=side, dtype=args.dtype)
    x = rng.integers(0, 256, (args.batch, side, side, 3), dtype=np.uint8)
    trunk.features(x, batch_size=args.batch)   # compile
    times = []
    for _ in range(args.rounds):
      start = time.perf_counter()
      trunk.features(x, batch_size=args.batch)
      times.append(time.perf_counter() - start)
    rate = args.batch / statistics.median(times)
    rows.append({"side": side, "images_per_s": rate,
                 "fashion_mnist_minutes": FASHION_MNIST_IMAGES / rate / 60})
    print(f"tsm   {side:4d} px  batch {args.batch}: {rate:8.1f} images/s  "
          f"(70,000 images: {FASHION_MNIST_IMAGES / rate / 60:6.1f} min)", flush=True)
  out = {"tsm": rows, "batch": args.batch, "dtype": args.dtype,
         "cpu_count": os.cpu_count(), "load": os.getloadavg()}
  if args.torch_python:
    photos = _photos()
    trunk = imagenet.imagenet_pretrained()
    ours = trunk.features(photos)
    with tempfile.TemporaryDirectory() as tmp:
      np.save(os.path.join(tmp, "photos.npy"), photos)
      script = os.path.join(os.path.dirname(__file__), "torch_lite0.py")
      result = subprocess.run(
          [args.torch_python, script, "--weights", imagenet.weights_file(),
           "--photos", os.path.join(tmp, "photos.npy"), "--out", tmp,
           "--sides", args.sides, "--batch", str(args.batch), "--rounds",
           str(args.rounds)], check=True, capture_output=True, text=True)
      print(result.stdout, end="")
      theirs = np.load(os.path.join(tmp, "features.npy"))
      with open(os.path.join(tmp, "torch.json")) as f:
        out["torch"] = json.load(f)
    diff = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    out["photo_features_max_abs_diff"] = diff
    print(f"photo features, tsm vs PyTorch: max |diff| {diff:.2e} (features up to "
          f"{scale:.2f})")
    for t, r in zip(out["tsm"], out["torch"]):
      print(f"{t['side']:4d} px: tsm / PyTorch speed {t['images_per_s'] / r['images_per_s']:.2f}x")
  print(f"load average {out['load'][0]:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
