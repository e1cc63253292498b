"""The training loop: ``fit(config, workdir)``.

One call trains a model as ``config`` describes, evaluates it, and leaves in ``workdir``:

* ``config.json``: the resolved config;
* ``metrics.jsonl``: a ``{"kind": "step", ...}`` line per optimiser step and a
  ``{"kind": "epoch", ...}`` line per epoch (train loss, margin, easy share, validation
  loss and, every ``eval.every_epochs``, validation retrieval / verification metrics);
* ``checkpoints/``: orbax checkpoints, the last ``checkpoint.keep`` plus the best by
  ``train.best_metric`` (see :mod:`tsm.checkpoint`);
* ``summary.json``: test-split retrieval and verification metrics of the best model, with
  paper A's decision threshold chosen on the validation pairs;
* ``pairs.npz``: the best model's verification pair distances and same-class flags
  (``test_distances``, ``test_same``, and ``val_distances``, ``val_same`` when there is a
  validation split), for ROC curves;
* ``training.png``: loss, margin and easy share per epoch.

Resumption: a rerun with the same ``workdir`` (and the same config) restores the latest
checkpoint, including its position within the epoch, cuts ``metrics.jsonl`` back to its
length at that checkpoint and goes on; samplers and augmentation are pure functions of
``(seed, epoch, step)``, so the resumed run computes exactly what an uninterrupted one
does. A finished run's workdir just gets its summary recomputed.

Scale (:mod:`tsm.distributed`): with several devices (``train.data_parallel``) or hosts
(``distributed.initialize``) each batch is sharded over a ``("data",)`` mesh of every
device and the state replicated; each host decodes only its share of every global batch,
all hosts take part in the orbax checkpoints (the workdir must be shared), and only
process 0 writes the other files. Results do not depend on the device count (up to float
rounding), except that augmentation draws differ per host on several hosts.

Config errors (and a dataset that is not prepared) raise :class:`tsm.config.ConfigError`
before the workdir is created.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from tsm import artifacts
from tsm import checkpoint as checkpoint_lib
from tsm import config as config_lib
from tsm import data as data_lib
from tsm import distances
from tsm import distributed
from tsm import evaluation
from tsm import margins as margins_lib
from tsm import metrics
from tsm import models
from tsm import train as train_lib
from tsm.data import pairs

# Config fields that control one process, not the training: a resumed run may change them.
_RUN_CONTROL_FIELDS = (("train", "stop_after_steps"), ("train", "progress"),
                       ("distributed", "initialize"), ("distributed", "coordinator_address"),
                       ("distributed", "num_processes"), ("distributed", "process_id"))


# ----------------------------------------------------------------------------- setup


def make_sampler(config: ml_collections.ConfigDict, labels: np.ndarray, seed: int,
                 *, max_classes: int | None = None) -> Any:
  """The index sampler ``config.train.sampling`` names, over ``labels``.

  Args:
    config: the full config.
    labels: the split's labels.
    seed: sampler seed (batches are a function of ``(seed, epoch)``).
    max_classes: cap on P (P x K sampling on a split with fewer classes).

  Returns:
    A sampler with ``epoch(e) -> int64 [steps, N]`` and ``steps_per_epoch``.
  """
  t = config.train
  if t.sampling == "pk":
    p = t.classes_per_batch if max_classes is None else min(t.classes_per_batch,
                                                            max_classes)
    return data_lib.PKSampler(labels, p, t.samples_per_class, seed,
                              steps_per_epoch=t.steps_per_epoch)
  batch_size = min(t.batch_size, len(labels))
  if t.sampling == "random":
    return data_lib.RandomBatchSampler(len(labels), batch_size, seed)
  if t.sampling == "triplets":
    return data_lib.RandomTripletSampler(labels, batch_size, seed)
  return data_lib.RandomPairSampler(labels, batch_size, seed)


def _epoch_indices(config: ml_collections.ConfigDict, sampler: Any,
                   epoch: int) -> np.ndarray:
  indices = sampler.epoch(epoch)
  if config.train.sampling != "pk" and config.train.steps_per_epoch:
    indices = indices[:config.train.steps_per_epoch]
  return indices


def _steps_per_epoch(config: ml_collections.ConfigDict, sampler: Any) -> int:
  steps = sampler.steps_per_epoch
  if config.train.sampling != "pk" and config.train.steps_per_epoch:
    steps = min(steps, config.train.steps_per_epoch)
  return int(steps)


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json())


def _check_same_run(path: str, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when ``path`` holds a config that differs in a training field."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = _config_json(config)
  for section, field in _RUN_CONTROL_FIELDS:
    for cfg in (saved, current):
      cfg.get(section, {}).pop(field, None)

  def first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
      for key in sorted(set(a) | set(b)):
        diff = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
        if diff:
          return diff
      return None
    return None if a == b else f"{prefix[:-1]} ({a!r} there, {b!r} now)"

  diff = first_difference(saved, current, "")
  if diff:
    raise config_lib.ConfigError(
        f"workdir {os.path.dirname(path)} holds a run with a different config ({diff}); "
        "use a new --workdir, or the same config to resume it.")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Validates ``config``, loads the data, and checks ``workdir``; creates nothing.

  Args:
    config: the full config.
    workdir: the run directory (may hold an earlier run of the same config).

  Returns:
    The ``tsm.data.DatasetSplits``.

  Raises:
    ConfigError: one line naming the bad field (or the missing dataset) and the fix.
  """
  config_lib.check_config(config)
  try:   # multi-host start-up, before anything touches a device
    distributed.initialize(config.distributed)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  try:
    splits = data_lib.load(config.data, seed=config.seed)
  except data_lib.DatasetNotPreparedError as e:
    raise config_lib.ConfigError(str(e).strip().splitlines()[0]) from None
  except ValueError as e:
    message = str(e).strip().splitlines()[0]
    raise config_lib.ConfigError(
        message if message.startswith("data.") else f"data: {message}") from None
  config_lib.check_config_with_data(config, splits)
  devices = jax.device_count()
  if distributed.use_mesh(config.train.data_parallel):
    sampler = make_sampler(config, splits.train.labels, config.seed)
    size = sampler.epoch(0).shape[1]
    if size % devices:
      raise config_lib.ConfigError(
          f"a train batch of {size} rows does not split over {devices} devices; make it "
          f"a multiple of {devices} (train.classes_per_batch x train.samples_per_class or"
          " train.batch_size) or set train.data_parallel=False.")
  _check_same_run(os.path.join(workdir, "config.json"), config)
  return splits


