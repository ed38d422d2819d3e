"""The main of every py_test target in BUILD: runs one test file with pytest.

Bazel runs a py_test's main as a script; a test file only defines test
functions, so each target names this file as its main and its test file as
its first argument (`args` in BUILD), as TensorFlow's own targets end in
`tf.test.main()`. The exit status is pytest's, so a failing test fails the
target, and the test log ends with pytest's summary line. Arguments after the
first go to pytest (`bazel test //:test_parity --test_arg=-k --test_arg=xla`).

The target's runfiles hold the repository's layout (`tf_adadelta/`, `tests/`,
the examples, the fixtures); their root goes first on `sys.path`, so the tests
import the library from the tree under test.
"""

import os
import sys


def main(argv):
  if len(argv) < 2:
    sys.exit(f"usage: {argv[0]} TEST_FILE [PYTEST_ARGS...]")
  # This file's runfiles path, not the file it links to: abspath keeps the
  # symlink, so the root is the runfiles tree that holds the target's files.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  args = [
      os.path.join(root, argv[1]),
      "-q",
      "--rootdir", root,
      # The runfiles are Bazel's: pytest writes no cache there, and its
      # temporary directories go under the test's own TEST_TMPDIR.
      "-p", "no:cacheprovider",
  ]
  if os.environ.get("TEST_TMPDIR"):
    args += ["--basetemp", os.path.join(os.environ["TEST_TMPDIR"], "pytest")]
  if os.environ.get("XML_OUTPUT_FILE"):
    # Per-test results in Bazel's test.xml (bazel-testlogs/<target>/).
    args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
  import pytest  # pylint: disable=g-import-not-at-top
  return pytest.main(args + argv[2:])


if __name__ == "__main__":
  sys.exit(main(sys.argv))
