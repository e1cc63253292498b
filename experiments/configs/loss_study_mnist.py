r"""Paper B's loss study on MNIST (TFDS): ConvNet conv32-conv64-FC128-64, batch 256.

  tsm-prepare mnist
  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_mnist.py --workdir=runs/loss_study_mnist

Contrastive vs triplet loss with paper B's random pairs / triplets, margin 1.0, Adam 1e-3,
20 epochs, 5 seeds, on the standard 60,000 / 10,000 split (k-NN on test, training set as
reference). Paper B reports intra-class variance and inter-class distances for MNIST;
the table shows them beside ours. Minutes per run on a GPU.
"""

from experiments.configs.presets import paper_b


def get_config():
  cfg = paper_b.study_config(("mnist",))
  cfg.study.workers = 1
  return cfg
