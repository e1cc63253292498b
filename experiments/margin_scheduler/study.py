"""The margin-scheduler study: its config, its arms, one run, the effective-margin evaluator.

A study config (``experiments/configs/margin_study_*.py``, built from
:mod:`experiments.configs.presets.paper_a`) has the shape of every study's
(:mod:`experiments.common.runs`): a ``study`` section (:func:`study_section`) and one
full tsm config section per dataset named in ``study.datasets`` (the margin study runs
on one: ``cfg.digits``, ``cfg.mnist1d``, ...; overridable:
``--config.mnist1d.train.epochs=5``). An arm is a margin schedule under one loss
reduction and one mining (``study.reductions`` x ``study.minings``; by default only the
authors' code's ``mean_nonzero`` and all triplets). Every run of the study trains the
same model with the same optimiser and seed list; only ``margin`` (and the arm's
reduction and mining) differ (:func:`schedule_margin`):

* ``constant_<mu>`` for each ``study.constant_margins`` (paper A's baseline);
* ``linear`` and ``exponential`` increase from ``margin.initial_margin`` to
  ``margin.final_margin`` (the formulas of paper A's code, :mod:`tsm.margins`);
* ``stepwise``: LITM-style stages (Zhang et al., AAAI 2019): ``study.stepwise_stages``
  equal stretches of the run whose margins go in equal steps from ``initial_margin`` to
  ``final_margin``;
* with a grid ``study.final_margins``, each monotone schedule runs once per end margin
  instead, ``linear_to_<mu>`` etc. (:func:`monotone_name`), and the report compares DAMS
  with the end margin chosen on validation, as it does the constant margin;
* ``dams``: paper A's scheduler (``margin.threshold``, ``margin.increment``);
* ``controller``: tsm's two-sided controller (``margin.target``, ``margin.gain``,
  ``margin.min_margin``, ``margin.max_margin``, ``margin.deadband``).

Runs are the common ``(dataset, arm, seed)`` tasks (:func:`experiments.common.runs.plan`),
each in ``<workdir>/<dataset>/<arm>/seed<k>``. The evaluator
:class:`EffectiveMarginEvaluator` records paper A's effective margins
``d(a, n) - d(a, p)`` of a seeded sample of training triplets (eval-mode embeddings of a
fixed sample of training examples) at the first, middle and last epoch, with a
two-component Gaussian mixture fitted to them; :class:`LastEpochTest` records the test
metrics of the last epoch's model beside those of the model the selection rule keeps.

With ``study.seeds_together``, every seed of an arm trains in one compiled step
(:func:`run_seeds`, :mod:`experiments.common.together`): the run directories hold what a
separate run writes (no checkpoints), so ``study.json`` and the report read them alike.

Why one module of this length: the study's config, arms, one run and its evaluator
share the arm's naming and the run's layout; the report reads their files from its own
module.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from experiments.common import checks
from experiments.common import grid
from experiments.common import runs
from tsm import artifacts
from tsm import config as config_lib
from tsm import losses as losses_lib

CONSTANT_PREFIX = "constant_"
MONOTONIC = ("linear", "exponential", "stepwise")
ADAPTIVE = ("dams", "controller")
# The authors' code's loss: the mean over the violating triplets, all of them.
DEFAULT_REDUCTION = "mean_nonzero"
DEFAULT_MINING = "all"
RUN_FILES = ("summary.json", "pairs.npz")   # a finished run has written these
FINAL_PREFIX = "_to_"   # linear_to_0.5: a monotone schedule ending at 0.5
# Paper A's first finding, claim A1: the share of sampled training triplets whose
# effective margin exceeds the fixed margin mu at the last epoch, per constant arm.
A1_CLAIM = "A1: effective margins pass mu (share of triplets above mu > {:g})"
A1_KEY = "em_last.share_above_margin"
# The last epoch's model: its test metrics go into the epoch record under this split.
LAST_SPLIT = "last_test"
# Paper A's claims, each on every metric of CLAIM_METRICS: (claim, the favoured
# schedule, the schedule it is compared with; None: the best constant margin).
CLAIMS = (("DAMS beats the best constant margin (chosen on validation)", "dams", None),
          *((f"DAMS beats the {n} increase", "dams", n) for n in MONOTONIC),
          ("our controller beats DAMS", "controller", "dams"))
# (summary key, label, higher is better) of the claims' test metrics.
CLAIM_METRICS = (("test.auc", "AUC", True), ("test.eer", "EER", False))
StudyError = grid.StudyError


class Arm(NamedTuple):
  """One arm of the study: a schedule under a loss reduction and a mining."""
  schedule: str
  reduction: str = DEFAULT_REDUCTION
  mining: str = DEFAULT_MINING

  @property
  def name(self) -> str:
    """``dams``; ``dams+mean`` / ``dams+semihard`` off the authors' defaults."""
    return self.schedule + self.suffix

  @property
  def suffix(self) -> str:
    return ((f"+{self.reduction}" if self.reduction != DEFAULT_REDUCTION else "")
            + (f"+{self.mining}" if self.mining != DEFAULT_MINING else ""))

  @property
  def variant(self) -> str:
    """The arm's reduction and mining, as a table group."""
    return f"reduction {self.reduction}, mining {self.mining}"


