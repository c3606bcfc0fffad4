"""Fuzzing the flatbuffer readers (benchmarks/fuzz.py): corrupted models end in a clean error, never a crash.

A bounded, seeded run of the fuzzer in benchmarks/fuzz.py, plus one regression test per crash
or unclean error it found, plus corrupt ``.keras`` and truncated ``.npz`` files.
``benchmarks/fuzz.py --cases 5000`` is the long run (docs/reliability.md).
"""

import os
import sys
import zipfile

import flatbuffers
import numpy as np
import pytest

import tflm_export
from tflm_export import lean, modelinfo, packing, repair, runner, schema
from tflm_export.errors import CorruptModelError, InvalidArgumentError, TFLMExportError, TFLMRuntimeError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import fuzz  # noqa: E402

FB = schema.fb()


@pytest.fixture(scope="module")
def seeds():
    return fuzz.make_seeds()


def _model(data):
    return FB.ModelT.InitFromPackedBuf(bytearray(data), 0)


def _pack(m):
    b = flatbuffers.Builder(4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _readers():
    return fuzz._reader_fns(emulate=False)


def test_seeds_pass_every_reader_and_run_in_tflm(seeds):
    assert set(seeds) == {"int8", "int4", "lut", "converter", "int4_full"}
    for name, data in seeds.items():
        for reader, fn in _readers().items():
            assert fuzz.classify(fn, data) == "ok", (name, reader)
    assert fuzz.classify(fuzz._reader_fns(emulate=True)["emulate"], seeds["lut"]) == "ok"


def test_fuzzed_flatbuffers_end_in_clean_errors(seeds):
    """400 mutated flatbuffers through every Python reader: each ends 'ok' or in a TFLMExportError."""
    records = fuzz.run_cases(seeds, 400, seed=0, emulate=False, timeout=20)
    summary = fuzz.summarize(records)
    assert summary["bugs"] == [], summary["bugs"][:5]
    inspect = summary["by_reader"]["inspect"]
    assert inspect.get("ok", 0) >= 20 and inspect.get("rejected:CorruptModelError", 0) >= 200, inspect
    kinds = set(summary["mutations"])
    assert {"bytes:flip", "bytes:truncate", "bytes:offset", "struct:shape", "struct:buffer_size",
            "struct:opcode_index", "struct:op_tensor"} <= kinds


def test_fuzzed_flatbuffers_through_tflm(seeds):
    """The cases the readers accept run in the real TFLM interpreter (child process): a result or a clean error."""
    records = fuzz.run_cases(seeds, 100, seed=1, emulate=True, timeout=30)
    summary = fuzz.summarize(records)
    assert summary["bugs"] == [], summary["bugs"][:5]
    assert summary["accepted_by_tflm"] >= 5, summary["by_reader"]["emulate"]


# -- one regression test per finding ------------------------------------------------


def _every_reader_rejects(data, match):
    for fn in (modelinfo.inspect_model, lean.strip, lean.breakdown, packing.analyze, repair.fix_bias_scales):
        with pytest.raises(CorruptModelError, match=match):
            fn(data)
    with pytest.raises(CorruptModelError, match=match):
        tflm_export.emulate(data)


def test_options_type_without_options_table_is_rejected(seeds):
    # was: a segmentation fault of the whole process in packing.apply's C++ flatbuffer aligner
    m = _model(seeds["int8"])
    m.subgraphs[0].operators[0].builtinOptions = None          # builtinOptionsType stays CONV_2D's
    _every_reader_rejects(_pack(m), "declares options of type")


def test_custom_code_that_is_not_utf8_is_rejected(seeds):
    # was: UnicodeDecodeError from lean.strip, packing and repair
    m = _model(seeds["int8"])
    m.operatorCodes[0].builtinCode = m.operatorCodes[0].deprecatedBuiltinCode = 32
    m.operatorCodes[0].customCode = b"\xff\xfe"
    _every_reader_rejects(_pack(m), "not UTF-8")


def test_metadata_pointing_past_the_buffers_is_rejected(seeds):
    # was: IndexError from the model editor (packing, repair)
    m = _model(seeds["converter"])
    m.metadata[0].buffer = len(m.buffers) + 3
    _every_reader_rejects(_pack(m), "refers to buffer")


@pytest.mark.parametrize("shape", [[4096, 4096, 4096], [1, -3, 6, 1], [2 ** 29, 1]])
def test_impossible_shapes_are_rejected(seeds, shape):
    m = _model(seeds["int8"])
    m.subgraphs[0].tensors[m.subgraphs[0].outputs[0]].shape = np.array(shape, np.int32)
    _every_reader_rejects(_pack(m), "elements|impossible shape")


def test_filter_without_data_is_rejected(seeds):
    # was: ValueError (reshape of an empty array) in packing.analyze and repair
    m = _model(seeds["int4"])
    sg = m.subgraphs[0]
    conv = next(op for op in sg.operators if schema.opcode_name(m.operatorCodes[op.opcodeIndex]) == "CONV_2D")
    sg.tensors[conv.inputs[1]].buffer = 0                      # the empty sentinel buffer
    _every_reader_rejects(_pack(m), "filter .* has no data")


def test_empty_extra_subgraph_is_rejected(seeds):
    # was: TypeError from the model editor; TFLM reads every subgraph
    m = _model(seeds["int8"])
    m.subgraphs.append(FB.SubGraphT())
    _every_reader_rejects(_pack(m), "subgraph 1: has no outputs")


def test_uncalled_copy_of_the_main_subgraph_is_rejected(seeds):
    # was: TFLM crashed (SIGSEGV) while loading, in its child process
    import copy

    m = _model(seeds["int8"])
    m.subgraphs.append(copy.deepcopy(m.subgraphs[0]))
    _every_reader_rejects(_pack(m), r"subgraph\(s\) \[1\] are not called")


def test_operator_reading_its_own_output_is_rejected(seeds):
    # was: TFLM crashed (SIGFPE) while running: a CONV_2D whose filter was its own output
    m = _model(seeds["int8"])
    sg = m.subgraphs[0]
    conv = next(op for op in sg.operators if schema.opcode_name(m.operatorCodes[op.opcodeIndex]) == "CONV_2D")
    conv.inputs = np.array([conv.inputs[0], conv.outputs[0], conv.inputs[2]], np.int32)
    _every_reader_rejects(_pack(m), "before an operator computes it")


def test_scale_that_is_not_positive_is_rejected(seeds):
    m = _model(seeds["int8"])
    m.subgraphs[0].tensors[0].quantization.scale = np.array([np.nan], np.float32)
    _every_reader_rejects(_pack(m), "not a positive finite number")


def test_bias_repair_skips_scales_it_cannot_use(seeds):
    # was: repair wrote a bias scale of 0 (input scale x filter scale underflowing float32): an invalid model
    m = _model(seeds["int8"])
    sg = m.subgraphs[0]
    conv = next(op for op in sg.operators if schema.opcode_name(m.operatorCodes[op.opcodeIndex]) == "CONV_2D")
    w = sg.tensors[conv.inputs[1]].quantization
    w.scale = np.full_like(w.scale, 1e-38)
    out, notes = repair.fix_bias_scales(_pack(m))
    modelinfo.inspect_model(out)
    assert any("skipped" in n for n in notes.values())


def test_constant_output_and_bool_input_run_or_fail_cleanly(seeds):
    # was: an assertion in emulate's reshape (an output without a batch axis) and ValueError from quantize (BOOL)
    m = _model(seeds["int8"])
    sg = m.subgraphs[0]
    conv = next(op for op in sg.operators if schema.opcode_name(m.operatorCodes[op.opcodeIndex]) == "CONV_2D")
    sg.outputs = np.array([conv.inputs[1]], np.int32)          # a (4, 3, 3, 1) constant as the output
    run = tflm_export.emulate(_pack(m), inputs=np.zeros((3, 6, 6, 1), np.float32), check_fit=False)
    assert run.raw_outputs.shape == (3, 4, 3, 3, 1)
    m = _model(seeds["int8"])
    m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].type = FB.TensorType.BOOL
    try:
        tflm_export.emulate(_pack(m), inputs=np.zeros((1, 6, 6, 1), np.float32), check_fit=False)
    except TFLMExportError:
        pass


