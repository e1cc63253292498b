r"""Paper B's study: contrastive vs triplet loss under identical settings, over seeds.

  python -m experiments.loss_comparison.run \
      --config=experiments/configs/loss_study_offline.py --workdir=runs/loss_study

Trains every (dataset, loss, seed) of the config's ``study`` section with
:func:`tsm.fit.fit` (each run in ``<workdir>/<dataset>/<loss>/seed<k>/``), measures the
final model (:mod:`experiments.loss_comparison.analysis`) and writes the tables, the
verdicts of paper B's claims and the figures (:mod:`experiments.loss_comparison.report`):

* ``<workdir>/report.md``: everything, for reading;
* ``<workdir>/verdicts.md`` / ``.csv``: each claim per dataset: held / did not hold / not
  distinguishable (``tsm.reporting.verdict``);
* ``<workdir>/<dataset>/table.md`` / ``.csv`` and ``curves.png``,
  ``intra_class_variance.png``, ``pca.png``, ``effective_margins.png``;
* ``<workdir>/study.json``: settings, wall times.

Any config field can be overridden: ``--config.study.seeds=2``,
``--config.study.sampling=pk`` (in-batch losses over P x K batches instead of paper B's
random triplets / pairs), ``--config.synthetic.train.epochs=50``. A rerun with the same
workdir skips the runs that finished (their ``analysis.json`` exists) and redoes the
report. Runs go to ``study.processes`` worker processes that share JAX's persistent
compilation cache (``study.cache_dir``), so the train step of a (dataset, loss) compiles
once for all seeds.

Bad settings print one line naming the field and exit with status 2 before anything runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import warnings
from typing import Any

from absl import logging
import ml_collections

from experiments import common
from experiments.loss_comparison import analysis
from experiments.loss_comparison import report
from experiments.loss_comparison import study_config
from tsm import cli as cli_lib

USAGE_ERROR = cli_lib.USAGE_ERROR
# The in-batch samplings: triplet mining applies; the contrastive loss takes all pairs.
_SAMPLING = {"triplet": "triplets", "contrastive": "pairs"}


class StudyError(ValueError):
  """A bad study setting; the message is one line naming the field and the fix."""


def check_study(cfg: ml_collections.ConfigDict) -> None:
  """Validates the ``study`` section (one-line :class:`StudyError`)."""
  s = cfg.study
  datasets = tuple(s.datasets)
  if not datasets:
    raise StudyError("study.datasets is empty; name at least one dataset.")
  for name in datasets:
    if name not in cfg:
      raise StudyError(f"study.datasets names {name!r}, which has no config section; use "
                       f"one of {', '.join(k for k in cfg.keys() if k != 'study')}.")
  losses = tuple(s.losses)
  if not losses or any(loss not in study_config.LOSSES for loss in losses):
    raise StudyError(f"study.losses={losses!r} must be a non-empty subset of "
                     f"{study_config.LOSSES}.")
  for field, minimum in (("seeds", 1), ("first_seed", 0), ("processes", 1), ("knn_k", 1),
                         ("max_triplets", 1), ("gmm_components", 1)):
    value = s[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise StudyError(f"study.{field}={value!r} must be an integer >= {minimum}.")
  if s.epochs is not None and (not isinstance(s.epochs, int) or s.epochs < 1):
    raise StudyError(f"study.epochs={s.epochs!r} must be an integer >= 1 or None.")
  if s.sampling not in study_config.SAMPLINGS:
    raise StudyError(f"study.sampling={s.sampling!r} is unknown; use one of "
                     f"{', '.join(study_config.SAMPLINGS)}.")
  if not 0 < float(s.decay_fraction) < 1:
    raise StudyError(f"study.decay_fraction={s.decay_fraction!r} must be in (0, 1); "
                     "paper B uses 0.1.")


def run_config(cfg: ml_collections.ConfigDict, dataset: str, loss: str,
               seed: int) -> ml_collections.ConfigDict:
  """The tsm config of one run: the dataset's section with the study's choices set."""
  s = cfg.study
  run = ml_collections.ConfigDict(cfg[dataset].to_dict())
  run.seed = int(seed)
  run.loss.name = loss
  if s.sampling == "paper":
    run.train.sampling = _SAMPLING[loss]
    run.loss.mining = "all"
  else:
    run.train.sampling = s.sampling
    run.loss.mining = s.mining if loss == "triplet" else "all"
  if s.epochs is not None:
    run.train.epochs = int(s.epochs)
  if run.model.get("pretrained_path") and s.freeze_pretrained:
    run.model.freeze_trunk = True
  run.train.progress = False
  return run


def plan(cfg: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Every run of the study, validated (tsm.config.check_config) before any training."""
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  s = cfg.study
  seeds = list(range(s.first_seed, s.first_seed + s.seeds))
  tasks = []
  for dataset in s.datasets:
    for loss in s.losses:
      for seed in seeds:
        run = run_config(cfg, dataset, loss, seed)
        try:
          config_lib.check_config(run)
        except config_lib.ConfigError as e:
          raise StudyError(f"{dataset} ({loss}): {e}") from None
        tasks.append({"dataset": dataset, "loss": loss, "seed": seed, "config": run,
                      "rundir": report.run_dir(workdir, dataset, loss, seed),
                      "keep_embeddings": seed == seeds[0]})
  return tasks


