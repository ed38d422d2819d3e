r"""Times a `model.fit` step with `tf_adadelta.keras.Adadelta` against Keras's.

Two copies of the same MLP, one compiled with each optimizer (same
arguments), train on the same in-memory batches. Each round runs one
`fit` epoch of `--steps` batches per contender, interleaved (so a noisy
neighbour slows both alike); the figure is the median per-step time over the
rounds, from the epoch's wall time divided by its steps. The first `fit` of
each contender (tracing its step, building the optimizer) is timed too.

Usage:
  python benchmarks/benchmark_fit.py            # the README's figures
  python benchmarks/benchmark_fit.py --quick    # a tiny smoke run
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import numpy as np

import tf_adadelta

FLAGS = flags.FLAGS
flags.DEFINE_list("hidden_units", ["1024", "1024", "1024"],
                  "Hidden layer sizes of the MLP.")
flags.DEFINE_integer("inputs", 784, "Input features.")
flags.DEFINE_integer("batch_size", 64, "Examples per step.")
flags.DEFINE_integer("steps", 50, "Steps per timed `fit` epoch.")
flags.DEFINE_integer("rounds", 15, "Timed rounds (one epoch per contender).")
flags.DEFINE_list("configs", ["plain", "featured"], "Configurations to run.")
flags.DEFINE_bool("quick", False, "Tiny sizes, for a smoke run.")

CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "featured": dict(learning_rate=1.0, weight_decay=1e-4,
                     global_clipnorm=1.0, use_ema=True),
}
CONTENDERS = {"keras": keras.optimizers.Adadelta,
              "tf_adadelta": tf_adadelta.keras.Adadelta}


def _model(hidden_units, inputs):
  keras.utils.set_random_seed(0)
  layers = [keras.Input((inputs,))]
  layers += [keras.layers.Dense(units, activation="relu")
             for units in hidden_units]
  layers.append(keras.layers.Dense(10))
  return keras.Sequential(layers)


def _load_kernels(inputs):
  """A tiny `fit`, so that no contender's first `fit` pays for the process."""
  model = _model([8], inputs)
  model.compile(optimizer="sgd", loss="mse")
  model.fit(np.zeros((4, inputs), np.float32), np.zeros((4, 10), np.float32),
            verbose=0)


def run_config(config, hidden_units, inputs, batch_size, steps, rounds):
  """Returns {contender: (median ms per step, first `fit` in s)}."""
  rng = np.random.RandomState(0)
  x = rng.randn(batch_size * steps, inputs).astype(np.float32)
  y = rng.randint(0, 10, size=(batch_size * steps,)).astype(np.int32)
  models, first_fit = {}, {}
  for name, cls in CONTENDERS.items():
    model = _model(hidden_units, inputs)
    model.compile(optimizer=cls(**CONFIGS[config]),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    start = time.perf_counter()  # The first `fit`: tracing and building.
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    first_fit[name] = time.perf_counter() - start
    models[name] = model
  times = {name: [] for name in models}
  for _ in range(rounds):
    for name, model in models.items():
      start = time.perf_counter()
      model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0,
                shuffle=False)
      times[name].append((time.perf_counter() - start) / steps * 1e3)
  return {name: (statistics.median(t), first_fit[name])
          for name, t in times.items()}


def main(argv):
  del argv
  hidden = [int(u) for u in FLAGS.hidden_units]
  steps, rounds = FLAGS.steps, FLAGS.rounds
  if FLAGS.quick:
    hidden, steps, rounds = [32], 4, 2
  params = _model(hidden, FLAGS.inputs).count_params()
  layers = "-".join(map(str, hidden))
  if len(hidden) > 4 and len(set(hidden)) == 1:
    layers = f"{hidden[0]}x{len(hidden)}"
  print(f"MLP {FLAGS.inputs}-{layers}-10, {params:,} "
        f"parameters, batch {FLAGS.batch_size}, {steps} steps x {rounds} "
        "rounds, median")
  _load_kernels(FLAGS.inputs)
  print("| config | contender | ms/step | vs keras | first fit (s) |")
  print("|---|---|---|---|---|")
  for config in FLAGS.configs:
    result = run_config(config, hidden, FLAGS.inputs, FLAGS.batch_size,
                        steps, rounds)
    keras_ms = result["keras"][0]
    for name, (ms, first) in result.items():
      print(f"| {config} | {name} | {ms:.3f} | {ms / keras_ms:.2f}x | "
            f"{first:.2f} |")


if __name__ == "__main__":
  app.run(main)
