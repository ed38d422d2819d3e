"""Where `tf.distribute` enters: gradient summation and cross-replica updates.

The optimizer computes in replica context on gradients that are already
summed across replicas (so clipping sees the real gradient), and changes
state only inside `merge_call`, in cross-replica context, through
`strategy.extended.update`. Outside any strategy the default strategy takes
the same path, so there is one code path for every mode.
"""

import tensorflow as tf


def all_reduce_sum(grads):
  """Sums gradients across replicas when called inside `strategy.run`.

  In cross-replica context, or under no strategy, returns `grads` unchanged.
  """
  context = tf.distribute.get_replica_context()
  if context is None or not tf.distribute.has_strategy():
    return list(grads)
  if context.num_replicas_in_sync == 1:
    return list(grads)
  return list(context.all_reduce(tf.distribute.ReduceOp.SUM, list(grads)))


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
