r"""Paper B's loss study on CIFAR-10 (TFDS): ResNet-18 trunk + linear head to 512-d.

  tsm-prepare cifar10
  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_cifar10.py --workdir=runs/loss_study_cifar10

Paper B trains a linear head (768 -> 512) on a frozen ViT-B/32. tsm has no ViT: this
config uses a ResNet-18 (CIFAR stem) trunk, trained end to end from scratch by default.
With ImageNet-pretrained weights in a local ``.npz`` (``tsm.models`` format, e.g. from
``convert_torchvision_resnet``) pass
``--config.cifar10.model.pretrained_path=/path/resnet18.npz``: the trunk is then frozen
(``study.freeze_pretrained``) and only the head trains, as in paper B (with
``--config.cifar10.data.normalize=imagenet``). Standard 50,000 / 10,000 split, 20 epochs,
5 seeds; a GPU is needed.
"""

from experiments.configs.presets import paper_b


def get_config():
  cfg = paper_b.study_config(("cifar10",))
  cfg.study.workers = 1
  return cfg
