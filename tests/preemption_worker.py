"""One worker of a preemptible MultiWorkerMirroredStrategy job, for tests.

Trains in one of two ways, as users do:

* `loop`: one of two workers (the cluster is in `TF_CONFIG`) of a
  MultiWorkerMirroredStrategy job: a custom loop under `tf.distribute.experimental.
  PreemptionCheckpointHandler`, training both faces at once (`tf_adadelta.
  Adadelta` on `tf.Variable`s and `tf_adadelta.keras.Adadelta` on Keras
  variables, the "combined" setting of `distributed_model`) from one
  `tf.train.Checkpoint`. Step `s` trains on `distributed_model.data(seed=s)`,
  and the step to start from is a step counter saved with them. Besides the
  handler's save on a preemption signal, a `CheckpointManager` saves every
  `SAVE_EVERY` steps, for a worker that dies without a signal. On a signal the
  handler saves and the worker exits with `RESTART_CODE`.
* `fit`: `model.fit` with the Keras face and `keras.callbacks.
  BackupAndRestore`, which saves at every epoch's end, in one process under
  MirroredStrategy on two logical CPUs (no `TF_CONFIG`).

Neither optimizer is built before the checkpoint is restored: the restore is
deferred to the first step, as in a user's restarted job.

The test controls timing through files in OUT_DIR: while `pause_at` exists
(holding a step number, counted from 1 over the whole run), the worker stops
after that step, writes `paused_<task>`, and waits for `pause_at` to go
away. Every run appends the step it started from to `start_<task>`; a run
that reaches the end writes every number the optimizers own to
`state_<task>.npz`.

Usage: preemption_worker.py OUT_DIR {loop,fit}
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The handler asks the GCE metadata server which platform it is on; there is
# none on loopback, and this answers at once instead of after a DNS timeout.
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tf_adadelta  # pylint: disable=g-import-not-at-top
from tests import distributed_model as dm  # pylint: disable=g-import-not-at-top
from tests import state_snapshot  # pylint: disable=g-import-not-at-top
from tests import variable_kinds  # pylint: disable=g-import-not-at-top

LOOP_STEPS = 8
SAVE_EVERY = 2
RESTART_CODE = 42
# The loop's two optimizers, by the name of their part of the checkpoint.
LOOP_FACES = {"module": "combined", "keras_face": "keras_face:combined"}

FIT_EPOCHS = 4
FIT_EXAMPLES = 48
FIT_GLOBAL_BATCH = 16
FIT_CONFIG = dict(learning_rate=1.0, gradient_accumulation_steps=2,
                  global_clipnorm=0.5, use_ema=True, ema_momentum=0.9,
                  ema_overwrite_frequency=3, weight_decay=0.01)


def maybe_pause(out_dir, index, step):
  """Waits after `step` while the test's `pause_at` file names that step."""
  pause_file = os.path.join(out_dir, "pause_at")
  try:
    with open(pause_file) as f:
      pause_at = int(f.read())
  except FileNotFoundError:
    return
  if step != pause_at:
    return
  with open(os.path.join(out_dir, f"paused_{index}"), "w") as f:
    f.write(str(step))
  while os.path.exists(pause_file):
    time.sleep(0.05)


def record_start(out_dir, index, step):
  with open(os.path.join(out_dir, f"start_{index}"), "a") as f:
    f.write(f"{step}\n")


def strategy_from_tf_config():
  strategy = tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
          implementation=tf.distribute.experimental.CommunicationImplementation
          .RING))
  assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
  return strategy


def worker_folder(root, strategy):
  """The chief's folder is `root`; every other worker writes its own copy."""
  resolver = strategy.cluster_resolver
  if resolver.task_type in (None, "chief") or (
      resolver.task_type == "worker" and resolver.task_id == 0):
    return root
  return os.path.join(root, f"worker_{resolver.task_id}")


