r"""GPU config: Fashion-MNIST with triplet loss and DAMS, full size.

A GPU config (about an hour on 2 CPU cores; the CPU version is ``fashion_mnist_dams.py``).
Needs ``apt-get install dataset-fashion-mnist``:

  tsm-train --config=experiments/configs/fashion_mnist_dams_gpu.py \
      --workdir=runs/fashion_mnist_dams_gpu

As ``fashion_mnist_dams.py`` but full size: all 54,000 / 6,000 / 10,000 train /
validation / test images (no ``data.num_examples`` cap) and paper A's 50 epochs of 900
P x K = 10 x 6 batches. Not measured here.
"""

from experiments.configs import fashion_mnist_dams


def get_config():
  cfg = fashion_mnist_dams.get_config()
  cfg.data.num_examples = None
  cfg.train.epochs = 50
  cfg.eval.batch_size = 1024
  return cfg
