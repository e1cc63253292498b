r"""LFW (TFDS) face verification with triplet loss and DAMS: paper A's setup.

  tsm-prepare lfw
  tsm-train --config=experiments/configs/lfw_dams.py --workdir=runs/lfw_dams

Identity-disjoint train / validation / test split; 224 px RGB inputs with ImageNet
normalisation and crop / flip augmentation; a ResNet-18 trunk with paper A's head
(Dense 512, ReLU, Dropout 0.5, Dense 256, ReLU, Dropout 0.3, Dense 128, L2-norm);
P x K = 32 identities x 2 images; Adam 1e-4; DAMS (mu0 = 0.2, tau = 0.95, delta = 0.05);
the model of the lowest validation loss (fixed margin 1.0, as in the authors' code) is
kept; test: 1,000 pairs, half same-identity, AUC / EER, accuracy at the threshold chosen
on validation pairs (closest ROC point to (0, 1)). Paper A's trunk is an
ImageNet-pretrained EfficientNet-B0; tsm offers ResNets (pass converted ImageNet weights
with ``--config.model.pretrained_path=...``). Wants a GPU.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "lfw"
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.1
  cfg.data.test_fraction = 0.2
  cfg.data.image_size = 224
  cfg.data.channels = 3
  cfg.data.normalize = "imagenet"
  cfg.data.augment = True
  cfg.model.name = "resnet18"
  cfg.model.head = "paper_a"
  cfg.model.head_hidden = (512, 256)
  cfg.model.head_dropout = (0.5, 0.3)
  cfg.model.embedding_dim = 128
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.loss.distance = "euclidean"
  cfg.margin.schedule = "dams"
  cfg.margin.initial_margin = 0.2
  cfg.margin.threshold = 0.95
  cfg.margin.increment = 0.05
  cfg.train.epochs = 50
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 32
  cfg.train.samples_per_class = 2
  cfg.train.optimizer = "adam"
  cfg.train.learning_rate = 1e-4
  cfg.train.best_metric = "val_loss"
  cfg.eval.val_margin = 1.0
  cfg.eval.num_pairs = 1000
  cfg.eval.every_epochs = 5
  cfg.eval.batch_size = 128
  return cfg
