"""tfjpq.tflm_cost and the full path: search model -> freeze -> export -> tflm_export.convert / emulate, and the TFLM cost."""

import keras
import numpy as np
import pytest

import tfjpq
import tflm_export
from tfjpq import zoo
from tfjpq.tflm_cost import TFLMCost

from conftest import random_choices


@pytest.fixture(scope="module")
def deployed(trained_small_cnn, digits):
    (x, _), _ = digits
    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    random_choices(search, seed=4)
    frozen = tfjpq.freeze(search)
    deploy = tfjpq.export(frozen)
    art = tflm_export.convert(deploy, representative_data=x[:100])
    return frozen, deploy, art


def test_profile_predicts_flatbuffer_weight_bytes_within_5_percent(deployed):
    frozen, deploy, art = deployed
    measured = art.report["totals"]["weights_measured_data_bytes"]
    for model in (frozen, deploy):
        predicted = tfjpq.profile(model).totals["packed_bytes"]
        print(f"{model.name}: profile predicts {predicted} B of weights, flatbuffer holds {measured} B")
        assert abs(predicted - measured) <= 0.05 * measured
    # sub-byte groups really were packed
    methods = {r["layer"]: r["method"] for r in art.report["tensors"]}
    assert any(m in ("int4", "lut") for m in methods.values())
    assert art.report["totals"]["weights_measured_data_bytes"] < art.report["totals"]["weights_int8_bytes"]


def test_tflm_cost_on_hard_choices_is_the_flatbuffer_and_its_weights_plus_biases(deployed):
    frozen, _, art = deployed
    tot = art.report["totals"]
    from tflm_export import storage

    overhead = sum(storage.lut_overhead_bytes(r["channels"]) for r in art.report["tensors"] if r["method"] == "lut")
    parts = {}
    for r in art.report["tensors"]:
        if r["layer"] and "__w" in r["layer"]:
            base = r["layer"].split("__w")[0]
            parts[base] = parts.get(base, 0) + 1
    assert parts, "the fixture should split at least one layer by precision"
    overhead += sum(storage.split_overhead_bytes(n) for n in parts.values())   # the split's extra operators
    expected = tot["weights_measured_data_bytes"] + tot["bias_bytes"] + overhead
    from tfjpq.tflm_cost import SCALE_BYTES_PER_CHANNEL

    kept = tfjpq.profile(frozen).totals["channels_kept"]
    per_layer = float(frozen.cost()) - frozen.cost_model.fixed_bytes - SCALE_BYTES_PER_CHANNEL * kept
    assert per_layer == pytest.approx(expected, rel=0.05)
    # with the fixed bytes measured at wrap, the cost is the whole flatbuffer
    assert float(frozen.cost()) == pytest.approx(art.size, rel=0.03)


def test_emulated_exported_model_matches_keras(deployed, digits):
    frozen, deploy, art = deployed
    _, (xt, yt) = digits
    run = tflm_export.emulate(art, board="nano33ble", inputs=xt[:120])
    keras_top1 = deploy.predict(xt[:120], verbose=0).argmax(1)
    assert (np.asarray(run.outputs).argmax(1) == keras_top1).mean() >= 0.97
    assert run.arena_bytes > 0 and run.fits


def test_tflm_latency_cost_falls_with_pruning():
    model = zoo.small_cnn()
    search = tfjpq.wrap(model, cost=TFLMCost("nucleo-f746zg", objective="latency"), mode="hard")
    before = float(search.cost())
    alpha = search.get_layer("conv2_wbits").alpha.numpy()
    alpha[0, :16] = 10.0  # prune half of conv2
    search.get_layer("conv2_wbits").alpha.assign(alpha)
    after = float(search.cost())
    assert 0 < after < 0.8 * before
    assert search.cost_model.unit == "ms"


def test_tflm_cost_round_trips_and_rejects_bad_input(tmp_path):
    search = tfjpq.wrap(zoo.small_cnn(), cost=TFLMCost("stm32h743", "latency"))
    path = str(tmp_path / "s.keras")
    search.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.cost_model.board.name == "stm32h743" and loaded.cost_model.objective == "latency"
    with pytest.raises(ValueError, match="objective"):
        TFLMCost(objective="energy")
    with pytest.raises(ValueError, match="act_bits"):
        tfjpq.wrap(zoo.small_cnn(), cost="tflm", act_bits=(4, 8))


def _bias_scale_mismatches(model_bytes):
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me

    from tflm_export.packing import op_name

    bad = []
    for op in me.read(model_bytes).subgraphs[0].operators:
        if op_name(op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 2 and op.inputs[2]:
            x, w, b = op.inputs[:3]
            want = float(x.quantization.scales[0]) * np.asarray(w.quantization.scales)
            if not np.allclose(np.asarray(b.quantization.scales), want, rtol=1e-4):
                bad.append(b.name)
    return bad


@pytest.mark.slow
def test_regrouped_resnet_converts_with_consistent_bias_scales(digits):
    """Concatenate + activation ranges once left stale bias scales in the converter's output."""
    (x, y), (xt, _) = digits
    model = zoo.resnet8((8, 8, 1))
    zoo.train(model, x, y, epochs=3)
    search = tfjpq.wrap(model, weight_bits=(2, 4, 8))
    for choice in search.precision_choices():
        alpha = np.full(choice.alpha.shape, -5.0, np.float32)
        alpha[np.arange(choice.channels) % len(choice.bits), np.arange(choice.channels)] = 5.0
        choice.alpha.assign(alpha)
    for act in search.activation_choices():
        act.clip.assign(10.0)  # a fake-quant range far from the calibrated one
    deploy = tfjpq.export(tfjpq.freeze(search))
    art = tflm_export.convert(deploy, representative_data=x[:100], pack="int8")
    assert _bias_scale_mismatches(art.int8_model_bytes) == []   # the repaired converter output
    run = tflm_export.emulate(art, inputs=xt[:200])
    agree = (np.asarray(run.outputs).argmax(1) == deploy.predict(xt[:200], verbose=0).argmax(1)).mean()
    assert agree >= 0.97
