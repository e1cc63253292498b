"""Tests of tsm.margins: every schedule driven through scripted epochs.

Each script is a list of epochs; each epoch a list of batches ``(num_total, num_easy)``
that are accumulated one by one before the epoch's ``update``. The expected margins (the
margin after each update, i.e. the margin of the next epoch) are written out by hand from
the rule in the docstring of each test case, never computed with the code under test.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tsm import config as config_lib
from tsm import margins

_EMPTY = []  # an epoch without valid triplets (no batch at all)


class _Stats(NamedTuple):  # any object with these two fields will do
  num_total: float
  num_easy: float


# (name, schedule, script, expected margin after each update)
CASES = [
    # Constant: counts are ignored.
    ("constant", margins.constant(0.3),
     [[(10, 10)], [(10, 0)], _EMPTY],
     [0.3, 0.3, 0.3]),
    # Linear, paper's code: step (1.0 - 0.2) / 4 = 0.2 per update, clamped at 1.0; time-based,
    # so the empty epoch advances too.
    ("linear", margins.linear(0.2, 1.0, 4),
     [[(10, 10)], _EMPTY, [(5, 1)], [(5, 5)], [(5, 5)], [(5, 5)]],
     [0.4, 0.6, 0.8, 1.0, 1.0, 1.0]),
    # Decreasing linear: step -0.2, clamped at 0.2.
    ("linear_decreasing", margins.linear(1.0, 0.2, 4),
     [[(1, 1)]] * 5,
     [0.8, 0.6, 0.4, 0.2, 0.2]),
    # Exponential: ratio 5 ** (1/4); epochs 0..4 = 0.2 * 5 ** (e/4); 1.0 at the last epoch (4).
    ("exponential", margins.exponential(0.2, 1.0, 5),
     [[(3, 1)], [(3, 3)], _EMPTY, [(3, 0)], [(3, 3)]],
     [0.2990697562442441, 0.447213595499958, 0.668740304976422, 1.0, 1.0]),
    # A single epoch: nothing to schedule.
    ("exponential_one_epoch", margins.exponential(0.2, 1.0, 1),
     [[(3, 3)], [(3, 3)]],
     [0.2, 0.2]),
    # Stepwise with values: epochs 0-1 at 0.2, 2-4 at 0.5, 5+ at 1.0.
    ("stepwise_values", margins.stepwise(0.2, (2, 5), values=(0.5, 1.0)),
     [[(4, 4)]] * 6,
     [0.2, 0.5, 0.5, 0.5, 1.0, 1.0]),
    # Stepwise with an increment: epoch 0 at 0.1, 1-2 at 0.35, 3+ at 0.6.
    ("stepwise_increment", margins.stepwise(0.1, (1, 3), increment=0.25),
     [[(4, 0)], _EMPTY, [(4, 4)], [(4, 4)], [(4, 4)]],
     [0.35, 0.35, 0.6, 0.6, 0.6]),
    # DAMS, paper defaults (0.2, tau 0.95, delta 0.05):
    #   95/100 = tau -> raise 0.25; 94/100 below -> 0.25; 39/40 = 0.975 above -> 0.30;
    #   empty epoch -> 0.30; 20/20 -> 0.35; 0/10 -> 0.35.
    ("dams", margins.dams(),
     [[(40, 38), (60, 57)], [(50, 47), (50, 47)], [(10, 10), (30, 29)], _EMPTY,
      [(5, 5), (0, 0), (15, 15)], [(10, 0)]],
     [0.25, 0.25, 0.30, 0.30, 0.35, 0.35]),
    # DAMS with an empty epoch made of batches without triplets, threshold 0.75 (exact in f32):
    #   6/8 = 0.75 -> 0.5 + 0.1 = 0.6; (0, 0) batches -> 0.6; 5/8 -> 0.6; 8/8 -> 0.7.
    ("dams_threshold", margins.dams(0.5, threshold=0.75, increment=0.1),
     [[(4, 3), (4, 3)], [(0, 0), (0, 0)], [(8, 5)], [(2, 2), (6, 6)]],
     [0.6, 0.6, 0.6, 0.7]),
    # DAMS capped at 0.45: 0.2 -> 0.35 -> 0.45 (0.5 capped) -> 0.45; empty -> 0.45.
    ("dams_max_margin", margins.dams(0.2, threshold=0.5, increment=0.15, max_margin=0.45),
     [[(2, 2)], [(2, 1)], [(2, 2)], _EMPTY],
     [0.35, 0.45, 0.45, 0.45]),
    # Controller: target 0.8, gain 0.5, bounds [0.3, 0.7], dead band 0.05; starts at 0.5.
    #   share 1.0: err +0.2 -> 0.5 + 0.1 = 0.6
    #   share 0.84: err +0.04, inside the band -> 0.6
    #   share 0.4: err -0.4 -> 0.6 - 0.2 = 0.4
    #   empty -> 0.4
    #   share 0.5: err -0.3 -> 0.4 - 0.15 = 0.25, clipped to 0.3
    #   share 0.7: err -0.1 -> 0.3 - 0.05 = 0.25, clipped to 0.3
    #   share 1.0 four times: 0.4, 0.5, 0.6, 0.7
    #   share 1.0: 0.8 clipped to 0.7
    #   share 0.7: err -0.1 -> 0.65
    ("controller", margins.controller(0.5, target=0.8, gain=0.5, min_margin=0.3,
                                      max_margin=0.7, deadband=0.05),
     [[(10, 10), (30, 30)], [(60, 50), (40, 34)], [(50, 20)], _EMPTY, [(10, 5)],
      [(10, 7)], [(4, 4)], [(4, 4)], [(4, 4)], [(4, 4)], [(4, 4)], [(20, 14)]],
     [0.6, 0.6, 0.4, 0.4, 0.3, 0.3, 0.4, 0.5, 0.6, 0.7, 0.7, 0.65]),
]
_IDS = [case[0] for case in CASES]


def _run_eager(schedule, script, accumulate, update):
  state = schedule.init()
  out = []
  for epoch in script:
    for t, e in epoch:
      state = accumulate(state, _Stats(jnp.float32(t), jnp.float32(e)))
    state = update(state)
    out.append(float(state.margin))
  return out, state


def _padded(script):
  """Script as a [epochs, max_batches, 2] array; (0, 0) batches add nothing."""
  width = max(1, max(len(epoch) for epoch in script))
  array = np.zeros((len(script), width, 2), np.float32)
  for i, epoch in enumerate(script):
    for j, batch in enumerate(epoch):
      array[i, j] = batch
  return jnp.asarray(array)


@pytest.mark.parametrize("name,schedule,script,expected", CASES, ids=_IDS)
def test_schedule_eager(name, schedule, script, expected):
  del name
  out, state = _run_eager(schedule, script, schedule.accumulate, schedule.update)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  assert int(state.epoch) == len(script)
  assert float(state.num_total) == 0.0 and float(state.num_easy) == 0.0


@pytest.mark.parametrize("name,schedule,script,expected", CASES, ids=_IDS)
def test_schedule_jit_and_scan(name, schedule, script, expected):
  del name
  # jit of accumulate and update separately.
  out, _ = _run_eager(schedule, script, jax.jit(schedule.accumulate),
                      jax.jit(schedule.update))
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)

  # The whole run as one jitted lax.scan over epochs (and batches within each epoch).
  @jax.jit
  def run(counts):
    def epoch_fn(state, epoch_counts):
      def batch_fn(s, c):
        return schedule.accumulate(s, {"num_total": c[0], "num_easy": c[1]}), None
      state, _ = jax.lax.scan(batch_fn, state, epoch_counts)
      state = schedule.update(state)
      return state, state.margin
    return jax.lax.scan(epoch_fn, schedule.init(), counts)

  final, traj = run(_padded(script))
  np.testing.assert_allclose(np.asarray(traj), expected, rtol=1e-6, atol=1e-6)
  assert int(final.epoch) == len(script)


@pytest.mark.parametrize("name,schedule,script,expected", CASES, ids=_IDS)
def test_state_structure_is_stable(name, schedule, script, expected):
  """Same shapes, dtypes and weak types before and after updates: no retracing."""
  del name, script, expected
  def avals(state):
    return [(x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(state)]
  state = schedule.init()
  chex.assert_type([state.margin, state.num_total, state.num_easy], jnp.float32)
  chex.assert_type(state.epoch, jnp.int32)
  before = avals(state)
  state = schedule.update(schedule.accumulate(state, _Stats(3.0, 2.0)))
  assert avals(state) == before
  state = jax.jit(schedule.update)(jax.jit(schedule.accumulate)(state, _Stats(3.0, 2.0)))
  assert avals(state) == before


def test_initial_margins():
  assert float(margins.dams().init().margin) == pytest.approx(0.2)
  assert float(margins.controller().init().margin) == pytest.approx(0.2)
  assert float(margins.linear(0.1, 0.5, 3).init().margin) == pytest.approx(0.1)
  assert float(margins.stepwise(0.7, (3,), values=(0.9,)).init().margin) == pytest.approx(0.7)


def test_controller_floor_defaults_to_the_initial_margin():
  """Shares far below target (an untrained model) lower the margin only down to the
  floor: by default the initial margin, so the controller never goes easier than it
  started; with ``min_margin=0.0`` it falls to 0 (by hand: 0.3 - 0.5 * 0.9 < 0)."""
  for floor, expected in ((None, [0.3, 0.3, 0.3]), (0.0, [0.0, 0.0, 0.0]),
                          (0.1, [0.1, 0.1, 0.1])):
    schedule = margins.controller(0.3, target=0.9, gain=0.5, min_margin=floor)
    state, out = schedule.init(), []
    for _ in range(3):
      state = schedule.update(schedule.accumulate(state, _Stats(10.0, 0.0)))  # share 0
      out.append(float(state.margin))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def test_easy_share_and_accumulate():
  schedule = margins.dams()
  state = schedule.init()
  assert float(margins.easy_share(state)) == 0.0  # empty period
  state = schedule.accumulate(state, _Stats(40.0, 10.0))
  state = schedule.accumulate(state, {"num_total": np.float32(60), "num_easy": 20})
  assert float(state.num_total) == 100.0 and float(state.num_easy) == 30.0
  assert float(margins.easy_share(state)) == pytest.approx(0.3)
  assert float(jax.jit(margins.easy_share)(state)) == pytest.approx(0.3)


def test_dams_per_step_updates():
  """update() after every step: the rule sees one batch's share."""
  schedule = margins.dams(0.2, threshold=0.9, increment=0.1)
  state = schedule.init()
  out = []
  for t, e in [(10, 10), (10, 5), (10, 9), (0, 0)]:  # shares 1.0, 0.5, 0.9, empty
    state = schedule.update(schedule.accumulate(state, _Stats(t, e)))
    out.append(float(state.margin))
  np.testing.assert_allclose(out, [0.3, 0.3, 0.4, 0.4], rtol=1e-6)
  assert int(state.epoch) == 4


