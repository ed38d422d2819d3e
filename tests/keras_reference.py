"""Runs `keras.optimizers.Adadelta` and `tf_adadelta.Adadelta` side by side.

Both optimizers train the same variables from the same start on gradients that
depend on the variables themselves, so any difference in one step shows up in
every later one.
"""

import numpy as np
import tensorflow as tf

SHAPES = [(), (3,), (4, 5), (2, 3, 4)]
MODES = ["eager", "function", "xla"]


def initial_values(shapes=SHAPES, dtype=np.float32, seed=0):
  rng = np.random.RandomState(seed)
  return [np.asarray(rng.randn(*shape), dtype) for shape in shapes]


def loss_fn(variables, step):
  """A smooth loss whose gradients vary with the step and the variables."""
  scale = 1.0 + tf.cast(step, tf.float32)
  terms = []
  for v in variables:
    x = tf.cast(v, tf.float32)
    terms.append(tf.reduce_sum(tf.sin(x * scale) * x + 0.1 * x * x))
  return tf.add_n(terms)


def train(optimizer, mode, steps=6, values=None, dtype=tf.float32,
          make_grads=None):
  """Trains fresh variables with `optimizer`; returns their final values.

  Args:
    optimizer: A Keras or tf_adadelta Adadelta.
    mode: "eager", "function" or "xla" (`tf.function(jit_compile=True)`).
    steps: Number of `apply_gradients` calls.
    values: Initial values (NumPy arrays); defaults to `initial_values()`.
    dtype: Variable dtype.
    make_grads: Optional `fn(variables, step) -> grads`; defaults to the
      gradients of `loss_fn` (scaled by `optimizer.scale_loss`).

  Returns:
    The list of final variable values as NumPy arrays.
  """
  values = initial_values() if values is None else values
  variables = [tf.Variable(tf.cast(v, dtype)) for v in values]

  def default_grads(vs, step):
    with tf.GradientTape() as tape:
      loss = optimizer.scale_loss(loss_fn(vs, step))
    return tape.gradient(loss, vs)

  make_grads = make_grads or default_grads

  def step_fn(step):
    grads = make_grads(variables, step)
    optimizer.apply_gradients(zip(grads, variables))

  if mode != "eager":
    step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
  for i in range(steps):
    step_fn(tf.constant(i, tf.int64))
  return [v.numpy() for v in variables]


def assert_close(actual, expected, rtol=2e-5, atol=1e-7):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(e, np.float64), rtol=rtol, atol=atol)
