"""`tf_adadelta.keras.Adadelta` in `model.compile`/`model.fit`.

Each test trains the same Keras model with `keras.optimizers.Adadelta` and
with `tf_adadelta.keras.Adadelta` through `fit` (or saves, reloads and
resumes), and compares weights, slots and `iterations`.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import keras_reference as ref
from tests import state_snapshot
from tests import variable_kinds as vk

RTOL = 2e-5
ATOL = 1e-6
BATCH = 8
CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "featured": dict(learning_rate=1.0, weight_decay=0.01,
                     global_clipnorm=0.5, use_ema=True, ema_momentum=0.9,
                     ema_overwrite_frequency=3),
    "accumulation": dict(learning_rate=1.0, gradient_accumulation_steps=2,
                         clipnorm=0.5, use_ema=True, ema_momentum=0.9),
}
FIT_MODES = {
    "eager": dict(run_eagerly=True),
    "function": {},
    "xla": dict(jit_compile=True),
    "steps_per_execution": dict(steps_per_execution=3),
}
SLOTS = {"accumulated_grad": "_accumulated_grads",
         "accumulated_delta_var": "_accumulated_delta_vars"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_state = state_snapshot.model_state


def _model(seed=3):
  return vk.constrained_model(seed, units=6)


def _data(examples=48, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randn(examples, 4).astype(np.float32),
          rng.randn(examples, 2).astype(np.float32))


def _fit(model, optimizer, x, y, epochs=2, callbacks=None, compile_args=None,
         **fit_args):
  if not model.compiled:
    model.compile(optimizer=optimizer, loss="mse", **(compile_args or {}))
  return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
                   verbose=0, callbacks=callbacks, **fit_args)


def _keras_slots(optimizer, i):
  return {name: getattr(optimizer, attr)[i].numpy()
          for name, attr in SLOTS.items()}


def _assert_same_state(model, optimizer, expected_model, expected_optimizer,
                       rtol=RTOL, atol=ATOL):
  ref.assert_close([v.numpy() for v in model.weights],
                   [v.numpy() for v in expected_model.weights],
                   rtol=rtol, atol=atol)
  assert (int(optimizer.iterations.numpy()) ==
          int(expected_optimizer.iterations.numpy()))
  for i, variable in enumerate(model.trainable_variables):
    for name, expected in _keras_slots(expected_optimizer, i).items():
      np.testing.assert_allclose(optimizer.get_slot(variable, name).numpy(),
                                 expected, rtol=rtol, atol=atol,
                                 err_msg=f"{name} of {variable.path}")


def _assert_states_equal(actual, expected, rtol=1e-6, atol=1e-7):
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=rtol, atol=atol,
                               err_msg=key)


# --- Numbers ------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(FIT_MODES))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fit_matches_keras(config, mode):
  """Weights, slots and iterations equal Keras's; constraints applied."""
  x, y = _data()
  expected_model, actual_model = _model(), _model()
  keras_opt = keras.optimizers.Adadelta(**CONFIGS[config])
  ours = tf_adadelta.keras.Adadelta(**CONFIGS[config])
  _fit(expected_model, keras_opt, x, y, compile_args=FIT_MODES[mode])
  _fit(actual_model, ours, x, y, compile_args=FIT_MODES[mode])
  assert actual_model.optimizer is ours
  _assert_same_state(actual_model, ours, expected_model, keras_opt)
  assert int(ours.iterations.numpy()) > 0
  assert (actual_model.layers[0].kernel.numpy() >= 0).all()
  assert np.linalg.norm(actual_model.layers[1].bias.numpy()) <= 0.05 + 1e-6


