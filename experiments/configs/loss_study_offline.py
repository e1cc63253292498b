r"""Paper B's loss study (contrastive vs triplet) on the offline sets; CPU minutes.

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_offline.py --workdir=runs/loss_study

Trains both losses under paper B's settings (margin 1.0, L2-normalised embeddings, Adam
1e-3, 64 random triplets / pairs per batch) on ``synthetic`` (paper B's toy set, MLP
128 -> 64 -> 32, 100 epochs), ``digits`` (MLP, 100 epochs) and ``mnist1d`` (conv1d, 80
epochs), 10 seeds each (the data drawn from each seed): 60 runs, about 12 minutes on 2
CPU cores. Quick look:
``--config.study.seeds=2 --config.study.epochs=10``. In-batch losses instead of paper B's
random sampling: ``--config.study.sampling=pk`` (``--config.study.mining=semihard`` ...).
See ``experiments/loss_comparison/run.py``.
"""

from experiments.configs.presets import paper_b


def get_config():
  return paper_b.study_config(paper_b.OFFLINE_DATASETS)
