"""The C++ rules under the names Bazel 4's own tools load them by.

Bazel's built-in tools (@bazel_tools) load these names from
@rules_cc//cc:defs.bzl, which Bazel 4 otherwise downloads. tf_adadelta has
no C++ code: each name is the rule built into Bazel 4, passed on as is.
"""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_proto_library = native.cc_proto_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
objc_library = native.objc_library
