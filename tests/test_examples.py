"""The runnable examples run end to end (tiny budgets, digits)."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "precrop_then_search"])
def test_example_runs_and_writes_firmware_sources(name, tmp_path, capsys):
    out = tmp_path / "artifacts"
    _load(name).main(["--dataset", "digits", "--epochs", "1", "--search-epochs", "1", "--finetune-epochs", "1",
                      "--out", str(out)])
    printed = capsys.readouterr().out
    assert "TFLM test accuracy" in printed and "done in" in printed
    for f in ("model.tflite", "model_data.cc", "model_data.h", "op_resolver.h", "model_settings.h", "report.json"):
        assert (out / f).is_file(), f
