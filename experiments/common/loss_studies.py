"""What the two loss studies share: paper B's (:mod:`experiments.loss_comparison`) and the
loss zoo (:mod:`experiments.loss_zoo`).

Both vary the loss (their arms are loss names, ``study.losses``) over datasets and
seeds, train and measure each run (:func:`train_and_measure`, on
:func:`experiments.common.measure.train_and_measure`) into a result file
(``analysis.json`` / ``zoo.json``) and an arrays file, and report per dataset a table
and figures plus the verdicts of their paper's claims over the whole study. A study
describes itself as a :class:`LossStudy`; :func:`run_study` and :func:`main` run it
(:func:`experiments.common.runs.run_study`), :func:`run_one` trains one run, and the
report's pieces (:func:`load_by_dataset`, :func:`verdict_table`, :func:`figure_line`,
:func:`write_report`) read the runs back.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from experiments.common import command
from experiments.common import grid
from experiments.common import measure as measure_lib
from experiments.common import runs as runs_lib
from experiments.common import timing as timing_lib
from experiments.common import verdicts as verdicts_lib


class LossStudy(NamedTuple):
  """A loss study for :func:`run_study` and :func:`main`.

  Attributes:
    label: the study's name in its log lines and messages (``"loss study"``).
    study: the study's module: ``check_study(cfg)`` (-> the losses), ``run_config(cfg,
      dataset, loss, seed)``, ``run_one(task, section)``, and for :func:`run_one` its
      ``RESULT_FILE``, ``ARRAYS_FILE``, ``RECORD_KEYS``, ``measure`` and ``summarize``.
    write_report: ``write_report(workdir, cfg, preamble)`` -> the report's dict
      (``"verdicts"``: its Markdown).
    progress: ``progress(record)`` -> the study's own last item of a run's progress
      line (:func:`experiments.common.runs.progress_line`).
    settings: ``settings(cfg)`` -> the study's settings in words (the report's first
      sentence; :func:`losses_and_seeds` gives its first words).
    cost: relative cost of one epoch per dataset, to start the costliest runs first.
    default_cost: the cost of a dataset not in ``cost``.
    example_config: the config file the command's help names.
    default_workdir: the workdir the command's help suggests.
    usage: the command's help text (its ``run.py`` docstring).

  A study's ``run.py`` takes its entry points from its spec: ``run_study =
  SPEC.run_study``, ``main = SPEC.main``.
  """
  label: str
  study: Any
  write_report: Callable[[str, Any, str], dict[str, Any]]
  progress: Callable[[dict[str, Any]], str]
  settings: Callable[[Any], str]
  cost: Mapping[str, float]
  default_cost: float
  example_config: str
  default_workdir: str
  usage: str

  def run_study(self, cfg: Any, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the study (:func:`run_study`): ``{"runs", "wall_seconds",
    "report"}``; a bad setting raises :class:`~experiments.common.grid.StudyError`
    before anything runs."""
    return run_study(cfg, workdir, self)

  def main(self, argv: Sequence[str] | None = None) -> None:
    """The study's command line (:func:`main`)."""
    main(argv, self)


def check_losses(cfg: Any, known: Sequence[str]) -> list[str]:
  """``study.losses``: distinct names from ``known``, at least one; returns them."""
  losses = tuple(cfg.study.losses)
  if not losses or any(loss not in known for loss in losses) or len(set(losses)) != len(
      losses):
    raise grid.StudyError(f"study.losses={losses!r} must be distinct names from "
                          f"{', '.join(known)}.")
  return list(losses)


def losses_and_seeds(cfg: Any) -> tuple[str, str]:
  """The settings' first words: ``("losses a, b", "seeds [0, 1], each drawing its data
  (data.data_seed = seed)")``."""
  s = cfg.study
  return (f"losses {', '.join(s.losses)}",
          f"seeds {runs_lib.seeds_of(cfg)}"
          + (", each drawing its data (data.data_seed = seed)" if s.vary_data else ""))


def run_study(cfg: Any, workdir: str, spec: LossStudy) -> dict[str, Any]:
  """Runs (or resumes) a loss study (:func:`experiments.common.runs.run_study`).

  Returns:
    ``{"runs", "wall_seconds", "report"}``.

  Raises:
    experiments.common.grid.StudyError: a bad setting, before anything runs.
  """
  study = runs_lib.Study(
      label=spec.label, noun="losses", check=spec.study.check_study,
      build=spec.study.run_config, run_one=spec.study.run_one,
      progress=lambda r: runs_lib.progress_line(r, spec.progress(r)), cost=spec.cost,
      default_cost=spec.default_cost)

  def write_report(arms, records, timing):
    preamble = (f"Settings: {spec.settings(cfg)}; "
                f"{timing_lib.timing_line(timing)}. Per dataset:\n\n"
                + runs_lib.per_dataset_lines(cfg, spec.study.run_config, arms[0]))
    records.sort(key=lambda r: (r["dataset"], r["loss"], r["seed"]))
    return spec.write_report(workdir, cfg, preamble), records

  return runs_lib.run_study(cfg, workdir, study, write_report)