def train_loop(out_dir, index):
  strategy = strategy_from_tf_config()
  with strategy.scope():
    parts = {}
    for part, setting in LOOP_FACES.items():
      parts[part] = (dm.make_variables(dm.variable_kind(setting)),
                     dm.make_optimizer(setting))
  # The number of steps trained. Not `iterations`, which with accumulation
  # counts updates, not steps.
  trained_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
  checkpoint = tf.train.Checkpoint(trained_steps=trained_steps, **{
      name: tf.train.Checkpoint(
          model=tf.train.Checkpoint(
              **{f"v{i}": v for i, v in enumerate(variables)}),
          optimizer=optimizer)
      for name, (variables, optimizer) in parts.items()})
  manager = tf.train.CheckpointManager(
      checkpoint, worker_folder(os.path.join(out_dir, "ckpt"), strategy),
      max_to_keep=2)
  handler = tf.distribute.experimental.PreemptionCheckpointHandler(
      strategy.cluster_resolver, manager,
      termination_config=tf.distribute.experimental.TerminationConfig(
          exit_fn=lambda: sys.exit(RESTART_CODE)))

  @tf.function
  def train_step(x, ids, y):
    def replica_step(x, ids, y):
      for variables, optimizer in parts.values():
        dm.step(optimizer, variables, x, ids, y)
    strategy.run(replica_step, args=(x, ids, y))

  start = int(trained_steps.numpy())
  record_start(out_dir, index, start)
  for step in range(start, LOOP_STEPS):
    batch = tuple(tf.constant(a)
                  for a in dm.shard(dm.data(seed=step), index, 2))
    handler.run(train_step, *batch)
    trained_steps.assign_add(1)
    if (step + 1) % SAVE_EVERY == 0:
      manager.save()
    maybe_pause(out_dir, index, step + 1)

  arrays = {}
  for name, (variables, optimizer) in parts.items():
    for key, value in dm.state(variables, optimizer).items():
      arrays[f"{name}/{key}"] = value
  np.savez(os.path.join(out_dir, f"state_{index}.npz"), **arrays)


def fit_model():
  return variable_kinds.constrained_model(3, units=6)


def fit_data():
  rng = np.random.RandomState(0)
  return (rng.randn(FIT_EXAMPLES, 4).astype(np.float32),
          rng.randn(FIT_EXAMPLES, 2).astype(np.float32))


class _PauseAfterBatch(keras.callbacks.Callback):
  """Counts batches over the whole run (not only this process's part)."""

  def __init__(self, out_dir, index, first_step):
    super().__init__()
    self._out_dir, self._index, self._step = out_dir, index, first_step

  def on_train_batch_end(self, batch, logs=None):
    self._step += 1
    maybe_pause(self._out_dir, self._index, self._step)


def train_fit(out_dir, index):
  # Keras 3's `fit` cannot run under MultiWorkerMirroredStrategy (it reduces
  # the first distributed batch with `strategy.reduce`, which that strategy
  # refuses: keras-team/keras#20585), so `fit` runs in one process on two
  # logical CPUs under MirroredStrategy.
  tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices("CPU")[0],
      [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    model = fit_model()
    optimizer = tf_adadelta.keras.Adadelta(**FIT_CONFIG)
    model.compile(optimizer=optimizer, loss="mse")
  backup = keras.callbacks.BackupAndRestore(
      os.path.join(out_dir, "backup"), delete_checkpoint=False)
  metadata = os.path.join(backup.backup_dir, "training_metadata.json")
  start_epoch = 0
  if os.path.exists(metadata):
    with open(metadata) as f:
      start_epoch = json.load(f)["epoch"]
  steps_per_epoch = FIT_EXAMPLES // FIT_GLOBAL_BATCH
  record_start(out_dir, index, start_epoch * steps_per_epoch)
  x, y = fit_data()
  model.fit(x, y, batch_size=FIT_GLOBAL_BATCH, epochs=FIT_EPOCHS,
            shuffle=False, verbose=0,
            callbacks=[backup, _PauseAfterBatch(
                out_dir, index, start_epoch * steps_per_epoch)])
  np.savez(os.path.join(out_dir, f"state_{index}.npz"),
           **state_snapshot.model_state(model, optimizer))


def main(out_dir, mode):
  index = 0
  if "TF_CONFIG" in os.environ:
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
  {"loop": train_loop, "fit": train_fit}[mode](out_dir, index)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
