r"""The loss zoo on CUB-200-2011 (TFDS): ResNet-50 trunk (224 px) + 128-d linear head.

  tsm-prepare caltech_birds2011
  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_caltech_birds2011.py \
      --workdir=runs/loss_zoo_caltech_birds2011

The follow-up (arXiv 2601.21450) trains a 128-d L2-normalised projection head on a frozen
ViT-B/32 with Adam 1e-4. tsm has no ViT: the trunk is a resnet50, trained end to end
from scratch unless a user has ImageNet weights in a local ``.npz`` (``tsm.models``
format, e.g. from ``convert_torchvision_resnet``):
``--config.caltech_birds2011.model.pretrained_path=/path/resnet50.npz`` (the trunk is then
frozen, ``study.freeze_pretrained``, and only the head trains, as in the paper; add
``--config.caltech_birds2011.data.normalize=imagenet`` where the weights expect it).
Class-disjoint split (classes 1-100 train, 101-200 test), P x K = 32 x 4, 30 epochs,
5 seeds: 45 runs; a GPU is needed. Fine-grained: D2 is tested.
"""

from experiments.configs.presets import loss_zoo


def get_config():
  cfg = loss_zoo.study_config(("caltech_birds2011",))
  cfg.study.workers = 1
  return cfg
