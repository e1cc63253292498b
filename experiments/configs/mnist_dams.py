r"""MNIST (TFDS) with triplet loss and DAMS, paper B's small ConvNet.

Prepare the data once (needs the ``data`` extra, i.e. TensorFlow, for the download):

  tsm-prepare mnist

then:

  tsm-train --config=experiments/configs/mnist_dams.py --workdir=runs/mnist_dams

Class-disjoint split (digits 0-4 train with a validation share, 5-9 test), ConvNet
conv32-conv64-FC128-64 on 28x28x1, P x K = 5 x 16, all valid triplets, DAMS from
mu = 0.2. Paper A ran MNIST with an EfficientNet-B0 on 224 px 3-channel inputs; set
``--config.data.image_size=224 --config.data.channels=3`` and a ResNet trunk to follow it.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "mnist"
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.1
  cfg.model.name = "convnet"
  cfg.model.embedding_dim = 64
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.margin.schedule = "dams"
  cfg.train.epochs = 10
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 5
  cfg.train.samples_per_class = 16
  cfg.train.learning_rate = 1e-3
  cfg.train.best_metric = "val_loss"
  cfg.eval.every_epochs = 2
  cfg.checkpoint.every_steps = 500
  return cfg
