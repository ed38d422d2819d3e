"""The Java rules under the names Bazel 4's own tools load them by.

Bazel's built-in tools (@bazel_tools) load these names from
@rules_java//java:defs.bzl, which Bazel 4 otherwise downloads. tf_adadelta
has no Java code: each name is the rule built into Bazel 4, passed on as is.
"""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_proto_library = native.java_proto_library
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
