"""Loads a TFDS image classification dataset as flat float features.

The examples keep whole splits in memory as NumPy arrays and cut them into
batches in an order fixed by a seed and the epoch, so a run resumed at any
step (in this process or another) sees the same batches as an uninterrupted
run.
"""

import math
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Registers the local dataset `uci_digits` with TFDS.
from savedmodel_examples import digits_dataset  # pylint: disable=unused-import

# Images of other datasets are taken to hold uint8 pixels.
_DEFAULT_MAX_PIXEL = 255


class Split(NamedTuple):
  """One split: `features` [N, D] float32 in [0, 1], `labels` [N] int64."""
  features: np.ndarray
  labels: np.ndarray
  num_classes: int


def _split_name(split: str, max_examples: Optional[int]) -> str:
  return split if not max_examples else f"{split}[:{max_examples}]"


def load(name: str, data_dir: str, split: str,
         max_examples: Optional[int] = None,
         image_size: Optional[int] = None) -> Split:
  """Prepares (if needed) and reads one split of a TFDS dataset.

  Args:
    name: A TFDS name with an `image` and a `label` feature, such as
      "uci_digits" (shipped with the examples) or "mnist" (downloaded).
    data_dir: Where TFDS keeps prepared datasets.
    split: "train" or "test".
    max_examples: If set, only the first this many examples of the split.
    image_size: If set, images are resized to `image_size` x `image_size`
      (by area averaging) before they are flattened.

  Returns:
    The split as a `Split`.

  Raises:
    ValueError: The dataset has no supervised keys.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()
  if not builder.info.supervised_keys:
    raise ValueError(f"Dataset '{name}' has no (image, label) supervised "
                     "keys; pick an image classification dataset.")
  images, labels = tfds.as_numpy(builder.as_dataset(
      split=_split_name(split, max_examples), as_supervised=True,
      batch_size=-1))
  max_pixel = (builder.info.metadata or {}).get("max_pixel",
                                                _DEFAULT_MAX_PIXEL)
  images = tf.cast(images, tf.float32) / float(max_pixel)
  if image_size:
    images = tf.image.resize(images, [image_size, image_size], method="area")
  features = tf.reshape(images, [images.shape[0], -1]).numpy()
  num_classes = builder.info.features[builder.info.supervised_keys[1]]
  return Split(features, labels.astype(np.int64), num_classes.num_classes)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Batches per epoch; the last batch of an epoch may be smaller."""
  return math.ceil(num_examples / batch_size)


def batches(split: Split, batch_size: int, seed: int, start_step: int,
            stop_step: int) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
  """The training batches of global steps `start_step` to `stop_step - 1`.

  Epoch `e` visits the examples in the order of a permutation drawn from the
  seed `(seed, e)`, so the batch of a step depends only on the step.

  Args:
    split: The training split.
    batch_size: Examples per batch.
    seed: The shuffling seed.
    start_step: The first global step (for example the optimizer's
      `iterations` when resuming).
    stop_step: One past the last global step.

  Yields:
    Triples `(step, features, labels)`.
  """
  num_examples = len(split.labels)
  per_epoch = steps_per_epoch(num_examples, batch_size)
  order, order_epoch = None, None
  for step in range(start_step, stop_step):
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:
      order = np.random.default_rng([seed, epoch]).permutation(num_examples)
      order_epoch = epoch
    chosen = order[index * batch_size:(index + 1) * batch_size]
    yield step, split.features[chosen], split.labels[chosen]
