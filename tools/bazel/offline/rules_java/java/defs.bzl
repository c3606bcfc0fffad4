"""The rules_java names Bazel 4's own tools load, bound to the native rules (see tools/bazel/offline/README.md)."""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
