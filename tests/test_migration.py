"""`from_keras`: a run started with Keras goes on with the same numbers.

Both faces, `tf_adadelta.Adadelta.from_keras` and
`tf_adadelta.keras.Adadelta.from_keras` (in `fit` too). Reference:
`keras.optimizers.Adadelta` itself, run for all N + M steps.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta

SHAPES = [(3,), (2, 4), (), (3,)]
FACES = {"module": tf_adadelta.Adadelta, "keras": tf_adadelta.keras.Adadelta}

CONFIGS = {
    "plain": dict(learning_rate=0.7),
    "ema_overwrite": dict(learning_rate=0.5, use_ema=True, ema_momentum=0.9,
                          ema_overwrite_frequency=3),
    "accumulation_ema": dict(learning_rate=0.9, gradient_accumulation_steps=3,
                             use_ema=True, ema_momentum=0.8),
    "decay_clip_schedule": dict(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(
            0.8, decay_steps=2, decay_rate=0.7),
        weight_decay=0.05, clipnorm=0.6, rho=0.9, epsilon=1e-6),
}


def _initial_values():
  rng = np.random.RandomState(3)
  return [np.asarray(rng.randn(*shape), np.float32) for shape in SHAPES]


def _grads(variables, step):
  with tf.GradientTape() as tape:
    loss = tf.add_n([
        tf.reduce_sum(tf.sin(v * (1.0 + float(step))) * v + 0.3 * v * v)
        for v in variables])
  return tape.gradient(loss, variables)


def _run(optimizer, variables, steps, first_step=0):
  for step in range(first_step, first_step + steps):
    optimizer.apply_gradients(zip(_grads(variables, step), variables))


@pytest.mark.parametrize("copies", [False, True], ids=["same_vars", "copies"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("face", sorted(FACES))
def test_keras_then_ours_equals_keras_all_the_way(face, name, copies):
  n, m = 4, 5
  reference_vars = [tf.Variable(v) for v in _initial_values()]
  reference = keras.optimizers.Adadelta(**CONFIGS[name])
  keras_vars = [tf.Variable(v) for v in _initial_values()]
  keras_opt = keras.optimizers.Adadelta(**CONFIGS[name])
  if name == "decay_clip_schedule":
    reference.exclude_from_weight_decay(var_list=[reference_vars[2]])
    keras_opt.exclude_from_weight_decay(var_list=[keras_vars[2]])
  _run(reference, reference_vars, n + m)
  _run(keras_opt, keras_vars, n)
  ours_vars = ([tf.Variable(v.numpy()) for v in keras_vars] if copies
               else keras_vars)
  ours = FACES[face].from_keras(keras_opt, variables=ours_vars)
  assert type(ours) is FACES[face]
  _run(ours, ours_vars, m, first_step=n)

  for actual, expected in zip(ours_vars, reference_vars):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6,
                               atol=1e-7)
  assert int(ours.iterations.numpy()) == int(reference.iterations.numpy())
  if CONFIGS[name].get("use_ema"):
    for var, average in zip(ours_vars,
                            reference._model_variables_moving_average):
      np.testing.assert_allclose(ours.get_slot(var, "average").numpy(),
                                 average.numpy(), rtol=1e-6, atol=1e-7)


def test_exclusion_is_carried_over():
  # A zero gradient makes the Adadelta step zero, so only weight decay moves a
  # variable: var -= var * weight_decay * lr, here var * 0.5.
  keras_vars = [tf.Variable(v) for v in _initial_values()]
  keras_opt = keras.optimizers.Adadelta(learning_rate=1.0, weight_decay=0.5)
  keras_opt.exclude_from_weight_decay(var_list=[keras_vars[2]],
                                      var_names=["excluded_by_name"])
  named = tf.Variable([1.0, 2.0], name="excluded_by_name")
  _run(keras_opt, keras_vars + [named], 2)
  before = [v.numpy() for v in keras_vars + [named]]
  ours = tf_adadelta.Adadelta.from_keras(keras_opt,
                                         variables=keras_vars + [named])
  ours.apply_gradients((tf.zeros_like(v), v) for v in keras_vars + [named])
  after = [v.numpy() for v in keras_vars + [named]]
  for index in (0, 1, 3):
    np.testing.assert_allclose(after[index], before[index] * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(after[2], before[2])
  np.testing.assert_array_equal(after[4], before[4])


@pytest.mark.parametrize("face", sorted(FACES))
def test_accumulation_counters_map_raw_steps(face):
  variables = [tf.Variable(v) for v in _initial_values()]
  keras_opt = keras.optimizers.Adadelta(gradient_accumulation_steps=3)
  _run(keras_opt, variables, 7)
  ours = FACES[face].from_keras(keras_opt, variables=variables)
  raw = ours.micro_iterations if face == "module" else ours._iterations  # pylint: disable=protected-access
  assert int(raw.numpy()) == 7
  assert int(np.asarray(ours.iterations)) == 2 == int(keras_opt.iterations)
  for var, acc in zip(variables, keras_opt._accumulated_gradients):
    np.testing.assert_array_equal(
        ours.get_slot(var, "gradient_accumulator").numpy(), acc.numpy())


def test_unbuilt_keras_optimizer_gives_config_only():
  keras_opt = keras.optimizers.Adadelta(learning_rate=0.25, rho=0.8,
                                        epsilon=1e-5, clipvalue=0.5)
  ours = tf_adadelta.Adadelta.from_keras(keras_opt)
  assert not ours.built
  assert int(ours.iterations.numpy()) == 0
  config = ours.get_config()
  for key, value in keras_opt.get_config().items():
    if key in config:
      assert config[key] == pytest.approx(value), key


def test_loss_scale_optimizer_error_names_its_inner_optimizer():
  wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adadelta())
  with pytest.raises(TypeError, match="inner_optimizer"):
    tf_adadelta.keras.Adadelta.from_keras(wrapped)


def test_errors():
  variables = [tf.Variable(v) for v in _initial_values()]
  keras_opt = keras.optimizers.Adadelta()
  _run(keras_opt, variables, 1)
  with pytest.raises(ValueError, match="pass `variables`"):
    tf_adadelta.Adadelta.from_keras(keras_opt)
  with pytest.raises(ValueError, match="built on 4 variables"):
    tf_adadelta.Adadelta.from_keras(keras_opt, variables=variables[:3])
  with pytest.raises(ValueError, match=r"variables\[0\]"):
    tf_adadelta.Adadelta.from_keras(keras_opt,
                                    variables=variables[1:] + variables[:1])
  with pytest.raises(TypeError, match="keras.optimizers.Adadelta"):
    tf_adadelta.Adadelta.from_keras(keras.optimizers.SGD())


def test_keras_model_variables_after_fit():
  # Keras variables are accepted; the model keeps training through them.
  x = np.random.RandomState(0).rand(8, 3).astype(np.float32)
  y = np.ones((8, 2), np.float32)

  def make_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adadelta(
        learning_rate=1.0, gradient_accumulation_steps=2), loss="mse")
    return model

  reference = make_model()
  reference.fit(x, y, epochs=5, batch_size=8, verbose=0)
  model = make_model()
  model.fit(x, y, epochs=3, batch_size=8, verbose=0)
  optimizer = tf_adadelta.Adadelta.from_keras(
      model.optimizer, variables=model.trainable_variables)
  variables = [v.value for v in model.trainable_variables]
  for _ in range(2):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  for actual, expected in zip(model.trainable_variables,
                              reference.trainable_variables):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6,
                               atol=1e-7)
  assert int(optimizer.iterations.numpy()) == int(
      reference.optimizer.iterations.numpy()) == 2


@pytest.mark.parametrize("config", ["accumulation_ema", "decay_clip_schedule"])
def test_fit_with_keras_then_with_the_keras_face_equals_keras_fit(config):
  """A `fit` user switches optimizers between two `fit` calls."""
  rng = np.random.RandomState(0)
  x = rng.rand(40, 3).astype(np.float32)
  y = rng.rand(40, 2).astype(np.float32)

  def make_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adadelta(**CONFIGS[config]),
                  loss="mse")
    return model

  # 5 calls an epoch: the switch comes mid-way through an accumulation.
  fit = dict(batch_size=8, shuffle=False, verbose=0)
  reference = make_model()
  reference.fit(x, y, epochs=2, **fit)
  reference.fit(x, y, epochs=2, **fit)
  model = make_model()
  model.fit(x, y, epochs=2, **fit)
  ours = tf_adadelta.keras.Adadelta.from_keras(
      model.optimizer, variables=model.trainable_variables)
  model.compile(optimizer=ours, loss="mse")
  model.fit(x, y, epochs=2, **fit)

  for actual, expected in zip(model.trainable_variables,
                              reference.trainable_variables):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-6)
  for i, variable in enumerate(model.trainable_variables):
    np.testing.assert_allclose(
        ours.get_slot(variable, "accumulated_grad").numpy(),
        reference.optimizer._accumulated_grads[i].numpy(), rtol=1e-5,  # pylint: disable=protected-access
        atol=1e-7)
  assert int(np.asarray(ours.iterations)) == int(
      np.asarray(reference.optimizer.iterations)) > 0
