r"""Paper A's margin-scheduler study on scikit-learn's digits (offline, ~3 CPU minutes).

  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_digits.py --workdir=runs/margin_study_digits

The smallest offline set (1,797 8x8 images, 10 classes): verification split by image
within the same classes (``by_image``: 20 % test, then 20 % of the rest for validation),
an MLP trunk (128) with paper A's head (512-256-128, dropout off as in the mnist1d study),
P x K = 10 x 4 (P capped by the 10 classes), Adam 1e-3, 20 epochs, every schedule and
seed as in ``margin_study_mnist1d.py`` (90 runs of 10 seeds; 45 runs of 5 seeds took 173 s
on 2 shared cores). Digits
is nearly solved by every schedule (test AUC ~0.997), so it separates them less than mnist1d.
"""

from experiments.configs.presets import paper_a


def get_config():
  cfg = paper_a.base()
  cfg.data.name = "digits"
  cfg.data.split = "by_image"
  cfg.data.test_fraction = 0.2
  cfg.data.val_fraction = 0.2
  cfg.model.name = "mlp"
  cfg.model.hidden_sizes = (128,)
  cfg.model.head = "paper_a"
  cfg.model.head_dropout = (0.0, 0.0)
  cfg.model.embedding_dim = 128
  cfg.train.epochs = 20
  cfg.train.classes_per_batch = 10
  cfg.train.samples_per_class = 4
  cfg.train.learning_rate = 1e-3
  cfg.eval.every_epochs = 100
  cfg.study.workers = 2
  return cfg
