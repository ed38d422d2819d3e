"""The gradient pipeline: small pure transformations applied before the update.

Each function takes gradients (dense `tf.Tensor`s or `tf.IndexedSlices`) and
returns new ones; none touches a variable. The optimizer chains them in Keras's
order: unscale -> (accumulate) -> clip -> [weight decay, update].
"""

from typing import Optional, Sequence

import tensorflow as tf


def map_values(fn, grad):
  """Applies `fn` to a dense gradient or to the values of `tf.IndexedSlices`."""
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(fn(grad.values), grad.indices, grad.dense_shape)
  return fn(grad)


def cast_to(grad, dtype):
  """Casts a gradient to `dtype` (a no-op when it already has that dtype)."""
  return map_values(lambda g: tf.cast(g, dtype), grad)


def unscale(grads: Sequence, loss_scale_factor: Optional[float]):
  """Divides every gradient by `loss_scale_factor` (None: unchanged)."""
  if loss_scale_factor is None:
    return list(grads)
  return [map_values(lambda g: g / loss_scale_factor, g) for g in grads]


def average_with_accumulator(grad, accumulator, steps: int):
  """Returns `(grad + accumulator) / steps`, the gradient of an applying step."""
  return (tf.convert_to_tensor(grad) + accumulator) / steps


def clip_by_value(grad, clipvalue: float):
  """Clips each element to `[-clipvalue, clipvalue]`."""
  return map_values(lambda g: tf.clip_by_value(g, -clipvalue, clipvalue), grad)


def clip_by_norm(grad, clipnorm: float):
  """Rescales `grad` so that its L2 norm is at most `clipnorm`.

  Half-precision gradients are clipped in float32: in float16 the sum of
  squares overflows once the norm passes 256, which would zero the gradient.
  """
  if grad.dtype in (tf.float16, tf.bfloat16):
    return cast_to(tf.clip_by_norm(cast_to(grad, tf.float32), clipnorm),
                   grad.dtype)
  return tf.clip_by_norm(grad, clipnorm)


def _squared_sum(grad, dtype):
  values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
  # `l2_loss` is `sum(x**2) / 2` in one pass, without a tensor of squares.
  return 2 * tf.nn.l2_loss(tf.cast(values, dtype))


def norm_dtype(grads: Sequence):
  """The dtype in which a global norm over `grads` is accumulated.

  float64 when any gradient is float64, else float32 (half types are summed in
  float32, which cannot overflow where their squares would).
  """
  return tf.float64 if any(g.dtype == tf.float64 for g in grads) else tf.float32


def global_norm(grads: Sequence):
  """The L2 norm of all gradients taken together."""
  dtype = norm_dtype(grads)
  return tf.sqrt(tf.add_n([_squared_sum(g, dtype) for g in grads]))


def global_clip_scale(grads: Sequence, global_clipnorm: float):
  """The factor by which `clip_by_global_norm` multiplies every gradient.

  Same formula as Keras: `clip * min(1 / norm, 1 / clip)`, and NaN when the
  norm is not finite (so a non-finite gradient is never silently rescaled).
  """
  norm = global_norm(grads)
  scale = global_clipnorm * tf.minimum(1.0 / norm, 1.0 / global_clipnorm)
  return scale + (norm - norm)


def all_finite(grads: Sequence):
  """A scalar bool tensor: True when no gradient holds a NaN or an Inf."""
  values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
  return tf.reduce_all(
      tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in values]))


def scale(grad, factor):
  """Multiplies a gradient by a scalar tensor, in the gradient's dtype."""
  return map_values(lambda g: g * tf.cast(factor, g.dtype), grad)


def sum_duplicates(grad):
  """Gives each position of `tf.IndexedSlices` its index's summed gradient.

  The indices stay as they are (static shape, so XLA compiles it); a row
  that appears several times holds the same sum at each of its positions.
  Dense gradients are returned unchanged.
  """
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  _, positions = tf.unique(grad.indices)
  totals = tf.math.unsorted_segment_sum(grad.values, positions,
                                        tf.size(positions))
  return tf.IndexedSlices(tf.gather(totals, positions), grad.indices,
                          grad.dense_shape)


def to_dense(grad):
  """Converts `tf.IndexedSlices` to a dense tensor (duplicates summed)."""
  return tf.convert_to_tensor(grad)
