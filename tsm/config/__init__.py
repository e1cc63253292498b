"""Experiment configs: the only package that reads a ConfigDict.

Config files under ``experiments/configs/`` (big_vision / Flax-examples style
``get_config()``) start from :func:`default_config` and override what they need; below
this package nothing takes a config. It is split by job, one module each, each importing
only the ones before it:

* :mod:`tsm.config.loss_table`: the table of losses (``loss.name`` -> function, kind,
  fields with help); adding a loss to the configs is one entry there.
* :mod:`tsm.config.defaults`: every section and field with its default
  (:func:`default_config`), what each field means (:data:`FIELD_HELP`,
  :func:`describe_fields`) and the config's vocabulary (:data:`LOSSES`,
  :data:`LOSS_FIELDS`, :data:`RANKING_METRICS`, :data:`RUN_CONTROL_FIELDS` ...).
* :mod:`tsm.config.builders`: config → typed objects, each built once per run (the data
  spec and splits, the model or frozen pretrained trunk, the loss, the margin schedule,
  the optimiser, the sampler, the evaluators).
* :mod:`tsm.config.checks`: :func:`check_config` (before loading anything) and
  :func:`check_config_with_data` (against the loaded splits): each field checked once, by
  the typed object that owns it where there is one, the section prefixed to its message;
  a :class:`ConfigError` is one line naming the field and the fix.
* :mod:`tsm.config.run`: :func:`prepare`, :func:`train_and_evaluate` (check once, load,
  build, ``tsm.fit.fit``), :func:`read_run_config`, :func:`check_same_run`.

A package rather than sibling ``tsm/config_*.py`` modules: ``from tsm import config``
stays the one entry point (configs, the CLI and the studies use ``config.X``), and this
module re-exports every public name of the last four (and ``loss_table`` itself), so a
caller never needs to know which job a name belongs to.
"""

from tsm import _extras

_extras.require(__name__, "ml_collections", "flax", "optax")   # else one line naming tsm[train]

import ml_collections  # re-exported: config files annotate with config.ml_collections

from tsm.config.builders import (best_metric_key, build_evaluators, build_loss,
                                 build_model, build_optimizer, build_sampler,
                                 build_schedule, build_trunk, data_spec, load_data,
                                 load_pixels, model_label, schedule_length,
                                 uses_feature_cache)
from tsm.config import loss_table
from tsm.config.checks import ConfigError, check_config, check_config_with_data
from tsm.config.defaults import (CLASS_LOSSES, FIELD_HELP, LOSS_FIELDS, LOSSES,
                                 MARGIN_UPDATES, MINIMISED_METRICS, NONFINITE,
                                 PAIR_PROTOCOLS, RANKING_METRICS, REFERENCE_LOSSES,
                                 RESUMABLE_FIELDS, RUN_CONTROL_FIELDS, SAMPLINGS,
                                 default_config, describe_fields, field_values)
from tsm.config.run import (check_same_run, prepare, read_run_config, to_json,
                            train_and_evaluate)
from tsm.losses import MiningCurriculum

__all__ = [
    "CLASS_LOSSES", "ConfigError", "FIELD_HELP", "LOSS_FIELDS", "LOSSES",
    "MARGIN_UPDATES", "MINIMISED_METRICS", "MiningCurriculum", "NONFINITE",
    "PAIR_PROTOCOLS", "RANKING_METRICS", "REFERENCE_LOSSES", "RESUMABLE_FIELDS",
    "RUN_CONTROL_FIELDS",
    "SAMPLINGS",
    "best_metric_key", "build_evaluators", "build_loss", "build_model", "build_optimizer",
    "build_sampler", "build_schedule", "build_trunk", "check_config",
    "check_config_with_data", "check_same_run", "data_spec", "default_config",
    "describe_fields", "field_values", "load_data", "load_pixels", "loss_table", "model_label",
    "prepare",
    "read_run_config", "schedule_length", "to_json", "train_and_evaluate",
    "uses_feature_cache",
]
