"""Checkpoints of the other face, of Keras's Adadelta and of TF1 restore exactly.

A user switches optimizers in a run that already has checkpoints: a Keras 3
model trained in a `tf.function` loop for some steps with one optimizer,
saved with `tf.train.Checkpoint(model=, optimizer=)`, restored into fresh
objects (or ones that already took a step) with another, and trained on. The
reference is `keras.optimizers.Adadelta` itself, run for all the steps
without a break; `.keras` and `.weights.h5` files go the same way through
`fit`. What cannot be continued exactly is refused with an error naming the
layout, and nothing changes.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta

WRITERS = {
    "module": tf_adadelta.Adadelta,
    "keras_face": tf_adadelta.keras.Adadelta,
    "keras": keras.optimizers.Adadelta,
}
READERS = {
    "module": tf_adadelta.Adadelta,
    "keras_face": tf_adadelta.keras.Adadelta,
}


def _everything():
  return dict(
      learning_rate=keras.optimizers.schedules.ExponentialDecay(
          0.9, decay_steps=2, decay_rate=0.8),
      rho=0.9, epsilon=1e-6, weight_decay=0.01, global_clipnorm=0.5,
      use_ema=True, ema_momentum=0.7, ema_overwrite_frequency=2,
      gradient_accumulation_steps=2)


CONFIGS = {
    "plain": lambda: dict(learning_rate=0.5),
    "everything": _everything,
}
STEPS_BEFORE, STEPS_AFTER = 5, 4  # The save falls mid-way through accumulation.
RTOL, ATOL = 1e-5, 1e-7


def _model():
  keras.utils.set_random_seed(1)
  return keras.Sequential([
      keras.Input((3,)),
      keras.layers.Dense(4, activation="tanh"),
      keras.layers.Dense(2)])


def _batch(step):
  rng = np.random.RandomState(step)
  return (tf.constant(rng.randn(8, 3), tf.float32),
          tf.constant(rng.randn(8, 2), tf.float32))


def _train(model, optimizer, steps, variables=None):
  """`steps` custom-loop steps; `variables` reorders the pairs."""
  variables = variables or (lambda vs: vs)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((model(x) - y) ** 2)
    pairs = list(zip(tape.gradient(loss, model.trainable_variables),
                     model.trainable_variables))
    optimizer.apply_gradients(variables(pairs))

  for index in steps:
    step(*_batch(index))


def _reference(config):
  model = _model()
  optimizer = keras.optimizers.Adadelta(**CONFIGS[config]())
  _train(model, optimizer, range(STEPS_BEFORE + STEPS_AFTER))
  return model, optimizer


def _assert_same(model, optimizer, reference_model, reference_optimizer):
  for ours, theirs in zip(model.trainable_variables,
                          reference_model.trainable_variables):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=RTOL,
                               atol=ATOL, err_msg=ours.path)
  for ours, theirs in zip(model.trainable_variables,
                          reference_model.trainable_variables):
    for slot, keras_list in (("accumulated_grad", "_accumulated_grads"),
                             ("accumulated_delta_var",
                              "_accumulated_delta_vars")):
      index = reference_optimizer._get_variable_index(theirs)  # pylint: disable=protected-access
      np.testing.assert_allclose(
          optimizer.get_slot(ours, slot).numpy(),
          getattr(reference_optimizer, keras_list)[index].numpy(),
          rtol=RTOL, atol=ATOL, err_msg=f"{ours.path}/{slot}")
  assert int(optimizer.iterations.numpy()) == int(
      reference_optimizer.iterations.numpy())


def _write(writer, config, directory, with_model=True):
  model = _model()
  optimizer = WRITERS[writer](**CONFIGS[config]())
  _train(model, optimizer, range(STEPS_BEFORE))
  objects = dict(optimizer=optimizer)
  if with_model:
    objects["model"] = model
  return tf.train.Checkpoint(**objects).save(os.path.join(directory, "ckpt")
                                             ), model


@pytest.mark.parametrize("built", [False, True], ids=["deferred", "built"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_restore_continues_exactly(writer, reader, config, built, tmp_path):
  path, _ = _write(writer, config, str(tmp_path))
  model = _model()
  optimizer = READERS[reader](**CONFIGS[config]())
  if built:
    # Built and stepped before the restore, which overwrites all of it.
    _train(model, optimizer, [99])
  status = tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path)
  _train(model, optimizer, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))
  status.assert_consumed()
  _assert_same(model, optimizer, *_reference(config))


@pytest.mark.parametrize("reader", sorted(READERS))
def test_keras_checkpoint_restores_by_identity_in_any_order(reader, tmp_path):
  # Keras's checkpoint records which variable each slot belongs to; the
  # resumed loop lists the variables in reverse.
  path, _ = _write("keras", "everything", str(tmp_path))
  model = _model()
  optimizer = READERS[reader](**_everything())
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path)
  _train(model, optimizer, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER),
         variables=lambda pairs: pairs[::-1])
  reference_model, reference = _reference("everything")
  if reader == "module":  # Built in the reversed order.
    _assert_same(model, optimizer, reference_model, reference)
  else:
    # The Keras face is built in the order of its first step, as Keras's is.
    for ours, theirs in zip(model.trainable_variables,
                            reference_model.trainable_variables):
      np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=RTOL,
                                 atol=ATOL)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("writer", ["keras", "keras_face"])
def test_optimizer_only_checkpoint_restores_by_build_order(writer, reader,
                                                           tmp_path):
  # Without the model in the checkpoint nothing names the variables: the
  # slots go by the order of the first step, as Keras restores its own.
  path, written = _write(writer, "everything", str(tmp_path),
                         with_model=False)
  model = _model()
  model.set_weights(written.get_weights())
  optimizer = READERS[reader](**_everything())
  tf.train.Checkpoint(optimizer=optimizer).restore(path).expect_partial()
  _train(model, optimizer, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))
  _assert_same(model, optimizer, *_reference("everything"))


@pytest.mark.parametrize("reader", sorted(READERS))
def test_checkpoint_with_slots_the_optimizer_lacks_is_refused(reader,
                                                              tmp_path):
  path, _ = _write("keras", "everything", str(tmp_path))
  model = _model()
  optimizer = READERS[reader](learning_rate=0.5)  # No EMA, no accumulation.
  with pytest.raises(ValueError, match=r"keras\.optimizers\.Adadelta.*use_ema"):
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_positional_state_for_other_variables_is_refused_at_first_step(
    reader, tmp_path):
  path, _ = _write("keras_face", "plain", str(tmp_path), with_model=False)
  variables = [tf.Variable(np.ones((3, 4), np.float32))]  # Not the model's.
  optimizer = READERS[reader](learning_rate=0.5)
  tf.train.Checkpoint(optimizer=optimizer).restore(path).expect_partial()
  iterations = int(optimizer.iterations.numpy())
  assert iterations == STEPS_BEFORE
  with pytest.raises(ValueError, match=r"tf_adadelta\.keras\.Adadelta.*slot "
                     r"values"):
    optimizer.apply_gradients([(tf.ones((3, 4)), variables[0])])
  np.testing.assert_array_equal(variables[0].numpy(), 1.0)
  assert int(optimizer.iterations.numpy()) == iterations


@pytest.mark.parametrize("reader", sorted(READERS))
def test_tf1_adadelta_checkpoint_continues(reader, tmp_path):
  rng = np.random.RandomState(4)
  initial = [rng.randn(3, 2).astype(np.float32), rng.randn(2).astype(np.float32)]
  grads = [[rng.randn(*v.shape).astype(np.float32) for v in initial]
           for _ in range(6)]
  hyper = dict(learning_rate=0.7, rho=0.9, epsilon=1e-6)

  reference_vars = [tf.Variable(v) for v in initial]
  reference = tf.compat.v1.train.AdadeltaOptimizer(**hyper)
  for g in grads:
    reference.apply_gradients(zip(g, reference_vars))

  written_vars = [tf.Variable(v) for v in initial]
  written = tf.compat.v1.train.AdadeltaOptimizer(**hyper)
  for g in grads[:3]:
    written.apply_gradients(zip(g, written_vars))
  path = tf.train.Checkpoint(variables=written_vars, optimizer=written).save(
      str(tmp_path / "ckpt"))

  variables = [tf.Variable(np.zeros_like(v)) for v in initial]
  optimizer = READERS[reader](**hyper)
  # A TF1 checkpoint has no step count and no learning-rate variable.
  tf.train.Checkpoint(variables=variables, optimizer=optimizer
                      ).restore(path).expect_partial()
  for g in grads[3:]:
    optimizer.apply_gradients(zip(g, variables))
  for ours, theirs in zip(variables, reference_vars):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
    for slot, v1_slot in (("accumulated_grad", "accum"),
                          ("accumulated_delta_var", "accum_update")):
      np.testing.assert_allclose(optimizer.get_slot(ours, slot).numpy(),
                                 reference.get_slot(theirs, v1_slot).numpy(),
                                 rtol=1e-6)


# --- Keras files -------------------------------------------------------------


def _fit_model(optimizer):
  model = _model()
  model.compile(optimizer=optimizer, loss="mse")
  return model


def _fit_data():
  rng = np.random.RandomState(0)
  return (rng.randn(40, 3).astype(np.float32),
          rng.randn(40, 2).astype(np.float32))


def _fit(model):
  # One epoch of 5 batches a call: with accumulation over 2, each call ends
  # mid-way through an accumulation. (Keras's `fit` ends by setting EMA
  # weights, so the reference makes the same calls.)
  model.fit(*_fit_data(), batch_size=8, epochs=1, shuffle=False, verbose=0)


def _fit_reference(calls):
  model = _fit_model(keras.optimizers.Adadelta(**_everything()))
  for _ in range(calls):
    _fit(model)
  return model


def _assert_weights(model, reference):
  for ours, theirs in zip(model.weights, reference.weights):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=RTOL,
                               atol=ATOL, err_msg=ours.path)


def test_keras_face_variables_are_in_keras_order():
  model = _model()
  ours = tf_adadelta.keras.Adadelta(**_everything())
  theirs = keras.optimizers.Adadelta(**_everything())
  ours.build(model.trainable_variables)
  theirs.build(model.trainable_variables)
  strip = lambda v: v.path.split("/")[-1]
  assert [strip(v) for v in ours.variables] == [
      strip(v) for v in theirs.variables]


def test_keras_file_continues_with_the_keras_face(tmp_path):
  model = _fit_model(keras.optimizers.Adadelta(**_everything()))
  _fit(model)
  model.save(str(tmp_path / "model.keras"))
  loaded = keras.models.load_model(str(tmp_path / "model.keras"))
  # The README's one line.
  loaded.compile(optimizer=tf_adadelta.keras.Adadelta.from_keras(
      loaded.optimizer, variables=loaded.trainable_variables), loss="mse")
  _fit(loaded)
  _assert_weights(loaded, _fit_reference(2))
  # Saved again, the file holds the Keras face and loads without help.
  loaded.save(str(tmp_path / "ours.keras"))
  again = keras.models.load_model(str(tmp_path / "ours.keras"))
  assert isinstance(again.optimizer, tf_adadelta.keras.Adadelta)
  _fit(again)
  _assert_weights(again, _fit_reference(3))


@pytest.mark.parametrize("direction", ["keras_to_face", "face_to_keras"])
def test_weights_files_move_between_keras_and_the_keras_face(direction,
                                                             tmp_path):
  # `save_weights`/`load_weights` (and so `BackupAndRestore`) hold optimizer
  # state by position; the two orders are the same.
  first, second = tf_adadelta.keras.Adadelta, keras.optimizers.Adadelta
  if direction == "keras_to_face":
    first, second = second, first
  model = _fit_model(first(**_everything()))
  _fit(model)
  model.save_weights(str(tmp_path / "run.weights.h5"))
  resumed = _fit_model(second(**_everything()))
  resumed.optimizer.build(resumed.trainable_variables)
  resumed.load_weights(str(tmp_path / "run.weights.h5"))
  _fit(resumed)
  _assert_weights(resumed, _fit_reference(2))


# --- Under MirroredStrategy --------------------------------------------------


@pytest.mark.parametrize("reader", sorted(READERS))
def test_keras_checkpoint_continues_under_mirrored_strategy(reader, tmp_path):
  # A one-device run of Keras's Adadelta, resumed on two replicas.
  from tests import distributed_model as dm  # pylint: disable=g-import-not-at-top
  strategy = dm.mirrored_strategy()
  path, written = _write("keras", "everything", str(tmp_path))
  with strategy.scope():
    model = _model()
    optimizer = READERS[reader](**_everything())
  model.set_weights(written.get_weights())
  status = tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path)

  @tf.function
  def step(x, y):
    def replica_step(x, y):
      with tf.GradientTape() as tape:
        # Each replica's share of the mean over the global batch: the
        # gradients summed across replicas are the one-device gradients.
        loss = tf.reduce_sum((model(x) - y) ** 2) / (8.0 * 2.0)
      optimizer.apply_gradients(zip(
          tape.gradient(loss, model.trainable_variables),
          model.trainable_variables))
    halves = lambda t: tf.split(t, strategy.num_replicas_in_sync)
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tuple(
            halves(t)[context.replica_id_in_sync_group] for t in (x, y)))
    strategy.run(replica_step, args=values)

  for index in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
    step(*_batch(index))
  status.assert_consumed()
  _assert_same(model, optimizer, *_reference("everything"))
