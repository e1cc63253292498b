r"""Paper A's margin-scheduler study on MNIST (TFDS): EfficientNet-B0 + paper A's head.

Prepare the data once (needs the ``data`` extra, i.e. TensorFlow, for the download), then
run the study (wants a GPU; one worker process per accelerator):

  tsm-prepare mnist
  python -m experiments.margin_scheduler.run \
      --config=experiments/configs/margin_study_mnist.py --workdir=runs/margin_study_mnist \
      --config.mnist.model.pretrained_path=efficientnet_b0.npz

Paper A's MNIST setup: grey digits repeated to 3 channels at 224 px, standardised by the
training split's channel mean / std (as the authors' code), an ImageNet-pretrained EfficientNet-B0 trunk (convert torchvision's
weights with ``tsm.models.convert_torchvision_efficientnet_b0`` and pass the ``.npz``;
without it the trunk starts from scratch), paper A's head, Adam 1e-4, 50 epochs, the
model of the lowest validation loss. MNIST has 10 classes, so the verification split is
by image within them (the official 60,000 / 10,000 split, ``standard``, 10 % of train
held out for validation) and P is capped at 10: P x K = 10 x 6 = 60 rows, close to paper
A's 32 x 2 = 64. Every schedule of the study, 10 seeds (the study default).
"""

from experiments.configs.presets import paper_a


def get_config():
  run = paper_a.base()
  run.data.name = "mnist"
  run.data.split = "standard"
  run.data.val_fraction = 0.1
  run.data.image_size = 224
  run.data.channels = 3
  run.data.normalize = "dataset"
  run.model.name = "efficientnet_b0"
  run.model.head = "paper_a"
  run.model.embedding_dim = 128
  run.train.epochs = 50
  run.train.classes_per_batch = 10
  run.train.samples_per_class = 6
  run.train.learning_rate = 1e-4
  run.eval.batch_size = 128
  run.eval.every_epochs = 5
  return paper_a.study_config(run, workers=1)