def test_constraint_from_an_initial_value_outside_it_differs_only_on_micro_steps():
  """Documented difference: Keras also projects on accumulation micro-steps."""
  x, y = _data()

  def run(optimizer, accumulation):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg())])
    assert (model.layers[0].kernel.numpy() < 0).any()
    _fit(model, optimizer(learning_rate=1.0,
                          gradient_accumulation_steps=accumulation), x, y,
         epochs=1)
    return [v.numpy() for v in model.weights]

  # Without accumulation every step projects, in both.
  ref.assert_close(run(tf_adadelta.keras.Adadelta, None),
                   run(keras.optimizers.Adadelta, None), rtol=RTOL, atol=ATOL)
  ours = run(tf_adadelta.keras.Adadelta, 2)
  theirs = run(keras.optimizers.Adadelta, 2)
  assert (ours[0] >= 0).all() and (theirs[0] >= 0).all()
  assert not np.allclose(ours[0], theirs[0])


def test_get_slot_takes_the_models_variables_and_uses_this_librarys_names():
  x, y = _data(16)
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(1.0, use_ema=True)
  _fit(model, optimizer, x, y, epochs=1)
  assert optimizer.get_slot_names() == ["accumulated_grad",
                                        "accumulated_delta_var", "average"]
  for variable in model.trainable_variables:
    slot = optimizer.get_slot(variable, "accumulated_grad")
    assert slot is optimizer.get_slot(variable.value, "accumulated_grad")
    assert tuple(slot.shape) == tuple(variable.shape)
    assert float(np.abs(slot.numpy()).sum()) > 0
  with pytest.raises(KeyError, match="gradient_accumulator"):
    optimizer.get_slot(model.trainable_variables[0], "gradient_accumulator")


def test_finalize_variable_values_and_weight_decay_exclusion_in_fit():
  """`fit` ends with `finalize_variable_values`: weights become the averages."""
  x, y = _data()
  config = CONFIGS["featured"]
  results = []
  for cls in (keras.optimizers.Adadelta, tf_adadelta.keras.Adadelta):
    model = _model()
    optimizer = cls(**config)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    _fit(model, optimizer, x, y)
    results.append((model, optimizer))
  (expected_model, keras_opt), (model, ours) = results
  _assert_same_state(model, ours, expected_model, keras_opt)
  for variable in model.trainable_variables:
    np.testing.assert_array_equal(variable.numpy(),
                                  ours.get_slot(variable, "average").numpy())


@pytest.mark.parametrize("swap_on_epoch", [False, True])
def test_swap_ema_weights_callback_matches_keras(swap_on_epoch):
  """`keras.callbacks.SwapEMAWeights` evaluates on the averages, as Keras's.

  The callback reads Keras's `_trainable_variables` and
  `_model_variables_moving_average`: without them it raises ValueError.
  """
  x, y = _data()
  config = dict(learning_rate=1.0, weight_decay=0.01, use_ema=True,
                ema_momentum=0.9)
  runs = []
  for cls in (keras.optimizers.Adadelta, tf_adadelta.keras.Adadelta):
    model = _model()
    optimizer = cls(**config)
    history = _fit(model, optimizer, x, y, epochs=3,
                   validation_data=(x[:16], 2.0 * y[:16]),
                   callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch)])
    runs.append((model, optimizer, history.history))
  (expected_model, keras_opt, expected), (model, ours, actual) = runs
  _assert_same_state(model, ours, expected_model, keras_opt)
  np.testing.assert_allclose(actual["val_loss"], expected["val_loss"],
                             rtol=RTOL)


