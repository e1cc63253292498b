r"""Paper B's loss study on CUB-200-2011 (TFDS): ResNet-50 trunk + linear head to 512-d.

  tsm-prepare caltech_birds2011
  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_caltech_birds2011.py --workdir=runs/loss_study_caltech_birds2011

Paper B trains a linear head on a frozen ViT-B/32 and reports Recall@1. tsm has no ViT:
the trunk is a ResNet-50 (224 px, ImageNet stem), trained end to end from scratch unless
ImageNet weights are given as a local ``.npz`` (``tsm.models`` format, e.g. from
``convert_torchvision_resnet``):
``--config.caltech_birds2011.model.pretrained_path=/path/resnet50.npz`` (the trunk is then frozen,
as in paper B). Class-disjoint split (classes 1-100 train, 101-200 test; Musgrave et al.),
so k-NN accuracy is not reported. 30 epochs, 5 seeds; a GPU is needed.
"""

from experiments.configs.presets import paper_b


def get_config():
  cfg = paper_b.study_config(("caltech_birds2011",))
  cfg.study.workers = 1
  return cfg