def test_vmap_over_states():
  """Schedules work on batched states (vmap), e.g. several runs side by side."""
  schedule = margins.controller(0.5, target=0.5, gain=1.0, min_margin=0.0,
                                max_margin=1.0, deadband=0.0)
  states = jax.vmap(lambda _: schedule.init())(jnp.arange(3))
  stats = _Stats(jnp.array([10.0, 10.0, 0.0]), jnp.array([10.0, 0.0, 0.0]))
  states = jax.vmap(schedule.accumulate)(states, stats)
  states = jax.vmap(schedule.update)(states)
  # shares 1.0, 0.0, empty: 0.5 + 0.5, 0.5 - 0.5, unchanged.
  np.testing.assert_allclose(states.margin, [1.0, 0.0, 0.5], rtol=1e-6)


# ------------------------------------------------------- schedules built from a config


def _config(num_epochs: int = 10, **fields):
  """A full tsm config whose ``margin`` section has ``fields`` (types unchecked)."""
  values = config_lib.default_config().to_dict()
  values["margin"].update(fields)
  values["train"]["epochs"] = num_epochs
  return ml_collections.ConfigDict(values)


def _build(cfg):
  return config_lib.build_schedule(cfg, steps_per_epoch=1)


def test_default_config_builds_every_schedule():
  assert config_lib.default_config().margin.schedule in margins.SCHEDULES
  for name in margins.SCHEDULES:
    fields = {"schedule": name}
    if name == "stepwise":
      fields["boundaries"] = (2,)
    config_lib.check_config(_config(**fields))
    schedule = _build(_config(**fields))
    state = schedule.update(schedule.accumulate(schedule.init(), _Stats(4.0, 4.0)))
    assert np.isfinite(float(state.margin))


