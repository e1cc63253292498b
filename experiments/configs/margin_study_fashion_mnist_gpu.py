r"""GPU config: paper A's margin-scheduler study on all of Fashion-MNIST.

A GPU config (hours on 2 CPU cores; the CPU version is
``margin_study_fashion_mnist.py``). Needs ``apt-get install dataset-fashion-mnist``:

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_fashion_mnist_gpu.py \
      --workdir=runs/margin_study_fashion_mnist_gpu

As ``margin_study_fashion_mnist.py`` but full size: all 54,000 / 6,000 / 10,000 train /
validation / test images (no ``data.num_examples`` cap), paper A's 50 epochs (900
steps each) at paper A's Adam 1e-4, 10 seeds, one worker process (one accelerator).
Still paper B's ConvNet at 28 px rather than paper A's EfficientNet-B0 at 224 px (for
that trunk see ``margin_study_mnist.py``). Inputs standardised by the training split's
mean / std, as paper A's code (the CPU study keeps [0, 1] scaling, with which its
results were measured). Not measured here.
"""

from experiments.configs import margin_study_fashion_mnist


def get_config():
  cfg = margin_study_fashion_mnist.get_config()
  run = cfg.fashion_mnist
  run.data.num_examples = None
  run.data.normalize = "dataset"
  run.train.epochs = 50
  run.train.learning_rate = 1e-4
  run.eval.every_epochs = 5
  run.eval.batch_size = 1024
  cfg.study.seeds = 10
  cfg.study.workers = 1
  return cfg
