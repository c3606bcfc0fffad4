"""BUILD means something: its targets cover every module and test, name only files that exist,
and ask only for packages setup.cfg installs. (``make bazel-test`` runs the tests through it.)

BUILD's Starlark subset (load, package, glob, a list comprehension) is also Python, so it is
executed here with recording stand-ins for the rules and a real ``glob``.
"""

import glob as globlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Glob(list):
    """The files a glob pattern matched (a list), remembered as coming from a glob."""


def _glob(patterns, exclude=()):
    found = set()
    for pattern in patterns:
        found |= {os.path.relpath(p, ROOT) for p in globlib.glob(os.path.join(ROOT, pattern), recursive=True)
                  if os.path.isfile(p)}
    for pattern in exclude:
        found -= {os.path.relpath(p, ROOT) for p in globlib.glob(os.path.join(ROOT, pattern), recursive=True)}
    return _Glob(sorted(found))


def _read_build():
    targets, requirements = {}, []

    def rule(kind):
        def record(name, **attrs):
            assert name not in targets, f"target {name!r} defined twice"
            targets[name] = dict(attrs, kind=kind)
        return record

    def requirement(name):
        requirements.append(name)
        return f"@pypi//:{name}"

    namespace = {"load": lambda *a: None, "package": lambda **k: None, "glob": _glob, "requirement": requirement,
                 "py_library": rule("py_library"), "py_test": rule("py_test"), "True": True, "False": False}
    with open(os.path.join(ROOT, "BUILD")) as f:
        source = f.read()
    exec(compile(source, "BUILD", "exec"), namespace)   # noqa: S102 - our own BUILD file
    return targets, requirements


def _files(attr_values):
    out = []
    for value in attr_values:
        out.extend(value if isinstance(value, list) else [value])
    return out


def _deps_closure(targets, name):
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        todo += [d[1:] for d in targets[t].get("deps", []) if d.startswith(":")]
    return seen


@pytest.fixture(scope="module")
def build():
    return _read_build()


def test_every_package_module_is_in_a_library(build):
    targets, _ = build
    srcs = {s for t in targets.values() if t["kind"] == "py_library" for s in t.get("srcs", [])}
    modules = {os.path.relpath(p, ROOT) for pkg in ("tfjpq", "tflm_export")
               for p in globlib.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True)}
    assert modules and not modules - srcs, sorted(modules - srcs)
    assert {os.path.join("tfjpq", "graph", "registry.py"), os.path.join("tflm_export", "codegen.py")} <= srcs


def test_every_test_file_is_a_py_test_running_itself(build):
    targets, _ = build
    tests = {os.path.relpath(p, ROOT) for p in globlib.glob(os.path.join(ROOT, "tests", "test_*.py"))}
    by_src = {}
    for name, t in targets.items():
        if t["kind"] == "py_test":
            own = [s for s in t["srcs"] if s != "tests/pytest_runner.py"]
            assert len(own) == 1, (name, t["srcs"])
            by_src[own[0]] = (name, t)
    assert set(by_src) == tests, sorted(set(by_src) ^ tests)
    for src, (name, t) in by_src.items():
        assert name == os.path.splitext(os.path.basename(src))[0]
        assert t["main"] == "tests/pytest_runner.py" and t["args"] == [f"$(location {src})"]
        assert "tfjpq" in _deps_closure(targets, name) and "test_support" in _deps_closure(targets, name)
    assert os.path.join("tests", "test_build_file.py") in by_src


def _hand_listed(targets):
    """Files named one by one in srcs / data (``glob([...]) + ["BUILD"]`` counts its hand part)."""
    listed = []
    for t in targets.values():
        for attr in ("srcs", "data"):
            value = t.get(attr, [])
            if not isinstance(value, _Glob):
                listed += [f for f in value if not isinstance(f, _Glob)]
    return listed


def _missing(files):
    return [f for f in files if not os.path.isfile(os.path.join(ROOT, f))]


def test_hand_listed_files_exist(build):
    targets, _ = build
    listed = _hand_listed(targets)
    assert "tests/pytest_runner.py" in listed and "setup.cfg" in listed
    assert not _missing(listed), _missing(listed)
    labels = [d for t in targets.values() for d in t.get("deps", []) if d.startswith(":")]
    assert labels and all(d[1:] in targets for d in labels), labels


def test_a_hand_listed_file_that_does_not_exist_is_caught():
    targets = {"lib": {"kind": "py_library", "srcs": _glob(["tfjpq/*.py"]) + ["tfjpq/no_such_module.py"]},
               "t": {"kind": "py_test", "srcs": ["tests/test_build_file.py"], "data": _glob(["nothing/*"])}}
    assert _missing(_hand_listed(targets)) == ["tfjpq/no_such_module.py"]


def _setup_cfg_distributions():
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(os.path.join(ROOT, "setup.cfg"))["options"]
    specs = list(options["install_requires"]) + [r for extra in options["extras_require"].values() for r in extra]
    return {re.sub(r"[-_.]+", "_", re.match(r"[A-Za-z0-9_.\-]+", s).group(0)).lower() for s in specs}


def test_requirements_are_packages_setup_cfg_installs(build):
    _, requirements = build
    declared = _setup_cfg_distributions()
    asked = {re.sub(r"[-_.]+", "_", r).lower() for r in requirements}
    assert {"tensorflow", "keras", "tflite_micro", "pytest"} <= asked
    assert not asked - declared, f"BUILD asks for {sorted(asked - declared)}, which setup.cfg does not install"


def test_the_package_under_test_is_the_one_beside_the_tests():
    """Under Bazel, tfjpq comes from the runfiles (BUILD's srcs), not from the .venv's editable install."""
    import tfjpq
    import tflm_export

    for module in (tfjpq, tflm_export):
        assert os.path.dirname(os.path.abspath(module.__file__)) == os.path.join(ROOT, module.__name__)