@pytest.mark.parametrize("fields,constructed", [
    ({"schedule": "constant", "initial_margin": 0.4}, margins.constant(0.4)),
    ({"schedule": "linear", "initial_margin": 0.2, "final_margin": 1.0},
     margins.linear(0.2, 1.0, 4)),
    ({"schedule": "exponential", "initial_margin": 0.2, "final_margin": 1.0},
     margins.exponential(0.2, 1.0, 4)),
    ({"schedule": "stepwise", "boundaries": (1, 3), "values": (0.4, 0.6)},
     margins.stepwise(0.2, (1, 3), values=(0.4, 0.6))),
    ({"schedule": "stepwise", "boundaries": (2,), "increment": 0.3},
     margins.stepwise(0.2, (2,), increment=0.3)),
    ({"schedule": "dams", "threshold": 0.5, "increment": 0.1, "max_margin": 0.35},
     margins.dams(0.2, 0.5, 0.1, 0.35)),
    ({"schedule": "controller", "target": 0.5, "gain": 1.0, "max_margin": None},
     margins.controller(0.2, 0.5, 1.0, None, 2.0, 0.02)),
    ({"schedule": "controller", "target": 0.9, "min_margin": 0.0},
     margins.controller(0.2, 0.9, 0.5, 0.0, 2.0, 0.02)),
], ids=lambda x: x["schedule"] if isinstance(x, dict) else "")
def test_config_builds_the_constructed_schedule(fields, constructed):
  script = [[(4, 4)], [(4, 1)], [(4, 4)], [(4, 4)], [(4, 3)]]
  built = _build(_config(num_epochs=4, **fields))
  expected, _ = _run_eager(constructed, script, constructed.accumulate, constructed.update)
  out, _ = _run_eager(built, script, built.accumulate, built.update)
  np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("fields,num_epochs,match", [
    ({"schedule": "cosine"}, 10, r"margin\.schedule.*constant"),
    ({"initial_margin": -0.1}, 10, r"margin\.initial_margin .*>= 0"),
    ({"schedule": "dams", "threshold": 1.5}, 10, r"margin\.threshold .*\[0, 1\]"),
    ({"schedule": "dams", "threshold": -0.1}, 10, r"margin\.threshold"),
    ({"schedule": "dams", "increment": -0.05}, 10, r"margin\.increment"),
    ({"schedule": "dams", "max_margin": 0.1}, 10, r"margin\.max_margin .*initial_margin"),
    ({"schedule": "controller", "target": 2.0}, 10, r"margin\.target"),
    ({"schedule": "controller", "gain": -1.0}, 10, r"margin\.gain"),
    ({"schedule": "controller", "min_margin": 0.5}, 10, r"margin\.initial_margin .*bounds"),
    ({"schedule": "controller", "min_margin": 0.5, "max_margin": 0.4,
      "initial_margin": 0.45}, 10, r"margin\.max_margin .*min_margin"),
    ({"schedule": "controller", "deadband": 1.0}, 10, r"margin\.deadband"),
    ({"schedule": "exponential", "initial_margin": 0.0}, 10, r"margin\.initial_margin .*> 0"),
    ({"schedule": "linear", "final_margin": -1.0}, 10, r"margin\.final_margin"),
    ({"schedule": "linear"}, 0, r"train\.epochs"),
    ({"schedule": "stepwise"}, 10, r"margin\.boundaries"),
    ({"schedule": "stepwise", "boundaries": (3, 2)}, 10, r"margin\.boundaries"),
    ({"schedule": "stepwise", "boundaries": (0, 2)}, 10, r"margin\.boundaries"),
    ({"schedule": "stepwise", "boundaries": (1, 2), "values": (0.3,)}, 10,
     r"margin\.values .*one margin per boundary"),
    ({"schedule": "stepwise", "boundaries": (1,), "values": (-0.3,)}, 10,
     r"margin\.values\[0\]"),
    ({"schedule": "stepwise", "boundaries": (1, 2), "increment": -0.15}, 10,
     r"margin\.increment"),
    ({"initial_margin": "big"}, 10, r"margin\.initial_margin .*number"),
])
def test_config_errors_name_the_margin_field(fields, num_epochs, match):
  with pytest.raises(config_lib.ConfigError, match=match) as info:
    config_lib.check_config(_config(num_epochs, **fields))
  assert "\n" not in str(info.value)


