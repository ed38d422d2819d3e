"""Where `tf.distribute` enters: gradient summation and cross-replica updates.

The optimizer computes in replica context on gradients that are already
summed across replicas (so clipping sees the real gradient), and changes
state only inside `merge_call`, in cross-replica context, through
`strategy.extended.update`. Outside any strategy the default strategy takes
the same path, so there is one code path for every mode.
"""

import tensorflow as tf


def all_reduce(grads, take_max=()):
  """Sums gradients across replicas when called inside `strategy.run`.

  In cross-replica context, or under no strategy, returns `grads` unchanged.

  Args:
    grads: The gradients, one per variable.
    take_max: Positions of gradients that are values, not gradients (Keras's
      `overwrite_with_gradient` variables): those are combined by their
      elementwise maximum, as Keras combines them across accumulation steps.

  Returns:
    The list of combined gradients.
  """
  context = tf.distribute.get_replica_context()
  if (context is None or not tf.distribute.has_strategy() or
      context.num_replicas_in_sync == 1):
    return list(grads)
  take_max = set(take_max)
  summed = [i for i in range(len(grads)) if i not in take_max]
  result = list(grads)
  if summed:
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                 [grads[i] for i in summed])
    for i, value in zip(summed, reduced):
      result[i] = value
  for i in sorted(take_max):
    # `ReduceOp` has no maximum: gather every replica's value and reduce.
    value = tf.expand_dims(tf.convert_to_tensor(grads[i]), 0)
    result[i] = tf.reduce_max(context.all_gather(value, axis=0), axis=0)
  return result


def in_cross_replica(fn, *args):
  """Calls `fn(strategy, *args)` in cross-replica context.

  From replica context this is a `merge_call`; from cross-replica context (or
  with no strategy in a cross-replica position) a direct call.
  """
  context = tf.distribute.get_replica_context()
  if context is None:
    return fn(tf.distribute.get_strategy(), *args)
  return context.merge_call(fn, args=args)


def update(strategy, variable, fn, *args):
  """Runs `fn(variable, *args)` on every copy of `variable`."""
  return strategy.extended.update(variable, fn, args=args, group=False)
