"""The training loop shared by the first run and the resumed run.

It drives any `train_step(features=..., labels=...)` and
`serve(features=...)` pair that returns dicts of tensors: the trainer's own
functions, or the signatures of its SavedModel loaded in another process.
It shows a progress bar per epoch and writes TensorBoard summaries.
"""

import sys
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from savedmodel_examples import data
from savedmodel_examples import summaries

StepFn = Callable[..., Dict[str, tf.Tensor]]


def _progbar_verbosity(verbose: int) -> int:
  """A live bar on a terminal; one line per epoch in a log (Keras's 2)."""
  if not verbose:
    return 0
  return 1 if sys.stdout.isatty() else 2


def evaluate(serve: StepFn, split: data.Split) -> Dict[str, float]:
  """Mean cross-entropy and accuracy of `serve`'s logits on `split`.

  Args:
    serve: Returns a dict with "logits" for `features`.
    split: The examples to score.

  Returns:
    A dict with "loss" and "accuracy" (Python floats).
  """
  logits = serve(features=tf.constant(split.features))["logits"]
  labels = tf.constant(split.labels)
  loss = tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
  accuracy = np.mean(np.argmax(logits.numpy(), axis=-1) == split.labels)
  return {"loss": float(loss), "accuracy": float(accuracy)}


def train(train_step: StepFn, serve: StepFn, train_split: data.Split,
          test_split: data.Split, batch_size: int, seed: int, start_step: int,
          stop_step: int, writer: tf.summary.SummaryWriter,
          on_epoch_end: Optional[Callable[[int], None]] = None,
          verbose: int = 1,
          history: Optional[Dict[str, List]] = None) -> Dict[str, List]:
  """Runs the global steps `start_step` to `stop_step - 1`.

  Args:
    train_step: One optimizer step on a batch; returns "loss", "accuracy",
      "learning_rate" and "iterations" (the step count after the step).
    serve: Returns "logits" for features (for the test metrics).
    train_split: Training examples.
    test_split: Examples scored at the end of every epoch.
    batch_size: Examples per batch.
    seed: Seed of the batch order (see `data.batches`).
    start_step: The first global step; the optimizer's `iterations` must
      equal it.
    stop_step: One past the last global step.
    writer: Receives the scalars loss, accuracy and learning_rate per step,
      and test_loss and test_accuracy per epoch, at the global step.
    on_epoch_end: Called with the step count after each finished epoch (for
      example to save a checkpoint).
    verbose: 1 shows a progress bar (one line per epoch when the output is
      not a terminal), 0 is silent.
    history: If given, a dict with empty lists "losses" and "epochs" that
      the records are appended to as they come (so `on_epoch_end` can save
      them), and that is returned.

  Returns:
    A dict: "losses" (per step, before its update, in order), "epochs"
    (per finished epoch: "epoch", "iterations", "train_loss", "test_loss",
    "test_accuracy").

  Raises:
    ValueError: The step count that `train_step` returns does not follow
      `start_step`.
  """
  per_epoch = data.steps_per_epoch(len(train_split.labels), batch_size)
  if history is None:
    history = {"losses": [], "epochs": []}
  progbar, epoch_losses = None, []
  for step, features, labels in data.batches(train_split, batch_size, seed,
                                             start_step, stop_step):
    epoch, index = divmod(step, per_epoch)
    if progbar is None or index == 0:
      if verbose:
        print(f"Epoch {epoch + 1}")
      progbar = tf.keras.utils.Progbar(
          per_epoch, verbose=_progbar_verbosity(verbose), unit_name="step")
      epoch_losses = []
    out = train_step(features=tf.constant(features),
                     labels=tf.constant(labels))
    if int(out["iterations"]) != step + 1:
      raise ValueError(f"The optimizer's step count is {int(out['iterations'])}"
                       f" after global step {step}; expected {step + 1}.")
    loss, accuracy = float(out["loss"]), float(out["accuracy"])
    history["losses"].append(loss)
    epoch_losses.append(loss)
    with writer.as_default(step=step):
      summaries.scalar("loss", loss)
      summaries.scalar("accuracy", accuracy)
      summaries.scalar("learning_rate", float(out["learning_rate"]))
    progbar.update(index + 1, values=[("loss", loss), ("accuracy", accuracy)])
    if index == per_epoch - 1:
      test = evaluate(serve, test_split)
      with writer.as_default(step=step):
        summaries.scalar("test_loss", test["loss"])
        summaries.scalar("test_accuracy", test["accuracy"])
      writer.flush()
      history["epochs"].append({
          "epoch": epoch + 1,
          "iterations": step + 1,
          "train_loss": float(np.mean(epoch_losses)),
          "test_loss": test["loss"],
          "test_accuracy": test["accuracy"],
      })
      if verbose:
        print(f"  epoch {epoch + 1}: train loss {np.mean(epoch_losses):.4f}, "
              f"test loss {test['loss']:.4f}, test accuracy "
              f"{test['accuracy']:.4f}")
      if on_epoch_end is not None:
        on_epoch_end(step + 1)
  return history
