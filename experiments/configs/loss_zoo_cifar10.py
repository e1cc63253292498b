r"""The loss zoo on CIFAR-10 (TFDS): ResNet-18 (CIFAR stem) trunk + 128-d linear head.

  tsm-prepare cifar10
  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_cifar10.py --workdir=runs/loss_zoo_cifar10

The follow-up (arXiv 2601.21450) trains a 128-d L2-normalised projection head on a frozen
ViT-B/32 with Adam 1e-4. tsm has no ViT: the trunk is a resnet18, trained end to end
from scratch unless a user has ImageNet weights in a local ``.npz`` (``tsm.models``
format, e.g. from ``convert_torchvision_resnet``):
``--config.cifar10.model.pretrained_path=/path/resnet18.npz`` (the trunk is then
frozen, ``study.freeze_pretrained``, and only the head trains, as in the paper; add
``--config.cifar10.data.normalize=imagenet`` where the weights expect it).
Standard 50,000 / 10,000 split, P x K = 10 x 16, 20 epochs, 5 seeds: 45 runs; a GPU is
needed. D2 is not tested (CIFAR-10 is not fine-grained).
"""

from experiments.configs.presets import loss_zoo


def get_config():
  cfg = loss_zoo.study_config(("cifar10",))
  cfg.study.workers = 1
  return cfg
