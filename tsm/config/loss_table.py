"""The config's table of losses: one entry per ``loss.name``, and the ``loss`` fields.

Adding a loss to the command line and the studies is one :class:`LossEntry` in
:data:`LOSS_TABLE` (and, for a new option, one :class:`LossField` in
:data:`LOSS_OPTIONS`); :mod:`tsm.config.defaults` derives ``LOSSES``, ``LOSS_FIELDS``,
the defaults and the help lines from it, :func:`tsm.config.builders.build_loss` builds
from it, and the loss zoo runs any registered name. For example::

    LossEntry("ntxent", losses.ntxent_loss, kind="plain",
              fields={"temperature": "softmax temperature (None: 0.07)"})

Kinds (how the train step's margin and ``num_classes`` reach the loss):
  * ``"margin"``: ``fn(embeddings, labels, margin, **options)``, the margin schedule's
    margin is the loss's margin: every schedule applies (triplet, contrastive);
  * ``"plain"``: ``fn(embeddings, labels, **options)``; the schedule's margin is not
    used (the schedules still read the loss's counts; only ``constant`` is meaningful);
  * ``"class"``: ``fn(num_classes, **options)`` gives a ``ParametricLoss`` (class
    vectors or a centre bank); the schedule's margin is used with
    ``loss.margin_from_schedule=True`` (then every schedule applies).

The table holds config vocabulary only (field names, defaults, help): the losses
themselves stay in :mod:`tsm.losses`, which knows nothing of configs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

from tsm import losses, miners, reducers, regularizers

KINDS = ("margin", "plain", "class")


@dataclasses.dataclass(frozen=True)
class LossField:
  """A ``loss`` option shared by the losses that take it.

  Attributes:
    default: the config default (None: the loss's own default, a typed placeholder).
    type: the field's type (for the placeholder).
    argument: the loss function's keyword (default: the field's name).
  """
  default: Any
  type: type
  argument: str | None = None


@dataclasses.dataclass(frozen=True)
class LossEntry:
  """One ``loss.name``.

  Attributes:
    name: the ``loss.name`` value.
    fn: the loss function (``"margin"`` / ``"plain"``) or constructor (``"class"``).
    kind: one of :data:`KINDS`.
    fields: option field -> what it means for this loss (with its default), in the
      order of the help line; every field must be in :data:`LOSS_OPTIONS`.
    takes_distance: passes ``loss.distance`` to ``fn`` (the losses whose default distance
      is ``"euclidean"``, the field's default; the others reject another value).
    build: optional ``(given, loss_section, sampling, num_classes) -> loss``, replacing
      the kind's generic builder (the triplet loss's curriculum and explicit tuples).
    references: ``fn`` takes ``ref_embeddings`` / ``pair_weights`` (PML's pair and
      triplet losses): ``loss.xbm_size`` and ``loss.miner`` apply.
    class_weights: the built loss has one ``[C, D]`` class matrix as its parameters:
      ``loss.weight_regularizer`` applies.
    required: fields the loss has no default for (as in PML): the config must set them.
    margin_argument: the keyword a ``"margin"`` loss takes the schedule's margin by.
    arguments: field -> ``fn``'s keyword where it differs from the field's own.
    views: the views of each input the built loss takes (2: VICReg; the config then
      needs ``data.views=2``).
  """
  name: str
  fn: Callable[..., Any]
  kind: str
  fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  takes_distance: bool = False
  build: Callable[..., Any] | None = None
  references: bool = False
  class_weights: bool = False
  required: tuple[str, ...] = ()
  margin_argument: str = "margin"
  arguments: Mapping[str, str] = dataclasses.field(default_factory=dict)
  views: int = 1


# Options of the ``loss`` section besides ``name`` and ``distance``; None defaults take
# each loss's own default (pytorch-metric-learning's where it has one).
LOSS_OPTIONS: dict[str, LossField] = {
    "mining": LossField("all", str),
    "curriculum": LossField((), tuple),
    "reduction": LossField("mean", str),
    "reduction_low": LossField(None, float),
    "reduction_high": LossField(None, float),
    "reduction_class_weights": LossField((), tuple),
    "positive_margin": LossField(0.0, float),
    "temperature": LossField(None, float),
    "alpha": LossField(None, float),
    "beta": LossField(None, float),
    "base": LossField(None, float),
    "scale": LossField(None, float),
    "loss_margin": LossField(None, float, argument="margin"),
    "momentum": LossField(None, float),
    "margin_from_schedule": LossField(False, bool),
    "softmax_scale": LossField(None, float),
    "la": LossField(None, float),
    "gamma": LossField(None, float),
    "centers_per_class": LossField(None, int),
    "sub_centers": LossField(None, int),
    "multiplier": LossField(None, int, argument="margin"),
    "variant": LossField(None, str),
    "b": LossField(None, float),
    "tn": LossField(None, float),
    "tp": LossField(None, float),
    "imbalance": LossField(None, float),
    "lambda_plus": LossField(None, float),
    "lambda_minus": LossField(None, float),
    "margin_plus": LossField(None, float),
    "margin_minus": LossField(None, float),
    "nu": LossField(None, float),
    "pos_eps": LossField(None, float),
    "neg_eps": LossField(None, float),
    "num_bins": LossField(None, int),
    "min_val": LossField(None, float),
    "num_proxies": LossField(None, int),
    "lambda_c": LossField(None, float),
    "beta_per_class": LossField(False, bool),
    "invariance_lambda": LossField(None, float),
    "variance_mu": LossField(None, float),
    "covariance_v": LossField(None, float),
    "eps": LossField(None, float),
}

# Options whose help line is written once in tsm.config.defaults (not per loss).
GENERAL_HELP_FIELDS = ("mining", "curriculum", "reduction", "reduction_low",
                       "reduction_high", "reduction_class_weights")
# ``loss.reduction`` values: the losses' names and PML's reducers (tsm.reducers), whose
# parameters are the fields of REDUCER_FIELDS; they apply to every loss taking
# ``reduction`` (the fields are checked with it, not listed per loss).
REDUCTION_CHOICES = (*losses.REDUCTIONS, "threshold", "class_weighted", "per_anchor")
REDUCER_FIELDS = {"reduction_low": "threshold", "reduction_high": "threshold",
                  "reduction_class_weights": "class_weighted"}


def reduction_value(loss: Any) -> Any:
  """``loss.reduction`` of a checked ``loss`` section as the losses' ``reduction``: a
  name, or a :mod:`tsm.reducers` value built from the ``loss.reduction_*`` fields."""
  if loss.reduction == "threshold":
    return reducers.threshold(loss.reduction_low, loss.reduction_high)
  if loss.reduction == "class_weighted":
    return reducers.class_weighted(tuple(loss.reduction_class_weights))
  if loss.reduction == "per_anchor":
    return reducers.per_anchor()
  return loss.reduction

# Wrappers every pair / triplet loss (``references=True``) takes (tsm.losses, tsm.miners).
MINERS: dict[str, Callable[..., Any]] = {
    "multi_similarity": miners.multi_similarity_miner,
    "pair_margin": miners.pair_margin_miner,
    "hdc": miners.hdc_miner,
    "batch_easy_hard": miners.batch_easy_hard_miner,
    "batch_hard": miners.batch_hard_miner,
    "triplet_margin": miners.triplet_margin_miner,
    "angular": miners.angular_miner,
}
EMBEDDING_REGULARIZERS: dict[str, Callable[..., Any]] = {
    "lp": regularizers.lp_regularizer,
    "zero_mean": regularizers.zero_mean_regularizer,
}
WEIGHT_REGULARIZERS: dict[str, Callable[..., Any]] = {
    "regular_face": regularizers.regular_face_regularizer,
    "center_invariant": regularizers.center_invariant_regularizer,
}
WRAPPER_FIELDS: dict[str, tuple[Any, str]] = {
    "miner": ("none", "pair / triplet losses: a tsm.miners miner with PML's defaults: "
                      f"none, {', '.join(MINERS)} (needs loss.mining=all)"),
    "xbm_size": (0, "pair / triplet losses: cross-batch memory slots (PML's "
                    "CrossBatchMemory; 0: off; at least the batch size)"),
    "embedding_regularizer": ("none", "every loss: regularizer of the embeddings added "
                                      "to the loss (PML's): none, "
                                      f"{', '.join(EMBEDDING_REGULARIZERS)}"),
    "embedding_reg_weight": (1.0, "weight of loss.embedding_regularizer"),
    "weight_regularizer": ("none", "losses with one class matrix ({}): regularizer of "
                                   "the class matrix (PML's): none, "
                                   f"{', '.join(WEIGHT_REGULARIZERS)}"),
    "weight_reg_weight": (1.0, "weight of loss.weight_regularizer"),
    "self_supervised": (False, "PML's SelfSupervisedLoss: the loss of the two views of "
                               "each input, rows paired by position, labels unused "
                               "(needs data.views=2); for {}"),
}


def _triplet(given, loss, sampling, num_classes):
  del given, num_classes
  reduction = reduction_value(loss)
  if sampling == "triplets":
    return losses.explicit_triplets_loss(distance=loss.distance, reduction=reduction)
  if loss.mining == "curriculum":
    return losses.MiningCurriculum(tuple(loss.curriculum), loss.distance, reduction)
  return functools.partial(losses.triplet_margin_loss, distance=loss.distance,
                           mining=loss.mining, reduction=reduction)


def _contrastive(given, loss, sampling, num_classes):
  del given, num_classes
  reduction = reduction_value(loss)
  if sampling == "pairs":
    return losses.explicit_pairs_loss(distance=loss.distance, reduction=reduction,
                                      positive_margin=loss.positive_margin)
  return functools.partial(losses.contrastive_loss, distance=loss.distance,
                           reduction=reduction, positive_margin=loss.positive_margin)


def _without_classes(given, loss, sampling, num_classes):
  """A ``"class"`` loss whose constructor takes no number of classes (its state is a
  histogram, or its proxies are not classes)."""
  del sampling, num_classes
  return LOSS_TABLE[loss.name].fn(**given)


def _vicreg(given, loss, sampling, num_classes):
  """VICReg of the two halves of a two-view batch (no margin, no labels)."""
  del loss, sampling, num_classes
  vicreg = functools.partial(losses.vicreg_loss, **given)
  return losses.stacked_views(lambda embeddings, ref_embeddings, margin: vicreg(
      embeddings, ref_embeddings))


def _margin_beta(given, loss, sampling, num_classes):
  """Margin loss with a learnt beta: one beta, or one per class (PML's
  ``num_classes``) with ``loss.beta_per_class``."""
  del sampling
  per_class = given.pop("beta_per_class", False)
  if per_class and num_classes is None:
    raise ValueError("loss.beta_per_class=True needs the number of classes.")
  return losses.margin_beta(int(num_classes) if per_class else None,
                            distance=loss.distance, **given)


_FROM_SCHEDULE = "use the margin schedule's margin as the loss margin"
LOSS_TABLE: dict[str, LossEntry] = {e.name: e for e in (
    LossEntry("triplet", losses.triplet_margin_loss, "margin",
              {"mining": "mining over the batch's triplets",
               "curriculum": "paper A's schedule", "reduction": "reduction"},
              takes_distance=True, build=_triplet, references=True),
    LossEntry("contrastive", losses.contrastive_loss, "margin",
              {"reduction": "reduction",
               "positive_margin": "positive margin (0: paper B's y d^2)"},
              takes_distance=True, build=_contrastive, references=True),
    LossEntry("npair", losses.npair_loss, "plain"),
    LossEntry("ntxent", losses.ntxent_loss, "plain",
              {"temperature": "softmax temperature (None: 0.07)"}),
    LossEntry("supcon", losses.supcon_loss, "plain",
              {"temperature": "softmax temperature (None: 0.1)"}),
    LossEntry("multi_similarity", losses.multi_similarity_loss, "plain",
              {"alpha": "positive scale (None: 2)", "beta": "negative scale (None: 50)",
               "base": "similarity offset (None: 0.5)"}),
    LossEntry("arcface", losses.arcface, "class",
              {"loss_margin": "angular margin in radians (None: 28.6 degrees)",
               "scale": "logit scale (None: 64)", "margin_from_schedule": _FROM_SCHEDULE},
              class_weights=True),
    LossEntry("proxy_anchor", losses.proxy_anchor, "class",
              {"loss_margin": "delta (None: 0.1)", "alpha": "alpha (None: 32)",
               "margin_from_schedule": _FROM_SCHEDULE}, class_weights=True),
    LossEntry("center_contrastive", losses.center_contrastive, "class",
              {"loss_margin": "cosine margin (None: 0)", "scale": "scale (None: 16)",
               "momentum": "momentum of the centre bank's moving average (None: 0.9)",
               "margin_from_schedule": _FROM_SCHEDULE}),
    # PML's further losses (docs/pml.md). Class losses with a margin take the schedule's
    # with loss.margin_from_schedule; the others have none to schedule.
    LossEntry("proxy_nca", losses.proxy_nca, "class",
              {"softmax_scale": "scale of the negative squared distances (None: 1)"},
              class_weights=True),
    LossEntry("normalized_softmax", losses.normalized_softmax, "class",
              {"temperature": "softmax temperature (None: 0.05)"}, class_weights=True),
    LossEntry("p2sgrad", losses.p2sgrad, "class", class_weights=True),
    LossEntry("soft_triple", losses.soft_triple, "class",
              {"loss_margin": "delta, subtracted from the own class's similarity "
                              "(None: 0.01)",
               "la": "logit scale lambda (None: 20)",
               "gamma": "temperature over a class's centres (None: 0.1)",
               "centers_per_class": "centres per class (None: 10)",
               "margin_from_schedule": _FROM_SCHEDULE}),
    LossEntry("sphereface", losses.sphereface, "class",
              {"multiplier": "the integer angle multiplier m (None: 4)",
               "scale": "extra logit scale (None: 1)"}, class_weights=True),
    LossEntry("subcenter_arcface", losses.subcenter_arcface, "class",
              {"loss_margin": "angular margin in radians (None: 28.6 degrees)",
               "scale": "logit scale (None: 64)",
               "sub_centers": "sub-centres per class (None: 3)",
               "margin_from_schedule": _FROM_SCHEDULE}),
    LossEntry("tuplet_margin", losses.tuplet_margin_loss, "margin",
              {"scale": "logit scale (None: 64)"}),
    LossEntry("snr_contrastive", losses.snr_contrastive_loss, "margin",
              {"positive_margin": "positive margin on the SNR distance (PML's 0)"}),
    LossEntry("ranked_list", losses.ranked_list_loss, "margin",
              {"tn": "negatives' weighting temperature (required, as in PML)",
               "imbalance": "weight of the negative part (None: 0.5)",
               "alpha": "negatives' boundary (None: 1 + margin / 2)",
               "tp": "positives' weighting temperature (None: 0)"},
              required=("tn",)),
    LossEntry("smooth_ap", losses.smooth_ap_loss, "plain",
              {"temperature": "sigmoid temperature (None: 0.01)"}),
    LossEntry("pnp", losses.pnp_loss, "plain",
              {"variant": f"variant: {', '.join(losses.PNP_VARIANTS)} (None: O)",
               "temperature": "sigmoid temperature, PML's anneal (None: 0.01)",
               "b": "the Ib variant's constant (None: 2)",
               "alpha": "the Dq variant's exponent (None: 1)"}),
    LossEntry("tcm", losses.tcm_loss, "plain",
              {"lambda_plus": "weight of the positive part (None: 1)",
               "lambda_minus": "weight of the negative part (None: 1)",
               "margin_plus": "positive pairs below this cosine are pulled (None: 0.9)",
               "margin_minus": "negative pairs above this cosine are pushed (None: 0.5)"}),
    LossEntry("circle", losses.circle_loss, "margin",
              {"gamma": "scale (None: 80)"}, margin_argument="m"),
    LossEntry("lifted_structure", losses.lifted_structure_loss, "margin",
              {"positive_margin": "margin of the positive pair (PML's 0)",
               "reduction": "reduction"},
              margin_argument="neg_margin", arguments={"positive_margin": "pos_margin"},
              takes_distance=True),
    LossEntry("generalized_lifted_structure", losses.generalized_lifted_structure_loss,
              "margin", {"positive_margin": "margin of the positives (PML's 0)",
                         "reduction": "reduction"},
              margin_argument="neg_margin", arguments={"positive_margin": "pos_margin"},
              takes_distance=True),
    LossEntry("margin", losses.margin_loss, "margin",
              {"beta": "the boundary beta, fixed (None: 1.2)",
               "nu": "weight of the beta regulariser (None: 0)"}, takes_distance=True),
    LossEntry("margin_beta", losses.margin_beta, "class",
              {"loss_margin": "alpha (None: 0.2)",
               "beta": "the boundary beta's initial value, learnt (None: 1.2)",
               "nu": "weight of the beta regulariser (None: 0)",
               "beta_per_class": "one learnt beta per class (PML's num_classes)",
               "margin_from_schedule": _FROM_SCHEDULE},
              build=_margin_beta, takes_distance=True),
    LossEntry("intra_pair_variance", losses.intra_pair_variance_loss, "plain",
              {"pos_eps": "relative slack of the positives (None: 0.01)",
               "neg_eps": "relative slack of the negatives (None: 0.01)",
               "reduction": "reduction"}),
    LossEntry("nca", losses.nca_loss, "plain",
              {"softmax_scale": "scale of the negative squared distances (None: 1)",
               "reduction": "reduction"}),
    LossEntry("angular", losses.angular_loss, "plain",
              {"alpha": "angle alpha in radians (None: 40 degrees)",
               "reduction": "reduction"}),
    LossEntry("instance", losses.instance_loss, "plain",
              {"gamma": "logit scale (None: 64)", "reduction": "reduction"}),
    LossEntry("fast_ap", losses.fast_ap_loss, "plain",
              {"num_bins": "histogram bins (None: 10)", "reduction": "reduction"}),
    LossEntry("histogram", losses.histogram_loss, "plain",
              {"num_bins": "bins (None: 100)"}),
    LossEntry("cosface", losses.cosface, "class",
              {"loss_margin": "cosine margin (None: 0.35)", "scale": "logit scale (None: 64)",
               "margin_from_schedule": _FROM_SCHEDULE}, class_weights=True),
    LossEntry("large_margin_softmax", losses.large_margin_softmax, "class",
              {"multiplier": "the integer angle multiplier m (None: 4)",
               "scale": "extra logit scale (None: 1)"}, class_weights=True),
    LossEntry("dynamic_soft_margin", losses.dynamic_soft_margin, "class",
              {"min_val": "lowest margin of the histogram (None: -2)",
               "num_bins": "histogram bins (None: 10)",
               "momentum": "weight of each batch in the histogram (None: 0.01)"},
              build=_without_classes),
    LossEntry("manifold", losses.manifold, "class",
              {"num_proxies": "proxies (None: 50)",
               "lambda_c": "weight of the context loss (None: 1)",
               "alpha": "the random walk's propagation (None: 0.8)",
               "loss_margin": "margin (None: 5e-4)"}, build=_without_classes),
    # Two views of each input (data.views=2), split from the [2B, D] batch; no margin.
    LossEntry("vicreg", losses.vicreg_loss, "plain",
              {"invariance_lambda": "weight of the views' mean squared difference "
                                    "(None: 25)",
               "variance_mu": "weight of the variance hinge (None: 25)",
               "covariance_v": "weight of the covariance part, PML's nu (None: 1)",
               "eps": "added to the variance under the square root (None: 1e-4)"},
              build=_vicreg, views=2),
)}


# The losses PML's SelfSupervisedLoss wraps (its supported_losses) that loss.self_supervised
# applies to.
SELF_SUPERVISED_LOSSES = ("angular", "circle", "contrastive", "generalized_lifted_structure",
                          "intra_pair_variance", "lifted_structure", "multi_similarity",
                          "nca", "ntxent", "snr_contrastive", "supcon", "triplet",
                          "tuplet_margin")
_default, _help = WRAPPER_FIELDS["self_supervised"]
WRAPPER_FIELDS["self_supervised"] = (_default, _help.format(", ".join(
    SELF_SUPERVISED_LOSSES)))
_default, _help = WRAPPER_FIELDS["weight_regularizer"]
WRAPPER_FIELDS["weight_regularizer"] = (_default, _help.format(", ".join(
    e.name for e in LOSS_TABLE.values() if e.class_weights)))
del _default, _help


def check_table(table: Mapping[str, LossEntry] = LOSS_TABLE) -> None:
  """Every entry's kind and fields are known (one-line ValueError otherwise)."""
  for entry in table.values():
    if entry.kind not in KINDS:
      raise ValueError(f"loss {entry.name!r}: kind={entry.kind!r} is unknown; use one of "
                       f"{', '.join(KINDS)}.")
    unknown = [f for f in (*entry.fields, *entry.required) if f not in LOSS_OPTIONS]
    if unknown:
      raise ValueError(f"loss {entry.name!r}: fields {unknown} are not in LOSS_OPTIONS; "
                       "add a LossField for each.")


