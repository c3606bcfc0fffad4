"""Repository rules that make the project's .venv (`make venv`, from setup.cfg) Bazel's Python.

* `venv_python`: a Python toolchain whose interpreter is <workspace>/.venv/bin/python.
* `venv_pip_hub`: the hub that BUILD's `requirement("numpy")` labels point into: one empty
  py_library per distribution installed in the .venv (the interpreter already imports them), so
  a requirement that the .venv lacks fails at analysis, naming it.

Both are re-read on every fetch (`local = True`); after `make venv` changes the .venv, Bazel
sees it on the next build. Use from WORKSPACE:

    load("//tools/bazel:venv.bzl", "venv_pip_hub", "venv_python")
    venv_python(name = "venv_python")
    venv_pip_hub(name = "pypi")
    register_toolchains("@venv_python//:toolchain")
"""

_MISSING = "no Python at {}: run `make venv` first (Bazel uses the project's .venv as its Python runtime)"

def _venv_interpreter(rctx):
    root = rctx.path(Label("//:WORKSPACE")).dirname
    python = root.get_child(".venv").get_child("bin").get_child("python")
    if not python.exists:
        fail(_MISSING.format(python))
    return python

def _venv_python_impl(rctx):
    python = _venv_interpreter(rctx)
    rctx.file("WORKSPACE", "")
    rctx.file("BUILD", """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{python}",
    python_version = "PY3",
)

py_runtime_pair(name = "venv_runtimes", py3_runtime = ":venv_py3")

toolchain(
    name = "toolchain",
    toolchain = ":venv_runtimes",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

venv_python = repository_rule(implementation = _venv_python_impl, local = True)

_LIST_DISTRIBUTIONS = """
import importlib.metadata as md, re
names = {re.sub(r"[-_.]+", "_", d.metadata["Name"]).lower() for d in md.distributions() if d.metadata["Name"]}
print("\\n".join(sorted(names)))
"""

def _venv_pip_hub_impl(rctx):
    python = _venv_interpreter(rctx)
    result = rctx.execute([python, "-c", _LIST_DISTRIBUTIONS])
    if result.return_code != 0:
        fail("listing the packages of {} failed: {}".format(python, result.stderr))
    names = [n for n in result.stdout.strip().split("\n") if n]
    rctx.file("WORKSPACE", "")
    rctx.file("BUILD", "\n".join([
        "# One target per distribution installed in {} (its interpreter imports them).".format(python),
        'package(default_visibility = ["//visibility:public"])',
        "",
    ] + ['py_library(name = "{}")'.format(n) for n in names]) + "\n")
    rctx.file("requirements.bzl", '''\
"""`requirement(name)`: the hub target of a distribution installed in the project's .venv."""

def requirement(name):
    normalized = name.lower().replace("-", "_").replace(".", "_")
    return "@{hub}//:" + normalized
'''.replace("{hub}", rctx.attr.name))

venv_pip_hub = repository_rule(implementation = _venv_pip_hub_impl, local = True)
