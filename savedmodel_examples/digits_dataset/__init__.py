"""The TFDS dataset `uci_digits`, built from a file shipped in this folder."""

from savedmodel_examples.digits_dataset.digits import Digits

__all__ = ["Digits"]
