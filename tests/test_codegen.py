"""The generated C/C++ sources compile warning-free, hold exactly the flatbuffer, and cross-compile for a Cortex-M4."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tflm_export import codegen

CXX = shutil.which("g++")
WARN = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    import keras

    import tflm_export

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x), name="tiny_net")
    out = tmp_path_factory.mktemp("codegen") / "fw"
    x_cal = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype("float32")
    art = tflm_export.convert(model, representative_data=x_cal, out_dir=out, name="tiny-net v2")  # C name sanitized
    return out, art


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_host_compile_link_and_run_matches_the_flatbuffer(export_dir, tmp_path):
    out, art = export_dir
    name = art.name
    assert name == "tiny_net_v2"
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdio>\n#include "model_data.h"\n#include "model_settings.h"\n'
        "int main() {\n"
        "  unsigned long sum = 0;\n"
        f"  for (unsigned int i = 0; i < g_{name}_model_data_len; ++i) sum = sum * 31u + g_{name}_model_data[i];\n"
        f'  std::printf("%u %lu %d %d %d %lu\\n", g_{name}_model_data_len, sum & 0xffffffffUL, kTensorArenaSize,\n'
        "              kInputElements, kOutputElements,\n"
        f"              (unsigned long)(reinterpret_cast<unsigned long>(g_{name}_model_data) % 16));\n"
        "  return (kInputScale > 0.0f && kOutputScale > 0.0f && kInputZeroPoint >= -128 && kOutputZeroPoint <= 127) ? 0 : 1;\n"
        "}\n")
    _run([CXX, *WARN, "-I", str(out), "-c", str(out / "model_data.cc"), "-o", str(tmp_path / "model_data.o")], tmp_path)
    _run([CXX, *WARN, "-I", str(out), "-c", str(main), "-o", str(tmp_path / "main.o")], tmp_path)
    _run([CXX, str(tmp_path / "model_data.o"), str(tmp_path / "main.o"), "-o", str(tmp_path / "check")], tmp_path)
    length, checksum, arena, n_in, n_out, misalign = map(int, _run([str(tmp_path / "check")], tmp_path).split())
    data = (out / "model.tflite").read_bytes()
    expect = 0
    for b in data:
        expect = (expect * 31 + b) & 0xFFFFFFFFFFFFFFFF
    assert length == len(data) == art.size
    assert checksum == expect & 0xFFFFFFFF
    assert misalign == 0                         # alignas(16) holds
    assert arena == art.arena_bytes and arena % 16 == 0
    assert n_in == 64 and n_out == 3


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler")
def test_op_resolver_header_compiles_against_the_resolver_interface(export_dir, tmp_path):
    """op_resolver.h needs TFLM; compile it against a stub with MicroMutableOpResolver's shape."""
    out, art = export_dir
    stub = tmp_path / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    methods = "\n".join(f"  TfLiteStatus {codegen.resolver_method(op)}() {{ return ++n_ <= tOpCount ? kTfLiteOk : kTfLiteError; }}"
                        for op in art.ops)
    (stub / "micro_mutable_op_resolver.h").write_text(
        "#pragma once\ntypedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;\nnamespace tflite {\n"
        f"template <unsigned int tOpCount> class MicroMutableOpResolver {{\n public:\n{methods}\n private:\n"
        "  unsigned int n_ = 0;\n};\n}  // namespace tflite\n")
    cls = codegen._camel(art.name)
    main = tmp_path / "resolver.cc"
    main.write_text(f'#include "op_resolver.h"\nint main() {{ {cls}OpResolver r; return Register{cls}Ops(r) == kTfLiteOk ? 0 : 1; }}\n')
    _run([CXX, *WARN, "-I", str(tmp_path), "-I", str(out), str(main), "-o", str(tmp_path / "resolver")], tmp_path)
    _run([str(tmp_path / "resolver")], tmp_path)


def test_cross_compile_size_is_none_without_toolchain(export_dir):
    out, _ = export_dir
    assert codegen.cross_compile_size(out, prefix="no-such-toolchain-") is None


@pytest.mark.skipif(shutil.which("arm-none-eabi-g++") is None, reason="gcc-arm-none-eabi not installed (make firmware-size)")
def test_cortex_m4_rodata_is_the_flatbuffer(export_dir):
    out, art = export_dir
    res = codegen.cross_compile_size(out)
    assert res["model_array_bytes"] == res["flatbuffer_bytes"] == art.size
    # the array plus its 4-byte length and alignment padding, nothing else
    assert art.size + 4 <= res["rodata_bytes"] <= art.size + 4 + 16
    assert "-mcpu=cortex-m4" in res["flags"] and "-Os" in res["flags"]
    # convert(out_dir=...) measured the same and wrote it into report.json
    assert art.report["firmware"]["model_array_bytes"] == art.size
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["firmware"]["rodata_bytes"] == res["rodata_bytes"]


def test_emulation_says_latency_is_an_estimate_with_its_band(export_dir):
    import tflm_export

    _, art = export_dir
    run = tflm_export.emulate(art, board="nucleo-l4r5zi")
    assert run.latency_error == pytest.approx(0.20)
    lo, hi = run.latency_range_ms
    assert lo < run.latency_ms < hi
    text = run.summary()
    assert "ESTIMATE" in text and "+-20 %" in text and "held out" in text
    ref = tflm_export.emulate(art, board="nucleo-l4r5zi", kernels="reference")
    assert ref.latency_error is None and "error band unknown" in ref.summary()
    assert ref.latency_ms > run.latency_ms