def test_keras_slot_lists_match_keras():
  """`_model_variables_moving_average`, `_accumulated_gradients` as Keras's."""
  config = dict(learning_rate=1.0, use_ema=True, ema_momentum=0.9,
                gradient_accumulation_steps=3)
  keras_opt = keras.optimizers.Adadelta(**config)
  ours = tf_adadelta.keras.Adadelta(**config)
  with pytest.raises(AttributeError, match="not built"):
    ours._model_variables_moving_average  # pylint: disable=pointless-statement
  pairs = []
  for optimizer in (keras_opt, ours):
    variables = [keras.Variable([[1.0, 2.0], [3.0, 4.0]]),
                 keras.Variable([0.5, -0.5])]
    grads = [tf.constant([[1.0, 1.0], [1.0, -2.0]]), tf.constant([3.0, 1.0])]
    for _ in range(4):  # One applying step, then one micro-step.
      optimizer.apply_gradients(zip(grads, variables))
    pairs.append((optimizer._model_variables_moving_average,
                  optimizer._accumulated_gradients))
  for expected, actual in zip(*pairs):
    assert len(actual) == len(expected) == 2
    for a, e in zip(actual, expected):
      np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(pairs[1][1][0].numpy(),
                                [[1.0, 1.0], [1.0, -2.0]])
  without_ema = tf_adadelta.keras.Adadelta(1.0)
  without_ema.build([keras.Variable([1.0])])
  assert not hasattr(without_ema, "_model_variables_moving_average")
  with pytest.raises(AttributeError, match="gradient_accumulation_steps"):
    without_ema._accumulated_gradients  # pylint: disable=pointless-statement


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_schedule_and_config_round_trip_in_fit(mode):
  schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 2, 0.5)
  config = dict(learning_rate=schedule, rho=0.9, weight_decay=0.01)
  ours = tf_adadelta.keras.Adadelta(**config)
  restored = tf_adadelta.keras.Adadelta.from_config(ours.get_config())
  assert restored.get_config() == ours.get_config()
  assert isinstance(restored._learning_rate,  # pylint: disable=protected-access
                    keras.optimizers.schedules.ExponentialDecay)
  x, y = _data()
  expected_model, model = _model(), _model()
  keras_opt = keras.optimizers.Adadelta(**config)
  _fit(expected_model, keras_opt, x, y, compile_args=FIT_MODES[mode])
  _fit(model, restored, x, y, compile_args=FIT_MODES[mode])
  _assert_same_state(model, restored, expected_model, keras_opt)
  # Keras's own config loads into this optimizer too.
  from_keras = tf_adadelta.keras.Adadelta.from_config(
      keras.optimizers.Adadelta(0.5, rho=0.8).get_config())
  assert from_keras.rho == 0.8
  assert float(from_keras.learning_rate.numpy()) == 0.5


# --- Learning rate callbacks --------------------------------------------------


def _lr_runs(make_callbacks, between_fits=None):
  x, y = _data()
  results = []
  for cls in (keras.optimizers.Adadelta, tf_adadelta.keras.Adadelta):
    model = _model()
    optimizer = cls(learning_rate=1.0)
    _fit(model, optimizer, x, y, epochs=3, callbacks=make_callbacks())
    if between_fits is not None:
      between_fits(optimizer)
      _fit(model, optimizer, x, y, epochs=1)
    results.append((model, optimizer))
  (expected_model, keras_opt), (model, ours) = results
  _assert_same_state(model, ours, expected_model, keras_opt)
  return keras_opt, ours


def test_learning_rate_scheduler_callback_matches_keras():
  keras_opt, ours = _lr_runs(lambda: [keras.callbacks.LearningRateScheduler(
      lambda epoch: 1.0 * 0.5 ** epoch)])
  assert float(ours.learning_rate.numpy()) == pytest.approx(0.25)
  assert float(keras_opt.learning_rate.numpy()) == pytest.approx(0.25)


def test_reduce_lr_on_plateau_matches_keras():
  # A min_delta no epoch can reach: the rate halves after every epoch.
  _, ours = _lr_runs(lambda: [keras.callbacks.ReduceLROnPlateau(
      monitor="loss", factor=0.5, patience=0, min_delta=1e9)])
  assert float(ours.learning_rate.numpy()) == pytest.approx(0.25)


def test_assigning_the_learning_rate_between_fits_takes_effect():
  def set_rate(optimizer):
    optimizer.learning_rate = 0.3

  _, ours = _lr_runs(lambda: None, between_fits=set_rate)
  assert float(ours.learning_rate.numpy()) == pytest.approx(0.3)


# --- The library's own features -----------------------------------------------


