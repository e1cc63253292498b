"""What every study stands on.

* :mod:`~experiments.common.grid`: the grid (jobs in forked workers, the compilation
  cache, Ctrl-C), the finished-run / same-run test, the study lock and the one error
  type, :class:`~experiments.common.grid.StudyError`;
* :mod:`~experiments.common.launch`: where the runs train (``study.launcher``: this
  machine's worker pool or SLURM job arrays through submitit);
* :mod:`~experiments.common.runs`: the runs of a (dataset x loss x seed) study: layout,
  plan, checks before training, the grid with its timing, ``study.json``;
* :mod:`~experiments.common.checks`: checks of the ``study`` fields every study has;
* :mod:`~experiments.common.measure`: one train-and-measure step and the measurements
  the loss studies share;
* :mod:`~experiments.common.timing`: a study's wall time over its invocations;
* :mod:`~experiments.common.tables`: per-seed values, table cells, intervals;
* :mod:`~experiments.common.verdicts`: claims -> paired tests, Holm, verdict tables,
  stability against a rerun, deviation tables;
* :mod:`~experiments.common.figures`: figure plumbing;
* :mod:`~experiments.common.command`: the shared command line (``--help``, exit
  statuses, the study's ``main``).
* :mod:`~experiments.common.docs`: a study's results page (``docs/results/<study>.md``),
  written from a finished study's workdir.
"""
