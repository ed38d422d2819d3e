"""Learning rates: a float (kept in a variable), a schedule, or a callable."""

from typing import Any, Callable, Union

import keras
import numpy as np
import tensorflow as tf

LearningRate = Union[float, keras.optimizers.schedules.LearningRateSchedule,
                     Callable[[], Any], tf.Variable]


def is_schedule(value) -> bool:
  return isinstance(value, keras.optimizers.schedules.LearningRateSchedule)


def is_number(value) -> bool:
  """True for Python and NumPy real scalars (bools excluded)."""
  if isinstance(value, bool):
    return False
  if isinstance(value, np.ndarray):
    return value.ndim == 0 and np.issubdtype(value.dtype, np.number)
  return isinstance(value, (int, float, np.integer, np.floating))


def check(value) -> None:
  """Raises `TypeError` unless `value` is a usable learning rate."""
  if isinstance(value, tf.Variable):
    if not value.dtype.is_floating or value.shape.rank != 0:
      raise TypeError(
          "Argument `learning_rate` as a tf.Variable must be a float scalar. "
          f"Received: dtype={value.dtype.name}, shape={value.shape}.")
    return
  if is_schedule(value) or callable(value):
    return
  if not is_number(value):
    raise TypeError(
        "Argument `learning_rate` must be a float, a "
        "`keras.optimizers.schedules.LearningRateSchedule`, a callable taking "
        "no arguments, or a float tf.Variable. "
        f"Received: learning_rate={value!r} of type {type(value).__name__}.")
  if not float(value) >= 0:
    raise ValueError(
        f"Argument `learning_rate` must be >= 0. Received: {value!r}.")


def current(learning_rate, step):
  """The learning rate in force at `step` (the raw iteration count)."""
  if is_schedule(learning_rate):
    return learning_rate(step)
  if isinstance(learning_rate, tf.Variable):
    return learning_rate
  if callable(learning_rate):
    return learning_rate()
  return learning_rate


def serialize(learning_rate):
  """The config value of a learning rate, the way Keras writes it."""
  if is_schedule(learning_rate):
    return keras.optimizers.schedules.serialize(learning_rate)
  if isinstance(learning_rate, (tf.Variable, keras.Variable)):
    return float(keras.ops.convert_to_numpy(learning_rate))
  if callable(learning_rate):
    return keras.saving.serialize_keras_object(learning_rate)
  return float(learning_rate)


def deserialize(config_value, custom_objects=None):
  """Inverse of `serialize`."""
  if isinstance(config_value, dict):
    return keras.saving.deserialize_keras_object(
        config_value, custom_objects=custom_objects)
  return config_value
