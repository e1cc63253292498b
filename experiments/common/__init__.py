"""What every study stands on.

* :mod:`~experiments.common.grid`: the grid (jobs in forked workers, the compilation
  cache, Ctrl-C), the finished-run / same-run test, the study lock and the one error
  type, :class:`~experiments.common.grid.StudyError`;
* :mod:`~experiments.common.launch`: where the runs train (``study.launcher``: this
  machine's worker pool or SLURM job arrays through submitit);
* :mod:`~experiments.common.runs`: the study config's shape (a ``study`` section and one
  run-config section per dataset) and the runs of a (dataset x arm x seed) study:
  layout, plan, checks before training, the grid with its timing, ``run_study``,
  ``study.json``;
* :mod:`~experiments.common.loss_studies`: what the two loss studies share (their
  command, one run, the report's pieces);
* :mod:`~experiments.common.checks`: checks of the ``study`` fields every study has;
* :mod:`~experiments.common.measure`: one train-and-measure step and the measurements
  the loss studies share;
* :mod:`~experiments.common.timing`: a study's wall time over its invocations;
* :mod:`~experiments.common.tables`: per-seed values, table cells, intervals;
* :mod:`~experiments.common.verdicts`: claims -> paired tests, Holm, verdict tables,
  the claims with their per-seed values (``claims.json``), stability against a rerun,
  deviation tables and their cells;
* :mod:`~experiments.common.figures`: figure plumbing, the paired dot plot of a claim;
* :mod:`~experiments.common.command`: the shared command line (``--help``, exit
  statuses, the study's ``main``).
* :mod:`~experiments.common.docs`: a study's results page (``docs/results/<study>.md``),
  and its ``summary.md`` and per-claim plots written from its ``study.json``;
* :mod:`~experiments.common.quotes`: the study summaries README.md and BUILD_NOTES.md
  quote, generated from the committed runs in ``docs/results/frozen_lite0/``.
"""
