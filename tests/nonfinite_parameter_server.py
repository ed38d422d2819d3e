"""`skip_nonfinite_steps` under ParameterServerStrategy, for tests.

Starts an in-process cluster (one worker, two parameter servers, variables
split in two shards), trains with finite and non-finite steps through a
`ClusterCoordinator`, and writes to `<out>/result.npz`: the variables and
their averages at the end, the counters, and every optimizer variable just
before and just after each non-finite step.

A separate process because TensorFlow connects a process to one cluster.

Usage: nonfinite_parameter_server.py OUT_DIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tf_adadelta  # pylint: disable=g-import-not-at-top
from tests import parameter_server_cluster  # pylint: disable=g-import-not-at-top

CONFIG = dict(learning_rate=1.0, weight_decay=0.05, use_ema=True,
              ema_momentum=0.9, ema_overwrite_frequency=2,
              gradient_accumulation_steps=2)
INITIAL = [np.array([1.0, -2.0, 0.5, 3.0], np.float32),
           np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2)]
GRADS = [np.array([0.5, -0.25, 1.0, 2.0], np.float32),
         np.linspace(0.3, -0.4, 8, dtype=np.float32).reshape(4, 2)]
# True: the first variable's gradient is NaN in that step.
SCHEDULE = [False, False, True, False, True, False]


def _shards(variable):
  return list(variable.variables) if hasattr(variable, "variables") else [
      variable]


def main(out_dir):
  resolver, servers = parameter_server_cluster.start_cluster(1)
  strategy = tf.distribute.experimental.ParameterServerStrategy(
      resolver,
      variable_partitioner=(
          tf.distribute.experimental.partitioners.FixedShardsPartitioner(2)))
  coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
      strategy)
  with strategy.scope():
    variables = [tf.Variable(v) for v in INITIAL]
    optimizer = tf_adadelta.Adadelta(**CONFIG, skip_nonfinite_steps=True)

  def make_step(bad):
    @tf.function
    def train_step():
      def replica_fn():
        pairs = []
        for i, (variable, grad) in enumerate(zip(variables, GRADS)):
          grad = tf.constant(grad)
          if bad and i == 0:
            grad = grad * np.float32("nan")
          shards = _shards(variable)
          pieces = tf.split(grad, [s.shape[0] for s in shards])
          pairs.extend(zip(pieces, shards))
        optimizer.apply_gradients(pairs)
      return strategy.run(replica_fn)
    return train_step

  steps = {False: make_step(False), True: make_step(True)}
  arrays = {}

  def record(prefix):
    for i, v in enumerate(optimizer.variables):
      if v is not optimizer.skipped_steps:
        arrays[f"{prefix}/{i}"] = v.numpy()

  for index, bad in enumerate(SCHEDULE):
    if bad:
      record(f"before_{index}")
    coordinator.schedule(steps[bad])
    coordinator.join()
    if bad:
      record(f"after_{index}")
  for i, variable in enumerate(variables):
    shards = _shards(variable)
    arrays[f"var/{i}"] = np.concatenate([s.numpy() for s in shards])
    arrays[f"average/{i}"] = np.concatenate(
        [optimizer.get_slot(s, "average").numpy() for s in shards])
    arrays[f"shards/{i}"] = np.asarray(len(shards))
  arrays["skipped_steps"] = optimizer.skipped_steps.numpy()
  arrays["iterations"] = optimizer.iterations.numpy()
  arrays["micro_iterations"] = optimizer.micro_iterations.numpy()
  np.savez(os.path.join(out_dir, "result.npz"), **arrays)
  del servers


if __name__ == "__main__":
  main(sys.argv[1])
