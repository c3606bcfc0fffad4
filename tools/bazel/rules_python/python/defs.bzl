"""rules_python's `python:defs.bzl` names, bound to Bazel's native Python rules (Bazel 4 to 7).

This repository's WORKSPACE maps @rules_python here so BUILD loads the same names it would
load from the real rules_python; with network, use the real one instead (README "Bazel").
"""

py_library = native.py_library
py_binary = native.py_binary
py_test = native.py_test
py_runtime = native.py_runtime