def _skip_to(index_batches: np.ndarray, start: int) -> list[np.ndarray]:
  """Index batches with the first ``start`` emptied (the loader still counts them).

  ``tsm.data.batches`` seeds augmentation by the position of a batch in the sequence it
  is given; empty placeholders keep the positions, and hence the augmentation, of the
  remaining batches equal to an uninterrupted epoch's, at no decoding cost.
  """
  empty = np.zeros((0,), np.int64)
  return [empty] * start + list(index_batches[start:])


def _val_loss_batches(config, splits) -> np.ndarray | None:
  """Fixed validation-loss index batches (epoch 0 of a val sampler), or None."""
  labels = np.asarray(splits.val.labels)
  counts = np.bincount(labels[labels >= 0]) if labels.size else np.zeros(0, int)
  if int(np.count_nonzero(counts >= 2)) < 2:
    return None
  sampler = make_sampler(config, labels, config.seed + 1,
                         max_classes=int(np.count_nonzero(counts >= 2)))
  indices = sampler.epoch(0)
  if config.eval.val_batches:
    indices = indices[:config.eval.val_batches]
  return indices


# ----------------------------------------------------------------------------- evaluation


def _embed(apply_fn, state, split, batch_size: int) -> np.ndarray:
  """Embeddings of a split; ``apply_fn`` is built once per run (embed caches its jit)."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  variables = distributed.local_copy(variables)   # each host embeds on its own device
  return np.asarray(evaluation.embed(apply_fn, variables, split, batch_size))


def _pair_distances(config, embeddings: np.ndarray, labels: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  i, j, same = pairs.verification_pairs(labels, config.eval.num_pairs, seed)
  d = distances.paired_distances(jnp.asarray(embeddings[i]), jnp.asarray(embeddings[j]),
                                 distance=config.loss.distance)
  return np.asarray(d), np.asarray(same, bool)


def evaluate_split(config: ml_collections.ConfigDict, embeddings: np.ndarray,
                   labels: np.ndarray, seed: int) -> tuple[dict[str, float], np.ndarray,
                                                           np.ndarray]:
  """Retrieval and verification metrics of one split's embeddings.

  Args:
    config: the full config (``eval`` and ``loss.distance`` are read).
    embeddings: ``[N, D]`` embeddings of the split.
    labels: ``[N]`` labels.
    seed: seed of the verification pairs.

  Returns:
    ``(metrics, pair_distances, pair_same)``: metrics has the retrieval keys
    (``recall@K``, ``precision@1``, ``r_precision``, ``map@r``) and the verification keys
    (``auc``, ``eer``, ``tar@far=...``).
  """
  keep = labels >= 0
  out = dict(metrics.retrieval_metrics(embeddings[keep], labels[keep],
                                       ks=tuple(config.eval.ks),
                                       distance=config.loss.distance))
  d, same = _pair_distances(config, embeddings, labels, seed)
  verification = metrics.verification_metrics(d, same)
  out.update({k: v for k, v in verification.items() if np.ndim(v) == 0})
  return {k: float(v) for k, v in out.items()}, d, same


# ----------------------------------------------------------------------------- the loop


class _StepLog:
  """Step metrics waiting on the device, and the current epoch's fetched records."""

  def __init__(self, log: artifacts.MetricsLog):
    self.log = log
    self.pending: list[tuple[int, int, dict[str, jax.Array]]] = []
    self.epoch_steps: list[dict[str, Any]] = []

  def flush(self) -> list[dict[str, Any]]:
    """Fetches the pending step metrics (one host transfer) and appends them to the log."""
    if not self.pending:
      return []
    fetched = jax.device_get([m for _, _, m in self.pending])
    records = [dict({k: float(v) for k, v in m.items()}, kind="step", epoch=epoch,
                    step=step)
               for (epoch, step, _), m in zip(self.pending, fetched)]
    self.pending = []
    self.log.append(records)
    self.epoch_steps.extend(records)
    return records