def main(argv: Sequence[str] | None, spec: LossStudy) -> None:
  """A loss study's command line (:func:`experiments.common.command.main`)."""
  command.main(argv, program=spec.label, usage=spec.usage,
               example_config=spec.example_config,
               default_workdir=spec.default_workdir,
               run_study=lambda cfg, workdir, _: run_study(cfg, workdir, spec),
               show=command.show_verdicts)


def train_and_measure(study: Any, config: Any, rundir: str, *, section: Any,
                      keep_embeddings: bool = False) -> dict[str, Any]:
  """Trains (or reuses) one run and returns its result record (NaN as None):
  :func:`experiments.common.measure.train_and_measure` with the study module's
  ``measure(ctx, config, section, keep_embeddings)`` and ``summarize(config, section,
  epoch_records, first_step_record, scalars, arrays, summary)`` into its
  ``RESULT_FILE`` and ``ARRAYS_FILE``."""
  return measure_lib.train_and_measure(
      config, rundir, result_file=study.RESULT_FILE, arrays_file=study.ARRAYS_FILE,
      measure=lambda ctx: study.measure(ctx, config, section, keep_embeddings),
      summarize=lambda records, first, scalars, arrays, summary: study.summarize(
          config, section, records, first, scalars, arrays, summary))


def run_one(study: Any, task: dict[str, Any], section: Any) -> dict[str, Any]:
  """Trains (or reuses) and measures one task's run (:func:`train_and_measure`; the
  first seed keeps its test embeddings); returns its record: ``{"dataset", "loss",
  "seed", "seconds", "reused"}`` and the study's ``RECORD_KEYS`` of its result."""
  return runs_lib.run_record(
      task, (study.RESULT_FILE,),
      lambda: train_and_measure(study, task["config"], task["rundir"], section=section,
                                keep_embeddings=task["keep_embeddings"]),
      study.RECORD_KEYS, arm_key="loss")


# ----------------------------------------------------------------------------- report


ByDataset = dict[str, dict[str, list[dict[str, Any]]]]


def load_by_dataset(workdir: str, datasets: Sequence[str], losses: Sequence[str],
                    seeds: Sequence[int], result_file: str) -> ByDataset:
  """``{dataset: {loss: result records in seed order}}`` (missing runs skipped)."""
  return {d: {loss: runs_lib.load_results(workdir, d, loss, seeds, result_file)
              for loss in losses} for d in datasets}


def verdict_table(workdir: str, claims: Sequence[verdicts_lib.Claim], title: str,
                  cfg: Any = None, seeds: Sequence[int] | None = None
                  ) -> tuple[str, str]:
  """Writes ``verdicts.md`` / ``verdicts.csv`` and ``claims.json``
  (:func:`verdicts_lib.write_verdicts`, unstable against ``study.compare_to`` when
  ``cfg`` names one; ``seeds``: the seeds of the claims' values); returns ``(markdown,
  stability sentence)``."""
  compare_to = (cfg.study.compare_to or None) if cfg is not None else None
  return verdicts_lib.write_verdicts(workdir, list(claims), title, compare_to, seeds)


def write_report(workdir: str, *, title: str, preamble: str, verdicts: str,
                 stability: str, notes: Sequence[str] = (), deviations: str = "",
                 datasets: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
  """Writes ``report.md``: the title, the preamble, the verdict table, the rule, the
  study's notes, the stability sentence, the deviations and, per dataset, its parts
  (table, figure list ...); returns its text."""
  from tsm import artifacts  # pylint: disable=import-outside-toplevel
  parts = [title, preamble, verdicts,
           verdicts_lib.RULE + " A verdict speaks for these settings only.\n", *notes]
  if stability:
    parts.append(stability + "\n")
  parts.append(deviations)
  for _, dataset_parts in datasets:
    parts.extend(dataset_parts)
  text = "\n".join(p for p in parts if p)
  artifacts.write_atomic(os.path.join(workdir, "report.md"), text)
  return text


def figure_line(workdir: str, paths: Sequence[str]) -> str:
  """``Figures: a.png, b.png`` (relative to the study directory)."""
  return "Figures: " + ", ".join(os.path.relpath(p, workdir) for p in paths) + "\n"
