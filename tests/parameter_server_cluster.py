"""Trains under ParameterServerStrategy on an in-process cluster, for tests.

Starts `tf.distribute.Server`s on 127.0.0.1 (the workers and two parameter
servers) in this process, which is also the coordinator, then for every
optimizer setting trains the `distributed_model` through a `ClusterCoordinator`
and writes to `<out>/result.npz`: every number the optimizer owns, the device
of every variable and its slots, and the loss of every step. With one
worker each step is joined before the next, so the steps run in order and
must equal one device; with more workers steps run concurrently and only the
loss is meaningful. A checkpoint per setting is written to `<out>/ckpt_*`.

With sharded variables and one worker, the checkpoint is also restored here
into new variables on the parameter servers (`restore_checks`), and a
one-device checkpoint into sharded ones; their states are written under
`<setting>/restored/<case>/`.

A separate process because TensorFlow connects a process to one cluster.

Usage: parameter_server_cluster.py OUT_DIR WORKERS SHARDS STEPS SETTING...
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tests import distributed_model as dm  # pylint: disable=g-import-not-at-top
from tests import variable_kinds  # pylint: disable=g-import-not-at-top

NUM_PS = 2


def start_cluster(num_workers):
  ports = dm.free_ports(num_workers + NUM_PS)
  spec = {
      "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
      "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
  }
  cluster = tf.train.ClusterSpec(spec)
  # In-process workers share this process's thread pools; with fewer cores
  # than workers + 1 they wait on each other forever without more threads.
  config = tf.compat.v1.ConfigProto(
      inter_op_parallelism_threads=num_workers + 1)
  servers = [
      tf.distribute.Server(cluster, job_name=job, task_index=i, config=config,
                           protocol="grpc", start=True)
      for job in spec for i in range(len(spec[job]))
  ]
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      cluster, rpc_layer="grpc")
  return resolver, servers


def _make_train_step(strategy, optimizer, variables, batch):
  # A closure: variables passed as `tf.function` arguments would be traced as
  # inputs and rebuilt inside the function, not captured.
  @tf.function
  def train_step():
    return strategy.run(
        lambda: dm.step(optimizer, variables, *(tf.constant(a) for a in batch)))

  return train_step


def _savable(variable):
  """What a checkpoint can hold of a model variable.

  A Keras variable wrapping a `ShardedVariable` cannot be written by
  `tf.train.Checkpoint` (Keras serializes its value as one tensor), so the
  `ShardedVariable` itself is saved, as a user of a partitioner must.
  """
  inner = dm.unwrap(variable)
  if isinstance(inner, tf.__internal__.distribute.ShardedVariable):
    return inner
  return variable


def _checkpoint(variables, optimizer):
  return tf.train.Checkpoint(
      model=tf.train.Checkpoint(
          **{f"v{i}": _savable(v) for i, v in enumerate(variables)}),
      optimizer=optimizer)


def _resharded_variables(strategy, placements):
  """The model's variables on the parameter servers, split otherwise.

  The strategy's partitioner splits every variable in two halves; these split
  the kernel into rows [1, 1, 2] and the table into [1, 2, 3], and keep the
  bias whole. Colocating bypasses the partitioner.

  Args:
    strategy: The `ParameterServerStrategy`.
    placements: A variable on each parameter server, in task order.
  """
  sizes = {"kernel": [1, 1, 2], "table": [1, 2, 3], "bias": None}
  variables = []
  with strategy.scope():
    for name, value in dm.initial_values().items():
      if sizes[name] is None:
        with strategy.extended.colocate_vars_with(placements[0]):
          variables.append(tf.Variable(tf.zeros_like(value), name=name))
        continue
      shards, row = [], 0
      for i, size in enumerate(sizes[name]):
        with strategy.extended.colocate_vars_with(
            placements[i % len(placements)]):
          shards.append(tf.Variable(tf.zeros_like(value[row:row + size]),
                                    name=f"{name}/part_{i}"))
        row += size
      variables.append(tf.__internal__.distribute.ShardedVariable(
          shards, name=name))
  return variables


def restore_checks(strategy, out_dir, setting, trained):
  """Restores checkpoints into new variables under `strategy`.

  Cases: the sharded checkpoint restored before any slot exists (the slots
  are created by `build`, each shard from its slice) into the same sharding,
  and into another sharding (`_resharded_variables`) with the slots built
  first; a one-device checkpoint, trained here, into the same sharding.

  Args:
    strategy: The `ParameterServerStrategy`, with a partitioner.
    out_dir: Where the trained setting's checkpoint `ckpt_<setting>` is.
    setting: The optimizer setting.
    trained: The trained (sharded) variables.

  Returns:
    {"<setting>/restored/<case>/<state key>": array}, and the devices of
    every restored variable or shard and of its slots under `devices`.
  """
  one_device = dm.train_one_device(lambda: dm.make_optimizer(setting))
  one_device_path = _checkpoint(*one_device).write(
      os.path.join(out_dir, f"one_device_{setting}", "ckpt"))
  sharded_path = os.path.join(out_dir, f"ckpt_{setting}")
  placements = trained[0].variables
  cases = {"same_sharding": (sharded_path, False, None),
           "other_sharding": (sharded_path, True, placements),
           "from_one_device": (one_device_path, False, None)}
  arrays = {}
  for case, (path, build_first, reshard) in cases.items():
    if reshard is None:
      with strategy.scope():
        variables = dm.make_variables()
    else:
      variables = _resharded_variables(strategy, reshard)
    with strategy.scope():
      optimizer = dm.make_optimizer(setting)
    if build_first:
      optimizer.build(dm.trainable(variables))
    status = _checkpoint(variables, optimizer).read(path)
    optimizer.build(dm.trainable(variables))
    status.assert_consumed()
    for key, value in dm.state(variables, optimizer).items():
      arrays[f"{setting}/restored/{case}/{key}"] = value
    arrays[f"{setting}/restored/{case}/devices"] = _devices(variables,
                                                             optimizer)
  return arrays


def _devices(variables, optimizer):
  """Per variable or shard: its device, then its slots' devices."""
  return np.array([
      [dm.unwrap(part).device] +
      [dm.unwrap(optimizer.get_slot(part, name)).device
       for name in optimizer.get_slot_names()]
      for part in dm.trainable(variables)])


