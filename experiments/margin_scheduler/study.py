"""The margin-scheduler study: its config, its arms, one run, the effective-margin evaluator.

A study config is a full tsm config (:func:`tsm.config.default_config`, paper A's setup
in :mod:`experiments.configs.presets.paper_a`) plus a ``study`` section
(:func:`study_section`). An arm is a margin schedule under one loss reduction and
one mining (``study.reductions`` x ``study.minings``; by default only the authors' code's
``mean_nonzero`` and all triplets). Every run of the study trains the same model with
the same optimiser and seed list; only ``margin`` (and the arm's reduction and mining)
differ (:func:`schedule_margin`):

* ``constant_<mu>`` for each ``study.constant_margins`` (paper A's baseline);
* ``linear`` and ``exponential`` increase from ``margin.initial_margin`` to
  ``margin.final_margin`` (the formulas of paper A's code, :mod:`tsm.margins`);
* ``stepwise``: LITM-style stages (Zhang et al., AAAI 2019): ``study.stepwise_stages``
  equal stretches of the run whose margins go in equal steps from ``initial_margin`` to
  ``final_margin``;
* ``dams``: paper A's scheduler (``margin.threshold``, ``margin.increment``);
* ``controller``: tsm's two-sided controller (``margin.target``, ``margin.gain``,
  ``margin.min_margin``, ``margin.max_margin``, ``margin.deadband``).

The evaluator :class:`EffectiveMarginEvaluator` records paper A's effective margins
``d(a, n) - d(a, p)`` of a seeded sample of training triplets (eval-mode embeddings of a
fixed sample of training examples) at the first, middle and last epoch, with a
two-component Gaussian mixture fitted to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict
import numpy as np

from experiments.common import checks
from experiments.common import grid
from experiments.common import launch
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


def study_section() -> ml_collections.ConfigDict:
  """Default ``study`` section.

  Fields:
    seeds: number of seeds (runs use ``seed = 0 .. seeds - 1``); ten by default, so
      that the paired tests of the verdicts have power (``tsm.reporting.compare``).
    epochs: if set, overrides ``train.epochs`` of every run (the same knob as the loss
      study's).
    vary_data: draw the data from the run's seed too (``data.data_seed = seed``: the
      by-image test split, synthetic points, the test verification pairs; the
      validation split and its pairs follow ``seed`` already), so that the spread over
      seeds includes the variance of the data.
    schedules: ``"all"`` or a comma-separated list of schedule names (see the module
      docstring; e.g. ``"constant_0.2,dams,controller"``).
    reductions: comma-separated loss reductions compared (an axis of the study; a
      string, so that ``--config.study.reductions=mean_nonzero,mean`` works): the authors'
      code's ``mean_nonzero`` (mean over violating triplets) and / or ``mean`` (over
      all valid triplets: its gradient shrinks with the easy share, so raising mu then
      also acts as a learning-rate boost).
    minings: comma-separated triplet minings compared (an optional axis: ``all``,
      ``semihard``,
      ``hard``).
    compare_to: a finished run of the same study (another workdir, e.g. the rerun with
      another ``xla_threads``): claims whose verdict differs there are marked unstable.
    constant_margins: the constant margins compared.
    stepwise_stages: number of stages of the ``stepwise`` schedule (including the first).
    workers: processes running the study in parallel (one per CPU core on a CPU machine,
      1 on a single accelerator); ``<= 1`` runs everything in this process.
    xla_threads: with ``workers > 1``, 1 makes each worker's XLA CPU runtime
      single-threaded (``--xla_cpu_multi_thread_eigen=false``); 0 keeps XLA's default
      threading. Measured on 2 shared cores: 0 is faster (single-threaded XLA compiles
      about twice as slowly and steps ~20 % slower), so 0 is the default.
    compilation_cache: JAX persistent compilation cache directory; ``"auto"`` =
      ``<workdir>/jax_cache``, ``""`` = off. Every run of the study compiles the same
      train / eval / embed programs (the margin is a traced value; only the tiny
      end-of-epoch update differs between schedules), so all but the first run of each
      process load them from the cache.
    em_examples: training examples whose embeddings give the effective margins.
    em_triplets: triplets sampled among them (all when fewer exist).
    plot_seed: the seed whose effective-margin histograms are drawn.
    launcher, slurm: where the runs train (:func:`experiments.common.launch.launcher_fields`).

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict({
      "seeds": 10,
      "epochs": config_dict.placeholder(int),
      "vary_data": True,
      "schedules": "all",
      "reductions": DEFAULT_REDUCTION,
      "minings": DEFAULT_MINING,
      "compare_to": "",
      "constant_margins": (0.1, 0.2, 0.5, 1.0),
      "stepwise_stages": 4,
      "workers": 2,
      "xla_threads": 0,
      "compilation_cache": "auto",
      "em_examples": 1000,
      "em_triplets": 20000,
      "plot_seed": 0,
      **launch.launcher_fields(),
  })