def test_lazy_embedding_in_fit_leaves_untouched_rows_bit_for_bit():
  vocab = 40
  ids = np.random.RandomState(2).randint(0, 10, size=(32, 3)).astype(np.int32)
  targets = np.random.RandomState(3).randn(32, 1).astype(np.float32)
  keras.utils.set_random_seed(5)
  model = keras.Sequential([keras.Input((3,), dtype="int32"),
                            keras.layers.Embedding(vocab, 4),
                            keras.layers.Flatten(), keras.layers.Dense(1)])
  optimizer = tf_adadelta.keras.Adadelta(1.0, sparse_updates="lazy",
                                         weight_decay=0.1)
  model.compile(optimizer=optimizer, loss="mse")
  optimizer.build(model.trainable_variables)
  table = model.layers[0].embeddings
  names = optimizer.get_slot_names()
  before = {n: optimizer.get_slot(table, n).numpy().copy() for n in names}
  before["table"] = table.numpy().copy()
  model.fit(ids, targets, batch_size=8, epochs=2, shuffle=False, verbose=0)
  after = {n: optimizer.get_slot(table, n).numpy() for n in names}
  after["table"] = table.numpy()
  touched = np.unique(ids)
  untouched = np.setdiff1d(np.arange(vocab), touched)
  for name in before:
    assert (before[name][untouched].tobytes() ==
            after[name][untouched].tobytes()), name
    assert not np.array_equal(before[name][touched], after[name][touched])
  # Keras's Adadelta decays and updates every row.
  keras.utils.set_random_seed(5)
  dense_model = keras.models.clone_model(model)
  dense_model.set_weights([before["table"]] + model.get_weights()[1:])
  dense_model.compile(optimizer=keras.optimizers.Adadelta(
      1.0, weight_decay=0.1), loss="mse")
  dense_model.fit(ids, targets, batch_size=8, epochs=1, verbose=0)
  assert not np.array_equal(dense_model.layers[0].embeddings.numpy()[untouched],
                            before["table"][untouched])


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_nonfinite_batch_in_fit_is_skipped_and_counted(mode):
  x, y = _data(24)
  x[8:16] = np.nan  # The second batch's gradients are NaN.
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(1.0, skip_nonfinite_steps=True)
  model.compile(optimizer=optimizer, loss="mse", **FIT_MODES[mode])
  model.fit(x[:8], y[:8], batch_size=BATCH, epochs=1, verbose=0)
  before = _state(model, optimizer)
  model.fit(x[8:16], y[8:16], batch_size=BATCH, epochs=1, verbose=0)
  after = _state(model, optimizer)
  for key, value in before.items():
    if key != "iterations":
      assert value.tobytes() == after[key].tobytes(), key
  assert int(optimizer.skipped_steps.numpy()) == 1
  # The next finite batch is applied as the second step.
  model.fit(x[16:], y[16:], batch_size=BATCH, epochs=1, verbose=0)
  reference_model = _model()
  _fit(reference_model, keras.optimizers.Adadelta(1.0),
       np.concatenate([x[:8], x[16:]]), np.concatenate([y[:8], y[16:]]),
       epochs=1)
  ref.assert_close([v.numpy() for v in model.weights],
                   [v.numpy() for v in reference_model.weights],
                   rtol=RTOL, atol=ATOL)


# --- State: .keras files, weights files, BackupAndRestore ---------------------

STATEFUL = dict(learning_rate=1.0, gradient_accumulation_steps=4,
                use_ema=True, ema_momentum=0.9, weight_decay=0.01)

_RESUME_IN_FRESH_PROCESS = r"""
import sys
import keras, numpy as np
import tf_adadelta
from tests import state_snapshot
path, data, out = sys.argv[1:]
model = keras.models.load_model(path)  # No custom_objects.
optimizer = model.optimizer
assert type(optimizer) is tf_adadelta.keras.Adadelta, type(optimizer)
arrays = np.load(data)
loaded_iterations = np.asarray(optimizer.iterations.numpy())
model.fit(arrays["x"], arrays["y"], batch_size=8, epochs=1, shuffle=False,
          verbose=0)
state = state_snapshot.model_state(model, optimizer)
np.savez(out, **state, **{"loaded/iterations": loaded_iterations})
"""


