"""Runs `fit` under MirroredStrategy on two logical CPUs and on one device.

Run by tests/test_keras_fit.py in a process of its own (a strategy's devices
are fixed when TensorFlow starts). Prints one JSON line: for each optimizer,
the largest difference between the mirrored run and the one-device run on the
global batch, and between the two replicas' slots.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import tf_adadelta  # pylint: disable=g-import-not-at-top
from tests import test_keras_fit as fit_tests  # pylint: disable=g-import-not-at-top

GLOBAL_BATCH = 16
CONFIGS = {
    "clip": dict(learning_rate=1.0, global_clipnorm=0.05),
    # Keras's own fails here under MirroredStrategy (a `merge_call` inside
    # its EMA overwrite's `cond`).
    "featured": dict(learning_rate=1.0, global_clipnorm=0.05,
                     weight_decay=0.01, use_ema=True,
                     ema_overwrite_frequency=3,
                     gradient_accumulation_steps=2),
}


def run(optimizer_cls, config, strategy):
  with strategy.scope():
    model = fit_tests._model()  # pylint: disable=protected-access
    optimizer = optimizer_cls(**config)
    model.compile(optimizer=optimizer, loss="mse")
  x, y = fit_tests._data(64)  # pylint: disable=protected-access
  model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False,
            verbose=0)
  weights = [v.numpy() for v in model.weights]
  replica_gap, copies_seen = 0.0, 0
  for i, variable in enumerate(model.trainable_variables):
    if optimizer_cls is tf_adadelta.keras.Adadelta:
      slot = optimizer.get_slot(variable, "accumulated_grad")
    else:
      slot = optimizer._accumulated_grads[i]  # pylint: disable=protected-access
    copies = getattr(slot.value, "values", None)
    copies_seen = max(copies_seen, len(copies or ()))
    if copies:
      replica_gap = max(replica_gap, float(np.max(np.abs(
          copies[0].numpy() - copies[-1].numpy()))))
  return (weights, int(optimizer.iterations.numpy()),
          (replica_gap, copies_seen))


def main():
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  mirrored = tf.distribute.MirroredStrategy(devices)
  one_device = tf.distribute.OneDeviceStrategy(devices[0])
  result = {"replicas": mirrored.num_replicas_in_sync}
  for config in sys.argv[1:] or sorted(CONFIGS):
    for label, cls in (("ours", tf_adadelta.keras.Adadelta),
                       ("keras", keras.optimizers.Adadelta)):
      expected, expected_iterations, _ = run(cls, CONFIGS[config], one_device)
      try:
        actual, iterations, replica_gap = run(cls, CONFIGS[config], mirrored)
      except Exception as e:  # pylint: disable=broad-except
        result[f"{config}/{label}"] = {"error": type(e).__name__}
        continue
      result[f"{config}/{label}"] = {
          "max_difference": max(float(np.max(np.abs(a - e)))
                                for a, e in zip(actual, expected)),
          "iterations": [iterations, expected_iterations],
          "replica_gap": replica_gap[0],
          "slot_copies": replica_gap[1],
      }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
