r"""Trains with `tf_adadelta.Adadelta`, exports a SavedModel, resumes from it.

  python savedmodel_examples/train_export_resume.py \
      --output_dir=/tmp/tf_adadelta_example

1. Prepares the dataset with TFDS (by default `uci_digits`, shipped with this
   example, so no network is needed) under `<output_dir>/tensorflow_datasets`.
2. Trains an MLP with `tf_adadelta.Adadelta` in an XLA-compiled custom loop,
   with a progress bar, TensorBoard summaries in `<output_dir>/tensorboard`
   and a checkpoint per epoch in `<output_dir>/checkpoints` (a rerun with the
   same output directory continues from the latest checkpoint). If the
   newest checkpoint is damaged (a truncated or corrupted `.data` or
   `.index` file, a damaged or missing `checkpoint` index file), the rerun
   logs which file and why, moves the unusable files to
   `checkpoints/damaged-<time>/` and continues from the newest checkpoint
   that restores, with the numbers of an uninterrupted run. If none
   restores it stops with an error, or starts over with
   `--restart_on_damaged_checkpoints`.
3. Exports `<output_dir>/saved_model`: the model and the optimizer's state,
   with the signatures `train_step` and `serving_default`.
4. Runs itself again in a fresh process with `--resume_from`; that process
   does not import `tf_adadelta`: it loads the SavedModel and keeps training
   through the `train_step` signature, from the exported optimizer step.
5. Takes the same first steps on the original trainer in this process and
   checks that the losses agree, then prints the final test accuracy.

Metrics of both runs are written (atomically) to
`<output_dir>/train_metrics.json` and `<output_dir>/resume_metrics.json`.
`train_metrics.json` is rewritten after every epoch and keeps the records of
earlier (interrupted) runs in the same output directory: one per epoch, an
epoch redone after a fall-back replacing the lost one, and a "runs" entry
per run saying what it restored. `--resume_in_fresh_process=false` stops
after the export.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging

# TensorFlow's C++ info and warning lines would bury the program's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __package__ in (None, ""):
  # Run as a script from a checkout: make `savedmodel_examples` importable.
  _ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if _ROOT not in sys.path:
    sys.path.append(_ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from savedmodel_examples import data  # pylint: disable=g-import-not-at-top
from savedmodel_examples import loop  # pylint: disable=g-import-not-at-top
from savedmodel_examples import recovery  # pylint: disable=g-import-not-at-top
from savedmodel_examples import resume  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Where data, checkpoints, summaries, "
                    "the SavedModel and metrics go.", required=True)
flags.DEFINE_string("dataset", "uci_digits",
                    "TFDS image classification dataset, e.g. 'mnist' (needs "
                    "a network) or the local 'uci_digits'.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: "
                    "<output_dir>/tensorflow_datasets).")
flags.DEFINE_integer("image_size", None, "Resize images to this square size "
                     "before flattening (default: keep their size).")
flags.DEFINE_integer("train_examples", None,
                     "Use only the first this many training examples.")
flags.DEFINE_integer("test_examples", None,
                     "Use only the first this many test examples.")
flags.DEFINE_integer("epochs", 20, "Epochs before the export.")
flags.DEFINE_integer("resume_epochs", 5,
                     "Epochs the resumed process trains after the export.")
flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
flags.DEFINE_list("hidden_units", ["64"], "Sizes of the hidden layers.")
flags.DEFINE_float("learning_rate", 1.0, "Adadelta's learning rate.")
flags.DEFINE_float("weight_decay", 1e-4,
                   "Decoupled weight decay of the kernels (0: none).")
flags.DEFINE_float("global_clipnorm", 1.0,
                   "Clip the gradients' global norm (0: no clipping).")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and batches.")
flags.DEFINE_integer("verify_steps", 5,
                     "Steps of the resumed run to repeat on the original "
                     "trainer and compare (0: skip).")
flags.DEFINE_string("resume_from", None,
                    "Only resume: load this SavedModel and train "
                    "--resume_epochs more epochs (this process does not "
                    "import tf_adadelta).")
flags.DEFINE_integer("verbose", 1, "1: progress bars, 0: quiet.")
flags.DEFINE_bool("restart_on_damaged_checkpoints", False,
                  "If <output_dir>/checkpoints holds checkpoints but none "
                  "restores (all damaged), move them aside and train from "
                  "the start; without it the program stops with an error.")
flags.DEFINE_bool("resume_in_fresh_process", True,
                  "After the export, resume from the SavedModel in a fresh "
                  "process and compare (false: stop after the export).")

TRAIN_METRICS = "train_metrics.json"
RESUME_METRICS = "resume_metrics.json"
# Relative tolerance of the resumed losses against the original trainer.
RTOL = 1e-5


def _load_splits():
  data_dir = FLAGS.data_dir or os.path.join(FLAGS.output_dir,
                                            "tensorflow_datasets")
  train_split = data.load(FLAGS.dataset, data_dir, "train",
                          FLAGS.train_examples, FLAGS.image_size)
  test_split = data.load(FLAGS.dataset, data_dir, "test", FLAGS.test_examples,
                         FLAGS.image_size)
  return train_split, test_split


def _path(name):
  return os.path.join(FLAGS.output_dir, name)


def _write_json(name, value):
  # Atomically: a kill never leaves a half-written file.
  recovery.write_json(_path(name), value)


def _read_json(name):
  with open(_path(name)) as f:
    return json.load(f)


def run_resume(train_split, test_split):
  """The fresh process: continues from `--resume_from`."""
  result = resume.resume(
      FLAGS.resume_from, train_split, test_split, FLAGS.batch_size,
      FLAGS.seed, FLAGS.resume_epochs,
      os.path.join(FLAGS.output_dir, "tensorboard", "resume"),
      verbose=FLAGS.verbose)
  imported = "tf_adadelta" in sys.modules
  result["tf_adadelta_imported"] = imported
  _write_json(RESUME_METRICS, result)
  print(f"Resumed from step {result['start_iterations']} to "
        f"{result['final_iterations']} in a process that "
        f"{'DID' if imported else 'did not'} import tf_adadelta; test "
        f"accuracy {result['start_test_accuracy']:.4f} -> "
        f"{result['test_accuracy']:.4f}.")


def _resume_in_fresh_process(saved_model_dir):
  """Runs this program with `--resume_from` and returns its metrics."""
  command = [sys.executable, os.path.abspath(__file__),
             f"--resume_from={saved_model_dir}"]
  for name in ("output_dir", "dataset", "data_dir", "image_size",
               "train_examples", "test_examples", "resume_epochs",
               "batch_size", "seed", "verbose"):
    value = FLAGS[name].value
    if value is not None:
      command.append(f"--{name}={value}")
  print("Resuming in a fresh process:", " ".join(command), flush=True)
  subprocess.run(command, check=True)
  return _read_json(RESUME_METRICS)


def _optional(value):
  return value if value else None


def _restore_trainer(train_split):
  """A trainer restored from the newest usable checkpoint, or a new one."""
  # Only the training process uses the optimizer's Python code.
  from savedmodel_examples import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  def make_checkpoint():
    # New objects per try: a checkpoint that fails halfway leaves nothing.
    return tf.train.Checkpoint(trainer=trainer_lib.Trainer(
        input_dim=train_split.features.shape[1],
        num_classes=train_split.num_classes,
        hidden_units=[int(units) for units in FLAGS.hidden_units],
        learning_rate=FLAGS.learning_rate,
        weight_decay=_optional(FLAGS.weight_decay),
        global_clipnorm=_optional(FLAGS.global_clipnorm),
        seed=FLAGS.seed))

  checkpoint_dir = os.path.join(FLAGS.output_dir, "checkpoints")
  recovered = recovery.restore_newest(
      checkpoint_dir, make_checkpoint,
      start_over=FLAGS.restart_on_damaged_checkpoints,
      start_over_flag="restart_on_damaged_checkpoints")
  trainer = recovered.checkpoint.trainer
  # `restore_newest` has logged what was damaged and where it moved it.
  if recovered.restored:
    print(f"Restored {recovered.restored} (optimizer step "
          f"{int(trainer.optimizer.iterations)}).")
  elif recovered.started_over:
    print("No checkpoint restores; starting over from step 0 "
          "(--restart_on_damaged_checkpoints).")
  manager = tf.train.CheckpointManager(recovered.checkpoint, checkpoint_dir,
                                       max_to_keep=3)
  return trainer, recovered, manager


def run_train(train_split, test_split):
  """Trains, checkpoints, exports, resumes elsewhere and compares."""
  trainer, recovered, manager = _restore_trainer(train_split)
  per_epoch = data.steps_per_epoch(len(train_split.labels), FLAGS.batch_size)
  start = int(trainer.optimizer.iterations)
  stop = max(start, FLAGS.epochs * per_epoch)
  print(f"Training on {len(train_split.labels)} examples of "
        f"'{FLAGS.dataset}' ({train_split.features.shape[1]} features, "
        f"{per_epoch} steps per epoch) from step {start} to {stop}.")
  # The records of earlier runs up to `start` stay; later ones are redone.
  previous = recovery.read_json(_path(TRAIN_METRICS))
  runs = list((previous or {}).get("runs", [])) + [
      dict(start_iterations=start, **recovered.summary())]
  history = {"losses": [], "epochs": []}

  def metrics(**extra):
    return {**recovery.merge_history(previous, start, history), "runs": runs,
            **extra}

  def on_epoch_end(step):
    # The metrics first: the records always cover the newest checkpoint.
    _write_json(TRAIN_METRICS, metrics())
    manager.save(checkpoint_number=step)

  writer = tf.summary.create_file_writer(
      os.path.join(FLAGS.output_dir, "tensorboard", "train"))
  try:
    loop.train(
        trainer.train_step, trainer.serve, train_split, test_split,
        FLAGS.batch_size, FLAGS.seed, start, stop, writer,
        on_epoch_end=on_epoch_end, verbose=FLAGS.verbose, history=history)
  finally:
    writer.close()
  exported_step = int(trainer.optimizer.iterations)
  if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(
      f"-{exported_step}"):
    manager.save(checkpoint_number=exported_step)
  test = loop.evaluate(trainer.serve, test_split)
  saved_model_dir = trainer.export(
      os.path.join(FLAGS.output_dir, "saved_model"))
  print(f"Exported {saved_model_dir} at optimizer step {exported_step} "
        f"(test accuracy {test['accuracy']:.4f}), signatures "
        f"{sorted(trainer.signatures())}.")
  _write_json(TRAIN_METRICS, metrics(
      exported_iterations=exported_step,
      checkpoint=manager.latest_checkpoint,
      test_loss=test["loss"],
      test_accuracy=test["accuracy"]))

  if not FLAGS.resume_in_fresh_process:
    print(f"Final test accuracy: {test['accuracy']:.4f} (after "
          f"{exported_step} optimizer steps; no fresh-process resume).")
    return
  resumed = _resume_in_fresh_process(saved_model_dir)
  verify = min(FLAGS.verify_steps, len(resumed["losses"]))
  if verify:
    here = [
        float(trainer.train_step(features=tf.constant(x),
                                 labels=tf.constant(y))["loss"])
        for _, x, y in data.batches(train_split, FLAGS.batch_size, FLAGS.seed,
                                    exported_step, exported_step + verify)
    ]
    there = resumed["losses"][:verify]
    difference = np.max(np.abs(np.subtract(here, there)) / np.abs(here))
    print(f"First {verify} resumed losses {np.round(there, 6).tolist()}; the "
          f"same steps on the original trainer: {np.round(here, 6).tolist()} "
          f"(max relative difference {difference:.2e}).")
    metrics = _read_json(TRAIN_METRICS)
    metrics["in_process_resume_losses"] = here
    _write_json(TRAIN_METRICS, metrics)
    if not np.allclose(here, there, rtol=RTOL, atol=0):
      raise RuntimeError("The resumed run diverges from the original trainer "
                         f"by more than rtol={RTOL}.")
  print(f"Final test accuracy: {resumed['test_accuracy']:.4f} (after "
        f"{resumed['final_iterations']} optimizer steps).")


def main(argv):
  del argv  # Unused.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  tf.io.gfile.makedirs(FLAGS.output_dir)
  train_split, test_split = _load_splits()
  if FLAGS.resume_from:
    run_resume(train_split, test_split)
    return
  try:
    run_train(train_split, test_split)
  except recovery.NoUsableCheckpointError as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  app.run(main)
