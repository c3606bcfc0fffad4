"""The ``tfjpq`` command line: search -> freeze -> export -> convert -> emulate -> report, and bad input."""

import json
import os

import pytest

from tfjpq import cli, datasets, zoo


def tfjpq(capsys, *argv):
    """Run ``tfjpq argv...`` in-process; returns (exit status, stdout, stderr)."""
    code = cli.main(["tfjpq", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    (x, y), _ = datasets.load("digits")
    model = zoo.small_cnn(input_shape=(8, 8, 1), width=8)
    zoo.train(model, x, y, epochs=1)
    path = tmp_path_factory.mktemp("cli") / "float.keras"
    model.save(path)
    return path


def test_recipe_end_to_end(float_model, tmp_path, capsys):
    d = tmp_path
    code, out, err = tfjpq(capsys, "search", float_model, "--data", "digits", "--strength", "0.2",
                           "--epochs", "1", "--out", d / "search.keras")
    assert code == 0, err
    assert (d / "search.keras").exists() and "hard cost" in out
    import keras

    layer = keras.models.load_model(d / "search.keras").search_layers()[0]
    assert (layer.weight_quantizer, layer.prune_gate) == ("mse", "ste")  # wrap's defaults
    code, out, err = tfjpq(capsys, "freeze", d / "search.keras", "--finetune-epochs", "1", "--data", "digits",
                           "--teacher", float_model, "--out", d / "frozen.keras")
    assert code == 0, err
    assert "test accuracy" in out and (d / "frozen.keras").exists()
    code, out, err = tfjpq(capsys, "export", d / "frozen.keras", "--out", d / "deploy.keras")
    assert code == 0, err
    code, out, err = tfjpq(capsys, "convert", d / "deploy.keras", "--data", "digits", "--out-dir", d / "fw")
    assert code == 0, err
    for f in ("model.tflite", "model_data.cc", "model_data.h", "op_resolver.h", "model_settings.h", "report.json"):
        assert (d / "fw" / f).exists(), f
    code, out, err = tfjpq(capsys, "emulate", d / "fw", "--board", "nano33ble", "--data", "digits", "--samples", 100)
    assert code == 0, err
    assert "tensor arena" in out and "TFLM top-1" in out
    top1 = float(out.split("TFLM top-1 ")[1].split()[0])
    assert top1 > 0.3
    code, out, err = tfjpq(capsys, "report", d / "deploy.keras", "--out-dir", d / "report")
    assert code == 0, err
    md = (d / "report" / "report.md").read_text()
    assert "| layer |" in md and "**total**" in md

    # bad input: one clear line on stderr, non-zero exit, no traceback
    code, out, err = tfjpq(capsys, "emulate", d / "fw", "--board", "nano33", "--data", "digits")
    assert code != 0 and "unknown board" in err and "nano33ble" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, out, err = tfjpq(capsys, "convert", d / "deploy.keras", "--data", "digits", "--out-dir", d / "fw")
    assert code != 0 and err.startswith("tfjpq convert: error:") and err.count("\n") == 1


def test_search_takes_the_quantizer_and_gate(float_model, tmp_path, capsys):
    import keras

    code, out, err = tfjpq(capsys, "search", float_model, "--data", "digits", "--strength", "0.2", "--epochs", "1",
                           "--weight-quantizer", "minmax", "--prune-gate", "soft", "--out", tmp_path / "s.keras")
    assert code == 0, err
    layer = keras.models.load_model(tmp_path / "s.keras").search_layers()[0]
    assert (layer.weight_quantizer, layer.prune_gate) == ("minmax", "soft")
    code, out, err = tfjpq(capsys, "search", float_model, "--data", "digits", "--prune-gate", "hard",
                           "--out", tmp_path / "t.keras")
    assert code != 0 and "prune-gate" in err and err.count("\n") == 1


def test_bad_input_one_line(tmp_path, capsys):
    code, out, err = tfjpq(capsys, "export", tmp_path / "missing.keras", "--out", tmp_path / "d.keras")
    assert code != 0 and err.startswith("tfjpq export: error:") and "missing.keras" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 this is not really a keras archive")
    for cmd in (["export", bad, "--out", tmp_path / "d.keras"], ["report", bad, "--out-dir", tmp_path / "r"],
                ["search", bad, "--data", "digits"]):
        code, out, err = tfjpq(capsys, *cmd)
        assert code != 0, cmd
        assert err.startswith(f"tfjpq {cmd[0]}: error:") and "corrupt.keras" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    code, out, err = tfjpq(capsys, "emulate", tmp_path / "nofw", "--board", "nano33ble")
    assert code != 0 and "nofw" in err and err.count("\n") == 1
    # --verbose adds the traceback
    code, out, err = tfjpq(capsys, "export", bad, "--out", tmp_path / "d.keras", "--verbose")
    assert code != 0 and "Traceback" in err
    # usage errors
    code, out, err = tfjpq(capsys, "bogus")
    assert code == 2 and "unknown command" in err
    code, out, err = tfjpq(capsys, "export", bad, "--no-such-flag")
    assert code == 2 and err.startswith("tfjpq export: error:") and err.count("\n") == 1
    code, out, err = tfjpq(capsys, "search", bad, "--data", "nosuchset")
    assert code != 0 and err.count("\n") == 1


def test_help(capsys):
    code, out, err = tfjpq(capsys, "--help")
    assert code == 0
    for c in cli.COMMANDS:
        assert c in out
    assert "example" in out
    for c in cli.COMMANDS:
        code, out, err = tfjpq(capsys, c, "--help")
        assert code == 0 and f"tfjpq {c}" in out and "example" in out, c


def test_report_json(tmp_path, capsys):
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps({"rows": [{"model": "a", "acc": 0.9, "bytes": 100}, {"model": "b", "acc": 0.8}]}))
    code, out, err = tfjpq(capsys, "report", hist, "--out-dir", tmp_path / "r")
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| model | acc | bytes |" in md
    pareto = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "pareto.json")
    if os.path.exists(pareto):
        code, out, err = tfjpq(capsys, "report", pareto, "--out-dir", tmp_path / "p")
        assert code == 0, err
        assert "| method |" in (tmp_path / "p" / "report.md").read_text()
        pytest.importorskip("matplotlib")
        assert (tmp_path / "p" / "pareto.png").exists()


def test_other_methods(float_model, tmp_path, capsys):
    d = tmp_path
    code, out, err = tfjpq(capsys, "zeroq", float_model, "--out-dir", d / "zq", "--samples", 8, "--iterations", 10)
    assert code == 0, err
    assert (d / "zq" / "model.tflite").exists() and (d / "zq" / "distilled.npy").exists()
    code, out, err = tfjpq(capsys, "precrop", float_model, "--density", 0.5, "--out", d / "cropped.keras")
    assert code == 0, err
    assert (d / "cropped.keras").exists() and "params" in out
    code, out, err = tfjpq(capsys, "precrop", float_model, "--density", 1.5, "--out", d / "x.keras")
    assert code == 2 and "--density" in err and err.count("\n") == 1
    pytest.importorskip("xgboost")
    code, out, err = tfjpq(capsys, "quantune", float_model, "--data", "digits", "--trials", 2, "--strategy", "random",
                           "--calibration", 32, "--val-samples", 100, "--out", d / "h.json")
    assert code == 0, err
    assert len(json.loads((d / "h.json").read_text())["trials"]) == 2
    code, out, err = tfjpq(capsys, "report", d / "h.json", "--out-dir", d / "r")
    assert code == 0, err
    assert "Quantune history" in (d / "r" / "report.md").read_text()
