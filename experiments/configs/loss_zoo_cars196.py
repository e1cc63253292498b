r"""The loss zoo on Cars196 (TFDS): ResNet-50 trunk (224 px) + 128-d linear head.

  tsm-prepare cars196
  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_cars196.py --workdir=runs/loss_zoo_cars196

The follow-up (arXiv 2601.21450) trains a 128-d L2-normalised projection head on a frozen
ViT-B/32 with Adam 1e-4. tsm has no ViT: the trunk is a resnet50, trained end to end
from scratch unless a user has ImageNet weights in a local ``.npz`` (``tsm.models``
format, e.g. from ``convert_torchvision_resnet``):
``--config.cars196.model.pretrained_path=/path/resnet50.npz`` (the trunk is then
frozen, ``study.freeze_pretrained``, and only the head trains, as in the paper; add
``--config.cars196.data.normalize=imagenet`` where the weights expect it).
Class-disjoint split (classes 1-98 train, 99-196 test), P x K = 32 x 4, 30 epochs, 5
seeds: 45 runs; a GPU is needed. Fine-grained: D2 is tested.
"""

from experiments.configs.presets import loss_zoo


def get_config():
  cfg = loss_zoo.study_config(("cars196",))
  cfg.study.workers = 1
  return cfg
