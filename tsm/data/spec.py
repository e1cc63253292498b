"""What to load: :class:`DataSpec`, the typed description of a dataset and its split.

``tsm.data.load(spec, seed=...)`` reads it; ``tsm.config`` builds it from the ``data``
section of an experiment config (field names are the same). ``spec.check()`` raises a
one-line ``ValueError`` whose message starts with the bad field's name, before anything
is read from disk.
"""

from __future__ import annotations

import dataclasses

# Built-in offline sets (no download, no TFDS).
OFFLINE_DATASETS = ("digits", "mnist1d", "synthetic")
# TFDS sets, read from prepared ArrayRecord files through ``tfds.data_source``.
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "caltech_birds2011", "cars196",
                 "lfw")
# Sets read from IDX files in a directory (``path``): Fashion-MNIST from Debian's
# ``dataset-fashion-mnist`` package by default; MNIST / KMNIST where a user has them.
IDX_DATASETS = ("fashion_mnist", "mnist", "kmnist")
DATASETS = OFFLINE_DATASETS + TFDS_DATASETS + ("kmnist",)
SOURCES = ("auto", "idx", "tfds")
SPLITS = ("class_disjoint", "standard", "by_image")
NORMALIZATIONS = ("unit", "symmetric", "imagenet", "dataset")
# "dataset" normalisation: the channel statistics come from at most this many training
# examples (drawn with data_seed); the mean's error is then far below one grey level.
STATS_EXAMPLES = 10_000
VAL_SPLITS = ("auto", "by_class", "by_image")
# "auto" validation: by class for class-disjoint splits whose training part has at
# least this many classes (CUB, Cars196, LFW); by image otherwise (the 10-class sets,
# where holding out a class would leave 4 training classes).
MIN_CLASSES_FOR_CLASS_VAL = 20

