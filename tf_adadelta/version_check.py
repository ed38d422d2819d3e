"""Checks, before anything else is imported, that TensorFlow and Keras are new enough.

tf_adadelta does not declare a TensorFlow distribution as a dependency (as
TensorFlow Probability does not), so that installing it keeps whichever one
the user has: `tensorflow`, `tensorflow-cpu`, `tensorflow[and-cuda]`,
`tensorflow-macos` or a TPU VM's. Instead `import tf_adadelta` calls
`ensure_supported_versions`, which raises a readable `ImportError` where
TensorFlow is missing or older than supported, or where Keras is.
"""

import importlib
import re
from typing import Optional, Tuple

# The oldest releases tested (see "Supported versions" in the README). Newer
# ones are accepted: the upper bound of the tested range is in setup.py's
# `tensorflow` extra, not enforced here.
MIN_TENSORFLOW_VERSION = "2.16.0"
MIN_KERAS_VERSION = "3.15.1"

_INSTALL_HINT = (
    "Install a TensorFlow distribution (for example `pip install "
    "tensorflow-cpu` or `pip install \"tensorflow[and-cuda]\"`), or install "
    "tf_adadelta with TensorFlow: `pip install \"tf_adadelta[tensorflow]\"`.")


def parse_version(version: str) -> Tuple[int, int, int]:
  """The release numbers of a version string, ignoring any suffix.

  Args:
    version: A version such as "2.16.2", "2.17.0-rc1", "2.18.0.dev20240101"
      or "3.0".

  Returns:
    `(major, minor, patch)` as integers (a missing patch is 0).

  Raises:
    ValueError: `version` does not start with `major.minor`.
  """
  match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
  if not match:
    raise ValueError(f"Cannot read the version {version!r}.")
  major, minor, patch = match.groups()
  return int(major), int(minor), int(patch or 0)


def _installed_version(module_name: str) -> Optional[str]:
  """The `__version__` of an importable module, or None if it is missing."""
  try:
    module = importlib.import_module(module_name)
  except ImportError:
    return None
  return getattr(module, "__version__", "0.0.0")


def check_version(package: str, found: Optional[str], required: str) -> None:
  """Raises if `found` is missing or older than `required`.

  Args:
    package: The package's name, for the message.
    found: Its installed version, or None where it is not installed.
    required: The oldest supported version.

  Raises:
    ImportError: `found` is None, cannot be read, or is older than
      `required`. The message names both versions.
  """
  if found is None:
    raise ImportError(
        f"tf_adadelta needs {package} >= {required}, and {package} is not "
        f"installed. {_INSTALL_HINT}")
  try:
    too_old = parse_version(found) < parse_version(required)
  except ValueError:
    too_old = True
  if too_old:
    raise ImportError(
        f"tf_adadelta needs {package} >= {required}; found {package} "
        f"{found}. Upgrade it (for example `pip install --upgrade "
        f"\"{package.lower()}>={required}\"`, or the TensorFlow distribution "
        "you use).")


def ensure_supported_versions() -> None:
  """Checks the installed TensorFlow, then Keras.

  TensorFlow is checked first, since it is what brings Keras 3.

  Raises:
    ImportError: TensorFlow or Keras is missing or older than supported.
  """
  check_version("TensorFlow", _installed_version("tensorflow"),
                MIN_TENSORFLOW_VERSION)
  check_version("Keras", _installed_version("keras"), MIN_KERAS_VERSION)
