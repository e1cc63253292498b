r"""Paper A's margin-scheduler study on CUB-200-2011 (TFDS): identity-disjoint, paper A's setup.

  tsm-prepare caltech_birds2011
  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_caltech_birds2011.py \
      --workdir=runs/margin_study_cub --config.caltech_birds2011.model.pretrained_path=efficientnet_b0.npz

Class-disjoint (identity-disjoint) split: classes 1-100 for training, 10 % of them held out
as validation classes, classes 101-200 for the test pairs and retrieval. 224 px RGB
standardised by the training split's channel mean / std, resized without crop / flip
augmentation (both as the authors' code), an ImageNet-pretrained EfficientNet-B0 trunk (``tsm.models.convert_torchvision_efficientnet_b0`` makes the
``.npz``; without it the trunk starts from scratch) with paper A's head, P x K = 32 x 2,
Adam 1e-4, 50 epochs, the model of the lowest validation loss. Wants a GPU (one worker).
"""

from experiments.configs.presets import paper_a


def get_config():
  return paper_a.study_config(paper_a.images("caltech_birds2011"))
