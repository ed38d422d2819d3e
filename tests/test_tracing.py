"""The user's `tf.function` step is traced once, slots and all.

Slots are created inside the first call of the user's step. TensorFlow
traces a function a second time when variables appear in its first trace,
and AutoGraph would convert every function of the step while tracing it;
both would multiply what a user waits on before training starts (see
`benchmarks/benchmark_first_step.py`). These tests check the trace count and
that the numbers stay Keras's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import keras_reference as ref

CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "featured": dict(learning_rate=1.0, weight_decay=1e-2, global_clipnorm=1.0,
                     use_ema=True, ema_overwrite_frequency=3),
    "accumulation": dict(learning_rate=1.0, gradient_accumulation_steps=2,
                         clipnorm=0.5),
}


def _train_in_user_step(optimizer, variables, steps, jit_compile=False):
  """A user's step: autograph on (the default), no `build()` beforehand."""

  @tf.function(jit_compile=jit_compile)
  def step(i):
    with tf.GradientTape() as tape:
      loss = ref.loss_fn(variables, i)
    grads = tape.gradient(loss, variables)
    optimizer.apply(grads, variables)

  for i in range(steps):
    step(tf.constant(i, tf.int64))
  return step


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("jit_compile", [False, True], ids=["function", "xla"])
def test_first_call_traces_once_and_matches_keras(config, jit_compile):
  values = ref.initial_values()
  ours = [tf.Variable(v) for v in values]
  opt = tf_adadelta.Adadelta(**CONFIGS[config])
  step = _train_in_user_step(opt, ours, steps=5, jit_compile=jit_compile)
  assert step.experimental_get_tracing_count() == 1

  theirs = [keras.Variable(v) for v in values]
  keras_opt = keras.optimizers.Adadelta(**CONFIGS[config])
  _train_in_user_step(keras_opt, theirs, steps=5)
  ref.assert_close([v.numpy() for v in ours], [v.numpy() for v in theirs])
  for var, keras_var in zip(ours, theirs):
    np.testing.assert_allclose(
        opt.get_slot(var, "accumulated_grad").numpy(),
        keras_opt._accumulated_grads[keras_opt._get_variable_index(
            keras_var)].numpy(), rtol=2e-5, atol=1e-7)


def test_slots_created_in_the_step_are_plain_eager_variables(tmp_path):
  var = tf.Variable(tf.ones([3]))
  opt = tf_adadelta.Adadelta(1.0)
  _train_in_user_step(opt, [var], steps=1)
  slot = opt.get_slot(var, "accumulated_grad")
  # Created eagerly under `tf.init_scope`: readable outside the function and
  # saved by a checkpoint like any variable.
  assert slot.numpy().shape == (3,)
  assert np.all(slot.numpy() > 0)
  checkpoint = tf.train.Checkpoint(var=var, optimizer=opt)
  names = [name for name, _ in tf.train.list_variables(
      checkpoint.write(str(tmp_path / "traced")))]
  assert any("accumulated_grad" in name for name in names)


def test_a_new_variable_later_retraces_only_that_function():
  a, b = tf.Variable(tf.ones([2])), tf.Variable(tf.ones([3]))
  opt = tf_adadelta.Adadelta(1.0)
  step_a = _train_in_user_step(opt, [a], steps=2)
  step_b = _train_in_user_step(opt, [a, b], steps=2)
  assert step_a.experimental_get_tracing_count() == 1
  assert step_b.experimental_get_tracing_count() == 1
  assert opt.iterations.numpy() == 4
  assert opt.get_slot(b, "accumulated_grad").shape == (3,)


def _tf_adadelta_functions_converted_by_autograph(trace):
  """The library's functions that AutoGraph converts while `trace()` runs."""
  from tensorflow.python.autograph.impl import api  # pylint: disable=g-import-not-at-top
  convert = getattr(api, "_convert_actual", None)
  if convert is None:
    pytest.skip("This TensorFlow has no autograph.impl.api._convert_actual "
                "to observe conversions through.")
  converted = []

  def recording(entity, program_ctx):
    converted.append(f"{getattr(entity, '__module__', '')}."
                     f"{getattr(entity, '__qualname__', entity)}")
    return convert(entity, program_ctx)

  api._convert_actual = recording  # pylint: disable=protected-access
  try:
    trace()
  finally:
    api._convert_actual = convert  # pylint: disable=protected-access
  return [name for name in converted if name.startswith("tf_adadelta")]


FACES = {"module": (tf_adadelta.Adadelta, tf.Variable),
         "keras": (tf_adadelta.keras.Adadelta, keras.Variable)}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("face", sorted(FACES))
def test_autograph_converts_none_of_the_library_in_a_user_step(face, config):
  """A user's step (AutoGraph on) traces the optimizer as written.

  Converting the step and the slot creation per call made the Keras face's
  first step on ResNet-50's variables six times as long (README,
  "First step and scaling").
  """
  cls, make_variable = FACES[face]
  variables = [make_variable(v) for v in ref.initial_values()]
  optimizer = cls(**CONFIGS[config])
  converted = _tf_adadelta_functions_converted_by_autograph(
      lambda: _train_in_user_step(optimizer, variables, steps=1))
  assert converted == []
  assert optimizer.get_slot(variables[0], "accumulated_grad") is not None