def _counts(steps: list[dict[str, Any]]) -> tuple[str, float, float]:
  """``(name of the total count, total, easy)`` summed over step records."""
  total_key = "num_triplets" if "num_triplets" in steps[0] else "num_pairs"
  return (total_key, sum(r[total_key] for r in steps),
          sum(r["num_easy"] for r in steps))


def _epoch_record(epoch: int, step: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
  """Aggregates an epoch's step records (host floats; identical on resume)."""
  total_key, total, easy = _counts(steps)
  mean = lambda key: float(np.mean([r[key] for r in steps]))  # noqa: E731
  return {
      "kind": "epoch", "epoch": epoch, "step": step,
      "loss": mean("loss"), "grad_norm": mean("grad_norm"),
      "active_ratio": mean("active_ratio"), "mean_pos_dist": mean("mean_pos_dist"),
      "mean_neg_dist": mean("mean_neg_dist"),
      "margin": steps[0]["margin"], total_key: total, "num_easy": easy,
      "easy_share": easy / max(total, 1.0),
  }


def _val_loss(eval_step, state, margin, splits, indices,
              place=lambda batch: batch) -> dict[str, float]:
  """Mean validation loss (and active ratio, easy share) over fixed batches."""
  outputs = [eval_step(state, place(batch), margin)
             for batch in data_lib.batches(splits.val, indices)]
  host = jax.device_get(outputs)
  mean = lambda key: float(np.mean([m[key] for m in host]))  # noqa: E731
  return {"val_loss": mean("loss"), "val_active_ratio": mean("active_ratio"),
          "val_easy_share": mean("easy_share")}


EpochHook = Callable[[int, Any, Callable[..., Any], Any], "dict[str, Any] | None"]


def fit(config: ml_collections.ConfigDict, workdir: str, *,
        epoch_hook: EpochHook | None = None) -> dict[str, Any] | None:
  """Trains, evaluates and summarises one run (resuming ``workdir`` if it holds one).

  Args:
    config: the full config (see :func:`tsm.config.default_config`).
    workdir: run directory; created after the config has been validated.
    epoch_hook: optional ``hook(epoch, state, apply_fn, splits) -> dict | None`` called
      after each epoch's evaluation, before its checkpoint, with the 0-based epoch, the
      :class:`tsm.train.TrainState` (after the margin update), the model's eval-mode
      ``apply_fn(variables, x)`` and the :class:`tsm.data.DatasetSplits`. A returned dict
      of JSON-able scalars is merged into the epoch's ``metrics.jsonl`` record. Studies use
      it for per-epoch analyses (effective margins, embedding variances). It must not
      modify ``state``.

  Returns:
    The summary dict (also in ``workdir/summary.json``), or None when the process
    stopped early because of ``train.stop_after_steps``.

  Raises:
    tsm.config.ConfigError: a bad config value, before anything is created.
  """
  splits = prepare(config, workdir)
  primary = distributed.is_primary()   # only process 0 writes files (orbax aside)
  os.makedirs(workdir, exist_ok=True)
  if primary:
    artifacts.write_json_atomic(os.path.join(workdir, "config.json"), _config_json(config))

  tc = config.train
  seed = int(config.seed)
  mesh = train_lib.data_mesh() if distributed.use_mesh(tc.data_parallel) else None
  model = models.create_model(config.model, splits.input_shape)
  apply_fn = functools.partial(model.apply, train=False)   # one object: one jit in embed
  # A typed key for the model init; the state keeps raw uint32 key data (plain arrays
  # for orbax).
  init_rng, state_rng = jax.random.split(jax.random.key(seed))
  variables = models.init_variables(model, init_rng, splits.input_shape)
  sampler = make_sampler(config, splits.train.labels, seed)
  steps_per_epoch = _steps_per_epoch(config, sampler)
  epochs = int(tc.epochs)
  total_steps = epochs * steps_per_epoch
  tx = models.maybe_freeze_trunk(train_lib.make_optimizer(tc, total_steps), config.model)
  schedule = margins_lib.from_config(config_lib.schedule_config(config),
                                     config_lib.schedule_length(config, steps_per_epoch))
  state = train_lib.create_train_state(variables, tx, schedule,
                                       jax.random.key_data(state_rng))
  state = train_lib.replicate(state, mesh)
  del variables

  best_key, best_mode = config_lib.best_metric_key(tc.best_metric)
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      best_metric=best_key, best_mode=best_mode, async_save=config.checkpoint.async_save)
  run = _StepLog(artifacts.MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                                      write=primary))
  start_epoch, start_pos = 0, 0
  latest = ckpt.latest_step()
  if latest is not None:
    state, meta = ckpt.restore(latest, state)
    start_epoch, start_pos = int(meta["epoch"]), int(meta["step_in_epoch"])
    run.log.truncate(int(meta["metrics_bytes"]))
  else:
    run.log.truncate(0)   # lines of a run killed before its first checkpoint
  history = run.log.read()
  epoch_records = [r for r in history if r["kind"] == "epoch"]
  run.epoch_steps = [r for r in history if r["kind"] == "step" and r["epoch"] == start_epoch]

  train_step = train_lib.make_train_step(config, model, schedule, tx, mesh)
  end_of_epoch = (None if config.margin.get("update_every", "epoch") == "step"
                  else train_lib.make_end_of_epoch(schedule, mesh))
  val_indices = _val_loss_batches(config, splits)
  # Validation batches that do not split over the devices are loaded whole by every host
  # and replicated; the others are sharded like the train batches.
  val_sharded = val_indices is not None and distributed.divides(val_indices.shape[1], mesh)
  eval_step = train_lib.make_eval_step(config, model, mesh, batch_sharded=val_sharded)
  if val_sharded:
    val_indices = distributed.host_batches(val_indices, mesh)
  val_place = functools.partial(distributed.shard_batch, mesh=mesh if val_sharded else None)
  val_margin = config.eval.val_margin

  def meta(epoch: int, pos: int, step: int) -> dict[str, Any]:
    return {"epoch": epoch, "step_in_epoch": pos, "global_step": step,
            "metrics_bytes": run.log.size(), "steps_per_epoch": steps_per_epoch}

  progress = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch + start_pos,
                  disable=not (tc.progress and primary), dynamic_ncols=True, unit="step",
                  desc=f"{config.data.name} {config.loss.name}/{config.margin.schedule}")

  def show(records: list[dict[str, Any]]) -> None:
    if records and tc.progress and primary:
      _, total, easy = _counts(run.epoch_steps)
      progress.set_postfix(loss=f"{records[-1]['loss']:.4f}",
                           mu=f"{records[-1]['margin']:.3f}",
                           easy=f"{easy / max(total, 1.0):.2f}", refresh=False)

  steps_this_run = 0
  stop_after = int(tc.stop_after_steps)
  every_steps = int(config.checkpoint.every_steps)
  every_epochs = int(config.checkpoint.get("every_epochs", 1))
  try:
    for epoch in range(start_epoch, epochs):
      t0 = time.time()
      pos0 = start_pos if epoch == start_epoch else 0
      if pos0 == 0:
        run.epoch_steps = []
      # This host's share of the epoch's global batches (all of them on one host).
      indices = distributed.host_batches(_epoch_indices(config, sampler, epoch), mesh)
      hosts = jax.process_count()
      stream: Iterator[dict[str, np.ndarray]] = data_lib.batches(
          splits.train, _skip_to(indices, pos0), augment=bool(config.data.augment),
          seed=(seed, epoch) if hosts == 1 else (seed, epoch, jax.process_index()))
      for pos, batch in enumerate(stream):
        if pos < pos0:
          continue
        state, step_metrics = train_step(state, distributed.shard_batch(batch, mesh))
        step = epoch * steps_per_epoch + pos + 1
        run.pending.append((epoch, step, step_metrics))
        progress.update(1)
        steps_this_run += 1
        if len(run.pending) >= tc.log_every:
          show(run.flush())
        if every_steps and step % every_steps == 0 and pos + 1 < steps_per_epoch:
          show(run.flush())
          ckpt.save(step, state, meta(epoch, pos + 1, step))
        if stop_after and steps_this_run >= stop_after:
          show(run.flush())
          return None
      show(run.flush())

      step = (epoch + 1) * steps_per_epoch
      record = _epoch_record(epoch, step, run.epoch_steps)
      if val_indices is not None:   # at eval.val_margin, or the epoch's own margin
        margin = state.margin_state.margin if val_margin is None else jnp.float32(val_margin)
        record.update(_val_loss(eval_step, state, margin, splits, val_indices, val_place))
      if end_of_epoch is not None:
        state = end_of_epoch(state)
      record["margin_next"] = float(jax.device_get(state.margin_state.margin))
      if len(splits.val) and ((epoch + 1) % config.eval.every_epochs == 0
                              or epoch + 1 == epochs):
        val_metrics, _, _ = evaluate_split(
            config, _embed(apply_fn, state, splits.val, config.eval.batch_size),
            np.asarray(splits.val.labels), seed)
        record.update({f"val_{k}": v for k, v in val_metrics.items()})
      if epoch_hook is not None:
        record.update(epoch_hook(epoch, state, apply_fn, splits) or {})
      record["time_s"] = round(time.time() - t0, 3)
      run.log.append([record])
      epoch_records.append(record)
      run.epoch_steps = []
      if epoch + 1 == epochs or (every_epochs and (epoch + 1) % every_epochs == 0):
        ckpt.save(step, state, meta(epoch + 1, 0, step),
                  metrics={best_key: record[best_key]} if best_key in record else None)
      if tc.progress and primary:
        progress.write(_epoch_line(record))
    progress.close()

    pairs_out: dict[str, np.ndarray] = {}
    summary = _summarise(config, apply_fn, state, ckpt, splits, epoch_records, best_key,
                         pairs_out)
  finally:
    progress.close()
    ckpt.close()
  if not primary:
    return summary
  artifacts.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  np.savez(os.path.join(workdir, "pairs.npz"), **pairs_out)
  artifacts.plot_training(
      epoch_records, os.path.join(workdir, "training.png"), title=_title(config),
      val_label="validation" + ("" if val_margin is None else f" (margin {val_margin:g})"),
      easy_threshold=config.margin.threshold if config.margin.schedule == "dams" else None)
  print(format_summary(summary))
  return summary


