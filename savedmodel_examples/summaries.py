"""TensorBoard scalar summaries that do not need the `tensorboard` package.

`tf.summary.scalar` raises `TBNotInstalledError` when TensorBoard is not
installed (recent TensorFlow releases no longer depend on it). `scalar` writes
the same event (a float32 tensor with the scalars plugin's metadata) with
`tf.summary.write`, which is part of TensorFlow, so the examples record
their curves either way and `tensorboard --logdir` shows them.
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def scalar(name: str, value, step=None) -> bool:
  """Writes a scalar to the default summary writer.

  Args:
    name: The tag.
    value: A real number or scalar tensor.
    step: The step; None uses `tf.summary.experimental.get_step()`.

  Returns:
    True if a default writer recorded it, False otherwise.
  """
  return tf.summary.write(name, tf.cast(value, tf.float32), step=step,
                          metadata=_SCALAR_METADATA)