def test_keras_file_resumes_exactly_in_a_fresh_process(tmp_path):
  """`save` mid-accumulation, `load_model` elsewhere, continue: same numbers."""
  x, y = _data(48)
  x2, y2 = _data(40, seed=1)
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  _fit(model, optimizer, x, y, epochs=1)  # 6 calls: 2 into an accumulation.
  path = str(tmp_path / "model.keras")
  model.save(path)
  saved_iterations = int(optimizer.iterations.numpy())
  _fit(model, optimizer, x2, y2, epochs=1)
  expected = _state(model, optimizer)

  np.savez(tmp_path / "data.npz", x=x2, y=y2)
  script = tmp_path / "resume.py"
  script.write_text(_RESUME_IN_FRESH_PROCESS)
  subprocess.run([sys.executable, str(script), path,
                  str(tmp_path / "data.npz"), str(tmp_path / "state.npz")],
                 check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                 timeout=300)
  with np.load(tmp_path / "state.npz") as loaded:
    actual = dict(loaded)
  assert int(actual.pop("loaded/iterations")) == saved_iterations
  _assert_states_equal(actual, expected)


def test_load_model_in_process_restores_every_slot(tmp_path):
  x, y = _data(48)
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  _fit(model, optimizer, x, y, epochs=1)
  model.save(tmp_path / "model.keras")
  loaded = keras.models.load_model(tmp_path / "model.keras")
  assert loaded.optimizer.get_config() == optimizer.get_config()
  # Keras builds the loaded optimizer, so its slots exist before any step.
  _assert_states_equal(_state(loaded, loaded.optimizer),
                       _state(model, optimizer), rtol=0, atol=0)
  assert ([tuple(v.shape) for v in loaded.optimizer.variables] ==
          [tuple(v.shape) for v in optimizer.variables])


def test_save_weights_and_load_weights_carry_the_optimizer_state(tmp_path):
  x, y = _data(48)
  x2, y2 = _data(40, seed=1)
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  _fit(model, optimizer, x, y, epochs=1)
  path = str(tmp_path / "model.weights.h5")
  model.save_weights(path)
  _fit(model, optimizer, x2, y2, epochs=1)
  expected = _state(model, optimizer)

  resumed = _model(seed=8)
  resumed_optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  resumed.compile(optimizer=resumed_optimizer, loss="mse")
  resumed.load_weights(path)  # Before the optimizer is built.
  _fit(resumed, resumed_optimizer, x2, y2, epochs=1)
  _assert_states_equal(_state(resumed, resumed_optimizer), expected)


def test_loading_state_of_another_configuration_raises_and_changes_nothing(
    tmp_path):
  x, y = _data(16)
  model = _model()
  _fit(model, tf_adadelta.keras.Adadelta(**STATEFUL), x, y, epochs=1)
  path = str(tmp_path / "model.weights.h5")
  model.save_weights(path)

  other = _model()
  plain = tf_adadelta.keras.Adadelta(1.0)
  _fit(other, plain, x, y, epochs=1)
  before = _state(other, plain)
  with pytest.raises(ValueError, match="nothing was loaded"):
    other.load_weights(path)
  after = _state(other, plain)
  for key, value in before.items():
    if key.startswith("slot") or key == "iterations":
      np.testing.assert_array_equal(after[key], value, err_msg=key)


class _StopAtEpoch(keras.callbacks.Callback):

  def __init__(self, epoch):
    super().__init__()
    self._epoch = epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self._epoch:
      raise RuntimeError("Interrupted.")