def main(out_dir, num_workers, num_shards, steps, settings):
  resolver, servers = start_cluster(num_workers)
  partitioner = None
  if num_shards > 1:
    partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(
        num_shards)
  strategy = tf.distribute.experimental.ParameterServerStrategy(
      resolver, variable_partitioner=partitioner)
  coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
      strategy)
  batch = dm.data()
  arrays = {}
  for setting in settings:
    with strategy.scope():
      variables = dm.make_variables(dm.variable_kind(setting))
      optimizer = dm.make_optimizer(setting)

    train_step = _make_train_step(strategy, optimizer, variables, batch)
    losses = []
    for _ in range(steps):
      losses.append(coordinator.schedule(train_step))
      if num_workers == 1:
        coordinator.join()
    coordinator.join()
    arrays[f"{setting}/losses"] = np.array([l.fetch() for l in losses])
    for key, value in dm.state(variables, optimizer).items():
      arrays[f"{setting}/{key}"] = value
    arrays[f"{setting}/devices"] = _devices(variables, optimizer)
    _checkpoint(variables, optimizer).write(
        os.path.join(out_dir, dm.checkpoint_name(setting)))
    if (num_shards > 1 and num_workers == 1 and
        dm.variable_kind(setting) == variable_kinds.TF):
      arrays.update(restore_checks(strategy, out_dir, setting, variables))
  np.savez(os.path.join(out_dir, "result.npz"), **arrays)
  del servers


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
       sys.argv[5:])