check_table()


def field_help(field: str, general: str | None = None) -> str:
  """The help line of ``loss.<field>``: what it means for each loss that takes it."""
  parts = [f"{e.name}: {e.fields[field]}" for e in LOSS_TABLE.values()
           if field in e.fields]
  return "; ".join(([general] if general else []) + parts)


def build(loss: Any, sampling: str, num_classes: int | None) -> Any:
  """The loss of a checked ``loss`` section (see :func:`tsm.config.build_loss`)."""
  entry = LOSS_TABLE[loss.name]
  given = {(entry.arguments.get(f) or LOSS_OPTIONS[f].argument or f): loss[f]
           for f in entry.fields if loss[f] is not None}
  if "reduction" in given:
    given["reduction"] = reduction_value(loss)
  if entry.build is not None:
    fn = entry.build(given, loss, sampling, num_classes)
  elif entry.kind == "class":
    if num_classes is None:
      raise ValueError(f"loss.name={loss.name} needs the number of classes.")
    fn = entry.fn(int(num_classes), **given)
  else:
    if entry.takes_distance:
      given["distance"] = loss.distance
    fn = functools.partial(entry.fn, **given)
    fn = (_without_margin(fn) if entry.kind == "plain"
          else _margin_keyword(fn, entry.margin_argument))
  if entry.references and sampling not in ("triplets", "pairs"):
    fn = _wrapped(fn, loss)
  if loss.self_supervised:
    fn = losses.stacked_views(losses.self_supervised_loss(fn))
  if loss.embedding_regularizer != "none" or loss.weight_regularizer != "none":
    fn = regularizers.regularized(
        fn, embedding_regularizer=EMBEDDING_REGULARIZERS.get(loss.embedding_regularizer),
        embedding_reg_weight=float(loss.embedding_reg_weight),
        weight_regularizer=WEIGHT_REGULARIZERS.get(loss.weight_regularizer),
        weight_reg_weight=float(loss.weight_reg_weight))
  return fn


def _wrapped(fn: Any, loss: Any) -> Any:
  """``fn`` with ``loss.miner`` and ``loss.xbm_size`` applied."""
  miner = None if loss.miner == "none" else MINERS[loss.miner]
  if loss.xbm_size:
    return losses.cross_batch_memory(fn, int(loss.xbm_size), miner=miner)
  return fn if miner is None else losses.with_miner(fn, miner)


def _margin_keyword(fn: Callable[..., Any], keyword: str) -> Callable[..., Any]:
  """``fn(embeddings, labels, <keyword>=margin)`` as a loss of the train step (a margin
  loss may take its margin by keyword only, under its own name)."""
  def loss_fn(embeddings, labels, margin):
    return fn(embeddings, labels, **{keyword: margin})
  return loss_fn


def _without_margin(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn(embeddings, labels)`` as a loss of the train step (the margin is unused)."""
  def loss_fn(embeddings, labels, margin):
    del margin
    return fn(embeddings, labels)
  return loss_fn