def check_data(tasks: list[dict[str, Any]], workdir: str) -> None:
  """Loads each dataset once (tsm.config.prepare): a missing TFDS set fails here, in one line."""
  from tsm import config as config_lib  # pylint: disable=import-outside-toplevel
  seen = set()
  for task in tasks:
    if task["dataset"] in seen:
      continue
    seen.add(task["dataset"])
    try:
      config_lib.prepare(task["config"], task["rundir"])
    except config_lib.ConfigError as e:
      raise StudyError(f"{task['dataset']}: {e}") from None


def setup_process(cache_dir: str | None) -> None:
  """Per-process JAX settings: the persistent compilation cache, quiet logs."""
  logging.set_verbosity(logging.WARNING)
  # Two workers compiling the same program may both write its cache entry; one can read
  # the other's half-written file, which JAX reports and then compiles itself. Benign.
  warnings.filterwarnings("ignore", message="Error reading persistent compilation cache",
                          category=UserWarning)
  common.use_compilation_cache(cache_dir)


def run_task(task: dict[str, Any], study: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains and analyses one run; returns a short record (wall time, headline numbers)."""
  t0 = time.time()
  done = os.path.exists(os.path.join(task["rundir"], analysis.ANALYSIS_JSON))
  result = analysis.train_and_analyse(task["config"], task["rundir"], study=study,
                                      keep_embeddings=task["keep_embeddings"])
  return {"dataset": task["dataset"], "loss": task["loss"], "seed": task["seed"],
          "seconds": round(time.time() - t0, 2), "reused": done,
          "recall@1": result.get("recall@1"), "intra_var": result.get("intra_var"),
          "loss_decay_epochs": result.get("loss_decay_epochs")}


def _pool_task(args):
  return run_task(*args)


def _line(i: int, n: int, r: dict[str, Any]) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
  return (f"[{i}/{n}] {r['dataset']} {r['loss']} seed {r['seed']}: "
          f"{'reused' if r['reused'] else str(r['seconds']) + ' s'}  "
          f"R@1 {fmt(r['recall@1'])}  intra-var {fmt(r['intra_var'])}  "
          f"loss-decay {r['loss_decay_epochs']}")


def _describe(run: ml_collections.ConfigDict) -> str:
  m, t = run.model, run.train
  parts = [f"model {m.name}" + (f" + {m.head} head" if m.head != "none" else "")
           + f", {m.embedding_dim}-d",
           f"{t.epochs} epochs", f"batch {t.batch_size}" if t.sampling != "pk" else
           f"batch {t.classes_per_batch} x {t.samples_per_class}",
           f"lr {t.learning_rate:g}", f"split {run.data.split}"]
  if m.get("pretrained_path"):
    parts.append(f"pretrained trunk {m.pretrained_path}"
                 + (" (frozen)" if m.freeze_trunk else ""))
  return ", ".join(parts)


def _order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Costliest first (epochs x batch rows as a proxy), so parallel workers end together."""
  def cost(task):
    t = task["config"].train
    size = {"mnist1d": 4.0, "synthetic": 1.0, "digits": 0.7}.get(task["dataset"], 10.0)
    return -size * t.epochs
  return sorted(tasks, key=cost)


def run_study(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes its report.

  Args:
    cfg: a study config (``experiments/configs/loss_study_*.py``).
    workdir: output directory.

  Returns:
    ``{"runs": [per-run records], "wall_seconds": float, "report": report dict}``.

  Raises:
    StudyError: a bad setting (before anything runs).
  """
  t0 = time.time()
  check_study(cfg)
  tasks = plan(cfg, workdir)
  check_data(tasks, workdir)
  s = cfg.study
  cache_dir = s.cache_dir if s.cache_dir is not None else os.path.join(workdir, "jax_cache")
  os.makedirs(workdir, exist_ok=True)
  setup_process(cache_dir)
  ordered = _order(tasks)
  records = []
  processes = min(int(s.processes), len(ordered))
  if processes == 1:
    for i, task in enumerate(ordered, 1):
      records.append(run_task(task, s))
      print(_line(i, len(ordered), records[-1]), flush=True)
  else:
    ctx = multiprocessing.get_context("spawn")   # fork after jax threads start is unsafe
    with ctx.Pool(processes, initializer=setup_process, initargs=(cache_dir,)) as pool:
      for i, record in enumerate(pool.imap_unordered(_pool_task,
                                                     [(t, s) for t in ordered]), 1):
        records.append(record)
        print(_line(i, len(ordered), record), flush=True)
  train_seconds = time.time() - t0
  seeds = list(range(s.first_seed, s.first_seed + s.seeds))
  preamble = (f"Settings: losses {', '.join(s.losses)}; sampling "
              f"{'paper B random triplets / pairs' if s.sampling == 'paper' else s.sampling}"
              f"; seeds {seeds}; margin 1.0, Euclidean distance on L2-normalised "
              "embeddings, Adam. Per dataset:\n\n" + "".join(
                  f"* {d}: {_describe(run_config(cfg, d, s.losses[0], seeds[0]))}\n"
                  for d in s.datasets))
  rep = report.write_report(workdir, list(s.datasets), list(s.losses), seeds,
                            gmm_components=int(s.gmm_components), preamble=preamble)
  wall = time.time() - t0
  records.sort(key=lambda r: (r["dataset"], r["loss"], r["seed"]))
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump({"config": json.loads(cfg.to_json()), "runs": records,
               "train_seconds": round(train_seconds, 1), "wall_seconds": round(wall, 1),
               "processes": processes}, f, indent=2)
  return {"runs": records, "wall_seconds": wall, "report": rep}


def main(argv: list[str] | None = None) -> None:
  """Command-line entry point (see the module docstring)."""
  cli = cli_lib.ConfigCommand(
      "loss_comparison", "experiments/configs/loss_study_offline.py", "runs/loss_study",
      config_help="Study config file (experiments/configs/loss_study_*.py).")
  cli.parse(sys.argv if argv is None else argv)
  logging.set_verbosity(logging.WARNING)
  try:
    out = run_study(cli.config, cli.workdir)
  except StudyError as e:
    cli.fail(str(e))
  print()
  print(out["report"]["verdicts"])
  print(f"wrote {os.path.join(cli.workdir, 'report.md')} in {out['wall_seconds']:.1f} s")


if __name__ == "__main__":
  main()
