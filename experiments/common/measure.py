"""One train-and-measure step: train a run with ``tsm``, then measure its final model.

:func:`train_and_measure` trains one run with :func:`tsm.config.train_and_evaluate` and,
through an evaluator at the last epoch, hands the final model to the study's
``measure(ctx)``; it then reads fit's per-epoch records (``metrics.jsonl``) and lets the
study's ``summarize`` build the run's record, written to ``<run dir>/<result_file>``
(NaN as null) with the measured arrays in ``<run dir>/<arrays_file>``. A run whose
result file exists (and whose ``config.json`` is the same run) is not retrained.

The measurements the loss studies share:

* :func:`measure_embeddings`: on the L2-normalised TRAINING embeddings, paper B's
  intra-class variance (mean, std and per class) and inter-class centroid distances
  (plain, as the authors' code; squared mean too), and the effective margins
  ``d_an - d_ap`` of the valid training triplets (all of them, or a uniform sample of
  ``em_triplets``) with a Gaussian mixture fitted to them; on the test split, k-NN
  accuracy (training embeddings as the reference set; NaN when the test classes are not
  training classes), Recall@1/5/10 and MAP@R (test embeddings as queries and gallery,
  each query excluded). Unlabelled points (label -1) take part in no class statistic,
  query or k-NN reference.
* :func:`curve_summary`: from the epoch records, the curves of loss, active ratio and
  gradient norm, paper B's loss-decay epochs (first epoch whose loss is at most 10% of
  the first epoch's; ``-1`` when never; also from the first step's loss), the means of
  the active ratio and gradient norm over epochs, the active ratio of NEGATIVE terms
  only (:func:`tsm.losses.negative_active_ratio`) and the gradient norm per unit of loss (losses
  differ in scale).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from typing import Any, Callable

import jax
import numpy as np

from experiments.common import grid
from tsm import artifacts
from tsm import config as config_lib
from tsm import diagnostics
from tsm import distances
from tsm import losses as losses_lib
from tsm import metrics

CURVES = ("loss", "active_ratio", "grad_norm")
# Measure(ctx) -> (JSON-able scalars, numpy arrays) of the final model.
Measure = Callable[[Any], "tuple[dict[str, Any], dict[str, np.ndarray]]"]


def normalised(emb: Any) -> np.ndarray:
  """L2-normalised embeddings, as numpy."""
  return np.asarray(distances.l2_normalize(jax.numpy.asarray(emb)))


def measure_embeddings(train_emb: np.ndarray, train_labels: np.ndarray,
                       test_emb: np.ndarray, test_labels: np.ndarray, num_classes: int,
                       *, knn_k: int = 5, em_triplets: int = 20_000,
                       gmm_components: int = 2, margin: float = 1.0, seed: int = 0,
                       distance: str = "euclidean") -> tuple[dict[str, Any],
                                                             dict[str, np.ndarray]]:
  """Paper B's embedding measurements of one final model.

  Args:
    train_emb: ``[N, D]`` L2-normalised training embeddings.
    train_labels: ``[N]`` labels (-1 = unlabelled, left out).
    test_emb: ``[Q, D]`` L2-normalised test embeddings.
    test_labels: ``[Q]`` labels (-1 = unlabelled, left out).
    num_classes: number of classes of the dataset.
    knn_k: k of the k-NN accuracy.
    em_triplets: size of the effective-margin buffer (exact below, sampled above).
    gmm_components: Gaussian mixture components.
    margin: the training margin (share of triplets below it is reported).
    seed: seed of the effective-margin sample.
    distance: distance of retrieval, k-NN and effective margins.

  Returns:
    ``(scalars, arrays)``: a dict of JSON-able numbers and a dict of numpy arrays
    (``per_class_variance``, ``class_present``, ``effective_margins``).
  """
  train_keep = train_labels >= 0
  test_keep = test_labels >= 0
  tr_emb, tr_lab = train_emb[train_keep], train_labels[train_keep]
  te_emb, te_lab = test_emb[test_keep], test_labels[test_keep]
  intra = diagnostics.intra_class_variance(tr_emb, tr_lab, num_classes)
  inter = diagnostics.inter_class_distances(tr_emb, tr_lab, num_classes)
  out: dict[str, Any] = {
      "intra_var": float(intra.mean), "intra_var_std_over_classes": float(intra.std),
      "inter_dist": float(inter.mean), "inter_dist_std_over_pairs": float(inter.std),
      "inter_dist_sq": float(inter.mean_squared),
  }
  with warnings.catch_warnings():   # a query class of one member is left out: fine
    warnings.simplefilter("ignore")
    out.update(metrics.retrieval_metrics(te_emb, te_lab, ks=(1, 5, 10),
                                         distance=distance))
  seen = np.isin(te_lab, np.unique(tr_lab))
  out[f"knn@{knn_k}"] = (float(metrics.knn_accuracy(tr_emb, tr_lab, te_emb, te_lab,
                                                    k=knn_k, distance=distance))
                         if seen.all() and te_lab.size else math.nan)
  em = diagnostics.effective_margins(tr_emb, tr_lab, distance=distance,
                                     max_triplets=em_triplets, seed=seed)
  values = np.asarray(em.values)[np.asarray(em.mask)]
  mix = diagnostics.fit_gaussian_mixture(em.values, gmm_components, weights=em.mask)
  out.update({
      "eff_margin_mean": float(values.mean()) if values.size else math.nan,
      "eff_margin_std": float(values.std()) if values.size else math.nan,
      "eff_margin_below_margin": (float(np.mean(values < margin)) if values.size
                                  else math.nan),
      "eff_margin_exact": bool(em.exact), "eff_margin_count": int(values.size),
      "num_valid_triplets": float(em.num_triplets),
      "gmm": {"weights": np.asarray(mix.weights).tolist(),
              "means": np.asarray(mix.means).tolist(),
              "stds": np.asarray(mix.stds).tolist(),
              "log_likelihood": float(mix.log_likelihood),
              "converged": bool(mix.converged)},
  })
  arrays = {"per_class_variance": np.asarray(intra.per_class),
            "class_present": np.asarray(intra.present),
            "effective_margins": values.astype(np.float32)}
  return out, arrays


def grad_norm_per_loss(records: list[dict[str, Any]]) -> list[float]:
  """Per epoch, the gradient norm per unit of loss (NaN where the loss is 0)."""
  return [r["grad_norm"] / r["loss"] if r["loss"] > 0 else math.nan for r in records]


def curve_summary(epoch_records: list[dict[str, Any]], first_step_loss: float,
                  decay_fraction: float = 0.1) -> dict[str, Any]:
  """Per-epoch curves and paper B's greediness numbers from fit's epoch records.

  Besides paper B's loss-decay (epochs until the epoch loss is at most ``decay_fraction``
  of the FIRST EPOCH's mean loss), ``loss_decay_epochs_from_step1`` measures it from the
  first optimiser step's loss instead: a loss that falls mostly within epoch 1 (the
  contrastive loss here) is otherwise credited with none of that fall.

  Args:
    epoch_records: the ``{"kind": "epoch"}`` records of ``metrics.jsonl``, in order.
    first_step_loss: the loss of the first optimiser step.
    decay_fraction: loss-decay target share of the first epoch's loss.

  Returns:
    ``{"curves": {name: [E floats]}, "loss_decay_epochs": int (-1: never),
    "loss_decay_epochs_from_step1": int (-1: never), "first_step_loss",
    "mean_active_ratio", "mean_grad_norm", "mean_negative_active_ratio",
    "mean_grad_norm_per_loss", "final_loss", "epochs"}``.
  """
  curves = {k: [float(r[k]) for r in epoch_records] for k in CURVES}
  neg = [losses_lib.negative_active_ratio(r) for r in epoch_records]
  # Epochs whose loss is 0 have no defined ratio (NaN, left out of the mean).
  per_loss = grad_norm_per_loss(epoch_records)
  losses = np.asarray(curves["loss"], np.float32)
  decay = int(diagnostics.loss_decay_epochs(losses, decay_fraction))
  from_step = int(diagnostics.loss_decay_epochs(
      np.concatenate([np.float32([first_step_loss]), losses]), decay_fraction))
  return {
      "curves": curves, "epochs": len(epoch_records),
      "loss_decay_epochs": decay,
      "loss_decay_epochs_from_step1": from_step - 1 if from_step > 0 else -1,
      "first_step_loss": float(first_step_loss),
      "mean_active_ratio": float(np.mean(curves["active_ratio"])),
      "mean_grad_norm": float(np.mean(curves["grad_norm"])),
      "mean_negative_active_ratio": (float(np.mean(neg))
                                     if neg and np.all(np.isfinite(neg)) else math.nan),
      "mean_grad_norm_per_loss": (float(np.nanmean(per_loss))
                                  if np.any(np.isfinite(per_loss)) else math.nan),
      "final_loss": curves["loss"][-1],
  }


def json_safe(obj: Any) -> Any:
  """NaN / inf floats as None (strict JSON), recursively."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


