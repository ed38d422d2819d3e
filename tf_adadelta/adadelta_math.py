"""The Adadelta update rule, in one place.

Each function updates a variable and its two accumulators in place:

    acc_g = rho * acc_g + (1 - rho) * g**2
    d     = -sqrt(acc_d + epsilon) / sqrt(acc_g + epsilon) * g
    acc_d = rho * acc_d + (1 - rho) * d**2
    var   = var + lr * d

Dense gradients use TensorFlow's fused `ResourceApplyAdadelta` kernel (one pass
over memory on CPU and GPU, and an XLA lowering under `jit_compile`).
`tf.IndexedSlices` gradients follow `keras.optimizers.Adadelta`: every row of
both accumulators decays, duplicate indices add their squared contributions,
and the variable is updated by scatter.
"""

import tensorflow as tf


def apply_dense(var, accumulated_grad, accumulated_delta_var, grad, lr, rho,
                epsilon):
  """Applies one Adadelta step with a dense gradient.

  Args:
    var: The `tf.Variable` to update.
    accumulated_grad: Slot holding the running average of squared gradients.
    accumulated_delta_var: Slot holding the running average of squared updates.
    grad: A dense `tf.Tensor` with the shape and dtype of `var`.
    lr: Scalar learning rate in `var.dtype`.
    rho: Python float, the decay rate.
    epsilon: Python float, added inside both square roots.

  Returns:
    The op (graph mode) or `None` (eager).
  """
  dtype = var.dtype
  return tf.raw_ops.ResourceApplyAdadelta(
      var=var.handle,
      accum=accumulated_grad.handle,
      accum_update=accumulated_delta_var.handle,
      lr=lr,
      rho=tf.constant(rho, dtype),
      epsilon=tf.constant(epsilon, dtype),
      grad=grad,
      use_locking=False)


def apply_sparse(var, accumulated_grad, accumulated_delta_var, grad, lr, rho,
                 epsilon):
  """Applies one Adadelta step with a `tf.IndexedSlices` gradient.

  Keras's semantics: the accumulators of rows absent from `grad` still decay by
  `rho`, and only the variable is updated sparsely.

  Args:
    var: The `tf.Variable` to update.
    accumulated_grad: Slot holding the running average of squared gradients.
    accumulated_delta_var: Slot holding the running average of squared updates.
    grad: A `tf.IndexedSlices` gradient for `var`.
    lr: Scalar learning rate in `var.dtype`.
    rho: Python float, the decay rate.
    epsilon: Python float, added inside both square roots.
  """
  dtype = var.dtype
  indices, values = grad.indices, grad.values
  rho_t = tf.constant(rho, dtype)
  one_minus_rho = tf.constant(1 - rho, dtype)
  eps = tf.constant(epsilon, dtype)
  # Keras computes `rho * acc + unsorted_segment_sum(x, indices, rows)`.
  # Decaying `acc` in place and scattering `x` into it gives the same numbers
  # (a duplicated row adds its terms one by one, which can differ in the last
  # bit) while moving each accumulator once, instead of building and adding
  # dense tensors of every row. Static shapes only, so XLA compiles it.
  def decay_and_add(accumulator, contributions):
    accumulator.assign(rho_t * accumulator)
    accumulator.scatter_add(
        tf.IndexedSlices(contributions, indices, grad.dense_shape))

  # Read before the accumulators change; `sqrt(gather(x))` is
  # `gather(sqrt(x))` computed on the touched rows only.
  rms_delta = tf.sqrt(tf.gather(accumulated_delta_var, indices) + eps)
  decay_and_add(accumulated_grad, one_minus_rho * tf.square(values))
  rms_grad = tf.sqrt(tf.gather(accumulated_grad, indices) + eps)
  delta = -((rms_delta * values) / rms_grad)
  decay_and_add(accumulated_delta_var, one_minus_rho * tf.square(delta))
  var.scatter_add(tf.IndexedSlices(lr * delta, indices, grad.dense_shape))


def apply(var, accumulated_grad, accumulated_delta_var, grad, lr, rho, epsilon):
  """Dispatches to `apply_dense` or `apply_sparse` by the gradient's type."""
  fn = apply_sparse if isinstance(grad, tf.IndexedSlices) else apply_dense
  return fn(var, accumulated_grad, accumulated_delta_var, grad, lr, rho,
            epsilon)
