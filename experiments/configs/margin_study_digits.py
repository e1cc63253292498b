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
  run = paper_a.base()
  run.data.name = "digits"
  run.data.split = "by_image"
  run.data.test_fraction = 0.2
  run.data.val_fraction = 0.2
  run.model.name = "mlp"
  run.model.hidden_sizes = (128,)
  run.model.head = "paper_a"
  run.model.head_dropout = (0.0, 0.0)
  run.model.embedding_dim = 128
  run.train.epochs = 20
  run.train.classes_per_batch = 10
  run.train.samples_per_class = 4
  run.train.learning_rate = 1e-3
  run.eval.every_epochs = 100
  return paper_a.study_config(run, workers=2)
