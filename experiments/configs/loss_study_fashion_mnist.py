r"""Paper B's loss study (contrastive vs triplet) on Fashion-MNIST: the CPU version.

Needs ``apt-get install dataset-fashion-mnist`` (Debian's IDX files; offline), then:

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_fashion_mnist.py \
      --workdir=runs/loss_study_fashion_mnist

Paper B's MNIST setup on Fashion-MNIST (one of the follow-up's five sets): the ConvNet
conv32-conv64-FC128-64, L2-normalised, margin 1.0, Adam 1e-3, batches of 256 random
triplets (triplet loss) or pairs (contrastive loss), the model after the last epoch, k-NN
(k = 5) on test with the training set as reference. The official split by image
(``standard``: the same ten classes in train and test).

CPU budget (each offline study within 60 minutes on 2 CPU cores, at least 5
seeds): every run sees a 6,000-image subsample of each split (train from the 60,000
training images, test from the 10,000 test images; ``data.num_examples``), drawn from
the run's seed (``study.vary_data``; both losses of a seed see the same images), for
paper B's 20 epochs of 23 batches (460 steps); 2 losses x 5 seeds = 10 runs on 2 worker
processes. The study's measured wall time (2 shared cores) is on its results page,
``docs/results/loss_study.md``. Quick look:
``--config.study.seeds=1 --config.study.epochs=1 --config.study.workers=1``.

The full-size version (all 60,000 training images, 20 epochs, 10 seeds) is the GPU
config ``loss_study_fashion_mnist_gpu.py``.
"""

from experiments.configs.presets import paper_b

DATASET = "fashion_mnist"


def fashion_mnist_section(num_examples=6_000):
  """Paper B's MNIST section (:func:`experiments.configs.presets.paper_b.mnist`) on
  Fashion-MNIST's IDX files.

  Args:
    num_examples: cap on the images of each split (None: all 60,000 / 10,000).

  Returns:
    A full tsm config.
  """
  cfg = paper_b.mnist()
  cfg.data.name = DATASET
  cfg.data.source = "idx"
  cfg.data.split = "standard"
  cfg.data.num_examples = num_examples
  return cfg


def get_config():
  cfg = paper_b.study_config(())
  cfg.study.datasets = (DATASET,)
  cfg[DATASET] = fashion_mnist_section()
  cfg.study.seeds = 5
  cfg.study.workers = 2
  return cfg
