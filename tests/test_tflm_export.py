"""tflm_export on real data (sklearn digits): parity with tf.lite and Keras, packing, errors, firmware files.

Figures are printed (run with -s to see them).
"""

import json
import os
import random
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import tflm_export  # noqa: E402
from tflm_export import lean, modelinfo, packing, storage  # noqa: E402
from tfjpq import quantizers, zoo  # noqa: E402

layers = keras.layers


# ---------------------------------------------------------------- helpers

def _allconv(width=8, seed=0):
    """Digits classifier made only of convolutions (the ops whose TFLite and TFLM kernels round alike)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="input")
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw1")(x)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(10, 4, padding="valid", name="head")(x)
    out = layers.Reshape((10,), name="logits")(x)
    return keras.Model(inp, out, name="digits_allconv")


def _on_grid(model, bits):
    """Copy of a model whose kernels are per-channel fake-quantized at bits[layer] (like tfjpq.export's output)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if layer.name in bits:
            w = layer.get_weights()
            w[0] = quantizers.quantize_weights_np(w[0], bits[layer.name], channel_axis=-2 if isinstance(
                layer, layers.DepthwiseConv2D) else -1)
            layer.set_weights(w)
    return clone


def _tflite_ref(model_bytes, xq):
    """Outputs of tf.lite's reference kernels, int8 in and out."""
    it = tf.lite.Interpreter(model_content=model_bytes,
                             experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for k in range(len(xq)):
        it.set_tensor(i["index"], xq[k : k + 1])
        it.invoke()
        out.append(it.get_tensor(o["index"]))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def trained(digits):
    (x_tr, y_tr), (x_te, y_te) = digits
    m = _allconv()
    zoo.train(m, x_tr, y_tr, epochs=25, batch_size=32, lr=3e-3)
    return m


@pytest.fixture(scope="module")
def deploy4(trained, digits):
    """Trained all-conv model with 4-bit conv / depthwise kernels and an 8-bit head."""
    return _on_grid(trained, {"conv1": 4, "dw1": 4, "conv2": 4, "head": 8})


@pytest.fixture(scope="module")
def art4(deploy4, digits):
    (x_tr, _), _ = digits
    return tflm_export.convert(deploy4, x_tr[:300])


@pytest.fixture(scope="module")
def dense_model(digits):
    """zoo.small_cnn (BN folded by the converter) with a 2-bit Dense head."""
    (x_tr, y_tr), _ = digits
    m = zoo.small_cnn(width=8)
    zoo.train(m, x_tr, y_tr, epochs=3)
    return _on_grid(m, {"logits": 2})


# ---------------------------------------------------------------- pure rules (fast)

def test_storage_rules_match_formulas():
    p = storage.plan_tensor("CONV_2D", (32, 3, 3, 16), bits=4)
    assert p.method == "int4" and p.weight_bytes == 32 * 9 * 16 // 2 and p.arena_bytes == 32 * 9 * 16
    fc = storage.plan_tensor("FULLY_CONNECTED", (10, 256), bits=2)
    assert fc.method == "lut" and fc.index_bits == 2 and fc.table_len == 3
    assert fc.lut_tables == 10   # one value table per channel (see storage.SHARED_LUT_TABLES)
    assert fc.weight_bytes == 2560 * 2 // 8 + 16 + 10 * 3 + storage.lut_overhead_bytes(10)
    assert storage.plan_tensor("FULLY_CONNECTED", (10, 256), bits=4, pack="int4").method == "int8"  # no INT4 FC
    assert storage.plan_tensor("FULLY_CONNECTED", (4, 2), bits=2).method == "int8"  # LUT tables outweigh savings
    assert storage.plan_tensor("FULLY_CONNECTED", (4, 2), bits=2, pack="lut").method == "lut"  # forced
    assert storage.plan_tensor("CONV_2D", (32, 3, 3, 16), bits=8).method == "int8"
    assert storage.bias_bytes(10) == 40
    # differentiable form: no ceil, works on floats
    assert storage.weight_bytes("int4", 7.0, exact=False) == 3.5


def test_grid_detection_and_int4_packing():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype("float32")
    for bits, n in ((2, 1), (3, 3), (4, 7)):
        wq = quantizers.quantize_weights_np(w, bits)
        scale = np.abs(wq).max(axis=(0, 1, 2)) / 127.0
        v = np.round(wq / scale).astype(int)          # what the converter stores
        assert all(packing.detect_levels(v[..., c]) == n for c in range(6))
    assert packing.detect_levels(np.arange(-127, 128)) == 127
    q = np.array([-7, -1, 0, 3, 7])
    assert np.array_equal(packing.unpack_int4(packing.pack_int4(q), 5), q)
    assert packing.pack_int4(np.array([1, -1])) == bytes([0xF1])    # low nibble first


def test_boards_and_custom_board():
    assert set(tflm_export.BOARDS) == {"nano33ble", "nucleo-f746zg", "nucleo-l4r5zi", "nucleo-f411re", "stm32h743"}
    assert tflm_export.BOARDS["nano33ble"].sram_bytes == 256 * 1024
    b = tflm_export.Board("tiny", core="cortex-m0+", clock_mhz=48, sram_bytes=8192, flash_bytes=65536)
    assert tflm_export.get_board(b) is b and b.arena_budget == 8192
    with pytest.raises(ValueError, match="unknown board"):
        tflm_export.get_board("arduino-uno")
    with pytest.raises(ValueError, match="unknown core"):
        tflm_export.Board("x", core="z80", clock_mhz=4, sram_bytes=1, flash_bytes=1)


# ---------------------------------------------------------------- parity on real data

@pytest.mark.slow
def test_tflm_bit_exact_with_tflite(art4, digits):
    _, (x_te, _) = digits
    xq = art4.quantize_input(x_te)
    ref = _tflite_ref(art4.int8_model_bytes, xq)
    run = tflm_export.emulate(art4.int8_model_bytes, inputs=xq)
    assert np.array_equal(run.raw_outputs, ref.reshape(run.raw_outputs.shape)), "int8 model: TFLM != tf.lite"
    print(f"\nTFLM vs tf.lite (reference kernels), int8 model: bit-exact on {len(xq)} test inputs x 10 outputs")


@pytest.mark.slow
def test_tflm_agrees_with_keras(art4, deploy4, digits):
    _, (x_te, y_te) = digits
    run = tflm_export.emulate(art4, board="nano33ble", inputs=x_te)
    k_pred = deploy4.predict(x_te, verbose=0).argmax(-1)
    t_pred = run.outputs.argmax(-1)
    agree = float((k_pred == t_pred).mean())
    acc_k, acc_t = float((k_pred == y_te).mean()), float((t_pred == y_te).mean())
    print(f"\nTFLM (packed: {art4.report['totals']['methods']}) vs Keras on {len(y_te)} digits: "
          f"top-1 agreement {agree:.2%}, accuracy Keras {acc_k:.2%} / TFLM {acc_t:.2%}")
    print(run.summary())
    assert acc_k > 0.85, "the test model did not train"
    assert agree >= 0.99
    assert abs(acc_k - acc_t) <= 0.005


@pytest.mark.slow
def test_int4_shrinks_and_is_exact_against_regridded_int8(deploy4, art4, digits):
    (x_tr, _), (x_te, _) = digits
    plain = tflm_export.convert(deploy4, x_tr[:300], pack="int8", check_tflm=False)
    int4 = tflm_export.convert(deploy4, x_tr[:300], pack="int4")
    assert plain.model_bytes == lean.strip(art4.int8_model_bytes)   # same converter output underneath
    assert {r["method"] for r in int4.report["tensors"] if r["layer"] != "head"} == {"int4"}
    assert int4.size < plain.size
    # same model with the INT4 rescaling but int8 storage: must match INT4 bit for bit
    weights = packing.analyze(plain.model_bytes)
    plans = packing.plan(weights, "int4")
    regrid, _ = packing.apply(plain.model_bytes, weights, plans, regrid_only=True)
    xq = plain.quantize_input(x_te)
    r4 = tflm_export.emulate(int4, inputs=xq).raw_outputs
    rg = tflm_export.emulate(regrid, inputs=xq).raw_outputs
    r8 = tflm_export.emulate(plain, inputs=xq).raw_outputs
    assert np.array_equal(r4, rg), "INT4 packing changed the outputs"
    diff = np.abs(r4.astype(int) - r8.astype(int))
    agree = float((r4.argmax(-1) == r8.argmax(-1)).mean())
    print(f"\nINT4 file {int4.size} B vs int8 {plain.size} B; INT4 == regridded int8 bit for bit; "
          f"vs plain int8: max |diff| {diff.max()} LSB, {np.mean(diff > 0):.2%} of outputs differ, "
          f"top-1 agreement {agree:.2%}")
    assert agree >= 0.99
    # tf.lite also runs the INT4 model (unstripped: tf.lite wants a zero point per scale), identically
    full = tflm_export.convert(deploy4, x_tr[:300], pack="int4", strip=False, check_tflm=False)
    ref = _tflite_ref(full.model_bytes, xq)
    assert np.array_equal(r4, ref.reshape(r4.shape))


@pytest.mark.slow
def test_lut_for_dense_is_lossless(dense_model, digits, tmp_path):
    (x_tr, _), (x_te, _) = digits
    art = tflm_export.convert(dense_model, x_tr[:200], out_dir=tmp_path / "m")
    row = {r["layer"]: r for r in art.report["tensors"]}["logits"]
    assert row["op"] == "FULLY_CONNECTED" and row["method"] == "lut" and row["index_bits"] == 2
    assert "TFLM_DECODE" in art.ops and art.size < len(art.int8_model_bytes)
    assert "AddDecode()" in (tmp_path / "m" / "op_resolver.h").read_text()
    lut = tflm_export.emulate(art, inputs=x_te[:100]).raw_outputs
    base = tflm_export.emulate(art.int8_model_bytes, inputs=x_te[:100]).raw_outputs
    assert np.array_equal(lut, base)
    print(f"\nDense 2-bit LUT: {row['int8_bytes']} B int8 -> {row['measured_data_bytes']} B data "
          f"(rule: {row['stored_bytes']} B incl. graph records); file {len(art.int8_model_bytes)} -> {art.size} B")


@pytest.mark.slow
def test_weight_bits_override_snaps_grid(trained, digits):
    (x_tr, _), _ = digits
    art = tflm_export.convert(trained, x_tr[:100], weight_bits={"conv2": 3}, check_tflm=False)
    row = {r["layer"]: r for r in art.report["tensors"]}["conv2"]
    assert row["forced_bits"] == 3 and row["grid_bits"] == 3 and row["method"] in ("int4", "lut")
    with pytest.raises(tflm_export.PackingError, match="nope"):
        tflm_export.convert(trained, x_tr[:20], weight_bits={"nope": 4}, check_tflm=False)


# ---------------------------------------------------------------- errors

@pytest.mark.slow
def test_truncated_and_corrupted_files_give_python_errors(art4, tmp_path):
    data = art4.model_bytes
    for cut in (0, 7, 64, len(data) // 2, len(data) - 1):
        with pytest.raises(tflm_export.CorruptModelError):
            tflm_export.emulate(data[:cut])
    with pytest.raises(tflm_export.CorruptModelError, match="identifier"):
        tflm_export.emulate(b"\x00" * 64)
    rng = random.Random(1)
    outcomes = {}
    for _ in range(12):   # random byte flips in the flatbuffer's tables (not in weight data)
        bad = bytearray(data)
        for _ in range(4):
            bad[rng.randrange(0, len(bad) // 4)] ^= 0xFF
        try:
            tflm_export.emulate(bytes(bad))
            outcomes["ran"] = outcomes.get("ran", 0) + 1
        except tflm_export.TFLMExportError as e:
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
    print(f"\n12 corrupted copies: {outcomes}")
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[:100])
    with pytest.raises(tflm_export.CorruptModelError, match="truncated"):
        tflm_export.emulate(str(p))


@pytest.mark.slow
def test_does_not_fit(art4, digits):
    small = tflm_export.Board("tiny-m0", core="cortex-m0+", clock_mhz=48, sram_bytes=2048, flash_bytes=1 << 20)
    with pytest.raises(tflm_export.DoesNotFit) as e:
        tflm_export.emulate(art4, board=small)
    msg = str(e.value)
    assert "tiny-m0" in msg and "tensor arena" in msg and "2,048" in msg and f"{art4.arena_bytes:,}" in msg
    assert e.value.result.arena_bytes == art4.arena_bytes
    # a real board: 160x160x16 int8 activations (400 KiB) do not fit the Nano 33 BLE's 256 KiB
    inp = keras.Input((160, 160, 3))
    big = keras.Model(inp, layers.Conv2D(16, 3, padding="same", activation="relu")(inp), name="big")
    art = tflm_export.convert(big, np.random.default_rng(0).uniform(0, 1, (4, 160, 160, 3)).astype("float32"))
    with pytest.raises(tflm_export.DoesNotFit, match=r"nano33ble: tensor arena needs .* 262,144 bytes"):
        tflm_export.emulate(art, board="nano33ble")
    ok = tflm_export.emulate(art, board="stm32h743")
    assert ok.fits and ok.arena_bytes > 160 * 160 * 16


@pytest.mark.slow
def test_unsupported_op_is_named():
    inp = keras.Input((16,))
    m = keras.Model(inp, layers.Dense(8, activation="gelu")(inp))
    x = np.random.default_rng(0).uniform(0, 1, (20, 16)).astype("float32")
    with pytest.raises(tflm_export.UnsupportedOpError, match="GELU") as e:
        tflm_export.convert(m, x)
    assert e.value.ops == ("GELU",)
    art = tflm_export.convert(m, x, check_tflm=False)      # the flatbuffer itself is fine
    with pytest.raises(tflm_export.UnsupportedOpError, match="GELU"):
        tflm_export.emulate(art)


# ---------------------------------------------------------------- firmware files

@pytest.mark.slow
def test_out_dir_files_compile_and_overwrite_protection(deploy4, art4, digits, tmp_path):
    (x_tr, _), _ = digits
    out = tmp_path / "fw"
    art = tflm_export.convert(deploy4, x_tr[:300], out_dir=out)
    names = sorted(os.listdir(out))
    assert names == sorted(["model.tflite", "model_data.cc", "model_data.h", "op_resolver.h",
                            "model_settings.h", "report.json"])
    assert (out / "model.tflite").read_bytes() == art.model_bytes
    cc = (out / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_digits_allconv_model_data[]" in cc
    assert f"g_digits_allconv_model_data_len = {art.size};" in cc
    assert f"constexpr int kTensorArenaSize = {art.arena_bytes};" in (out / "model_settings.h").read_text()
    resolver = (out / "op_resolver.h").read_text()
    assert "MicroMutableOpResolver<kDigitsAllconvNumOps>" in resolver
    assert f"kDigitsAllconvNumOps = {len(set(art.ops))};" in resolver
    for op in ("AddConv2D()", "AddDepthwiseConv2D()", "AddMaxPool2D()", "AddReshape()"):
        assert op in resolver
    rep = json.loads((out / "report.json").read_text())
    assert rep["file_bytes"] == art.size and rep["totals"]["weights_stored_bytes"] < rep["totals"]["weights_int8_bytes"]
    # the C++ compiles (TFLM's resolver header replaced by a stub declaring the same methods)
    gxx = shutil.which("g++")
    if gxx:
        stub = tmp_path / "inc" / "tensorflow" / "lite" / "micro"
        stub.mkdir(parents=True)
        methods = "\n".join(f"  TfLiteStatus {m}() {{ return kTfLiteOk; }}" for m in
                            ("AddConv2D", "AddDepthwiseConv2D", "AddMaxPool2D", "AddReshape", "AddDecode",
                             "AddFullyConnected"))
        (stub / "micro_mutable_op_resolver.h").write_text(textwrap.dedent(
            "#pragma once\nenum TfLiteStatus { kTfLiteOk, kTfLiteError };\nnamespace tflite {\n"
            "template <unsigned int N> struct MicroMutableOpResolver {\n") + methods + "\n};\n}\n")
        main = tmp_path / "main.cc"
        main.write_text('#include "model_data.h"\n#include "model_settings.h"\n#include "op_resolver.h"\n'
                        "#include <cstdint>\nalignas(16) static uint8_t tensor_arena[kTensorArenaSize];\n"
                        "int main() { DigitsAllconvOpResolver r; RegisterDigitsAllconvOps(r);\n"
                        "  return g_digits_allconv_model_data_len > 0 && tensor_arena[0] == 0 ? 0 : 1; }\n")
        for src in (out / "model_data.cc", main):
            subprocess.run([gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", f"-I{out}",
                            f"-I{tmp_path / 'inc'}", str(src)], check=True)
    # overwrite protection, atomic replace
    with pytest.raises(tflm_export.OutDirExistsError, match="overwrite=True"):
        tflm_export.convert(deploy4, x_tr[:50], out_dir=out)
    art2 = tflm_export.convert(deploy4, x_tr[:50], out_dir=out, pack="int8", overwrite=True)
    assert (out / "model.tflite").read_bytes() == art2.model_bytes
    assert sorted(os.listdir(tmp_path)) == sorted(["fw", "inc", "main.cc"] if gxx else ["fw"])  # no temp dirs left


def test_top1_accuracy_reads_index_column_and_one_hot_labels():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert tflm_export.top1_accuracy(scores, labels) == 0.75
    assert tflm_export.top1_accuracy(scores, labels[:, None]) == 0.75     # (N, 1) class indices
    assert tflm_export.top1_accuracy(scores, np.eye(2)[labels]) == 0.75   # one-hot rows
    assert tflm_export.top1_accuracy(scores[:, None, :], labels) == 0.75  # a TFLM output (N, 1, C)
