"""The Python rules under the names BUILD loads them by, for Bazel 4.

BUILD loads py_binary, py_library and py_test from
@rules_python//python:defs.bzl, which is where Bazel 7 and later users get
them (rules_python, a bazel_dep in their MODULE.bazel; see the README,
"Development"). Bazel 4 has the rules built in and would download
rules_python for the same names; each name here is the built-in rule, passed
on as is.
"""

py_binary = native.py_binary
py_library = native.py_library
py_test = native.py_test