# ----------------------------------------------------------------------------- schedules


def _constant_name(margin: float) -> str:
  return f"{CONSTANT_PREFIX}{float(margin)}"


def all_schedules(cfg: ml_collections.ConfigDict) -> list[str]:
  """Every schedule name of the study, constants first."""
  return ([_constant_name(m) for m in cfg.study.constant_margins] + list(MONOTONIC)
          + list(ADAPTIVE))


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


def schedule_margin(name: str, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The ``margin`` fields of schedule ``name`` (merged over ``cfg.margin``).

  Args:
    name: a name from :func:`all_schedules`.
    cfg: the study config (its ``margin`` section holds the shared parameters).

  Returns:
    A dict of margin fields.
  """
  m = cfg.margin
  if name.startswith(CONSTANT_PREFIX):
    return {"schedule": "constant", "initial_margin": float(name[len(CONSTANT_PREFIX):])}
  if name in ("linear", "exponential", "dams", "controller"):
    return {"schedule": name}
  if name == "stepwise":
    boundaries, values = stepwise_stages(m.initial_margin, m.final_margin,
                                         run_epochs(cfg), cfg.study.stepwise_stages)
    return {"schedule": "stepwise", "boundaries": boundaries, "values": values}
  raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(all_schedules(cfg))}.")


def split_config(cfg: ml_collections.ConfigDict
                 ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """``(training config without the study section, study section)``, both copies."""
  full = cfg.to_dict()
  study = ml_collections.ConfigDict(full.pop("study", study_section().to_dict()))
  return ml_collections.ConfigDict(full), study


def run_epochs(cfg: ml_collections.ConfigDict) -> int:
  """Epochs of every run: ``study.epochs`` when set, else ``train.epochs``."""
  epochs = cfg.study.get("epochs")
  return int(cfg.train.epochs if epochs is None else epochs)


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


def run_config(cfg: ml_collections.ConfigDict, arm: Arm | str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the arm's schedule, reduction and mining, ``seed``.

  ``train.epochs`` is ``study.epochs`` when set; with ``study.vary_data``,
  ``data.data_seed = seed``. No progress bar.

  Args:
    cfg: the study config.
    arm: the arm (a bare schedule name: the authors' reduction and mining).
    seed: the run's seed.

  Returns:
    A full tsm config (no ``study`` section).
  """
  arm = as_arm(arm)
  run, _ = split_config(cfg)
  run.train.epochs = run_epochs(cfg)
  run.margin.update(schedule_margin(arm.schedule, cfg))
  run.loss.reduction = arm.reduction
  run.loss.mining = arm.mining
  run.seed = int(seed)
  if cfg.study.vary_data:
    run.data.data_seed = int(seed)
  run.train.progress = False
  return run


def run_dir(workdir: str, arm: Arm | str, seed: int) -> str:
  """``<workdir>/runs/<arm name>/seed<k>``."""
  return os.path.join(workdir, "runs", as_arm(arm).name, f"seed{seed}")


def check_study(cfg: ml_collections.ConfigDict) -> list[Arm]:
  """Validates the study section and every run's config (nothing is loaded or compiled).

  Returns:
    The arms.

  Raises:
    StudyError: one line naming the bad field and the fix.
  """
  s = cfg.study
  checks.check_known(s, list(study_section().keys()))
  checks.check_integers(s, (("seeds", 1), ("stepwise_stages", 2), ("em_examples", 3),
                            ("em_triplets", 1)))
  if not (isinstance(s.plot_seed, int) and 0 <= s.plot_seed < s.seeds):
    raise StudyError(f"study.plot_seed={s.plot_seed!r} must be a seed of the study, in "
                     f"[0, {s.seeds}).")
  if not isinstance(s.vary_data, bool):
    raise StudyError(f"study.vary_data={s.vary_data!r} must be True or False.")
  checks.check_grid(s)
  for field, known in (("reductions", losses_lib.REDUCTIONS),
                       ("minings", losses_lib.MINING)):
    values = axis(cfg, field) if isinstance(s[field], str) else []
    if not values or any(v not in known for v in values) or len(set(values)) < len(values):
      raise StudyError(f"study.{field}={s[field]!r} must be a comma-separated list of "
                       f"distinct names from {', '.join(known)}.")
  if cfg.loss.name != "triplet" or cfg.train.sampling != "pk":
    raise StudyError("the margin study trains the triplet loss on P x K batches; set "
                     "loss.name=triplet and train.sampling=pk.")
  if cfg.margin.get("update_every", "epoch") != "epoch":
    raise StudyError("the margin study updates margins once per epoch (paper A); set "
                     "margin.update_every=epoch.")
  try:
    study_arms = arms(cfg)
  except ValueError as e:
    raise StudyError(str(e)) from None
  for arm in study_arms:
    try:
      config_lib.check_config(run_config(cfg, arm, 0))
    except config_lib.ConfigError as e:
      raise StudyError(str(e)) from None
  return study_arms


def finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether ``workdir`` holds a finished run of ``config``
  (:func:`experiments.common.grid.finished` with :data:`RUN_FILES`).

  Raises:
    tsm.config.ConfigError: the directory holds a run of another config.
  """
  return grid.finished(workdir, config, RUN_FILES)


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


def plan(cfg: ml_collections.ConfigDict, workdir: str,
         study_arms: list[Arm] | None = None) -> list[dict[str, Any]]:
  """Every run of the study: one task per (arm, seed), seeds outermost.

  Args:
    cfg: the study config.
    workdir: the study's directory.
    study_arms: the arms (default :func:`arms`).

  Returns:
    ``{"arm", "seed", "config", "rundir"}`` per run.
  """
  study_arms = arms(cfg) if study_arms is None else study_arms
  return [{"arm": arm, "seed": seed, "config": run_config(cfg, arm, seed),
           "rundir": run_dir(workdir, arm, seed)}
          for seed in range(int(cfg.study.seeds)) for arm in study_arms]


def run_one(task: dict[str, Any], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains (or reuses) one run of the study; its output goes to ``<run dir>/fit.log``.

  Args:
    task: a task of :func:`plan`.
    cfg: the study config.

  Returns:
    ``{"schedule"`` (the arm's name), ``"seed", "rundir", "seconds", "reused",
    "summary"}``.
  """
  arm, seed, config, directory = task["arm"], task["seed"], task["config"], task["rundir"]
  t0 = time.time()
  reused = finished(directory, config)
  if not reused:
    os.makedirs(directory, exist_ok=True)
    margins_evaluator = EffectiveMarginEvaluator(directory, config,
                                                 num_examples=cfg.study.em_examples,
                                                 num_triplets=cfg.study.em_triplets)
    with open(os.path.join(directory, "fit.log"), "a") as log, \
        contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
        _absl_to(log):
      config_lib.train_and_evaluate(config, directory, evaluators=[margins_evaluator])
  with open(os.path.join(directory, "summary.json")) as f:
    summary = json.load(f)
  return {"schedule": arm.name, "seed": int(seed), "rundir": directory,
          "seconds": time.time() - t0, "reused": reused, "summary": summary}
