"""Keras 3's own optimizer tests, translated to both faces of this library.

From `keras/src/optimizers/adadelta_test.py`, `optimizer_test.py` and
`backend/tensorflow/optimizer_distribute_test.py` (Keras 3.15): the same
scenarios and golden numbers, run with `tf_adadelta.Adadelta`
and `tf_adadelta.keras.Adadelta`. Where Keras's test uses another optimizer
(SGD, Adam) the scenario runs with `keras.optimizers.Adadelta` as the
reference. Tests that read Keras's private attributes use the public
`get_slot` instead; those that cannot apply are listed in the README
("Differences from Keras").
"""

import importlib
import os
import unittest
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import distributed_model as dm

FACES = {"module": tf_adadelta.Adadelta, "keras": tf_adadelta.keras.Adadelta}


@pytest.fixture(params=sorted(FACES))
def face(request):
  return FACES[request.param]


def _var(value, name=None):
  return keras.Variable(np.asarray(value, np.float32), name=name)


# --- adadelta_test.py ---------------------------------------------------------


def test_config(face):
  optimizer = face(learning_rate=0.5, rho=0.9, epsilon=1e-5)
  config = optimizer.get_config()
  restored = face.from_config(config)
  assert restored.get_config() == config
  assert config["rho"] == 0.9 and config["epsilon"] == 1e-5
  if face is tf_adadelta.keras.Adadelta:
    revived = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer))
    assert type(revived) is face and revived.get_config() == config


def test_single_step(face):
  optimizer = face(learning_rate=0.5)
  grads = tf.constant([1.0, 6.0, 7.0, 2.0])
  variable = _var([1.0, 2.0, 3.0, 4.0])
  optimizer.apply_gradients(zip([grads], [variable]))
  np.testing.assert_allclose(variable.numpy(), [0.9993, 1.9993, 2.9993, 3.9993],
                             rtol=1e-4, atol=1e-4)


def test_weight_decay(face):
  grads = tf.zeros(())
  var1, var2, var3 = _var(2.0), _var(2.0, name="exclude"), _var(2.0)
  optimizer_1 = face(learning_rate=1.0, weight_decay=0.004)
  optimizer_1.apply_gradients(zip([grads], [var1]))
  optimizer_2 = face(learning_rate=1.0, weight_decay=0.004)
  optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
  optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))
  optimizer_3 = face(learning_rate=1.0, weight_decay=0.004)
  optimizer_3.exclude_from_weight_decay(var_list=[var3])
  optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))
  assert float(var1.numpy()) == pytest.approx(1.9760959, abs=1e-6)
  assert float(var2.numpy()) == pytest.approx(2.0, abs=1e-6)
  assert float(var3.numpy()) == pytest.approx(2.0, abs=1e-6)


def test_correctness_with_golden(face):
  optimizer = face(learning_rate=1.0, rho=0.8, epsilon=1e-6)
  x = keras.Variable(np.ones([10]))
  grads = tf.range(0.1, 1.1, 0.1, dtype=x.dtype)[:10]
  first_grads = tf.fill((10,), tf.constant(0.01, x.dtype))
  golden = np.tile([[0.9978], [0.9947], [0.9915], [0.9882], [0.9849]],
                   (1, 10))
  optimizer.apply_gradients(zip([first_grads], [x]))
  for i in range(5):
    np.testing.assert_allclose(x.numpy(), golden[i], rtol=5e-4, atol=5e-4)
    optimizer.apply_gradients(zip([grads], [x]))


@pytest.mark.parametrize("clip,clipped", [(dict(clipnorm=1), 2**0.5 / 2),
                                          (dict(clipvalue=1), 1.0)])
def test_clip(face, clip, clipped):
  """Keras checks `_clip_gradients`; here the accumulator it feeds."""
  variable = _var([0.0, 0.0])
  optimizer = face(learning_rate=1.0, **clip)
  optimizer.apply_gradients([(tf.constant([100.0, 100.0]), variable)])
  np.testing.assert_allclose(
      optimizer.get_slot(variable, "accumulated_grad").numpy(),
      [0.05 * clipped**2] * 2, rtol=1e-6)


# --- optimizer_test.py --------------------------------------------------------


