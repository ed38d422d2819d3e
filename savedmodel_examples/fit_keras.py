r"""Trains with `model.fit` and `tf_adadelta.keras.Adadelta`, saves, resumes.

  python savedmodel_examples/fit_keras.py --output_dir=/tmp/tf_adadelta_fit

1. Prepares the bundled UCI digits (TFDS `uci_digits`, no network needed)
   under `<output_dir>/tensorflow_datasets`.
2. Trains an MLP with `model.fit` and `tf_adadelta.keras.Adadelta` (weight
   decay, `global_clipnorm`), with `keras.callbacks.BackupAndRestore` in
   `<output_dir>/backup` (a killed run, rerun, continues where it stopped,
   from the previous backup if the newest is damaged).
3. Saves `<output_dir>/model.keras`: the model and the optimizer's state.
4. Runs itself again in a fresh process with `--resume_from`: that process
   imports `tf_adadelta` (which registers the optimizer for Keras), loads the
   file with `keras.models.load_model` and trains `--resume_epochs` more.
5. Continues the original model in this process for the same epochs and
   checks that both runs' losses agree: the file carried the whole state.

Metrics are written to `<output_dir>/fit_metrics.json`.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __package__ in (None, ""):
  _ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if _ROOT not in sys.path:
    sys.path.append(_ROOT)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import tf_adadelta  # pylint: disable=g-import-not-at-top
from savedmodel_examples import data  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where data, the backup, the .keras "
                    "file and metrics go.", required=True)
flags.DEFINE_integer("epochs", 10, "Epochs before saving.")
flags.DEFINE_integer("resume_epochs", 3, "Epochs trained after reloading.")
flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
flags.DEFINE_integer("hidden_units", 64, "Size of the hidden layer.")
flags.DEFINE_float("learning_rate", 1.0, "Adadelta's learning rate.")
flags.DEFINE_integer("train_examples", None,
                     "Use only the first this many training examples.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights.")
flags.DEFINE_string("resume_from", None, "Only resume: load this .keras file "
                    "and train --resume_epochs more epochs.")
flags.DEFINE_string("resume_metrics", None,
                    "With --resume_from: where to write the losses (JSON).")

RTOL = 1e-5


def _splits():
  data_dir = os.path.join(FLAGS.output_dir, "tensorflow_datasets")
  return (data.load("uci_digits", data_dir, "train", FLAGS.train_examples),
          data.load("uci_digits", data_dir, "test"))


def _continue(model, train, test, first_epoch=0):
  """Trains `--resume_epochs` more epochs; returns the losses and accuracy.

  `first_epoch`: the index of the first of them. After `BackupAndRestore`
  restored a run, Keras starts every later `fit` of that model at the epoch
  it restored (whatever `initial_epoch` says), so a model continued in the
  same process must count from there to train `--resume_epochs` epochs.
  """
  history = model.fit(train.features, train.labels,
                      batch_size=FLAGS.batch_size, initial_epoch=first_epoch,
                      epochs=first_epoch + FLAGS.resume_epochs,
                      shuffle=False, verbose=0)
  _, accuracy = model.evaluate(test.features, test.labels, verbose=0)
  return {"losses": [float(v) for v in history.history["loss"]],
          "test_accuracy": float(accuracy),
          "iterations": int(model.optimizer.iterations.numpy())}


def _resume(train, test):
  model = keras.models.load_model(FLAGS.resume_from)  # No custom_objects.
  print(f"Resumed {FLAGS.resume_from} with {type(model.optimizer).__name__} "
        f"at step {int(model.optimizer.iterations.numpy())}.")
  with open(FLAGS.resume_metrics, "w") as f:
    json.dump(_continue(model, train, test), f)


def main(argv):
  del argv
  train, test = _splits()
  if FLAGS.resume_from:
    _resume(train, test)
    return
  keras.utils.set_random_seed(FLAGS.seed)
  model = keras.Sequential([
      keras.Input((train.features.shape[1],)),
      keras.layers.Dense(FLAGS.hidden_units, activation="relu"),
      keras.layers.Dense(train.num_classes),
  ])
  model.compile(
      optimizer=tf_adadelta.keras.Adadelta(
          FLAGS.learning_rate, weight_decay=1e-4, global_clipnorm=1.0),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  # Two backups: a run killed while writing one restores the other.
  backup = keras.callbacks.BackupAndRestore(
      os.path.join(FLAGS.output_dir, "backup"), double_checkpoint=True)
  history = model.fit(train.features, train.labels,
                      batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                      shuffle=False, verbose=2, callbacks=[backup],
                      validation_data=(test.features, test.labels))
  path = os.path.join(FLAGS.output_dir, "model.keras")
  model.save(path)
  print(f"Saved {path} at step {int(model.optimizer.iterations.numpy())}.")

  resume_metrics = os.path.join(FLAGS.output_dir, "fit_resume_metrics.json")
  argv = [sys.executable, os.path.abspath(__file__),
          f"--output_dir={FLAGS.output_dir}", f"--resume_from={path}",
          f"--resume_metrics={resume_metrics}",
          f"--resume_epochs={FLAGS.resume_epochs}",
          f"--batch_size={FLAGS.batch_size}"]
  if FLAGS.train_examples:
    argv.append(f"--train_examples={FLAGS.train_examples}")
  subprocess.run(argv, check=True)
  with open(resume_metrics) as f:
    resumed = json.load(f)
  # The first epoch this process ran (after a restore, not 0); with none
  # left to run after a restore, the last one.
  first_epoch = history.epoch[0] if history.epoch else FLAGS.epochs
  continued = _continue(model, train, test, first_epoch)
  np.testing.assert_allclose(resumed["losses"], continued["losses"],
                             rtol=RTOL)
  assert resumed["iterations"] == continued["iterations"]
  print(f"Resumed losses {np.round(resumed['losses'], 5).tolist()} agree with "
        f"this process's (rtol={RTOL}); test accuracy "
        f"{resumed['test_accuracy']:.3f}.")
  with open(os.path.join(FLAGS.output_dir, "fit_metrics.json"), "w") as f:
    json.dump({"train": {k: [float(x) for x in v]
                         for k, v in history.history.items()},
               "resumed": resumed, "continued": continued}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