def study_section(datasets: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The ``study`` section: :func:`experiments.common.runs.grid_fields` (ten seeds by
  default, so that the paired tests of the verdicts have power) and

  Fields:
    datasets: the dataset the study runs on (one name), with its own config section.
    schedules: ``"all"`` or a comma-separated list of schedule names (see the module
      docstring; e.g. ``"constant_0.2,dams,controller"``).
    reductions: comma-separated loss reductions compared (an axis of the study; a
      string, so that ``--config.study.reductions=mean_nonzero,mean`` works): the authors'
      code's ``mean_nonzero`` (mean over violating triplets) and / or ``mean`` (over
      all valid triplets: its gradient shrinks with the easy share, so raising mu then
      also acts as a learning-rate boost).
    minings: comma-separated triplet minings compared (an optional axis: ``all``,
      ``semihard``, ``hard``).
    constant_margins: the constant margins compared.
    stepwise_stages: number of stages of the ``stepwise`` schedule (including the first).
    em_examples: training examples whose embeddings give the effective margins.
    em_triplets: triplets sampled among them (all when fewer exist).
    plot_seed: the seed whose effective-margin histograms are drawn.
    final_margins: a grid of end margins mu_last for linear / exponential / stepwise
      (each schedule runs once per value, the report keeps the one chosen on validation
      as it does the constant margin); ``()``: each runs once, to the dataset's
      ``margin.final_margin``.
    a1_threshold: claim A1 holds when the share of sampled training triplets whose
      effective margin exceeds mu at the last epoch is above this, per constant arm
      (0.5: "many" read as "most").
    seeds_together: train every seed of an arm in one compiled step
      (:mod:`tsm.seeds`); for heads on in-memory inputs without augmentation (cached
      features of a frozen trunk). Runs that cannot (:func:`experiments.common.together.reason`)
      train one by one.

  The grid's ``xla_threads`` default 0 was measured on 2 shared cores: single-threaded
  XLA compiles about twice as slowly and steps ~20 % slower.

  Args:
    datasets: the default ``datasets``.

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "datasets": tuple(datasets),
      **runs.grid_fields(seeds=10),
      "schedules": "all",
      "reductions": DEFAULT_REDUCTION,
      "minings": DEFAULT_MINING,
      "constant_margins": (0.1, 0.2, 0.5, 1.0),
      "stepwise_stages": 4,
      "em_examples": 1000,
      "em_triplets": 20000,
      "plot_seed": 0,
      "final_margins": (),
      "a1_threshold": 0.5,
      "seeds_together": False,
  })


# ----------------------------------------------------------------------------- schedules


def _constant_name(margin: float) -> str:
  return f"{CONSTANT_PREFIX}{float(margin)}"


def monotone_name(schedule: str, final: float) -> str:
  """``linear_to_0.5``: a monotone schedule of the ``study.final_margins`` grid."""
  return f"{schedule}{FINAL_PREFIX}{float(final)}"


def family(name: str) -> str:
  """The schedule a name belongs to: ``constant`` for ``constant_0.2``, ``linear`` for
  ``linear_to_0.5``, else the name itself."""
  if name.startswith(CONSTANT_PREFIX):
    return "constant"
  return name.split(FINAL_PREFIX, 1)[0]


