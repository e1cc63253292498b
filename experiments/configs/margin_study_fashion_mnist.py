r"""Paper A's margin-scheduler study on Fashion-MNIST: the CPU version.

Needs ``apt-get install dataset-fashion-mnist`` (Debian's IDX files; offline), then:

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_fashion_mnist.py \
      --workdir=runs/margin_study_fashion_mnist

Fashion-MNIST is the standard drop-in for paper A's MNIST. Paper A's setup (see
``experiments.configs.presets.paper_a.base``) where it fits a 10-class set:

* verification split by image within the same 10 classes: the official 60,000 / 10,000
  split (``standard``), 10 % of train held out (by image) for validation, as paper A's
  MNIST; ``--config.fashion_mnist.data.split=class_disjoint`` trains on classes 0-4 and
  tests on 5-9;
* paper B's small ConvNet (conv32-conv64-FC128) on 28x28x1 instead of paper A's
  ImageNet EfficientNet-B0 on 224 px RGB, under paper A's head (512-256-128,
  L2-normalised); head dropout off (as the mnist1d study: with 0.5 / 0.3 the easy share
  stays under DAMS's 0.95 for most of a short run, so DAMS would never move);
* P x K = 10 x 6 = 60 rows (P is capped by the 10 classes; paper A: 32 x 2 = 64);
* the authors' loss (``mean_nonzero``), all valid triplets, every schedule of the study.

CPU budget (within 60 minutes on 2 CPU cores, at least 5 seeds): 9 schedules
x 5 seeds = 45 runs on 2 worker processes; each run sees a 5,000-image subsample of
each split (train / validation / test; ``data.num_examples``), drawn from the run's seed
(``study.vary_data``), for 12 epochs of 83 steps (1,000 steps) at Adam 1e-3 (paper A:
all images, 50-100 epochs, Adam 1e-4). The easy share at mu = 0.2 is 0.82 after the
first epoch and 0.89 after the second, so DAMS (tau = 0.95) starts raising mu within
the run. Measured on 2 quiet cores: the 45 runs in 2405 s (40 minutes; 101-125 s a run,
two runs at a time; docs/results/margin_study.md). Quick look:
``--config.study.seeds=1 --config.study.schedules=dams --config.study.epochs=2
--config.study.workers=1`` (57 CPU-s).

The full-size version (all images, 50 epochs, 10 seeds) is the GPU config
``margin_study_fashion_mnist_gpu.py``.
"""

from experiments.configs.presets import paper_a


def get_config():
  run = paper_a.base()
  run.data.name = "fashion_mnist"
  run.data.source = "idx"
  run.data.split = "standard"
  run.data.val_fraction = 0.1
  run.data.num_examples = 5_000
  run.model.name = "convnet"
  run.model.conv_features = (32, 64)
  run.model.hidden_sizes = (128,)
  run.model.head = "paper_a"
  run.model.head_dropout = (0.0, 0.0)
  run.model.embedding_dim = 128
  run.train.epochs = 12
  run.train.classes_per_batch = 10
  run.train.samples_per_class = 6
  run.train.learning_rate = 1e-3
  run.eval.every_epochs = 100   # validation retrieval metrics after the last epoch only
  cfg = paper_a.study_config(run, workers=2)
  cfg.study.seeds = 5
  return cfg
