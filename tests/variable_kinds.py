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


def constrained_model(seed: int = 3, units: int = 5) -> keras.Sequential:
  """A small Keras model whose layers carry constraints, seeded.

  Its kernel starts inside its constraint: Keras also projects on
  accumulation micro-steps, which change nothing here (see the README).
  """
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((4,)),
      keras.layers.Dense(
          units, activation="tanh",
          kernel_constraint=keras.constraints.NonNeg(),
          kernel_initializer=keras.initializers.RandomUniform(0.0, 0.6)),
      keras.layers.Dense(2, bias_constraint=keras.constraints.MaxNorm(0.05)),
  ])


def make(kind: str, value, name: str, constraint=None):
  """A trainable float variable of `kind` holding `value`."""
  if kind == TF:
    return tf.Variable(value, name=name, constraint=constraint)
  if kind == KERAS:
    variable = keras.Variable(tf.convert_to_tensor(value), name=name)
    variable.constraint = constraint
    return variable
  raise ValueError(f"Unknown variable kind {kind!r}; expected one of {KINDS}.")