def _reference_and_ours(face, scenario, **config):
  return (scenario(keras.optimizers.Adadelta(**config)),
          scenario(face(**config)))


def test_iterations_counter(face):
  v = _var([[1.0, 2.0], [3.0, 4.0]])
  grads = tf.ones((2, 2))
  optimizer = face(learning_rate=1.0)
  assert int(optimizer.iterations.numpy()) == 0
  optimizer.apply_gradients([(grads, v)])
  assert int(optimizer.iterations.numpy()) == 1
  optimizer.apply_gradients([(grads, v)])
  assert int(optimizer.iterations.numpy()) == 2


def test_empty_gradients(face):
  v = _var([[3.0, 4.0], [5.0, 6.0]])
  with pytest.raises(ValueError, match="No gradients provided for any "
                     "variable"):
    face(learning_rate=1.0).apply_gradients([(None, v)])
  v2 = _var([[3.0, 4.0], [5.0, 6.0]])
  optimizer = face(learning_rate=1.0)
  with pytest.warns(UserWarning):
    optimizer.apply_gradients([(None, v), (tf.ones((2, 2)), v2)])
  np.testing.assert_array_equal(v.numpy(), [[3.0, 4.0], [5.0, 6.0]])
  assert not np.array_equal(v2.numpy(), [[3.0, 4.0], [5.0, 6.0]])


def test_ema(face):
  def scenario(optimizer):
    v = _var([[3.0, 4.0], [5.0, 6.0]])
    out = []
    for _ in range(3):
      optimizer.apply_gradients([(tf.ones((2, 2)), v)])
      out.append(v.numpy().copy())
    return out

  expected, actual = _reference_and_ours(
      face, scenario, learning_rate=1.0, use_ema=True, ema_momentum=0.9,
      ema_overwrite_frequency=3)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_ema_with_model_fit():
  x_train = np.ones((1, 1)).astype("float32")
  y_train = np.zeros((1, 1)).astype("float32")
  results = []
  for cls in (keras.optimizers.Adadelta, tf_adadelta.keras.Adadelta):
    optimizer = cls(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
        2, kernel_initializer="ones", use_bias=False)])
    model.compile(loss="mse", optimizer=optimizer, run_eagerly=True)
    model.fit(x_train, y_train, batch_size=1, epochs=2, verbose=0)
    results.append(model.trainable_variables[0].numpy())
  np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
  assert not np.allclose(results[1], 1.0)


def test_constraints_are_applied(face):
  v = _var(np.random.RandomState(0).random_sample((2, 2)) - 1.0)
  v.constraint = keras.constraints.NonNeg()
  face(learning_rate=0.0001).apply_gradients([(tf.zeros((2, 2)), v)])
  assert float(np.min(v.numpy())) == 0.0


def test_static_loss_scaling(face):
  def scenario(optimizer):
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    grads = tf.constant([[1.0, 2.0], [3.0, 4.0]]) * 1024.0
    optimizer.apply_gradients([(grads, v)])
    assert float(optimizer.scale_loss(1.0)) == 1024.0
    return v.numpy()

  expected, actual = _reference_and_ours(face, scenario, learning_rate=1.0,
                                         loss_scale_factor=1024.0)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)
  unscaled = _var([[1.0, 2.0], [3.0, 4.0]])
  face(learning_rate=1.0).apply_gradients(
      [(tf.constant([[1.0, 2.0], [3.0, 4.0]]), unscaled)])
  np.testing.assert_allclose(actual, unscaled.numpy(), rtol=1e-6)