class FinalModel:
  """Evaluator at the last epoch: ``measure(ctx)`` of the final model, kept in ``found``.

  Args:
    epochs: the run's epochs.
    measure: ``measure(ctx)`` -> ``(scalars, arrays)``; ``scalars`` has ``intra_var``
      and ``inter_dist``, which go into the epoch's record.
  """

  def __init__(self, epochs: int, measure: Measure):
    self.every_epochs = epochs
    self.measure = measure
    self.found: dict[str, Any] = {}

  def __call__(self, ctx: Any) -> dict[str, Any]:
    if ctx.epoch + 1 != self.every_epochs:
      return {}
    scalars, arrays = self.measure(ctx)
    self.found.update(scalars=scalars, arrays=arrays)
    return {"study": {"intra_var": scalars["intra_var"],
                      "inter_dist": scalars["inter_dist"]}}


def train_and_measure(config: Any, rundir: str, *, result_file: str, arrays_file: str,
                      measure: Measure,
                      summarize: Callable[..., dict[str, Any]]) -> dict[str, Any]:
  """Trains one run and writes its measurements (or reads those of a finished run).

  Args:
    config: the run's full tsm config.
    rundir: the run directory (fit's workdir); fit's output goes to its ``fit.log``.
    result_file: the record's file name in ``rundir`` (its presence marks a finished run).
    arrays_file: the ``.npz`` of the measured arrays.
    measure: ``measure(ctx)`` at the last epoch -> ``(scalars, arrays)``.
    summarize: ``summarize(epoch_records, first_step_record, scalars, arrays, summary)``
      -> the run's record (``summary``: fit's summary dict, or None).

  Returns:
    The run's record as written (NaN as None).

  Raises:
    tsm.config.ConfigError: ``rundir`` holds a run of another config.
    RuntimeError: the last epoch's measurement did not run.
  """
  path = os.path.join(rundir, result_file)
  if grid.finished(rundir, config, (result_file,)):
    with open(path) as f:
      return json.load(f)
  if os.path.isdir(rundir):   # a run stopped before its measurements: train it again
    shutil.rmtree(rundir)
  final = FinalModel(int(config.train.epochs), measure)
  os.makedirs(rundir, exist_ok=True)
  with open(os.path.join(rundir, "fit.log"), "w") as log, contextlib.redirect_stdout(log):
    result = config_lib.train_and_evaluate(config, rundir, evaluators=[final])
  if "scalars" not in final.found:
    raise RuntimeError(f"{rundir}: the last epoch's measurements did not run (resumed a "
                       "finished run?); delete the directory and run again.")
  lines = artifacts.MetricsLog(os.path.join(rundir, "metrics.jsonl")).read()
  records = [r for r in lines if r["kind"] == "epoch"]
  first_step = next(r for r in lines if r["kind"] == "step")
  summary = None if result is None else result.summary
  record = json_safe(summarize(records, first_step, final.found["scalars"],
                               final.found["arrays"], summary))
  with artifacts.atomic_path(os.path.join(rundir, arrays_file)) as tmp:
    np.savez_compressed(tmp, **final.found["arrays"])
  artifacts.write_json_atomic(path, record)
  return record


def with_companions(record: dict[str, Any]) -> dict[str, Any]:
  """A run's record with the measures of the by-construction claims' companions added
  where it lacks them (None when an input is missing): ``intra_var_ratio`` = intra-class
  variance / mean squared centroid distance, ``inter_dist_per_spread`` = mean centroid
  distance / RMS intra-class radius (√intra_var). The two pull against each other: a
  larger ratio is a smaller distance per unit of spread."""
  out = dict(record)
  var, dist, dist_sq = (record.get(k) for k in ("intra_var", "inter_dist",
                                                 "inter_dist_sq"))
  ok = lambda *v: all(x is not None and np.isfinite(x) for x in v)  # noqa: E731
  if out.get("intra_var_ratio") is None:
    out["intra_var_ratio"] = (var / dist_sq if ok(var, dist_sq) and dist_sq > 0
                              else None)
  if out.get("inter_dist_per_spread") is None:
    out["inter_dist_per_spread"] = (dist / np.sqrt(var) if ok(var, dist) and var > 0
                                    else None)
  return out