# Splits each dataset supports ("standard" needs an official train/test split).
SUPPORTED_SPLITS = {
    "digits": ("class_disjoint", "by_image"),
    "mnist1d": SPLITS,
    "synthetic": SPLITS,
    "mnist": SPLITS,
    "fashion_mnist": SPLITS,
    "cifar10": SPLITS,
    "caltech_birds2011": SPLITS,
    "cars196": SPLITS,
    "lfw": ("class_disjoint", "by_image"),
    "kmnist": SPLITS,
}
# Datasets whose inputs are images (image_size / channels / augment apply).
IMAGE_DATASETS = ("digits", "kmnist") + TFDS_DATASETS
# Images of varying size: image_size must be set.
VARIABLE_SIZE_DATASETS = ("caltech_birds2011", "cars196")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A dataset, how it is split and how its inputs are prepared.

  Attributes:
    name: dataset name, one of ``DATASETS``.
    split: ``"class_disjoint"`` (train and test classes disjoint; the field's
      standard for metric learning), ``"standard"`` (the dataset's own train/test
      split, image-level) or ``"by_image"`` (all images pooled and split at random).
    val_fraction: share of the training part held out for validation. 0 gives an
      empty validation split.
    val_split: ``"by_class"``, ``"by_image"`` or ``"auto"``: by class for
      class-disjoint splits with at least ``MIN_CLASSES_FOR_CLASS_VAL`` (20) training
      classes (CUB, Cars196, LFW), by image otherwise (the 10-class sets).
    test_fraction: share held out for test by ``"by_image"`` splits, and share of the
      identities with at least two images held out by LFW's class-disjoint split.
    data_seed: seed of the dataset itself (synthetic points, by-image test split, LFW
      identity split); fixed across runs so that test sets are comparable. The run's
      ``seed`` (argument of ``load``) only picks the validation split.
    image_size: side of the square images fed to the model (None = native size;
      required for caltech_birds2011 and cars196, whose images vary in size).
    channels: 1 or 3 (None = native; 3 repeats grey images, 1 converts colour to grey).
    normalize: ``"unit"`` ([0, 1]), ``"symmetric"`` ([-1, 1]), ``"imagenet"``
      (ImageNet channel mean / std, for ImageNet-pretrained trunks) or ``"dataset"``:
      the training split's own channel mean / std (as paper A's code), measured on the
      prepared inputs (after resize and channel conversion) of at most
      ``STATS_EXAMPLES`` training examples and applied to every split; for non-image
      sets it standardises each feature of the last axis. The first three apply to
      images only.
    augment: random crop (pad by size / 8) and, for natural images, horizontal flip
      on training batches.
    views: inputs of each training batch: 1, or ``V >= 2``: every input ``V`` times,
      each independently augmented (for self-supervised and two-view losses:
      ``tsm.data.MultiViewSampler``); the batch then has ``V x`` the sampler's rows
      (its batch size counts inputs per view). Needs ``augment`` (without it the views
      would be the same image). Evaluation takes one view.
    data_dir: TFDS data directory (None = TFDS default, ``~/tensorflow_datasets``).
    cache_dir: where the label cache (.npy) goes (None = next to the prepared data,
      or ``~/.cache/tsm`` when that is not writable).
    num_examples: cap on the number of examples of each split (None = all), for quick
      runs.
    path: directory of IDX files (``train-images-idx3-ubyte[.gz]``,
      ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
      ``t10k-labels-idx1-ubyte[.gz]``); None = Debian's Fashion-MNIST directory
      (``apt-get install dataset-fashion-mnist``).
    source: where ``IDX_DATASETS`` are read from: ``"idx"`` (the files in ``path``),
      ``"tfds"`` (prepared TFDS data) or ``"auto"``: IDX for fashion_mnist and kmnist,
      and for mnist when ``path`` is set; TFDS otherwise.
  """
  name: str = "digits"
  split: str = "class_disjoint"
  val_fraction: float = 0.1
  val_split: str = "auto"
  test_fraction: float = 0.2
  data_seed: int = 0
  image_size: int | None = None
  channels: int | None = None
  normalize: str = "unit"
  augment: bool = False
  views: int = 1
  data_dir: str | None = None
  cache_dir: str | None = None
  num_examples: int | None = None
  path: str | None = None
  source: str = "auto"

  def uses_idx(self) -> bool:
    """Whether the dataset is read from IDX files (see ``source``)."""
    if self.name not in IDX_DATASETS or self.source == "tfds":
      return False
    return (self.source == "idx" or self.name != "mnist" or self.path is not None)

  def check(self) -> None:
    """Raises a one-line ``ValueError`` starting with the bad field's name."""
    name = self.name
    if name not in DATASETS:
      raise ValueError(f"name={name!r} is not a known dataset; use one of "
                       f"{', '.join(DATASETS)}.")
    split = self.split
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is unknown; use one of {', '.join(SPLITS)}.")
    if split not in SUPPORTED_SPLITS[name]:
      raise ValueError(f"split={split!r} is not available for {name} (it has no "
                       f"official train/test split); use one of "
                       f"{', '.join(SUPPORTED_SPLITS[name])}.")
    for field, value in (("val_fraction", self.val_fraction),
                         ("test_fraction", self.test_fraction)):
      if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{field}={value!r} must be a number in [0, 1); e.g. 0.1.")
    val_split = self.val_split
    if val_split not in VAL_SPLITS:
      raise ValueError(f"val_split={val_split!r} is unknown; use one of "
                       f"{', '.join(VAL_SPLITS)}.")
    image_size = self.image_size
    channels = self.channels
    augment = self.augment
    if not isinstance(augment, bool):
      raise ValueError(f"augment={augment!r} must be True or False.")
    views = self.views
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
      raise ValueError(f"views={views!r} must be an integer >= 1 (2: two views of each "
                       "input).")
    if views > 1 and name not in IMAGE_DATASETS:
      raise ValueError(f"views={views} does not apply to {name} (not images, nothing to "
                       "augment); set views=1.")
    if views > 1 and not augment:
      raise ValueError(f"views={views} needs augment=True (without augmentation the "
                       "views are the same image); set augment=True or views=1.")
    if not isinstance(self.data_seed, int) or isinstance(self.data_seed, bool) or (
        self.data_seed < 0):
      raise ValueError(f"data_seed={self.data_seed!r} must be an integer >= 0.")
    if name not in IMAGE_DATASETS:
      for field, value in (("image_size", image_size), ("channels", channels)):
        if value is not None:
          raise ValueError(f"{field}={value!r} does not apply to {name} (not images);"
                           " leave it None.")
      if augment:
        raise ValueError(f"augment=True does not apply to {name} (not images); set "
                         "it False.")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 4):
      raise ValueError(f"image_size={image_size!r} must be an integer >= 4 or None "
                       "(native size).")
    if image_size is None and name in VARIABLE_SIZE_DATASETS:
      raise ValueError(f"image_size must be set for {name} (its images vary in "
                       "size); e.g. 224.")
    if channels not in (None, 1, 3):
      raise ValueError(f"channels={channels!r} must be 1, 3 or None (native).")
    normalize = self.normalize
    if normalize not in NORMALIZATIONS:
      raise ValueError(f"normalize={normalize!r} is unknown; use one of "
                       f"{', '.join(NORMALIZATIONS)}.")
    if self.source not in SOURCES:
      raise ValueError(f"source={self.source!r} is unknown; use one of "
                       f"{', '.join(SOURCES)}.")
    if self.source == "idx" and self.name not in IDX_DATASETS:
      raise ValueError(f"source='idx' does not apply to {name}; IDX files serve "
                       f"{', '.join(IDX_DATASETS)}.")
    if self.name == "kmnist" and self.source == "tfds":
      raise ValueError("source='tfds' is not available for kmnist here; give its IDX "
                       "files with path=DIR.")
    if self.path is not None and not isinstance(self.path, str):
      raise ValueError(f"path={self.path!r} must be a directory name or None.")
    num_examples = self.num_examples
    if num_examples is not None and (not isinstance(num_examples, int) or num_examples < 2):
      raise ValueError(f"num_examples={num_examples!r} must be an integer >= 2 or "
                       "None (all examples).")


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset has no prepared ArrayRecord files; the message says how to fix it."""
