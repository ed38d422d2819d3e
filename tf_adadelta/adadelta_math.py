"""The Adadelta update rule, in one place.

Each function updates a variable and its two accumulators in place:

    acc_g = rho * acc_g + (1 - rho) * g**2
    d     = -sqrt(acc_d + epsilon) / sqrt(acc_g + epsilon) * g
    acc_d = rho * acc_d + (1 - rho) * d**2
    var   = var + lr * d

Dense gradients use TensorFlow's fused `ResourceApplyAdadelta` kernel (one pass
over memory on CPU and GPU), or, where the caller compiles the update with XLA
together with other work on the same tensors, the same formula written out
(`apply_dense_elementwise`), which XLA fuses with that work.
`tf.IndexedSlices` gradients follow `keras.optimizers.Adadelta`: every row of
both accumulators decays, duplicate indices add their squared contributions,
and the variable is updated by scatter. The opt-in lazy update
(`apply_sparse_lazy`) has TensorFlow 1's `ResourceSparseApplyAdadelta`
semantics instead: only the rows in the gradient change, so its cost grows
with those rows, not with the table.
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


def _rms_ratio(accumulated_delta_var, accumulated_grad, eps):
  """`sqrt(acc_d + eps) / sqrt(acc_g + eps)`."""
  if accumulated_grad.dtype in (tf.float32, tf.float64):
    # One root of the quotient instead of two roots: about 15% faster in
    # XLA's CPU code, within an ulp. Half types keep two roots, where the
    # quotient could overflow.
    return tf.sqrt((accumulated_delta_var + eps) / (accumulated_grad + eps))
  return tf.sqrt(accumulated_delta_var + eps) / tf.sqrt(accumulated_grad + eps)


def _step_values(acc_grad, acc_delta, grad, rho, epsilon):
  """The update on values: returns `(new acc_grad, delta, new acc_delta)`.

  Shared by the whole-tensor (`apply_dense_elementwise`) and row
  (`apply_sparse_lazy`) updates; the caller writes the results back.
  """
  dtype = grad.dtype
  rho_t = tf.constant(rho, dtype)
  one_minus_rho = tf.constant(1 - rho, dtype)
  eps = tf.constant(epsilon, dtype)
  acc_grad = rho_t * acc_grad + one_minus_rho * tf.square(grad)
  delta = -_rms_ratio(acc_delta, acc_grad, eps) * grad
  acc_delta = rho_t * acc_delta + one_minus_rho * tf.square(delta)
  return acc_grad, delta, acc_delta


def apply_dense_elementwise(var, accumulated_grad, accumulated_delta_var, grad,
                            lr, rho, epsilon):
  """`apply_dense` as elementwise math, for a function XLA compiles.

  XLA's lowering of the fused kernel takes two square roots; writing the
  formula out lets it take one and fuse the step with the clipping, decay and
  EMA around it into one pass over memory. Same arguments as `apply_dense`.
  """
  acc_grad, delta, acc_delta = _step_values(
      accumulated_grad, accumulated_delta_var, grad, rho, epsilon)
  accumulated_grad.assign(acc_grad)
  accumulated_delta_var.assign(acc_delta)
  var.assign_add(lr * delta)


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


def apply_sparse_lazy(var, accumulated_grad, accumulated_delta_var, grad, lr,
                      rho, epsilon):
  """Applies one Adadelta step to the rows of a `tf.IndexedSlices` gradient.

  TensorFlow 1's `ResourceSparseApplyAdadelta` semantics: the rows absent
  from `grad` keep their values and accumulators; a row present is updated as
  by a dense step with its gradient. Every position of a duplicated index must
  hold that row's whole gradient (`gradient_transforms.sum_duplicates`): each
  then computes, and writes, the same new row. Shapes stay static, so XLA
  compiles it.

  Args:
    var: The `tf.Variable` to update.
    accumulated_grad: Slot holding the running average of squared gradients.
    accumulated_delta_var: Slot holding the running average of squared updates.
    grad: A `tf.IndexedSlices` gradient for `var`, duplicates summed.
    lr: Scalar learning rate in `var.dtype`.
    rho: Python float, the decay rate.
    epsilon: Python float, added inside both square roots.
  """
  indices = grad.indices
  acc_grad, delta, acc_delta = _step_values(
      tf.gather(accumulated_grad, indices),
      tf.gather(accumulated_delta_var, indices), grad.values, rho, epsilon)
  rows = tf.gather(var, indices) + lr * delta
  for variable, new_rows in ((accumulated_grad, acc_grad),
                             (accumulated_delta_var, acc_delta), (var, rows)):
    variable.scatter_update(
        tf.IndexedSlices(new_rows, indices, grad.dense_shape))


def weight_decay(var, decay, lr, indices=None):
  """Keras's decoupled weight decay, `var -= var * decay * lr`.

  Args:
    var: The `tf.Variable` to decay.
    decay: Scalar tensor in `var.dtype`, the weight decay rate.
    lr: Scalar learning rate in `var.dtype`.
    indices: If given, only these rows decay (the lazy sparse update); they
      may repeat.
  """
  if indices is None:
    var.assign_sub(var * decay * lr)
    return
  rows = tf.gather(var, indices)
  var.scatter_update(tf.IndexedSlices(rows - rows * decay * lr, indices))


def apply(var, accumulated_grad, accumulated_delta_var, grad, lr, rho, epsilon,
          lazy=False, compiled=False):
  """Dispatches by the gradient's type (and `lazy` for `tf.IndexedSlices`).

  `compiled`: the caller compiles this update with XLA (dense gradients then
  use `apply_dense_elementwise`).
  """
  if isinstance(grad, tf.IndexedSlices):
    fn = apply_sparse_lazy if lazy else apply_sparse
  else:
    fn = apply_dense_elementwise if compiled else apply_dense
  return fn(var, accumulated_grad, accumulated_delta_var, grad, lr, rho,
            epsilon)