def test_set_weights():
  x = _var([[1.0, 2.0], [3.0, 4.0]])
  optimizer_1 = tf_adadelta.keras.Adadelta(1.0)
  optimizer_1.apply_gradients(zip([tf.constant([[1.0, 2.0], [3.0, 4.0]])],
                                  [x]))
  optimizer_2 = tf_adadelta.keras.Adadelta(1.0)
  with pytest.raises(ValueError, match="You are calling"):
    optimizer_2.set_weights(optimizer_1.variables)
  optimizer_2.build([x])
  optimizer_2.set_weights(optimizer_1.variables)
  for a, b in zip(optimizer_1.variables, optimizer_2.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert float(np.abs(optimizer_2.get_slot(x, "accumulated_grad")
                      .numpy()).sum()) > 0


def test_gradient_accumulation(face):
  def scenario(optimizer):
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    out = []
    for step in range(6):
      optimizer.apply_gradients([(tf.ones((2, 2)) * (step + 1), v)])
      out.append((v.numpy().copy(), int(optimizer.iterations.numpy())))
    return out

  expected, actual = _reference_and_ours(
      face, scenario, learning_rate=1.0, gradient_accumulation_steps=3)
  for (a, a_it), (e, e_it) in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-6)
    assert a_it == e_it
  assert [it for _, it in actual] == [0, 0, 1, 1, 1, 2]


def test_tf_checkpointing(face, tmp_path):
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
  optimizer = face(learning_rate=1.0)
  rng = np.random.RandomState(0)
  x, y = rng.random_sample((1, 2)), rng.random_sample((1, 2))

  @tf.function
  def train_on_batch():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  train_on_batch()
  ref_pred = model.predict(x, verbose=0)
  checkpoint = tf.train.Checkpoint(model, optimizer=optimizer)
  save_path = checkpoint.save(os.path.join(tmp_path, "tf_ckpt"))
  saved_slots = {
      name: optimizer.get_slot(model.trainable_variables[0], name).numpy()
      for name in ("accumulated_grad", "accumulated_delta_var")}
  train_on_batch()
  assert not np.allclose(model.predict(x, verbose=0), ref_pred, atol=1e-3)
  checkpoint.restore(save_path)
  np.testing.assert_allclose(model.predict(x, verbose=0), ref_pred, atol=1e-5)
  # The optimizer's state is back too.
  assert int(optimizer.iterations.numpy()) == 1
  for name, value in saved_slots.items():
    np.testing.assert_array_equal(
        optimizer.get_slot(model.trainable_variables[0], name).numpy(), value)


def test_callable_learning_rate(face):
  def scenario(optimizer):
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    optimizer.apply_gradients([(tf.ones((2, 2)), v)])
    assert int(optimizer.iterations.numpy()) == 1
    return v.numpy()

  expected, actual = _reference_and_ours(face, scenario,
                                         learning_rate=lambda: 0.1)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_overwrite_with_gradient(face, accumulation):
  def scenario(optimizer):
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    v.overwrite_with_gradient = True
    v2 = _var([[1.0, 2.0], [3.0, 4.0]])
    out = []
    for value in (1.0, 2.0, 1.0):
      grad = tf.fill((2, 2), value)
      optimizer.apply_gradients([(grad, v), (grad, v2)])
      out.append([v.numpy().copy(), v2.numpy().copy()])
    return out

  expected, actual = _reference_and_ours(
      face, scenario, learning_rate=1.0,
      gradient_accumulation_steps=accumulation)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)
  if accumulation:
    np.testing.assert_array_equal(actual[1][0], [[2.0, 2.0], [2.0, 2.0]])
  else:
    np.testing.assert_array_equal(actual[0][0], [[1.0, 1.0], [1.0, 1.0]])


def test_gradient_accumulation_with_weight_decay(face):
  optimizer1 = face(learning_rate=1.0, weight_decay=0.05)
  optimizer3 = face(learning_rate=1.0, weight_decay=0.05,
                    gradient_accumulation_steps=3)
  variable1 = _var([[0.9], [0.5]])
  variable3 = _var([[0.9], [0.5]])
  rng = np.random.RandomState(0)
  for _ in range(8):
    grads3 = rng.random_sample([3, 2, 1]).astype("float32")
    optimizer1.apply_gradients([(tf.constant(grads3.mean(axis=0)),
                                 variable1)])
    for batch in range(3):
      optimizer3.apply_gradients([(tf.constant(grads3[batch]), variable3)])
  np.testing.assert_allclose(variable1.numpy(), variable3.numpy(), rtol=1e-5)


def test_setting_lr_to_schedule_untracks_lr_var(face):
  optimizer = face(learning_rate=0.001)
  count = len(optimizer.variables)
  optimizer.learning_rate = keras.optimizers.schedules.PolynomialDecay(
      0.001, 4)
  assert len(optimizer.variables) == count - 1


