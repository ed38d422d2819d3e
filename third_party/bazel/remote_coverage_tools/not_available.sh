#!/bin/sh
echo "bazel coverage is not supported by tf_adadelta's Bazel setup" >&2
exit 1
