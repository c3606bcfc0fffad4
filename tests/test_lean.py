"""tflm_export.lean: stripped flatbuffers run bit-identically in TFLM, and every byte is accounted for."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import tflm_export  # noqa: E402
from tflm_export import lean, storage  # noqa: E402
from tfjpq import quantizers, zoo  # noqa: E402


def _mixed_ops_model():
    """Conv, depthwise, Add, Concatenate and Dense in one small graph, weights on 2- and 4-bit grids."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    b = layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    c = layers.Conv2D(8, 1, name="pw")(b)
    s = layers.ReLU()(layers.Add()([a, c]))
    d = layers.Conv2D(4, 3, padding="same", name="c2")(s)
    cat = layers.Concatenate()([s, d])
    x = layers.GlobalAveragePooling2D()(cat)
    out = layers.Dense(10, name="fc")(x)
    model = keras.Model(inp, out)
    bits = {"c1": 4, "dw": 4, "pw": 2, "c2": 2, "fc": 2}
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name in bits:
            w = layer.get_weights()
            axis = -2 if isinstance(layer, layers.DepthwiseConv2D) else -1
            w[0] = quantizers.quantize_weights_np(w[0], bits[layer.name], channel_axis=axis)
            w[1] = rng.normal(0, 0.1, w[1].shape).astype("float32")
            layer.set_weights(w)
    return model


@pytest.fixture(scope="module")
def mixed(digits):
    (x, _), (xt, _) = digits
    return _mixed_ops_model(), x[:100], xt[:64]


@pytest.mark.parametrize("pack", ["int8", "int4", "lut", "auto"])
def test_strip_keeps_outputs_and_arena_bit_identical(mixed, pack):
    model, x_cal, x_test = mixed
    full = tflm_export.convert(model, x_cal, pack=pack, strip=False)
    lean_art = tflm_export.convert(model, x_cal, pack=pack)
    assert lean_art.size < 0.75 * full.size
    xq = full.quantize_input(x_test)
    a = tflm_export.emulate(full, inputs=xq).raw_outputs
    b = tflm_export.emulate(lean_art, inputs=xq).raw_outputs
    assert np.array_equal(a, b)
    assert lean_art.arena_bytes == full.arena_bytes
    methods = {r["method"] for r in lean_art.report["tensors"]}
    if pack in ("int4", "lut"):
        assert pack in methods


def test_strip_drops_names_metadata_and_repeated_zero_points(mixed):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model, x_cal, _ = mixed
    full = tflm_export.convert(model, x_cal, pack="int8", strip=False, check_tflm=False).model_bytes
    small = lean.strip(full)
    m = fb.ModelT.InitFromPackedBuf(bytearray(small), 0)
    assert m.signatureDefs is None and m.description is None and not m.metadata
    tensors = m.subgraphs[0].tensors
    assert all(t.name is None for t in tensors)
    per_channel = [t for t in tensors if t.quantization is not None and t.quantization.scale is not None
                   and len(t.quantization.scale) > 1]
    assert per_channel and all(len(t.quantization.zeroPoint) == 1 for t in per_channel)
    assert lean.strip(small) == small                       # idempotent
    assert len(lean.strip(full, keep_names=True)) > len(small)


@pytest.mark.parametrize("strip", [False, True])
def test_breakdown_sums_to_file_size_and_finds_the_weights(mixed, strip):
    model, x_cal, _ = mixed
    art = tflm_export.convert(model, x_cal, pack="int8", strip=strip, check_tflm=False)
    b = lean.breakdown(art.model_bytes)
    assert sum(b["parts"].values()) == b["total"] == art.size
    assert b["parts"]["weights"] == art.report["totals"]["weights_stored_bytes"]
    assert b["parts"]["biases"] == art.report["totals"]["bias_bytes"]
    assert art.report["totals"]["breakdown"] == b["parts"]
    if strip:
        assert b["parts"]["names"] == 0 and b["parts"]["metadata"] == 0
    else:
        assert b["parts"]["names"] > 0 and b["parts"]["metadata"] > 0
    # tfjpq.summary shows the same breakdown
    import tfjpq

    printed = []
    prof = tfjpq.summary(model, print_fn=printed.append, flatbuffer=art)
    assert prof.totals["flatbuffer"] == b
    assert f"flatbuffer {art.size:,d} B: " in printed[-1] and f"weights {b['parts']['weights']:,d}" in printed[-1]


def test_lut_tables_are_counted_and_the_plan_predicts_stored_data(mixed):
    model, x_cal, _ = mixed
    art = tflm_export.convert(model, x_cal, pack="lut", check_tflm=False)
    rows = [r for r in art.report["tensors"] if r["method"] == "lut"]
    assert rows
    b = lean.breakdown(art.model_bytes)["parts"]
    assert b["lut_tables"] == sum(storage.LUT_HEADER_BYTES + r["channels"] * r["table_len"] for r in rows)
    for r in rows:   # the plan's bytes = stored data + the graph constant
        assert r["stored_bytes"] - storage.lut_overhead_bytes(r["channels"]) == r["measured_data_bytes"]


@pytest.mark.slow
def test_lean_resnet8_w8_flash_efficiency():
    """The efficiency target of the exporter issue on the uniform 8-bit ResNet-8 (random weights, real sizes)."""
    import tfjpq

    model = zoo.resnet8(input_shape=(28, 28, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.5, 2, c)])
    deploy = tfjpq.export(tfjpq.freeze(tfjpq.wrap(model, weight_bits=(8,))))
    art = tflm_export.convert(deploy, rng.uniform(0, 1, (16, 28, 28, 1)).astype("float32"), check_tflm=False)
    assert art.report["totals"]["flash_efficiency"] >= 0.93


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3])
def test_split_rule_never_costs_bytes(trained_small_cnn, digits, seed):
    """export(split="auto") is never larger than always splitting or never splitting."""
    import tfjpq
    from conftest import random_choices

    (x, _), _ = digits
    search = tfjpq.wrap(trained_small_cnn, weight_bits=(2, 4, 8))
    random_choices(search, seed=seed)
    frozen = tfjpq.freeze(search)
    size = {mode: tflm_export.convert(tfjpq.export(frozen, split=mode), x[:50], check_tflm=False).size
            for mode in ("auto", "always", "never")}
    print(size)
    assert size["auto"] <= min(size["always"], size["never"])
