"""Step-for-step parity with `keras.optimizers.Adadelta`, in every mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import keras_reference as ref

CONFIGS = {
    "defaults": {},
    "lr_1": dict(learning_rate=1.0),
    "rho_eps": dict(learning_rate=0.5, rho=0.8, epsilon=1e-4),
    "weight_decay": dict(learning_rate=1.0, weight_decay=0.05),
    "clipnorm": dict(learning_rate=1.0, clipnorm=0.3),
    "clipvalue": dict(learning_rate=1.0, clipvalue=0.2),
    "global_clipnorm": dict(learning_rate=1.0, global_clipnorm=0.5),
    "ema": dict(learning_rate=1.0, use_ema=True, ema_momentum=0.9),
    "ema_overwrite": dict(learning_rate=1.0, use_ema=True, ema_momentum=0.8,
                          ema_overwrite_frequency=2),
    "loss_scale": dict(learning_rate=1.0, loss_scale_factor=128.0),
    "accumulation": dict(learning_rate=1.0, gradient_accumulation_steps=3),
    "accumulation_ema_overwrite": dict(
        learning_rate=1.0, gradient_accumulation_steps=2, use_ema=True,
        ema_momentum=0.7, ema_overwrite_frequency=2),
    "decay_and_global_clip": dict(learning_rate=1.0, weight_decay=0.1,
                                  global_clipnorm=0.4),
    "everything": dict(learning_rate=1.0, weight_decay=0.02, clipnorm=0.5,
                       use_ema=True, ema_momentum=0.9,
                       ema_overwrite_frequency=3, loss_scale_factor=8.0,
                       gradient_accumulation_steps=2),
}


@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_keras(name, mode):
  config = CONFIGS[name]
  steps = 7
  expected = ref.train(keras.optimizers.Adadelta(**config), mode, steps)
  actual = ref.train(tf_adadelta.Adadelta(**config), mode, steps)
  ref.assert_close(actual, expected)
  # Compare the displacement too: with the default learning rate of 0.001 it
  # is far below rtol * |value|, and must still match.
  start = ref.initial_values()
  ref.assert_close([a - s for a, s in zip(actual, start)],
                   [e - s for e, s in zip(expected, start)], atol=5e-7)
  moved = max(np.max(np.abs(a - s)) for a, s in zip(actual, start))
  assert moved > 1e-5


def _schedule():
  return keras.optimizers.schedules.ExponentialDecay(
      1.0, decay_steps=2, decay_rate=0.5)


@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("accumulation", [None, 2])
def test_schedule_matches_keras(mode, accumulation):
  # With accumulation the schedule sees the raw call count, as in Keras.
  config = dict(learning_rate=_schedule(), weight_decay=0.1,
                gradient_accumulation_steps=accumulation)
  expected = ref.train(keras.optimizers.Adadelta(**config), mode, 6)
  config["learning_rate"] = _schedule()
  actual = ref.train(tf_adadelta.Adadelta(**config), mode, 6)
  ref.assert_close(actual, expected)


@pytest.mark.parametrize("mode", ref.MODES)
def test_callable_learning_rate_matches_keras(mode):
  lr = tf.Variable(0.7)
  expected = ref.train(keras.optimizers.Adadelta(learning_rate=lambda: lr * 2),
                       mode, 5)
  actual = ref.train(tf_adadelta.Adadelta(learning_rate=lambda: lr * 2), mode,
                     5)
  ref.assert_close(actual, expected)


@pytest.mark.parametrize("mode", ref.MODES)
def test_jit_compiled_update_matches_keras(mode):
  config = dict(learning_rate=1.0, weight_decay=0.05, global_clipnorm=0.5,
                use_ema=True, ema_overwrite_frequency=2,
                gradient_accumulation_steps=2)
  expected = ref.train(keras.optimizers.Adadelta(**config), mode, 6)
  actual = ref.train(tf_adadelta.Adadelta(**config, jit_compile=True), mode, 6)
  ref.assert_close(actual, expected)


SPARSE_CONFIGS = {
    "defaults": dict(learning_rate=1.0),
    "weight_decay": dict(learning_rate=1.0, weight_decay=0.1),
    "clipnorm": dict(learning_rate=1.0, clipnorm=0.05),
    "clipvalue": dict(learning_rate=1.0, clipvalue=0.3),
    "global_clipnorm": dict(learning_rate=1.0, global_clipnorm=0.5),
    "ema_overwrite": dict(learning_rate=1.0, use_ema=True, ema_momentum=0.5,
                          ema_overwrite_frequency=2),
}


def _sparse_grads(variables, step):
  """IndexedSlices gradients with a duplicate index; row 3 is never touched."""
  table = variables[0]
  indices = tf.constant([0, 2, 2, 5], tf.int64)
  rows = tf.gather(table, indices)
  values = tf.cos(rows * (1.0 + tf.cast(step, table.dtype))) + rows
  return [tf.IndexedSlices(values, indices, tf.shape(table, out_type=tf.int64))]


@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("name", sorted(SPARSE_CONFIGS))
def test_indexed_slices_match_keras(name, mode):
  config = SPARSE_CONFIGS[name]
  values = ref.initial_values([(6, 4)])
  # Keras does the sparse step in eager mode and tf.function; its result is
  # the reference for every mode.
  expected = ref.train(keras.optimizers.Adadelta(**config),
                       "function", 5, values=values, make_grads=_sparse_grads)
  optimizer = tf_adadelta.Adadelta(**config)
  actual = ref.train(optimizer, mode, 5, values=values,
                     make_grads=_sparse_grads)
  ref.assert_close(actual, expected)
  # Untouched rows keep their value unless EMA overwrote them, but their
  # accumulators decay with every step.
  if not {"use_ema", "weight_decay", "global_clipnorm"} & set(config):
    np.testing.assert_array_equal(actual[0][3], values[0][3])
