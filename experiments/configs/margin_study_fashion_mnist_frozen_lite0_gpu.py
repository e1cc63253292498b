r"""GPU version of ``margin_study_fashion_mnist_frozen_lite0.py``: paper A's protocol on
a frozen EfficientNet-Lite0's features of all Fashion-MNIST images at the weights' 224 px.

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_fashion_mnist_frozen_lite0_gpu.py \
      --workdir=runs/margin_study_fashion_mnist_frozen_lite0_gpu

As the CPU version (the authors' head and dropout, Adam 1e-4, 50 epochs, P x K = 10 x 6,
lowest validation loss at mu = 1.0 with the last epoch beside it, the mu_last grid, claim
A1, 20 seeds trained together per arm) on all 60,000 / 10,000 images: 54,000 training
images after the 10 % validation hold-out, 900 batches an epoch. The 224-px cache is
built on the first run (about 36 minutes on 2 CPU cores; the trunk runs on the
accelerator here). Not measured (no accelerator was available): 15 arms x 50 epochs x
900 steps = 675,000 steps of 20 seeds each.
"""

from experiments.configs import margin_study_fashion_mnist_frozen_lite0 as cpu
from experiments.configs.presets import frozen


def get_config():
  cfg = cpu.get_config()
  run = cfg[frozen.DATASET]
  run.data.image_size = frozen.GPU_IMAGE_SIZE
  run.data.num_examples = None
  run.train.steps_per_epoch = 900
  cfg.study.workers = 1
  return cfg
