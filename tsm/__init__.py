"""tsm: deep metric learning in JAX/Flax.

Pure loss functions (``tsm.losses``), margin schedules (``tsm.margins``), distances
(``tsm.distances``), evaluation metrics (``tsm.metrics``), diagnostics
(``tsm.diagnostics``), and a training pipeline (``tsm.train``) used by the studies
under ``experiments/``.
"""

__version__ = "0.1.0"