def test_mixed_with_tf_variables(face):
  v = _var([[1.0, 2.0], [3.0, 4.0]])
  tf_v = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
  optimizer = face(learning_rate=1.0)
  optimizer.apply_gradients([(tf.ones((2, 2)), v), (tf.ones((2, 2)), tf_v)])
  assert int(optimizer.iterations.numpy()) == 1
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    optimizer.apply_gradients([(tf.ones((2, 2)), v), (None, tf_v)])
  assert any("Gradients do not exist for variables" in str(w.message)
             for w in caught)
  assert int(optimizer.iterations.numpy()) == 2


def test_optimizer_auto_naming():
  """The Keras face is named as Keras names its Adadelta, uniquely."""
  names = [tf_adadelta.keras.Adadelta().name, keras.optimizers.Adadelta().name,
           tf_adadelta.keras.Adadelta().name]
  assert len(set(names)) == 3
  assert all(n.startswith("adadelta") for n in names)
  assert tf_adadelta.keras.Adadelta(name="mine").name == "mine"
  # The module face's name is its `tf.Module` name, not uniquified.
  assert tf_adadelta.Adadelta().name == "adadelta"


# --- backend/tensorflow/optimizer_distribute_test.py -------------------------
# Keras's scenarios under MirroredStrategy on two logical CPUs, each replica
# given the same gradient: the reference is Keras's Adadelta on one device
# given the replicas' sum.


def _one_device(scenario, grad_scale=2.0, **config):
  return scenario(keras.optimizers.Adadelta(**config), grad_scale)


def _mirrored_and_one_device(face, scenario, config, steps=3):
  """Runs `steps` steps of `scenario` both ways; returns what each step saw.

  `scenario(optimizer, grad_scale)` returns `step(run)`, which applies one
  update through `run` (`strategy.run`, or a plain call) and returns values.
  """
  strategy = dm.mirrored_strategy()
  with strategy.scope():
    step = scenario(face(**config))
    actual = [step(strategy.run) for _ in range(steps)]
  step = _one_device(scenario, **config)
  expected = [step(lambda update: update()) for _ in range(steps)]
  return actual, expected


def test_distribute_single_step(face):
  def scenario(optimizer, grad_scale=1.0):
    variable = tf.Variable([1.0, 2.0, 3.0, 4.0])
    grads = tf.constant([1.0, 6.0, 7.0, 2.0]) * grad_scale
    return variable, lambda: optimizer.apply_gradients([(grads, variable)])

  strategy = dm.mirrored_strategy()
  with strategy.scope():
    variable, update = scenario(face(learning_rate=0.5))
    strategy.run(update)
  expected, update = _one_device(scenario, learning_rate=0.5)
  update()
  np.testing.assert_allclose(variable.numpy(), expected.numpy(), rtol=1e-6)
  np.testing.assert_allclose(variable.numpy(), [0.9993, 1.9993, 2.9993, 3.9993],
                             rtol=1e-4, atol=1e-4)


def test_distribute_weight_decay_excluded_inside_strategy_run(face):
  strategy = dm.mirrored_strategy()
  with strategy.scope():
    grads = tf.zeros(())
    var1, var2, var3 = _var(2.0), _var(3.0, name="exclude"), _var(4.0)
    optimizer_1 = face(learning_rate=1.0, weight_decay=0.004)
    strategy.run(lambda: optimizer_1.apply_gradients(zip([grads], [var1])))
    optimizer_2 = face(learning_rate=1.0, weight_decay=0.004)

    def opt2_run():
      optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
      optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))

    strategy.run(opt2_run)
    optimizer_3 = face(learning_rate=1.0, weight_decay=0.004)

    def opt3_run():
      optimizer_3.exclude_from_weight_decay(var_list=[var3])
      optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))

    strategy.run(opt3_run)
  assert float(var1.numpy()) == pytest.approx(1.9760959, abs=1e-6)
  assert float(var2.numpy()) == 3.0
  assert float(var3.numpy()) == 4.0


def _averages(optimizer, variable):
  if isinstance(optimizer, keras.optimizers.Optimizer):
    return optimizer._model_variables_moving_average[0].numpy()  # pylint: disable=protected-access
  return optimizer.get_slot(variable, "average").numpy()


