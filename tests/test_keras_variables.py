"""Keras 3 models in custom loops: Keras variables behave as `tf.Variable`s.

Keras layers create `keras.Variable`s, which wrap a `tf.Variable` and carry
`constraint` and `overwrite_with_gradient`. Each test trains a Keras model
(or Keras variables) with `tf_adadelta.Adadelta` and with
`keras.optimizers.Adadelta` the same way, and compares every number.
"""

import os
import pickle
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
ATOL = 1e-7
FEATURED = dict(learning_rate=1.0, weight_decay=0.01, global_clipnorm=1.0,
                use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "featured": FEATURED,
    "accumulation": dict(learning_rate=1.0, gradient_accumulation_steps=2,
                         clipnorm=0.5),
}


_model = vk.constrained_model
_state = state_snapshot.model_state


def _data(steps=6):
  rng = np.random.RandomState(0)
  return [(rng.randn(8, 4).astype(np.float32),
           rng.randn(8, 2).astype(np.float32)) for _ in range(steps)]


def _train(model, optimizer, mode, batches, method="apply_gradients"):
  variables = model.trainable_variables

  def step(x, y):
    with tf.GradientTape() as tape:
      loss = optimizer.scale_loss(tf.reduce_mean((model(x) - y) ** 2))
    grads = tape.gradient(loss, variables)
    if method == "apply":
      optimizer.apply(grads, variables)
    else:
      optimizer.apply_gradients(zip(grads, variables))

  if mode != "eager":
    step = tf.function(step, jit_compile=(mode == "xla"))
  for x, y in batches:
    step(tf.constant(x), tf.constant(y))
  return [v.numpy() for v in model.weights]


@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_keras_model_in_custom_loop_matches_keras(config, mode):
  """Variables and slots equal Keras's, constraints applied as Keras does."""
  batches = _data()
  expected_model, actual_model = _model(), _model()
  keras_opt = keras.optimizers.Adadelta(**CONFIGS[config])
  expected = _train(expected_model, keras_opt, mode, batches)
  ours = tf_adadelta.Adadelta(**CONFIGS[config])
  actual = _train(actual_model, ours, mode, batches, method="apply")
  ref.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
  assert int(ours.iterations.numpy()) == int(keras_opt.iterations.numpy())
  for i, variable in enumerate(actual_model.trainable_variables):
    np.testing.assert_allclose(
        ours.get_slot(variable, "accumulated_grad").numpy(),
        keras_opt._accumulated_grads[i].numpy(), rtol=RTOL, atol=ATOL)  # pylint: disable=protected-access
  # The constraints held: the first kernel is non-negative.
  assert (actual_model.layers[0].kernel.numpy() >= 0).all()


def test_get_slot_accepts_the_keras_variable_and_its_value():
  model = _model()
  optimizer = tf_adadelta.Adadelta(1.0)
  _train(model, optimizer, "function", _data(1))
  for variable in model.trainable_variables:
    for name in optimizer.get_slot_names():
      assert optimizer.get_slot(variable, name) is optimizer.get_slot(
          variable.value, name)


@pytest.mark.parametrize("mode", ref.MODES)
def test_mixed_tf_and_keras_variables_match_keras(mode):
  values = ref.initial_values()
  config = dict(learning_rate=1.0, weight_decay=0.05, use_ema=True)

  def make():
    return [vk.make(vk.KINDS[i % 2], v, f"v{i}") for i, v in
            enumerate(values)]

  def run(optimizer):
    variables = make()

    def grads_fn(vs, step):
      with tf.GradientTape() as tape:
        loss = ref.loss_fn(vs, step)
      return tape.gradient(loss, vs)

    def step_fn(step):
      optimizer.apply_gradients(zip(grads_fn(variables, step), variables))

    if mode != "eager":
      step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
    for i in range(5):
      step_fn(tf.constant(i, tf.int64))
    return [v.numpy() for v in variables]

  expected = run(keras.optimizers.Adadelta(**config))
  ref.assert_close(run(tf_adadelta.Adadelta(**config)), expected)


def test_weight_decay_exclusion_and_finalize_take_keras_variables():
  batches = _data(4)
  results = []
  for optimizer in (keras.optimizers.Adadelta(**FEATURED),
                    tf_adadelta.Adadelta(**FEATURED)):
    model = _model()
    optimizer.exclude_from_weight_decay(
        var_list=[model.layers[1].kernel])
    _train(model, optimizer, "function", batches)
    optimizer.finalize_variable_values(model.trainable_variables)
    results.append([v.numpy() for v in model.weights])
  ref.assert_close(results[1], results[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", vk.KINDS)
@pytest.mark.parametrize("mode", ref.MODES)
def test_variable_constraint_is_applied_after_each_step(kind, mode):
  """`tf.Variable(constraint=...)` and Keras's `constraint`, as Keras does."""
  clip = lambda v: tf.clip_by_value(v, -0.2, 0.3)
  values = ref.initial_values()

  def run(optimizer):
    variables = [vk.make(kind, v, f"v{i}", constraint=clip)
                 for i, v in enumerate(values)]

    def step_fn(step):
      with tf.GradientTape() as tape:
        loss = ref.loss_fn(variables, step)
      optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                    variables))

    if mode != "eager":
      step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
    for i in range(4):
      step_fn(tf.constant(i, tf.int64))
    return [v.numpy() for v in variables]

  expected = run(keras.optimizers.Adadelta(learning_rate=1.0))
  actual = run(tf_adadelta.Adadelta(learning_rate=1.0))
  ref.assert_close(actual, expected)
  for value in actual:
    assert value.min() >= -0.2 and value.max() <= 0.3


