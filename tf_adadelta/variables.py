"""The variables an optimizer is given: their identity and their attributes.

Users hand the optimizer `tf.Variable`s, distributed variables (one copy per
replica), shards of a `ShardedVariable`, or Keras 3 variables, which wrap any
of those (`keras.Variable.value`) and carry `constraint` and
`overwrite_with_gradient`. Everything in the library that needs a variable's
identity calls `key`, and everything that updates one works on `unwrap`'s
`tf.Variable`, so all of these behave alike.
"""

from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from tf_adadelta import tf_internals

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def unwrap(variable):
  """The TensorFlow variable behind a Keras variable (others unchanged)."""
  if isinstance(variable, keras.Variable):
    return variable.value
  return variable


def key(variable) -> Any:
  """The identity of `variable`, the same for every form of it.

  A Keras variable and the `tf.Variable` it wraps, a distributed variable and
  each of its per-replica copies all have one key.

  Args:
    variable: A `tf.Variable`, a distributed variable or one of its copies, a
      `ShardedVariable`, or a Keras variable wrapping any of these.

  Returns:
    A hashable key.
  """
  variable = unwrap(variable)
  if not isinstance(variable, tf.distribute.DistributedValues):
    # A distributed variable's own `handle` raises outside replica context,
    # so only its copies are looked up.
    variable = tf_internals.distributed_container(variable) or variable
  return tf_internals.unique_id(variable)


def display_name(variable) -> str:
  """The name used in error messages and weight-decay patterns."""
  return getattr(unwrap(variable), "name", repr(variable))


def path(variable) -> str:
  """A name for `variable` without "/": its Keras path, else its TF name.

  A Keras variable's path (`"dense/kernel"`) is the same for every instance
  of a model; its `tf.Variable`'s name depends on the name scope it was
  created in.
  """
  name = (variable.path if isinstance(variable, keras.Variable)
          else unwrap(variable).name.split(":")[0])
  return name.replace("/", "_")


def constraint(variable) -> Optional[Callable]:
  """The projection applied after each update (Keras's or `tf.Variable`'s)."""
  found = getattr(variable, "constraint", None)
  if found is None and variable is not unwrap(variable):
    found = getattr(unwrap(variable), "constraint", None)
  return found


def overwrites_with_gradient(variable) -> bool:
  """Whether a step assigns `variable` its gradient (Keras's float8 state)."""
  return bool(getattr(variable, "overwrite_with_gradient", False))


def is_float_variable(variable) -> bool:
  """True for a float `tf.Variable` (or a Keras variable wrapping one)."""
  variable = unwrap(variable)
  return isinstance(variable, tf.Variable) and variable.dtype in FLOAT_DTYPES
