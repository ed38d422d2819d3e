"""A small model and data set shared by the distributed tests and their workers.

The model has a dense kernel behind a `tanh` (so clipping before or after the
cross-replica sum gives different numbers), an embedding table read with
`tf.nn.embedding_lookup` (so its gradient is `tf.IndexedSlices`, with repeated
ids), and a bias. The loss is summed over examples and divided by the global
batch size, so summing per-replica gradients gives the global-batch gradient.
"""

import functools
import socket

import keras
import numpy as np
import tensorflow as tf

from tests import variable_kinds

GLOBAL_BATCH = 8
VOCAB = 6
STEPS = 4


# Optimizer settings the multi-process tests run in their workers, by name.
# "combined" takes every decision on tensors at once: accumulation, global
# clipping, EMA with overwrite, weight decay, loss scaling and a schedule.
# "lazy" updates only the table rows in each step's ids (row 2 never is).
OPTIMIZER_SETTINGS = {
    "plain": {},
    "clipnorm": {"clipnorm": 2.5},
    "clipvalue": {"clipvalue": 1.0},
    "combined": {"gradient_accumulation_steps": 2, "global_clipnorm": 5.0,
                 "use_ema": True, "ema_momentum": 0.9,
                 "ema_overwrite_frequency": 2, "weight_decay": 0.05,
                 "loss_scale_factor": 32.0, "schedule": True},
    "lazy": {"sparse_updates": "lazy", "weight_decay": 0.05,
             "global_clipnorm": 5.0},
}


# A setting named "keras:<name>" trains Keras variables with the optimizer of
# `<name>`; its numbers must equal the `tf.Variable` run of `<name>`.
KERAS_PREFIX = "keras:"


# A setting named "keras_face:<name>" trains Keras variables with the Keras
# face, `tf_adadelta.keras.Adadelta`, built by its first step.
KERAS_FACE_PREFIX = "keras_face:"


def variable_kind(setting: str) -> str:
  """The kind of variable (`variable_kinds.KINDS`) a setting trains."""
  if setting.startswith((KERAS_PREFIX, KERAS_FACE_PREFIX)):
    return variable_kinds.KERAS
  return variable_kinds.TF


def checkpoint_name(setting: str) -> str:
  """The file name of a setting's checkpoint in a worker's output folder."""
  return "ckpt_" + setting.replace(":", "_")


def make_optimizer(setting: str):
  """The optimizer of a setting: the named `OPTIMIZER_SETTINGS`, either face."""
  import tf_adadelta  # pylint: disable=g-import-not-at-top
  face = tf_adadelta.Adadelta
  if setting.startswith(KERAS_FACE_PREFIX):
    face = tf_adadelta.keras.Adadelta
  name = setting.removeprefix(KERAS_PREFIX).removeprefix(KERAS_FACE_PREFIX)
  kwargs = dict(OPTIMIZER_SETTINGS[name])
  learning_rate = 1.0
  if kwargs.pop("schedule", False):
    learning_rate = keras.optimizers.schedules.ExponentialDecay(
        1.0, decay_steps=1, decay_rate=0.5)
  return face(learning_rate=learning_rate, **kwargs)


def data(seed: int = 0):
  """The global batch: `(x, ids, y)` as NumPy arrays; ids repeat."""
  rng = np.random.RandomState(seed)
  x = rng.randn(GLOBAL_BATCH, 4).astype(np.float32)
  ids = np.array([0, 3, 5, 3, 1, 3, 0, 4], np.int32)
  y = rng.randn(GLOBAL_BATCH, 2).astype(np.float32)
  return x, ids, y


def shard(batch, index: int, count: int):
  """Rows `[index * n, (index + 1) * n)` of every array, `n = len / count`."""
  size = GLOBAL_BATCH // count
  return tuple(a[index * size:(index + 1) * size] for a in batch)


def initial_values(seed: int = 1):
  rng = np.random.RandomState(seed)
  return {
      "kernel": rng.randn(4, 2).astype(np.float32),
      "table": rng.randn(VOCAB, 2).astype(np.float32),
      "bias": np.array([0.1, -0.2], np.float32),
  }


def make_variables(kind: str = variable_kinds.TF):
  """Creates the model's variables (call under a strategy's scope).

  Args:
    kind: `tf.Variable`s or Keras variables (`variable_kinds.KINDS`).
  """
  return [variable_kinds.make(kind, value, name)
          for name, value in initial_values().items()]