def test_distribute_ema(face):
  config = dict(learning_rate=1.0, use_ema=True, ema_momentum=0.9,
                ema_overwrite_frequency=3)

  def scenario(optimizer, grad_scale=1.0):
    v = _var([[3.0, 4.0], [5.0, 6.0]])
    grads = tf.ones((2, 2)) * grad_scale

    def step(run):
      run(lambda: optimizer.apply_gradients([(grads, v)]))
      return v.numpy().copy(), _averages(optimizer, v)

    return step

  actual, expected = _mirrored_and_one_device(face, scenario, config)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)
  # Keras's test: the third step overwrote the variable with its average.
  np.testing.assert_array_equal(actual[2][0], actual[2][1])


def _accumulator(optimizer, variable):
  if isinstance(optimizer, keras.optimizers.Optimizer):
    return optimizer._accumulated_gradients[0].numpy()  # pylint: disable=protected-access
  return optimizer.get_slot(variable, "gradient_accumulator").numpy()


def test_distribute_gradient_accumulation(face):
  """Each replica accumulates its own gradient; the step applies their sum."""
  config = dict(learning_rate=1.0, gradient_accumulation_steps=3)

  def scenario(optimizer, grad_scale=1.0):
    v = _var([[1.0, 2.0], [3.0, 4.0]])
    grads = tf.constant([[1.0, 1.0], [2.0, 2.0]]) * grad_scale

    def step(run):
      run(lambda: optimizer.apply_gradients([(grads, v)]))
      return (v.numpy().copy(), _accumulator(optimizer, v).copy(),
              int(optimizer.iterations.numpy()))

    return step

  actual, expected = _mirrored_and_one_device(face, scenario, config)
  # Keras's golden accumulators: one replica's share, not the sum.
  golden = ([[1.0, 1.0], [2.0, 2.0]], [[2.0, 2.0], [4.0, 4.0]],
            [[0.0, 0.0], [0.0, 0.0]])
  for (v, accumulator, iterations), (e_v, e_accumulator, e_iterations), g in (
      zip(actual, expected, golden)):
    np.testing.assert_allclose(v, e_v, rtol=1e-6)
    np.testing.assert_array_equal(accumulator, g)
    np.testing.assert_array_equal(accumulator * 2.0, e_accumulator)
    assert iterations == e_iterations
  assert [iterations for _, _, iterations in actual] == [0, 0, 1]
  assert not np.array_equal(actual[2][0], [[1.0, 2.0], [3.0, 4.0]])


def test_stateless_apply_is_not_supported():
  optimizer = tf_adadelta.keras.Adadelta(learning_rate=0.5)
  variables = [_var([1.0, 2.0, 3.0, 4.0])]
  optimizer.build(variables)
  with pytest.raises(ValueError, match="not supported"):
    optimizer.stateless_apply(optimizer.variables,
                              [np.array([1.0, 6.0, 7.0, 2.0])], variables)


# Keras's `adadelta_test.py` itself, as installed with Keras, run unmodified
# except that its `Adadelta` is the Keras face.
_KERAS_ADADELTA_TEST = "keras.src.optimizers.adadelta_test"


def _keras_adadelta_test_names():
  try:
    module = importlib.import_module(_KERAS_ADADELTA_TEST)
  except ImportError:  # A Keras installed without its tests.
    return []
  return list(unittest.TestLoader().getTestCaseNames(module.AdadeltaTest))


@pytest.mark.parametrize("test_name", _keras_adadelta_test_names())
def test_keras_adadelta_test_file_passes_with_the_keras_face(monkeypatch,
                                                             test_name):
  module = importlib.import_module(_KERAS_ADADELTA_TEST)
  monkeypatch.setattr(module, "Adadelta", tf_adadelta.keras.Adadelta)
  result = unittest.TestResult()
  module.AdadeltaTest(test_name).run(result)
  assert result.testsRun == 1
  assert result.wasSuccessful(), result.failures + result.errors


def test_keras_adadelta_test_file_is_found():
  # Keras's wheels ship their tests; if a release stops, the test above
  # silently runs nothing, so say so.
  assert len(_keras_adadelta_test_names()) >= 6