def test_constraint_is_not_applied_on_micro_steps_or_skipped_steps():
  """Only a step that changes the variable projects it."""
  halve = lambda v: v * 0.5
  variable = vk.make(vk.KERAS, [1.0, 2.0], "v", constraint=halve)
  optimizer = tf_adadelta.Adadelta(1.0, gradient_accumulation_steps=2,
                                   skip_nonfinite_steps=True)
  optimizer.apply_gradients([(tf.constant([0.1, 0.2]), variable)])
  np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])  # micro-step
  optimizer.apply_gradients([(tf.constant([np.nan, 0.2]), variable)])
  np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])  # skipped
  optimizer.apply_gradients([(tf.constant([0.3, 0.1]), variable)])
  unconstrained = tf.Variable([1.0, 2.0])
  reference = tf_adadelta.Adadelta(1.0, gradient_accumulation_steps=2)
  for grad in ([0.1, 0.2], [0.3, 0.1]):
    reference.apply_gradients([(tf.constant(grad), unconstrained)])
  np.testing.assert_allclose(variable.numpy(), 0.5 * unconstrained.numpy(),
                             rtol=1e-6)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_overwrite_with_gradient_matches_keras(accumulation):
  """float8 state variables are assigned their gradient, as in Keras."""
  def run(optimizer):
    scale = keras.Variable(np.ones([3], np.float32), name="scale")
    scale.overwrite_with_gradient = True
    weight = keras.Variable(np.array([0.5, -1.0, 2.0], np.float32),
                            name="weight")
    rng = np.random.RandomState(4)
    for _ in range(5):
      grads = [tf.constant(rng.rand(3).astype(np.float32)),
               tf.constant(rng.randn(3).astype(np.float32))]
      optimizer.apply_gradients(zip(grads, [scale, weight]))
    return [scale.numpy(), weight.numpy()]

  config = dict(learning_rate=1.0, gradient_accumulation_steps=accumulation,
                loss_scale_factor=4.0, clipnorm=0.1, use_ema=True)
  expected = run(keras.optimizers.Adadelta(**config))
  actual = run(tf_adadelta.Adadelta(**config))
  ref.assert_close(actual, expected)


def test_lazy_embedding_leaves_untouched_rows_bit_for_bit():
  keras.utils.set_random_seed(5)
  model = keras.Sequential([keras.Input((3,), dtype="int32"),
                            keras.layers.Embedding(50, 4),
                            keras.layers.Flatten(), keras.layers.Dense(1)])
  optimizer = tf_adadelta.Adadelta(1.0, sparse_updates="lazy",
                                   weight_decay=0.1)
  table = model.layers[0].embeddings
  optimizer.build(model.trainable_variables)
  before = {name: optimizer.get_slot(table, name).numpy().copy()
            for name in optimizer.get_slot_names()}
  before["table"] = table.numpy().copy()
  ids = np.array([[1, 4, 4], [7, 1, 9]], np.int32)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(x) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  step(tf.constant(ids))
  step(tf.constant(ids))
  after = {name: optimizer.get_slot(table, name).numpy()
           for name in optimizer.get_slot_names()}
  after["table"] = table.numpy()
  touched = np.unique(ids)
  untouched = np.setdiff1d(np.arange(50), touched)
  for name in before:
    assert before[name][untouched].tobytes() == after[name][untouched].tobytes()
    assert not np.array_equal(before[name][touched], after[name][touched])


@pytest.mark.parametrize("face", ["module", "keras"])
def test_pickle_carries_the_config(face):
  cls = tf_adadelta.Adadelta if face == "module" else tf_adadelta.keras.Adadelta
  schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
  optimizer = cls(schedule, rho=0.9, weight_decay=0.01, use_ema=True,
                  gradient_accumulation_steps=3, name="sweep",
                  sparse_updates="lazy", skip_nonfinite_steps=True)
  restored = pickle.loads(pickle.dumps(optimizer))
  assert type(restored) is cls
  config, restored_config = optimizer.get_config(), restored.get_config()
  assert restored_config == config
  assert restored.name == "sweep"


def _checkpoint_run(tmp_path, kind_of_restore):
  """Trains, checkpoints, trains on; resumes from the checkpoint."""
  batches = _data(8)
  model, optimizer = _model(), tf_adadelta.Adadelta(**FEATURED)
  step = _step_fn(model, optimizer)
  for x, y in batches[:4]:
    step(x, y)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, optimizer=optimizer), str(tmp_path),
      max_to_keep=2)
  manager.save()
  saved = _state(model, optimizer)
  for x, y in batches[4:]:
    step(x, y)
  expected = _state(model, optimizer)

  if kind_of_restore == "live":
    # Back to the saved values in the same objects.
    manager.checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    for key, value in saved.items():
      np.testing.assert_array_equal(_state(model, optimizer)[key], value,
                                    err_msg=key)
    resumed_model, resumed = model, optimizer
  else:
    resumed_model, resumed = _model(seed=9), tf_adadelta.Adadelta(**FEATURED)
    status = tf.train.Checkpoint(model=resumed_model,
                                 optimizer=resumed).restore(
                                     manager.latest_checkpoint)
    assert not resumed.built
  resumed_step = _step_fn(resumed_model, resumed)
  for x, y in batches[4:]:
    resumed_step(x, y)
  if kind_of_restore == "deferred":
    status.assert_consumed()
  actual = _state(resumed_model, resumed)
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=1e-6, atol=1e-7,
                               err_msg=key)


def _step_fn(model, optimizer):
  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  return step


@pytest.mark.parametrize("kind_of_restore", ["live", "deferred"])
def test_checkpoint_of_keras_model_resumes_exactly(tmp_path, kind_of_restore):
  _checkpoint_run(tmp_path, kind_of_restore)
