"""The public surface: slots, variables, config, learning rates, helpers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import keras_reference as ref


def test_is_a_tf_module_with_keras_defaults():
  opt = tf_adadelta.Adadelta()
  assert isinstance(opt, tf.Module)
  keras_config = keras.optimizers.Adadelta().get_config()
  config = opt.get_config()
  for key in ["learning_rate", "rho", "epsilon", "weight_decay", "clipnorm",
              "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
              "ema_overwrite_frequency", "loss_scale_factor",
              "gradient_accumulation_steps"]:
    assert config[key] == pytest.approx(keras_config[key]) if isinstance(
        keras_config[key], float) else config[key] == keras_config[key], key
  # Keras numbers later instances "adadelta_1", ...; ours keeps the name given.
  assert config["name"] == "adadelta"


def test_one_step_closed_form():
  rho, eps, lr = 0.9, 1e-6, 0.5
  opt = tf_adadelta.Adadelta(learning_rate=lr, rho=rho, epsilon=eps)
  var = tf.Variable([1.0, -2.0, 3.0], dtype=tf.float64)
  grad = np.array([0.5, -1.0, 2.0])
  opt.apply_gradients([(tf.constant(grad), var)])
  acc_g = (1 - rho) * grad**2
  delta = -np.sqrt(eps) / np.sqrt(acc_g + eps) * grad
  np.testing.assert_allclose(opt.get_slot(var, "accumulated_grad").numpy(),
                             acc_g, rtol=1e-12)
  np.testing.assert_allclose(
      opt.get_slot(var, "accumulated_delta_var").numpy(),
      (1 - rho) * delta**2, rtol=1e-12)
  np.testing.assert_allclose(var.numpy(), [1.0, -2.0, 3.0] + lr * delta,
                             rtol=1e-12)
  assert opt.iterations.numpy() == 1
  assert opt.iterations.dtype == tf.int64


def test_slots_and_variables():
  opt = tf_adadelta.Adadelta(use_ema=True, gradient_accumulation_steps=2)
  a = tf.Variable(tf.ones([2, 3]), name="a")
  b = tf.Variable(tf.ones([4], tf.float64), name="b")
  assert opt.get_slot_names() == ["accumulated_grad", "accumulated_delta_var",
                                  "average", "gradient_accumulator"]
  with pytest.raises(KeyError, match="accumulated_grad"):
    opt.get_slot(a, "accumulated_grad")
  opt.build([a, b])
  for var in (a, b):
    for name in opt.get_slot_names():
      slot = opt.get_slot(var, name)
      assert isinstance(slot, tf.Variable)
      assert slot.shape == var.shape and slot.dtype == var.dtype
      assert not slot.trainable
  ids = {id(v) for v in opt.variables}
  expected = [opt.iterations, opt.micro_iterations, opt.learning_rate] + [
      opt.get_slot(v, n) for v in (a, b) for n in opt.get_slot_names()]
  assert ids == {id(v) for v in expected}
  assert not opt.trainable_variables


def test_slots_created_lazily_inside_tf_function():
  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  var = tf.Variable([1.0, 2.0])

  @tf.function
  def step():
    opt.apply_gradients([(tf.constant([0.1, 0.2]), var)])

  step()
  step()
  assert opt.iterations.numpy() == 2
  assert opt.get_slot(var, "accumulated_grad").numpy()[1] > 0


def test_apply_with_built_variables_and_minimize_match_apply_gradients():
  values = ref.initial_values()
  expected = ref.train(tf_adadelta.Adadelta(learning_rate=1.0), "eager", 3)

  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  variables = [tf.Variable(v) for v in values]
  opt.build(variables)
  for step in range(3):
    with tf.GradientTape() as tape:
      loss = ref.loss_fn(variables, step)
    opt.apply(tape.gradient(loss, variables))
  ref.assert_close([v.numpy() for v in variables], expected, rtol=1e-7)

  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  variables = [tf.Variable(v) for v in values]
  for step in range(3):
    with tf.GradientTape() as tape:
      loss = ref.loss_fn(variables, step)
    opt.minimize(loss, variables, tape=tape)
  ref.assert_close([v.numpy() for v in variables], expected, rtol=1e-7)


def test_minimize_with_callable_loss():
  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  var = tf.Variable(3.0)
  opt.minimize(lambda: var * var, [var])
  assert var.numpy() < 3.0
  with pytest.raises(ValueError, match="tape"):
    opt.minimize(tf.constant(1.0), [var])


def test_apply_without_variables_needs_build():
  with pytest.raises(ValueError, match="built"):
    tf_adadelta.Adadelta().apply([tf.constant(1.0)])


def test_learning_rate_is_readable_and_settable():
  opt = tf_adadelta.Adadelta(learning_rate=0.5)
  assert isinstance(opt.learning_rate, tf.Variable)
  opt.learning_rate = 0.25
  assert opt.learning_rate.numpy() == pytest.approx(0.25)
  opt.learning_rate = lambda: 0.125
  assert opt.learning_rate == 0.125

  schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.5)
  opt = tf_adadelta.Adadelta(learning_rate=schedule)
  opt.apply_gradients([(tf.constant(1.0), tf.Variable(1.0))])
  assert float(opt.learning_rate) == pytest.approx(0.5)
  with pytest.raises(TypeError, match="learning_rate"):
    opt.learning_rate = 0.1

  user_variable = tf.Variable(0.3)
  opt = tf_adadelta.Adadelta(learning_rate=user_variable)
  assert opt.learning_rate is user_variable


def test_config_round_trip_and_keras_compatibility():
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [1.0, 0.1])
  opt = tf_adadelta.Adadelta(learning_rate=schedule, rho=0.9, epsilon=1e-6,
                             weight_decay=0.01, global_clipnorm=1.0,
                             use_ema=True, ema_momentum=0.9,
                             ema_overwrite_frequency=5, loss_scale_factor=2.0,
                             gradient_accumulation_steps=4, name="my_opt")
  config = opt.get_config()
  assert config["learning_rate"] == keras.optimizers.schedules.serialize(
      schedule)
  restored = tf_adadelta.Adadelta.from_config(config)
  assert restored.get_config() == config
  assert restored.name == "my_opt"

  keras_config = keras.optimizers.Adadelta(learning_rate=0.3, rho=0.8,
                                           clipvalue=0.5).get_config()
  ours = tf_adadelta.Adadelta.from_config(keras_config)
  assert ours.get_config()["learning_rate"] == pytest.approx(0.3)
  assert ours.rho == 0.8 and ours.clipvalue == 0.5


def test_exclude_from_weight_decay_matches_keras():
  def run(opt):
    kernel = tf.Variable([1.0, 2.0], name="kernel")
    bias = tf.Variable([1.0, 2.0], name="bias")
    other = tf.Variable([3.0], name="other")
    opt.exclude_from_weight_decay(var_list=[other], var_names=["bias"])
    for _ in range(3):
      grads = [tf.constant([0.1, 0.2]), tf.constant([0.1, 0.2]),
               tf.constant([0.3])]
      opt.apply_gradients(zip(grads, [kernel, bias, other]))
    return [kernel.numpy(), bias.numpy(), other.numpy()]

  expected = run(keras.optimizers.Adadelta(learning_rate=1.0,
                                            weight_decay=0.2))
  actual = run(tf_adadelta.Adadelta(learning_rate=1.0, weight_decay=0.2))
  ref.assert_close(actual, expected)
  opt = tf_adadelta.Adadelta(weight_decay=0.1)
  opt.build([tf.Variable(1.0)])
  with pytest.raises(ValueError, match="before"):
    opt.exclude_from_weight_decay(var_names=["bias"])


def test_finalize_variable_values_copies_the_average():
  values = ref.initial_values()
  opt = tf_adadelta.Adadelta(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
  keras_opt = keras.optimizers.Adadelta(learning_rate=1.0, use_ema=True,
                                        ema_momentum=0.5)
  results = []
  for optimizer in (keras_opt, opt):
    variables = [tf.Variable(v) for v in values]
    for step in range(4):
      with tf.GradientTape() as tape:
        loss = ref.loss_fn(variables, step)
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    optimizer.finalize_variable_values(variables)
    results.append([v.numpy() for v in variables])
  ref.assert_close(results[1], results[0])
  assert not np.allclose(results[1][2], values[2])


def test_scale_loss():
  assert tf_adadelta.Adadelta().scale_loss(3.0) == 3.0
  assert tf_adadelta.Adadelta(loss_scale_factor=4.0).scale_loss(3.0) == 12.0


def test_keras_model_trained_in_xla_step_loss_falls():
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "tanh"),
                            keras.layers.Dense(1)])
  x = tf.random.stateless_normal([64, 4], seed=[1, 2])
  y = tf.reduce_sum(x, axis=1, keepdims=True)
  opt = tf_adadelta.Adadelta(learning_rate=1.0)

  @tf.function(jit_compile=True)
  def train_step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  losses = [float(train_step()) for _ in range(150)]
  assert losses[-1] < 0.5 * losses[0]
  assert opt.iterations.numpy() == 150
