r"""Paper A's margin-scheduler study on LFW (TFDS): identity-disjoint face verification.

  tsm-prepare lfw
  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_lfw.py --workdir=runs/margin_study_lfw \
      --config.lfw.model.pretrained_path=efficientnet_b0.npz

Identity-disjoint train / validation / test: 20 % of the identities with at least two
images form the test set, 10 % of the training identities the validation set (by class).
224 px RGB resized and standardised by the training split's channel mean / std, no crop /
flip augmentation (both as the authors' code), an ImageNet-pretrained EfficientNet-B0 trunk (``tsm.models.convert_torchvision_efficientnet_b0``
makes the ``.npz``; without it the trunk starts from scratch) with paper A's head,
P x K = 32 identities x 2 images, Adam 1e-4, 50 epochs, the model of the lowest
validation loss; every same-identity test pair and 100,000 different ones (eval.pairs=all;
``--config.lfw.eval.pairs=paper_a`` gives paper A's 1,000), threshold from the validation
pairs. Wants a GPU (one worker).
"""

from experiments.configs.presets import paper_a


def get_config():
  run = paper_a.images("lfw")
  run.data.test_fraction = 0.2
  return paper_a.study_config(run)
