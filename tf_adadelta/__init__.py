"""tf_adadelta: Keras's Adadelta as a `tf.Module`, exact, fast and distributed."""

from tf_adadelta.optimizer import Adadelta

__all__ = ["Adadelta"]
__version__ = "0.1.0"