def test_backup_and_restore_resumes_an_interrupted_fit_exactly(tmp_path):
  x, y = _data(40)  # 5 calls an epoch: accumulation crosses epochs.

  def run(backup_dir, stop_at=None):
    model = _model()
    optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
    callbacks = [keras.callbacks.BackupAndRestore(str(backup_dir))]
    if stop_at is not None:
      callbacks.append(_StopAtEpoch(stop_at))
    _fit(model, optimizer, x, y, epochs=4, callbacks=callbacks)
    return _state(model, optimizer)

  expected = run(tmp_path / "uninterrupted")
  with pytest.raises(RuntimeError, match="Interrupted"):
    run(tmp_path / "backup", stop_at=2)
  # A rerun with fresh objects, as a restarted process makes them.
  _assert_states_equal(run(tmp_path / "backup"), expected)


# --- Mixed precision ----------------------------------------------------------


@pytest.fixture
def mixed_float16():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("loss_scale_factor", [None, 8.0])
@pytest.mark.parametrize("mode", ["function", "xla"])
def test_mixed_float16_wraps_in_loss_scale_optimizer_and_matches_keras(
    mixed_float16, mode, loss_scale_factor):
  """`compile` wraps the optimizer; the wrapper unscales, the inner does not."""
  del mixed_float16
  x, y = _data()
  config = dict(learning_rate=1.0, weight_decay=0.01, global_clipnorm=0.5,
                loss_scale_factor=loss_scale_factor)
  results = []
  for cls in (keras.optimizers.Adadelta, tf_adadelta.keras.Adadelta):
    model, optimizer = _model(), cls(**config)
    _fit(model, optimizer, x, y, compile_args=FIT_MODES[mode])
    wrapper = model.optimizer
    assert isinstance(wrapper, keras.optimizers.LossScaleOptimizer)
    assert wrapper.inner_optimizer is optimizer
    assert optimizer.loss_scale_factor is None
    assert model.layers[0].kernel.dtype == "float32"
    results.append((model, optimizer, wrapper))
  (expected_model, keras_opt, keras_wrapper), (model, ours, wrapper) = results
  _assert_same_state(model, ours, expected_model, keras_opt, rtol=1e-4,
                     atol=1e-6)
  assert int(ours.iterations.numpy()) == 12
  assert (float(wrapper.dynamic_scale.numpy()) ==
          float(keras_wrapper.dynamic_scale.numpy()))


# --- Distribution -------------------------------------------------------------


def test_mirrored_fit_equals_one_device_and_keras_does_not():
  """Gradients summed before clipping; Keras clips each replica's part."""
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tests", "keras_fit_mirrored.py")],
      capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  result = json.loads(process.stdout.strip().splitlines()[-1])
  assert result["replicas"] == 2
  for config in ("clip", "featured"):
    ours = result[f"{config}/ours"]
    assert ours["max_difference"] < 1e-6, (config, ours)
    assert ours["iterations"][0] == ours["iterations"][1] > 0
    assert ours["slot_copies"] == 2 and ours["replica_gap"] == 0.0
  # Keras's global clipping per replica changes the numbers...
  assert result["clip/keras"]["max_difference"] > 1e-3
  # ...and its EMA overwrite fails under the strategy.
  assert "error" in result["featured/keras"]


def test_tf_checkpoint_of_a_compiled_model_restores_deferred(tmp_path):
  """`tf.train.Checkpoint` works with the Keras face, as with Keras's own."""
  x, y = _data(48)
  x2, y2 = _data(40, seed=1)
  model = _model()
  optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  _fit(model, optimizer, x, y, epochs=1)
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
      str(tmp_path / "ckpt"))
  _fit(model, optimizer, x2, y2, epochs=1)
  expected = _state(model, optimizer)

  resumed = _model(seed=9)
  resumed_optimizer = tf_adadelta.keras.Adadelta(**STATEFUL)
  status = tf.train.Checkpoint(model=resumed,
                               optimizer=resumed_optimizer).restore(path)
  assert not resumed_optimizer.built
  _fit(resumed, resumed_optimizer, x2, y2, epochs=1)
  status.assert_consumed()
  _assert_states_equal(_state(resumed, resumed_optimizer), expected)