def _title(config) -> str:
  return (f"{config.data.name}: {config.loss.name} loss, {config.margin.schedule} margin, "
          f"{config.model.name}")


def _epoch_line(r: dict[str, Any]) -> str:
  parts = [f"epoch {r['epoch'] + 1}", f"loss {r['loss']:.4f}", f"mu {r['margin']:.3f}",
           f"easy {r['easy_share']:.3f}"]
  for key in ("val_loss", "val_map@r", "val_auc"):
    if key in r:
      parts.append(f"{key} {r[key]:.4f}")
  return "  ".join(parts)


def _summarise(config, apply_fn, state, ckpt, splits, epoch_records, best_key,
               pairs_out=None):
  """Test metrics of the best checkpoint (or the final state without one).

  ``pairs_out``, when given, receives the verification pair arrays (see ``pairs.npz``).
  """
  best_step = ckpt.best_step()
  if best_step is not None:
    state, _ = ckpt.restore(best_step, state)
  best_record = next((r for r in epoch_records if r["step"] == best_step), None)
  if best_record is None and epoch_records:
    best_record = epoch_records[-1]
  data_seed = int(config.data.get("data_seed", 0))
  test_labels = np.asarray(splits.test.labels)
  test_emb = _embed(apply_fn, state, splits.test, config.eval.batch_size)
  test_metrics, test_d, test_same = evaluate_split(config, test_emb, test_labels, data_seed)
  pairs_out = {} if pairs_out is None else pairs_out
  pairs_out.update(test_distances=test_d, test_same=test_same)
  summary: dict[str, Any] = {
      "dataset": config.data.name, "split": config.data.split, "loss": config.loss.name,
      "margin_schedule": config.margin.schedule, "model": config.model.name,
      "epochs": len(epoch_records), "best_metric": best_key,
      "best_epoch": None if best_record is None else best_record["epoch"] + 1,
      "best_value": None if best_record is None else best_record.get(best_key),
      "final_margin": epoch_records[-1]["margin_next"] if epoch_records else None,
      "test": test_metrics,
  }
  if len(splits.val):
    val_labels = np.asarray(splits.val.labels)
    val_emb = _embed(apply_fn, state, splits.val, config.eval.batch_size)
    val_metrics, val_d, val_same = evaluate_split(config, val_emb, val_labels,
                                                  int(config.seed))
    pairs_out.update(val_distances=val_d, val_same=val_same)
    threshold = float(metrics.choose_threshold_closest_to_corner(val_d, val_same))
    summary["val"] = val_metrics
    summary["test"]["threshold"] = threshold
    summary["test"]["accuracy"] = float(
        metrics.accuracy_at_threshold(test_d, test_same, threshold))
  if config.eval.knn_k and config.data.split != "class_disjoint":
    train_emb = _embed(apply_fn, state, splits.train, config.eval.batch_size)
    summary["test"][f"knn@{config.eval.knn_k}"] = float(metrics.knn_accuracy(
        train_emb, np.asarray(splits.train.labels), test_emb, test_labels,
        k=config.eval.knn_k))
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """A short human-readable block of the summary's test metrics."""
  lines = [f"== {summary['dataset']} ({summary['split']}): {summary['loss']} loss, "
           f"{summary['margin_schedule']} margin, {summary['model']}; best epoch "
           f"{summary['best_epoch']} by {summary['best_metric']}, final margin "
           f"{summary['final_margin']:.4g}"]
  test = summary["test"]
  keys = [k for k in test if k.startswith("recall@")] + [
      k for k in ("precision@1", "r_precision", "map@r", "auc", "eer", "tar@far=1e-3",
                  "tar@far=1e-2", "accuracy", "threshold") if k in test] + [
      k for k in test if k.startswith("knn@")]
  lines.append("test: " + "  ".join(f"{k} {test[k]:.4f}" for k in keys))
  return "\n".join(lines)
