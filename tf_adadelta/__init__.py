"""tf_adadelta: Keras's Adadelta as a `tf.Module`, exact, fast and distributed."""

# Before anything imports TensorFlow's or Keras's APIs: a missing or too old
# TensorFlow or Keras raises an ImportError that names both versions.
from tf_adadelta import version_check as _version_check

_version_check.ensure_supported_versions()

from tf_adadelta import keras
from tf_adadelta.optimizer import Adadelta

__all__ = ["Adadelta", "keras"]
__version__ = "0.2.0.dev0"
