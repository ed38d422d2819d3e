"""TFDS builder for the UCI optical handwritten digits, read from a local file.

The data ship next to this module (`digits.csv.gz`, see README.md there), so
preparing the dataset needs no network.
"""

import csv
import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "digits.csv.gz")
NUM_EXAMPLES = 1797
NUM_TRAIN = 1437
IMAGE_SHAPE = (8, 8, 1)
MAX_PIXEL = 16

_CITATION = """\
@misc{alpaydin1998optical,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  note = {DOI: https://doi.org/10.24432/C50P49}
}
"""


def read_rows(path=DATA_FILE):
  """Reads the shipped file.

  Args:
    path: The gzipped CSV file: 64 pixels then the label on each line.

  Returns:
    A pair `(images, labels)`: uint8 arrays of shapes `[N, 8, 8, 1]` and
    `[N]`, in file order.

  Raises:
    ValueError: A line does not have 65 values.
  """
  images, labels = [], []
  with gzip.open(path, "rt", newline="") as f:
    for line_number, row in enumerate(csv.reader(f), start=1):
      if len(row) != 65:
        raise ValueError(f"{path}:{line_number}: expected 65 values, found "
                         f"{len(row)}.")
      values = [int(float(v)) for v in row]
      images.append(values[:64])
      labels.append(values[64])
  images = np.asarray(images, np.uint8).reshape((-1,) + IMAGE_SHAPE)
  return images, np.asarray(labels, np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI optical handwritten digits: 8x8 images, pixels 0..16, 10 classes."""

  name = "uci_digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "Handwritten digits from 13 writers as 8x8 images; each pixel "
            f"counts the 'on' pixels of a 4x4 block (0..{MAX_PIXEL}). Train "
            f"is the first {NUM_TRAIN} of {NUM_EXAMPLES} examples, test the "
            "rest."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage=("https://archive.ics.uci.edu/dataset/80/"
                  "optical+recognition+of+handwritten+digits"),
        citation=_CITATION,
        license="CC BY 4.0",
        metadata=tfds.core.MetadataDict(max_pixel=MAX_PIXEL),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data ship with this module.
    return {
        "train": self._generate_examples(0, NUM_TRAIN),
        "test": self._generate_examples(NUM_TRAIN, NUM_EXAMPLES),
    }

  def _generate_examples(self, start: int, stop: int):
    images, labels = read_rows()
    for index in range(start, stop):
      yield index, {"image": images[index], "label": labels[index]}