def unwrap(variable):
  """The `tf.Variable` (or distributed or sharded one) a Keras variable wraps."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def trainable(variables):
  """The variables to differentiate: the shards of a sharded variable.

  A Keras variable is kept as it is (the optimizer takes it), unless it wraps
  a `ShardedVariable`, whose shards are what gradients are taken for.
  """
  flat = []
  for v in variables:
    if isinstance(unwrap(v), tf.__internal__.distribute.ShardedVariable):
      flat.extend(unwrap(v).variables)
    else:
      flat.append(v)
  return flat


def loss_fn(variables, x, ids, y):
  kernel, table, bias = variables
  # A sharded table is looked up shard by shard ("div" partitioning, as
  # `FixedShardsPartitioner` splits rows), so each shard gets its own
  # `tf.IndexedSlices` gradient.
  pred = (tf.tanh(tf.matmul(x, tf.convert_to_tensor(kernel))) +
          tf.nn.embedding_lookup(trainable([table]), ids) +
          tf.convert_to_tensor(bias))
  return tf.reduce_sum(tf.square(pred - y)) / GLOBAL_BATCH


def step(optimizer, variables, x, ids, y, **apply_kwargs):
  """One training step (replica function): gradients, then `apply_gradients`."""
  params = trainable(variables)
  with tf.GradientTape() as tape:
    loss = loss_fn(variables, x, ids, y)
    scaled = optimizer.scale_loss(loss)
  grads = tape.gradient(scaled, params)
  optimizer.apply_gradients(zip(grads, params), **apply_kwargs)
  return loss


def values(variable):
  """A variable's value as NumPy (a sharded one concatenated)."""
  variable = unwrap(variable)
  if isinstance(variable, tf.__internal__.distribute.ShardedVariable):
    return np.concatenate([s.numpy() for s in variable.variables])
  return variable.numpy()


def dense_step(optimizer, variables, x, ids, y):
  """`step` with every gradient converted to a dense tensor."""
  params = trainable(variables)
  with tf.GradientTape() as tape:
    loss = loss_fn(variables, x, ids, y)
  grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, params)]
  optimizer.apply_gradients(zip(grads, params))
  return loss


def train_one_device(optimizer_fn, steps: int = STEPS, step_fn=step,
                     kind: str = variable_kinds.TF):
  """The reference: one device, the global batch, `steps` steps.

  Returns:
    `(variables, optimizer)`.
  """
  variables = make_variables(kind)
  optimizer = optimizer_fn()
  batch = data()
  for _ in range(steps):
    step_fn(optimizer, variables, *batch)
  return variables, optimizer


def state(variables, optimizer):
  """Every number the optimizer owns: variables, slots and `iterations`."""
  out = {}
  for i, v in enumerate(variables):
    out[f"var/{i}"] = values(v)
    for name in optimizer.get_slot_names():
      # A sharded variable's slots are per shard; join them like the shards.
      out[f"slot/{i}/{name}"] = np.concatenate(
          [values(optimizer.get_slot(part, name)) for part in trainable([v])])
  out["iterations"] = np.asarray(int(optimizer.iterations.numpy()))
  return out


@functools.lru_cache(maxsize=None)
@functools.lru_cache(maxsize=None)
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
  """The process's one MirroredStrategy over the two logical CPUs.

  Strategies over the same devices share collective instance keys in eager
  mode, so a second one in the same process collides with the first.
  """
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def free_ports(count: int):
  """`count` free TCP ports on the loopback address."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def restore_on_one_device(path: str, setting: str):
  """Restores a distributed run's checkpoint onto plain variables.

  Args:
    path: The checkpoint prefix (model variables `v0, v1, ...` and the
      optimizer).
    setting: The key of `OPTIMIZER_SETTINGS` it was trained with.

  Returns:
    `state(variables, optimizer)` after the restore; every saved value must
    have been consumed.
  """
  variables = [tf.Variable(tf.zeros_like(v)) for v in initial_values().values()]
  optimizer = make_optimizer(setting)
  checkpoint = tf.train.Checkpoint(
      model=tf.train.Checkpoint(
          **{f"v{i}": v for i, v in enumerate(variables)}),
      optimizer=optimizer)
  status = checkpoint.read(path)
  optimizer.build(variables)
  status.assert_consumed()
  return state(variables, optimizer)