def test_huge_arena_is_refused_before_any_memory_is_taken(seeds):
    m = _model(seeds["int8"])
    sg = m.subgraphs[0]
    for t in sg.tensors:                       # every activation at 2**30 elements: legal one by one
        if t.buffer == 0 and len(t.shape) == 4:
            t.shape = np.array([1, 2 ** 14, 2 ** 14, 4], np.int32)
    with pytest.raises(InvalidArgumentError, match="tensor arena of about"):
        tflm_export.emulate(_pack(m))


def test_a_hanging_interpreter_is_stopped_at_the_timeout(seeds):
    with pytest.raises(TFLMRuntimeError, match="did not finish within"):
        runner.run_tflm(seeds["int8"], [np.zeros((1, 6, 6, 1), np.int8)], 1, timeout=0.01)


def test_nan_inputs_to_emulate_are_refused(seeds):
    x = np.zeros((2, 6, 6, 1), np.float32)
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN or Inf"):
        tflm_export.emulate(seeds["int8"], inputs=x)


def test_corrupt_tflite_file_path(tmp_path, seeds):
    path = tmp_path / "m.tflite"
    path.write_bytes(seeds["int8"][: len(seeds["int8"]) // 2])
    with pytest.raises(CorruptModelError, match="not a valid TFLite flatbuffer"):
        tflm_export.emulate(str(path))


# -- corrupt .keras and truncated .npz files -------------------------------------------


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    return str(fuzz_keras(tmp_path_factory.mktemp("keras") / "m.keras"))


def fuzz_keras(path):
    fuzz.tiny_model().save(path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty", "text", "no_config", "bad_config"])
def test_corrupt_keras_file_gives_a_clear_error(tmp_path, keras_file, damage):
    import tfjpq

    data = open(keras_file, "rb").read()
    bad = tmp_path / "bad.keras"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "zeroed":
        bad.write_bytes(data[:40] + bytes(200) + data[240:])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("not a model")
    else:
        with zipfile.ZipFile(keras_file) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.namelist():
                if item == "config.json":
                    if damage == "bad_config":
                        dst.writestr(item, "{\"class_name\": \"Functional\", \"config\": ")
                    continue
                dst.writestr(item, src.read(item))
    with pytest.raises(tfjpq.ModelFileError, match="bad.keras") as info:
        tfjpq.load_model(bad)
    assert isinstance(info.value, tfjpq.TfjpqError) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError):
        tfjpq.load_model(tmp_path / "missing.keras")


def test_load_model_round_trip(keras_file):
    import tfjpq

    model = tfjpq.load_model(keras_file)
    assert model.name == "fuzz_seed"


def _npz(path, n=20, **override):
    arrays = {"x_train": np.zeros((n, 6, 6, 1), np.float32), "y_train": np.zeros(n, np.int32),
              "x_test": np.zeros((5, 6, 6, 1), np.float32), "y_test": np.zeros(5, np.int32)}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("cut", [0.9, 0.5, 0.1, 0.0])
def test_truncated_npz_gives_a_clear_error(tmp_path, cut):
    from tfjpq import datasets
    from tfjpq.errors import DataError

    good = _npz(tmp_path / "good.npz")
    data = open(good, "rb").read()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError, match="truncated or corrupted"):
        datasets.load_npz(bad)
    with pytest.raises(DataError, match="truncated or corrupted"):
        datasets.load(f"npz:{bad}")            # the examples' --dataset npz:<path>
    (x, y), (xt, yt) = datasets.load(f"npz:{good}")
    assert x.shape == (20, 6, 6, 1) and yt.shape == (5,)


def test_npz_with_missing_arrays_or_nan(tmp_path):
    from tfjpq import datasets
    from tfjpq.errors import DataError

    np.savez(tmp_path / "few.npz", x_train=np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"\['y_train', 'x_test', 'y_test'\] missing"):
        datasets.load_npz(tmp_path / "few.npz")
    x = np.zeros((20, 6, 6, 1), np.float32)
    x[3, 1, 1, 0] = np.inf
    with pytest.raises(DataError, match=r"x_train holds 1 Inf value\(s\).*first at index \(3, 1, 1, 0\)"):
        datasets.load_npz(_npz(tmp_path / "inf.npz", x_train=x))


def test_quickstart_cli_reports_a_truncated_npz(tmp_path):
    """The CLI path: examples/quickstart.py --dataset npz:<truncated file> stops with the DataError's message."""
    import subprocess

    bad = tmp_path / "bad.npz"
    bad.write_bytes(open(_npz(tmp_path / "good.npz"), "rb").read()[:100])
    script = os.path.join(os.path.dirname(HERE), "examples", "quickstart.py")
    proc = subprocess.run([sys.executable, script, "--dataset", f"npz:{bad}", "--no-deploy"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "DataError" in proc.stderr and "truncated or corrupted" in proc.stderr