def all_schedules(cfg: ml_collections.ConfigDict) -> list[str]:
  """Every schedule name of the study, constants first."""
  finals = tuple(cfg.study.get("final_margins", ()) or ())
  monotone = ([monotone_name(n, mu) for n in MONOTONIC for mu in finals] if finals
              else list(MONOTONIC))
  return [_constant_name(m) for m in cfg.study.constant_margins] + monotone + list(ADAPTIVE)


def schedule_names(cfg: ml_collections.ConfigDict) -> list[str]:
  """The schedules ``study.schedules`` selects, in the study's order.

  Raises:
    ValueError: an unknown name (one line listing the known ones).
  """
  known = all_schedules(cfg)
  wanted = str(cfg.study.schedules).strip()
  if wanted == "all":
    return known
  names = [n.strip() for n in wanted.split(",") if n.strip()]
  for name in names:
    if name not in known:
      raise ValueError(f"study.schedules names {name!r}, not a schedule of this study; use "
                       f"'all' or a comma-separated list of {', '.join(known)}.")
  if not names:
    raise ValueError("study.schedules is empty; use 'all' or e.g. 'constant_0.2,dams'.")
  return [n for n in known if n in names]


def stepwise_stages(initial: float, final: float, epochs: int,
                    stages: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
  """Boundaries and margins of the LITM-style ``stepwise`` schedule.

  ``min(stages, epochs)`` equal stretches of the run; the margin of stretch ``k`` is
  ``initial + k (final - initial) / (stages - 1)``, so the last stretch trains at
  ``final``.

  Args:
    initial: margin of the first stretch.
    final: margin of the last stretch.
    epochs: epochs of the run.
    stages: number of stretches, ``>= 2``.

  Returns:
    ``(boundaries, values)`` for :func:`tsm.margins.stepwise`.
  """
  n = max(2, min(int(stages), int(epochs)))
  if epochs < 2:   # one epoch: a single stage (the boundary is never reached)
    return (1,), (float(final),)
  boundaries = tuple(int(round(k * epochs / n)) for k in range(1, n))
  values = tuple(float(initial + k * (final - initial) / (n - 1)) for k in range(1, n))
  return boundaries, values


def dataset(cfg: ml_collections.ConfigDict) -> str:
  """The study's dataset (the one name of ``study.datasets``)."""
  return cfg.study.datasets[0]


def schedule_margin(name: str, cfg: ml_collections.ConfigDict,
                    dataset_name: str | None = None) -> dict[str, Any]:
  """The ``margin`` fields of schedule ``name`` (merged over the dataset's ``margin``).

  Args:
    name: a name from :func:`all_schedules`.
    cfg: the study config (the dataset's ``margin`` section holds the shared
      parameters).
    dataset_name: the dataset (default :func:`dataset`).

  Returns:
    A dict of margin fields.
  """
  dataset_name = dataset(cfg) if dataset_name is None else dataset_name
  m = cfg[dataset_name].margin
  if name.startswith(CONSTANT_PREFIX):
    return {"schedule": "constant", "initial_margin": float(name[len(CONSTANT_PREFIX):])}
  if name in ("dams", "controller"):
    return {"schedule": name}
  schedule = family(name)
  if schedule in MONOTONIC:
    final = (float(name.split(FINAL_PREFIX, 1)[1]) if FINAL_PREFIX in name
             else float(m.final_margin))
    if schedule != "stepwise":
      return {"schedule": schedule, "final_margin": final}
    boundaries, values = stepwise_stages(m.initial_margin, final,
                                         runs.run_epochs(cfg, dataset_name),
                                         cfg.study.stepwise_stages)
    return {"schedule": "stepwise", "boundaries": boundaries, "values": values}
  raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(all_schedules(cfg))}.")


def run_epochs(cfg: ml_collections.ConfigDict) -> int:
  """Epochs of every run: ``study.epochs`` when set, else the dataset's
  ``train.epochs``."""
  return runs.run_epochs(cfg, dataset(cfg))


def arms(cfg: ml_collections.ConfigDict) -> list[Arm]:
  """Every arm of the study: reductions x minings x schedules, in the study's order."""
  return [Arm(name, reduction, mining) for reduction in axis(cfg, "reductions")
          for mining in axis(cfg, "minings") for name in schedule_names(cfg)]


