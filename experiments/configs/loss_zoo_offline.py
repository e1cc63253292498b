r"""The loss zoo (arXiv 2601.21450's study, nine losses) on the offline sets; CPU.

  python -m experiments.loss_zoo.run \
      --config=experiments/configs/loss_zoo_offline.py --workdir=runs/loss_zoo

All nine losses (triplet, contrastive, npair, ntxent, supcon, multi_similarity, arcface,
proxy_anchor, center_contrastive) under identical settings (P x K = 8 x 8 batches, Adam
1e-3, 32-d L2-normalised embeddings) on ``synthetic`` (MLP, 30 epochs), ``mnist1d``
(conv1d, 20 epochs) and ``fashion_mnist`` (Debian's IDX files, 6,000 / 2,000 examples,
small ConvNet, 10 epochs), 5 seeds: 135 runs. Quick look:
``--config.study.seeds=2 --config.study.epochs=3``. See ``experiments/loss_zoo/run.py``.
"""

from experiments.configs.presets import loss_zoo


def get_config():
  return loss_zoo.study_config(loss_zoo.OFFLINE_DATASETS)