def test_config_unknown_margin_field():
  with pytest.raises(config_lib.ConfigError,
                     match=r"margin\.treshold is not a margin field"):
    config_lib.check_config(_config(schedule="dams", treshold=0.9))



@pytest.mark.parametrize("make,match", [
    (lambda: margins.constant(-1.0), r"^margin must be"),
    (lambda: margins.linear(0.2, 1.0, 2.5), r"^num_epochs"),
    (lambda: margins.stepwise(0.2, (2,)), r"exactly one of values and increment"),
    (lambda: margins.stepwise(0.2, (2,), values=(0.3,), increment=0.1),
     r"exactly one of values and increment"),
    (lambda: margins.dams(threshold=float("nan")), r"^threshold"),
])
def test_constructor_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


# ----------------------------------------------------------------------------- compilation


_COMPILE_SCHEDULES = [
    ("constant", margins.constant(0.2)),
    ("linear", margins.linear(0.2, 1.0, 3)),
    ("exponential", margins.exponential(0.2, 1.0, 3)),
    ("stepwise", margins.stepwise(0.2, (1, 2), values=(0.4, 0.8))),
    ("dams", margins.dams(0.2, threshold=0.0, increment=0.1)),
    ("controller", margins.controller(0.2, target=0.0, gain=0.5, deadband=0.0)),
]