def axis(cfg: ml_collections.ConfigDict, field: str) -> list[str]:
  """The names of a comma-separated axis field (``study.reductions``, ``study.minings``)."""
  return [v.strip() for v in str(cfg.study[field]).split(",") if v.strip()]


def as_arm(arm: Arm | str) -> Arm:
  """``arm``, or the arm of a bare schedule name (the authors' reduction and mining)."""
  return arm if isinstance(arm, Arm) else Arm(arm)


def run_config(cfg: ml_collections.ConfigDict, dataset_name: str, arm: Arm | str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the arm's schedule,
  reduction and mining, ``seed``.

  The choices every study shares (:func:`experiments.common.runs.dataset_run`:
  ``train.epochs`` is ``study.epochs`` when set; with ``study.vary_data``,
  ``data.data_seed = seed``; no progress bar).

  Args:
    cfg: the study config.
    dataset_name: the dataset (a section of ``cfg``).
    arm: the arm (a bare schedule name: the authors' reduction and mining).
    seed: the run's seed.

  Returns:
    A full tsm config.
  """
  arm = as_arm(arm)
  run = runs.dataset_run(cfg, dataset_name, seed)
  run.margin.update(schedule_margin(arm.schedule, cfg, dataset_name))
  run.loss.reduction = arm.reduction
  run.loss.mining = arm.mining
  return run


def run_dir(workdir: str, dataset_name: str, arm: Arm | str, seed: int) -> str:
  """``<workdir>/<dataset>/<arm name>/seed<k>``
  (:func:`experiments.common.runs.run_dir`)."""
  return runs.run_dir(workdir, dataset_name, as_arm(arm), seed)


def check_study(cfg: ml_collections.ConfigDict) -> list[Arm]:
  """Validates the study section and the dataset's section (nothing is loaded or
  compiled; every run's config is checked by :func:`experiments.common.runs.plan`).

  Returns:
    The arms.

  Raises:
    StudyError: one line naming the bad field and the fix.
  """
  s = cfg.study
  runs.check_grid_fields(cfg, list(study_section(()).keys()))
  if len(tuple(s.datasets)) != 1:
    raise StudyError(f"study.datasets={tuple(s.datasets)!r}: the margin study runs on one "
                     "dataset; name one (one study per dataset).")
  checks.check_integers(s, (("stepwise_stages", 2), ("em_examples", 3),
                            ("em_triplets", 1)))
  finals = s.final_margins
  if (not isinstance(finals, (tuple, list))
      or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
             for v in finals) or len(set(finals)) < len(finals)):
    raise StudyError(f"study.final_margins={finals!r} must be a tuple of distinct "
                     "positive margins, e.g. (0.2, 0.5, 1.0), or () for the dataset's "
                     "margin.final_margin.")
  checks.check_fraction(s, "a1_threshold")
  if not isinstance(s.seeds_together, bool):
    raise StudyError(f"study.seeds_together={s.seeds_together!r} must be True or False.")
  seeds = runs.seeds_of(cfg)
  if not (isinstance(s.plot_seed, int) and s.plot_seed in seeds):
    raise StudyError(f"study.plot_seed={s.plot_seed!r} must be a seed of the study, in "
                     f"[{seeds[0]}, {seeds[-1] + 1}).")
  for field, known in (("reductions", losses_lib.REDUCTIONS),
                       ("minings", losses_lib.MINING)):
    values = axis(cfg, field) if isinstance(s[field], str) else []
    if not values or any(v not in known for v in values) or len(set(values)) < len(values):
      raise StudyError(f"study.{field}={s[field]!r} must be a comma-separated list of "
                       f"distinct names from {', '.join(known)}.")
  name = dataset(cfg)
  section = cfg[name]
  if section.loss.name != "triplet" or section.train.sampling != "pk":
    raise StudyError(f"the margin study trains the triplet loss on P x K batches; set "
                     f"{name}.loss.name=triplet and {name}.train.sampling=pk.")
  if section.margin.get("update_every", "epoch") != "epoch":
    raise StudyError(f"the margin study updates margins once per epoch (paper A); set "
                     f"{name}.margin.update_every=epoch.")
  try:
    return arms(cfg)
  except ValueError as e:
    raise StudyError(str(e)) from None


# ----------------------------------------------------------------------------- the evaluator


def hook_epochs(epochs: int) -> tuple[int, ...]:
  """The 0-based epochs whose effective margins are recorded: first, middle, last."""
  return tuple(sorted({0, (epochs - 1) // 2, epochs - 1}))


class EffectiveMarginEvaluator:
  """Evaluator: effective margins of a training sample at chosen epochs.

  At each recorded epoch it embeds a fixed, seeded sample of ``num_examples`` training
  examples (eval mode, the parameters after the epoch), takes ``d(a, n) - d(a, p)`` over
  ``num_triplets`` triplets drawn uniformly among their valid triplets (all of them when
  fewer exist; :func:`tsm.diagnostics.effective_margins`), fits a two-component Gaussian
  mixture (:func:`tsm.diagnostics.fit_gaussian_mixture`), writes
  ``<workdir>/effective_margins/epoch<e>.npz`` (``values``, ``margin``: the margin
  trained with during the epoch, from the epoch's record, ``weights``, ``means``,
  ``stds``) and adds to the epoch record ``em_margin``, ``em_mean``,
  ``em_share_above_margin`` (share of the sampled triplets whose effective margin exceeds
  that margin: paper A's observation is that it grows past mu), ``em_gmm_mean_low`` /
  ``em_gmm_mean_high`` and ``em_gmm_weight_high``.

  Args:
    workdir: the run directory.
    config: the run's config.
    epochs: 0-based epochs to record (default :func:`hook_epochs`).
    num_examples: training examples sampled (seeded by ``config.seed``).
    num_triplets: triplets sampled among them.
  """
  every_epochs = 1

  def __init__(self, workdir: str, config: ml_collections.ConfigDict,
               epochs: tuple[int, ...] | None = None, *, num_examples: int = 1000,
               num_triplets: int = 20000):
    self.workdir = workdir
    self.config = config
    self.epochs = hook_epochs(int(config.train.epochs)) if epochs is None else epochs
    self.num_examples = int(num_examples)
    self.num_triplets = int(num_triplets)

  def __call__(self, ctx: Any) -> dict[str, dict[str, float]]:
    # pylint: disable=import-outside-toplevel
    import jax
    from tsm import diagnostics, distributed

    epoch = ctx.epoch
    if epoch not in self.epochs:
      return {}
    used = float(ctx.record["margin"])   # the margin the epoch trained at
    train = ctx.split("train")
    labels_all = np.asarray(train.labels)
    rng = np.random.default_rng([int(self.config.seed), 20260326])
    n = min(self.num_examples, labels_all.size)
    idx = np.sort(rng.choice(labels_all.size, n, replace=False))
    emb = ctx.embed_fn(ctx.state, train.subset(idx))
    em = diagnostics.effective_margins(
        emb, labels_all[idx], distance=self.config.loss.distance,
        max_triplets=self.num_triplets, seed=int(self.config.seed))
    gmm = diagnostics.fit_gaussian_mixture(em.values, 2, weights=em.mask)
    em, gmm = jax.device_get((em, gmm))
    values = np.asarray(em.values)[np.asarray(em.mask, bool)].astype(np.float32)
    if distributed.is_primary():
      out = os.path.join(self.workdir, "effective_margins")
      os.makedirs(out, exist_ok=True)
      with artifacts.atomic_path(os.path.join(out, f"epoch{epoch:03d}.npz")) as tmp:
        np.savez(tmp, values=values, margin=np.float32(used), epoch=np.int32(epoch),
                 weights=np.asarray(gmm.weights), means=np.asarray(gmm.means),
                 stds=np.asarray(gmm.stds), exact=np.asarray(em.exact))
    finite = values.size > 0
    return {"em": {
        "margin": used,
        "mean": float(values.mean()) if finite else float("nan"),
        "share_above_margin": float(np.mean(values > used)) if finite else float("nan"),
        "gmm_mean_low": float(gmm.means[0]),
        "gmm_mean_high": float(gmm.means[-1]),
        "gmm_weight_high": float(gmm.weights[-1]),
    }}


class LastEpochTest:
  """Evaluator at the last epoch: the test metrics of the last epoch's model.

  The run keeps the model its selection rule picks (``train.best_metric``: paper A's
  lowest validation loss); this reports the last epoch's model beside it, with the same
  test evaluators (:func:`tsm.config.build_evaluators`' final test retrieval and
  verification), under ``last_test_<metric>`` in the last epoch's record.

  Args:
    config: the run's config.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.every_epochs = int(config.train.epochs)

  def __call__(self, ctx: Any) -> dict[str, dict[str, float]]:
    # pylint: disable=import-outside-toplevel
    from tsm import evaluation
    if ctx.epoch + 1 != self.every_epochs:
      return {}
    final = [e for e in config_lib.build_evaluators(self.config, ctx.splits)[1]
             if type(e) in (evaluation.Retrieval, evaluation.Verification)
             and e.split == "test"]
    last = evaluation.EvalContext(state=ctx.state, splits=ctx.splits,
                                  embed_fn=ctx.embed_fn, loss_fn=ctx.loss_fn)
    out: dict[str, float] = {}
    for result in evaluation.run_evaluators(final, last).values():
      out.update(result)
    return {LAST_SPLIT: out}


def evaluators(config: ml_collections.ConfigDict, directory: str,
               study: ml_collections.ConfigDict) -> list[Any]:
  """The study's evaluators of one run: effective margins, the last epoch's test."""
  return [EffectiveMarginEvaluator(directory, config, num_examples=study.em_examples,
                                   num_triplets=study.em_triplets),
          LastEpochTest(config)]


# ----------------------------------------------------------------------------- one run


@contextlib.contextmanager
def _absl_to(stream: Any):
  """Sends the ``absl`` logger's lines (orbax's warnings) to ``stream`` for the duration."""
  import logging  # pylint: disable=import-outside-toplevel
  logger = logging.getLogger("absl")
  handler = logging.StreamHandler(stream)
  handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
  saved = logger.propagate
  logger.addHandler(handler)
  logger.propagate = False
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.propagate = saved


def run_one(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or resumes, or reuses) one run of the study; its output goes to
  ``<run dir>/fit.log``.

  Args:
    task: a task of :func:`experiments.common.runs.plan`.
    study: the ``study`` section (``em_examples``, ``em_triplets``).

  Returns:
    ``{"dataset", "arm"`` (the arm's name), ``"seed", "seconds", "reused",
    "summary"}``.
  """
  config, directory = task["config"], task["rundir"]

  def train() -> dict[str, Any]:
    if not grid.finished(directory, config, RUN_FILES):
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, "fit.log"), "a") as log, \
          contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
          _absl_to(log):
        config_lib.train_and_evaluate(config, directory,
                                      evaluators=evaluators(config, directory, study))
    return {"summary": _read_summary(directory)}

  return runs.run_record(task, RUN_FILES, train, ("summary",))


def _read_summary(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, "summary.json")) as f:
    return json.load(f)


def run_seeds(tasks: list[dict[str, Any]],
              study: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Trains (or reuses) every seed of one arm together
  (:func:`experiments.common.together.fit_runs`); the records are :func:`run_one`'s.

  Runs that cannot train together (:func:`experiments.common.together.reason`) train
  one by one with :func:`run_one` (a log line says why).

  Args:
    tasks: the tasks of one (dataset, arm), one per seed.
    study: the ``study`` section.

  Returns:
    One record per task, in order.
  """
  # pylint: disable=import-outside-toplevel
  import time
  from experiments.common import together
  todo = [t for t in tasks if not grid.finished(t["rundir"], t["config"], RUN_FILES)]
  why = together.reason([t["config"] for t in todo]) if todo else None
  if why is not None:
    grid.log(f"{tasks[0]['dataset']}/{runs.arm_name(tasks[0]['arm'])}: the seeds train "
             f"one by one ({why})")
    return [run_one(task, study) for task in tasks]
  trained = {id(t) for t in todo}
  t0 = time.time()
  if todo:
    together.fit_runs([t["config"] for t in todo], [t["rundir"] for t in todo],
                      [evaluators(t["config"], t["rundir"], study) for t in todo])
  seconds = round((time.time() - t0) / max(len(todo), 1), 2)
  return [{"dataset": t["dataset"], "arm": runs.arm_name(t["arm"]), "seed": t["seed"],
           "seconds": seconds if id(t) in trained else 0.0,
           "reused": id(t) not in trained,
           "summary": _read_summary(t["rundir"])} for t in tasks]
