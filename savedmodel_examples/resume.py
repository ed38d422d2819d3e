"""Continues training from an exported SavedModel, without `tf_adadelta`.

Everything needed to take more optimizer steps is in the SavedModel: the
model's variables, the optimizer's variables (`iterations`, the learning
rate, the Adadelta accumulators) and the `train_step` signature. This module
deliberately imports neither `tf_adadelta` nor the trainer.
"""

from typing import Any, Dict

import tensorflow as tf

from savedmodel_examples import data
from savedmodel_examples import loop

TRAIN_STEP = "train_step"
SERVING_DEFAULT = "serving_default"


def resume(saved_model_dir: str, train_split: data.Split,
           test_split: data.Split, batch_size: int, seed: int, epochs: int,
           log_dir: str, verbose: int = 1) -> Dict[str, Any]:
  """Loads `saved_model_dir` and trains it for `epochs` more epochs.

  Training continues at the exported optimizer step, with the batches an
  uninterrupted run would have used there.

  Args:
    saved_model_dir: A SavedModel exported by `Trainer.export`.
    train_split: Training examples (as in the run that exported it).
    test_split: Test examples.
    batch_size: Examples per batch (as in the run that exported it).
    seed: Seed of the batch order (as in the run that exported it).
    epochs: Epochs to train after the exported step's epoch boundary.
    log_dir: Directory of the TensorBoard summaries of this run.
    verbose: 1 shows a progress bar, 0 is silent.

  Returns:
    A dict: "start_iterations", "final_iterations", "losses" (per step),
    "epochs" (see `loop.train`), "start_test_accuracy" and "test_accuracy"
    (before and after), and "signatures".

  Raises:
    ValueError: The SavedModel lacks the `train_step` or `serving_default`
      signature.
  """
  loaded = tf.saved_model.load(saved_model_dir)
  missing = {TRAIN_STEP, SERVING_DEFAULT} - set(loaded.signatures)
  if missing:
    raise ValueError(f"{saved_model_dir} has no signature(s) "
                     f"{sorted(missing)}; found {sorted(loaded.signatures)}.")
  train_step = loaded.signatures[TRAIN_STEP]
  serve = loaded.signatures[SERVING_DEFAULT]
  start = int(loaded.optimizer.iterations.numpy())
  per_epoch = data.steps_per_epoch(len(train_split.labels), batch_size)
  stop = (start // per_epoch + epochs) * per_epoch
  start_accuracy = loop.evaluate(serve, test_split)["accuracy"]
  if verbose:
    print(f"Loaded {saved_model_dir}: optimizer step {start}, test accuracy "
          f"{start_accuracy:.4f}; training to step {stop}.")
  writer = tf.summary.create_file_writer(log_dir)
  try:
    history = loop.train(train_step, serve, train_split, test_split,
                         batch_size, seed, start, stop, writer,
                         verbose=verbose)
  finally:
    writer.close()
  return {
      "start_iterations": start,
      "final_iterations": int(loaded.optimizer.iterations.numpy()),
      "losses": history["losses"],
      "epochs": history["epochs"],
      "start_test_accuracy": start_accuracy,
      "test_accuracy": loop.evaluate(serve, test_split)["accuracy"],
      "signatures": sorted(loaded.signatures),
  }
