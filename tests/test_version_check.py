"""`import tf_adadelta` names the versions it needs when TensorFlow or Keras is missing or too old."""

import os
import subprocess
import sys
import textwrap

import pytest

from tf_adadelta import version_check


@pytest.mark.parametrize("version, expected", [
    ("2.16.2", (2, 16, 2)),
    ("2.17.0-rc1", (2, 17, 0)),
    ("2.18.0.dev20240101", (2, 18, 0)),
    ("3.0", (3, 0, 0)),
])
def test_parse_version_reads_release_numbers(version, expected):
  assert version_check.parse_version(version) == expected


def test_parse_version_rejects_unreadable():
  with pytest.raises(ValueError, match="nightly"):
    version_check.parse_version("nightly")


def test_old_version_names_both_versions():
  with pytest.raises(ImportError, match=r"TensorFlow >= 2\.16\.0; found TensorFlow 2\.15\.1"):
    version_check.check_version("TensorFlow", "2.15.1", "2.16.0")


def test_missing_package_says_how_to_install():
  with pytest.raises(ImportError, match=r"not installed.*tf_adadelta\[tensorflow\]"):
    version_check.check_version("TensorFlow", None, "2.16.0")


def test_supported_and_newer_versions_pass():
  version_check.check_version("TensorFlow", "2.16.0", "2.16.0")
  version_check.check_version("Keras", "4.1.0", "3.0.0")


def test_import_in_a_process_with_old_tensorflow_fails_clearly(tmp_path):
  """A stand-in `tensorflow` package of version 2.15.0 shadows the real one."""
  fake = tmp_path / "tensorflow"
  fake.mkdir()
  (fake / "__init__.py").write_text('__version__ = "2.15.0"\n')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = textwrap.dedent("""
      try:
        import tf_adadelta
      except ImportError as e:
        print("IMPORT ERROR:", e)
  """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), repo]))
  result = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)
  assert "IMPORT ERROR: tf_adadelta needs TensorFlow >= 2.16.0; found TensorFlow 2.15.0" in result.stdout, result.stderr
