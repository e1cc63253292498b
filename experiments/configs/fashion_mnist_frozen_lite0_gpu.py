r"""GPU config: Fashion-MNIST on a frozen EfficientNet-Lite0 at the weights' 224 px.

As ``fashion_mnist_frozen_lite0.py`` (the CPU version, 128 px), at the follow-up's full
protocol: all 70,000 images at 224 x 224 through the frozen trunk (once, into the
feature cache), then the head for 100 epochs. Not measured here (no accelerator was
available); on 2 CPU cores the 224-px cache alone takes about 36 minutes.

  tsm-train --config=experiments/configs/fashion_mnist_frozen_lite0_gpu.py \
      --workdir=runs/fashion_mnist_frozen_lite0_gpu
"""

from experiments.configs import fashion_mnist_frozen_lite0


def get_config():
  cfg = fashion_mnist_frozen_lite0.get_config()
  cfg.data.image_size = 224
  cfg.train.epochs = 100
  cfg.eval.every_epochs = 10
  return cfg
