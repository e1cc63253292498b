r"""GPU config: paper B's loss study on all of Fashion-MNIST.

A GPU config (hours on 2 CPU cores; the CPU version is
``loss_study_fashion_mnist.py``). Needs ``apt-get install dataset-fashion-mnist``:

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_fashion_mnist_gpu.py \
      --workdir=runs/loss_study_fashion_mnist_gpu

As ``loss_study_fashion_mnist.py`` but full size: all 60,000 training and 10,000 test
images (no ``data.num_examples`` cap), paper B's MNIST schedule (20 epochs of 234
batches of 256 random triplets / pairs), 10 seeds, one worker process (one
accelerator). Not measured here.
"""

from experiments.configs import loss_study_fashion_mnist


def get_config():
  cfg = loss_study_fashion_mnist.get_config()
  cfg[loss_study_fashion_mnist.DATASET].data.num_examples = None
  cfg.study.seeds = 10
  cfg.study.workers = 1
  return cfg
