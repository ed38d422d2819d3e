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
  rows = tf.shape(var, out_type=grad.indices.dtype)[0]
  indices, values = grad.indices, grad.values
  rho_t = tf.constant(rho, dtype)
  one_minus_rho = tf.constant(1 - rho, dtype)
  eps = tf.constant(epsilon, dtype)

  new_acc_g = rho_t * accumulated_grad + tf.math.unsorted_segment_sum(
      one_minus_rho * tf.square(values), indices, rows)
  accumulated_grad.assign(new_acc_g)
  rms_delta = tf.gather(tf.sqrt(accumulated_delta_var + eps), indices)
  rms_grad = tf.gather(tf.sqrt(new_acc_g + eps), indices)
  delta = -((rms_delta * values) / rms_grad)
  accumulated_delta_var.assign(
      rho_t * accumulated_delta_var + tf.math.unsorted_segment_sum(
          one_minus_rho * tf.square(delta), indices, rows))
  var.scatter_add(tf.IndexedSlices(lr * delta, indices, grad.dense_shape))


def apply(var, accumulated_grad, accumulated_delta_var, grad, lr, rho, epsilon):
  """Dispatches to `apply_dense` or `apply_sparse` by the gradient's type."""
  fn = apply_sparse if isinstance(grad, tf.IndexedSlices) else apply_dense
  return fn(var, accumulated_grad, accumulated_delta_var, grad, lr, rho,
            epsilon)
