"""A small MLP classifier and its trainer, a `tf.Module` ready for SavedModel.

The trainer holds the model's variables and a `tf_adadelta.Adadelta`, and
exposes two functions with fixed input signatures, which become the
SavedModel's signatures:

* `train_step(features, labels)`: one optimizer step (compiled with XLA);
  returns the batch's loss and accuracy (before the step), the learning rate
  and the optimizer's `iterations` after the step.
* `serve(features)`: logits, probabilities and predicted classes.

A process that loads the SavedModel needs neither this module nor
`tf_adadelta` to continue training: the optimizer's state and update are in
the SavedModel.
"""

import os
from typing import Dict, Optional, Sequence

import tensorflow as tf

import tf_adadelta

TRAIN_STEP = "train_step"
SERVING_DEFAULT = "serving_default"


class Dense(tf.Module):
  """A dense layer with Glorot-uniform weights drawn from a fixed seed."""

  def __init__(self, input_dim: int, units: int, seed: int,
               activation=None, name: Optional[str] = None):
    super().__init__(name=name)
    limit = (6.0 / (input_dim + units)) ** 0.5
    with self.name_scope:
      self.kernel = tf.Variable(
          tf.random.stateless_uniform([input_dim, units], seed=[seed, 0],
                                      minval=-limit, maxval=limit),
          name="kernel")
      self.bias = tf.Variable(tf.zeros([units]), name="bias")
    self.activation = activation

  def __call__(self, x):
    y = tf.matmul(x, self.kernel) + self.bias
    return self.activation(y) if self.activation else y


class MLP(tf.Module):
  """ReLU hidden layers, then a linear layer producing logits."""

  def __init__(self, input_dim: int, hidden_units: Sequence[int],
               num_classes: int, seed: int = 0, name: str = "mlp"):
    super().__init__(name=name)
    sizes = [input_dim] + list(hidden_units)
    with self.name_scope:
      self.layers = [
          Dense(sizes[i], sizes[i + 1], seed=seed + i, activation=tf.nn.relu,
                name=f"hidden_{i}") for i in range(len(hidden_units))
      ]
      self.layers.append(Dense(sizes[-1], num_classes,
                               seed=seed + len(hidden_units), name="logits"))

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


class Trainer(tf.Module):
  """An MLP, its `tf_adadelta.Adadelta`, and the two exported functions.

  Args:
    input_dim: Length of a feature vector.
    num_classes: Number of classes.
    hidden_units: Sizes of the hidden layers.
    learning_rate: The optimizer's learning rate (Adadelta is usually run
      with 1.0).
    weight_decay: Decoupled weight decay of the kernels (biases are
      excluded), or None.
    global_clipnorm: Clip the gradients' global norm to this, or None.
    seed: Seed of the initial weights.
  """

  def __init__(self, input_dim: int, num_classes: int,
               hidden_units: Sequence[int] = (64,),
               learning_rate: float = 1.0,
               weight_decay: Optional[float] = 1e-4,
               global_clipnorm: Optional[float] = 1.0,
               seed: int = 0):
    super().__init__(name="trainer")
    self.model = MLP(input_dim, hidden_units, num_classes, seed=seed)
    self.optimizer = tf_adadelta.Adadelta(
        learning_rate=learning_rate, weight_decay=weight_decay,
        global_clipnorm=global_clipnorm)
    self.optimizer.exclude_from_weight_decay(var_names=["bias"])
    # Slots exist before the first (compiled) step and before any export.
    self.optimizer.build(self.model.trainable_variables)

    features = tf.TensorSpec([None, input_dim], tf.float32, name="features")
    labels = tf.TensorSpec([None], tf.int64, name="labels")
    self.train_step = tf.function(self._train_step,
                                  input_signature=[features, labels],
                                  jit_compile=True)
    self.serve = tf.function(self._serve, input_signature=[features])

  def _train_step(self, features, labels) -> Dict[str, tf.Tensor]:
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      logits = self.model(features)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, variables)
    self.optimizer.apply_gradients(zip(grads, variables))
    return {
        "loss": loss,
        "accuracy": _accuracy(logits, labels),
        "learning_rate": tf.identity(self.optimizer.learning_rate),
        "iterations": tf.identity(self.optimizer.iterations),
    }

  def _serve(self, features) -> Dict[str, tf.Tensor]:
    logits = self.model(features)
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits),
        "classes": tf.argmax(logits, axis=-1),
    }

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The SavedModel signatures: `train_step` and `serving_default`."""
    return {
        TRAIN_STEP: self.train_step.get_concrete_function(),
        SERVING_DEFAULT: self.serve.get_concrete_function(),
    }

  def export(self, export_dir: str) -> str:
    """Writes a SavedModel with the model, the optimizer and both signatures.

    Args:
      export_dir: The SavedModel directory (replaced if it exists).

    Returns:
      `export_dir`.
    """
    if tf.io.gfile.exists(export_dir):
      tf.io.gfile.rmtree(export_dir)
    tf.saved_model.save(self, export_dir, signatures=self.signatures())
    return os.fspath(export_dir)


def _accuracy(logits, labels):
  correct = tf.equal(tf.argmax(logits, axis=-1), labels)
  return tf.reduce_mean(tf.cast(correct, tf.float32))
