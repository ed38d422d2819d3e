"""One worker of a MultiWorkerMirroredStrategy cluster, for test_multiworker.

Reads the cluster from `TF_CONFIG`, trains the `distributed_model` on its
share of the global batch once per optimizer setting, and writes every number
the optimizer owns to `<out>/state_<task>.npz`. The chief also writes a
checkpoint per setting to `<out>/ckpt_<setting>`; the other worker writes its
copy to a scratch folder, as every worker must take part in a save.

Usage: multiworker_worker.py OUT_DIR SETTING [SETTING ...]
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tests import distributed_model as dm  # pylint: disable=g-import-not-at-top


def _make_step(strategy, optimizer, variables):
  # A closure: variables passed as `tf.function` arguments would be traced as
  # inputs, not captured.
  @tf.function
  def distributed_step(x, ids, y):
    return strategy.run(lambda *b: dm.step(optimizer, variables, *b),
                        args=(x, ids, y))

  return distributed_step


def main(out_dir, settings):
  task = json.loads(os.environ["TF_CONFIG"])["task"]
  index = task["index"]
  strategy = tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
          implementation=tf.distribute.experimental.CommunicationImplementation
          .RING))
  assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
  batch = tuple(tf.constant(a) for a in dm.shard(dm.data(), index, 2))
  arrays = {}
  for setting in settings:
    with strategy.scope():
      variables = dm.make_variables(dm.variable_kind(setting))
      optimizer = dm.make_optimizer(setting)

    distributed_step = _make_step(strategy, optimizer, variables)
    for _ in range(dm.STEPS):
      distributed_step(*batch)
    for key, value in dm.state(variables, optimizer).items():
      arrays[f"{setting}/{key}"] = value
    checkpoint = tf.train.Checkpoint(
        model=tf.train.Checkpoint(
            **{f"v{i}": v for i, v in enumerate(variables)}),
        optimizer=optimizer)
    folder = out_dir if index == 0 else os.path.join(out_dir, f"scratch_{index}")
    checkpoint.write(os.path.join(folder, dm.checkpoint_name(setting)))
  np.savez(os.path.join(out_dir, f"state_{index}.npz"), **arrays)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
