r"""CUB-200-2011 (TFDS) with triplet loss and DAMS, paper A's head and batches.

  tsm-prepare caltech_birds2011
  tsm-train --config=experiments/configs/caltech_birds2011_dams.py --workdir=runs/cub_dams

Class-disjoint split as in Musgrave et al. (classes 1-100 train with a validation share,
101-200 test), 224 px inputs with ImageNet normalisation and crop / flip augmentation, a
ResNet-50 trunk with paper A's head (512-256-128, dropout 0.5 / 0.3), P x K = 32 x 2,
Adam 1e-4, DAMS from mu = 0.2; the kept model has the lowest validation loss at a fixed
margin of 1.0 (paper A). Paper A used an ImageNet-pretrained EfficientNet-B0; pass
ImageNet weights with ``--config.model.pretrained_path=resnet50.npz`` (see
``tsm.models.convert_torchvision_resnet``). Wants a GPU.
"""

from tsm import config as config_lib


def get_config():
  cfg = config_lib.default_config()
  cfg.data.name = "caltech_birds2011"
  cfg.data.split = "class_disjoint"
  cfg.data.val_fraction = 0.1
  cfg.data.image_size = 224
  cfg.data.channels = 3
  cfg.data.normalize = "imagenet"
  cfg.data.augment = True
  cfg.model.name = "resnet50"
  cfg.model.head = "paper_a"
  cfg.model.embedding_dim = 128
  cfg.loss.name = "triplet"
  cfg.loss.mining = "all"
  cfg.margin.schedule = "dams"
  cfg.train.epochs = 50
  cfg.train.sampling = "pk"
  cfg.train.classes_per_batch = 32
  cfg.train.samples_per_class = 2
  cfg.train.learning_rate = 1e-4
  cfg.train.best_metric = "val_loss"
  cfg.eval.val_margin = 1.0
  cfg.eval.every_epochs = 5
  cfg.eval.batch_size = 128
  return cfg