@pytest.mark.parametrize("name,schedule", _COMPILE_SCHEDULES,
                         ids=[n for n, _ in _COMPILE_SCHEDULES])
def test_changing_margin_never_recompiles(name, schedule):
  """The margin is a traced argument, so a new margin never recompiles.

  Compilations are counted three ways: a Python side effect in the traced function (runs
  once per trace), the jitted function's executable cache size, and JAX's backend-compile
  monitoring events for this function. A change of batch shape is the positive control
  showing that the counters do see a recompilation.
  """
  from tsm import distances, losses  # pylint: disable=g-import-not-at-top

  traces = [0]

  def margin_step(state, weights, inputs, labels):
    traces[0] += 1  # runs only while tracing

    def loss_fn(w):
      embeddings = distances.l2_normalize(inputs @ w)
      return losses.triplet_margin_loss(embeddings, labels, state.margin)

    (loss, stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(weights)
    state = schedule.accumulate(state, stats)
    state = schedule.update(state)
    return state, loss, grad

  margin_step.__name__ = f"margin_step_{name}"
  step = jax.jit(margin_step)
  compiles = []

  def listener(event, duration, **kwargs):
    del duration
    if (event == "/jax/core/compile/backend_compile_duration"
        and kwargs.get("fun_name") == f"jit({margin_step.__name__})"):
      compiles.append(event)

  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  inputs = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3], jnp.int32)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state = schedule.init()
    seen = []
    for _ in range(3):  # margins produced by the schedule itself
      seen.append(float(state.margin))
      state, loss, grad = step(state, weights, inputs, labels)
      assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    for margin in (0.0, 0.7, 1.5):  # margins set from outside
      state = state._replace(margin=jnp.asarray(margin, jnp.float32))
      seen.append(margin)
      state, loss, _ = step(state, weights, inputs, labels)
    assert len(set(np.round(seen, 6))) >= 4
    assert traces[0] == 1
    assert step._cache_size() == 1  # pylint: disable=protected-access
    persistent_cache = bool(jax.config.jax_compilation_cache_dir)
    assert len(compiles) == 1 or (persistent_cache and len(compiles) <= 1)

    if name == "dams":
      # Positive control: a new batch shape does recompile, and the counters see it.
      step(state, weights, inputs[:6], labels[:6])
      assert traces[0] == 2
      assert step._cache_size() == 2  # pylint: disable=protected-access
      assert len(compiles) == 2 or persistent_cache
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("schedule,kwargs,argument", [
    ("dams", {"initial_margin": 0.2, "threshold": 1.5}, "threshold"),
    ("dams", {"initial_margin": 0.5, "max_margin": 0.4}, "max_margin"),
    ("linear", {"initial_margin": 0.2, "final_margin": -1.0, "num_epochs": 3},
     "final_margin"),
    ("exponential", {"initial_margin": 0.0, "final_margin": 1.0, "num_epochs": 3},
     "initial_margin"),
    ("stepwise", {"initial_margin": 0.2, "boundaries": (3, 2), "increment": 0.1},
     "boundaries"),
    ("controller", {"initial_margin": 0.1, "min_margin": 0.2}, "initial_margin"),
    ("constant", {"margin": float("nan")}, "margin"),
])
def test_check_schedule_raises_what_the_constructor_raises(schedule, kwargs, argument):
  """check_schedule checks a schedule's arguments without building it, with the
  constructor's own one-line message."""
  with pytest.raises(ValueError) as checked:
    margins.check_schedule(schedule, **kwargs)
  with pytest.raises(ValueError) as built:
    getattr(margins, schedule)(**kwargs)
  assert str(checked.value) == str(built.value)
  assert str(checked.value).startswith(argument + " ") and "\n" not in str(checked.value)


def test_check_schedule_accepts_valid_arguments_and_names_unknown_schedules():
  margins.check_schedule("stepwise", initial_margin=0.2, boundaries=(2, 4),
                         values=(0.4, 0.6))
  margins.check_schedule("controller")
  with pytest.raises(ValueError, match="^schedule='cosine' is unknown"):
    margins.check_schedule("cosine")
