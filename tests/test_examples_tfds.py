"""The MLPerf Tiny examples (CIFAR-10 ResNet-8, Speech Commands DS-CNN): one clear line without
the data; the whole recipe down to TFLM on tiny tfds records written by tfds itself."""

import importlib.util
import os

import numpy as np
import pytest

from test_datasets import sine, write_tfds_records

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TASKS = {"cifar10_resnet8": ("cifar10", "CIFAR-10"), "kws_dscnn": ("speech_commands", "Speech Commands")}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("example", sorted(TASKS))
def test_without_data_the_example_exits_with_one_clear_line(example, tmp_path, capsys):
    tfds_name, title = TASKS[example]
    with pytest.raises(SystemExit) as info:
        _load(example).main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "fw")])
    message = info.value.code
    assert isinstance(message, str)          # SystemExit(str): printed on stderr, exit status 1
    assert message.startswith("error: ") and "\n" not in message
    assert title in message and f"tfds build {tfds_name} --data_dir {tmp_path}" in message
    out = capsys.readouterr().out
    assert "Traceback" not in out and "1/6" not in out     # stopped before training
    assert not (tmp_path / "fw").exists()


def _fake_data(tfds_name, root):
    rng = np.random.default_rng(0)
    if tfds_name == "cifar10":
        def examples(n):
            return [{"id": str(i), "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": i % 10}
                    for i in range(n)]
        write_tfds_records("cifar10", root, {"train": examples(48), "test": examples(16)})
    else:
        def examples(n):   # clips of 0.5-1.3 s, one tone per class
            return [{"audio": sine(200 + 150 * (i % 12), seconds=0.5 + 0.4 * (i % 3)), "label": i % 12}
                    for i in range(n)]
        write_tfds_records("speech_commands", root, {"train": examples(48), "validation": examples(12),
                                                     "test": examples(16)})


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(TASKS))
def test_with_data_the_example_runs_the_recipe_to_tflm(example, tmp_path, capsys):
    tfds_name, _ = TASKS[example]
    _fake_data(tfds_name, tmp_path / "tfds")
    out = tmp_path / "fw"
    result = _load(example).main(["--data-dir", str(tmp_path / "tfds"), "--epochs", "1", "--finetune-epochs", "1",
                                  "--out", str(out)])
    printed = capsys.readouterr().out
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "TFLM test accuracy", "done in"):
        assert step in printed, step
    for f in ("model.tflite", "model_data.cc", "op_resolver.h", "model_settings.h", "report.json"):
        assert (out / f).is_file(), f
    assert result.fits and result.outputs.shape[0] == 16
