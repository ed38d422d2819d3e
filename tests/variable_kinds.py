"""The two kinds of variable users train: `tf.Variable`s and Keras variables.

Keras 3 layers create `keras.Variable`s, which wrap a `tf.Variable` (a
distributed one under a strategy). Tests that build their own variables take
a kind from `KINDS` and call `make`, so each runs over both.
"""

import keras
import tensorflow as tf

TF = "tf_variable"
KERAS = "keras_variable"
KINDS = [TF, KERAS]


def make(kind: str, value, name: str, constraint=None):
  """A trainable float variable of `kind` holding `value`."""
  if kind == TF:
    return tf.Variable(value, name=name, constraint=constraint)
  if kind == KERAS:
    variable = keras.Variable(tf.convert_to_tensor(value), name=name)
    variable.constraint = constraint
    return variable
  raise ValueError(f"Unknown variable kind {kind!r}; expected one of {KINDS}.")
