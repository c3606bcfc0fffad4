"""The cycle model against the published TFLM latencies it was calibrated on (no TensorFlow needed)."""

import json
import os

import pytest

from tflm_export import cycles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "latency_calibration.json")


@pytest.fixture(scope="module")
def calibration():
    with open(RESULTS) as f:
        return json.load(f)


def _estimate_ms(calibration, src):
    ops = calibration["models"][src["model"]]["ops"]
    return sum(r["ms"] for r in cycles.estimate_ops(ops, src["core"], src["clock_mhz"], src["kernels"]))


def test_every_source_recomputes_from_the_current_constants(calibration):
    # the JSON was written by benchmarks/latency_calibration.py with the constants now in cycles.py
    assert calibration["constants"] == json.loads(json.dumps(cycles.constants()))
    for src in calibration["sources"]:
        assert _estimate_ms(calibration, src) == pytest.approx(src["estimated_ms"], rel=1e-3), src["id"]


def test_optimized_kernels_within_25_percent_of_every_published_measurement(calibration):
    for src in calibration["sources"]:
        if src["kernels"] in ("cmsis-nn", "cmsis-nn-2020"):
            err = _estimate_ms(calibration, src) / src["published_ms"] - 1
            assert abs(err) <= 0.25, (src["id"], src["role"], err)


def test_error_band_covers_the_held_out_errors(calibration):
    held = [s for s in calibration["sources"] if s["role"] == "held-out"]
    assert {s["kernels"] for s in held} >= {"cmsis-nn", "cmsis-nn-2020"}
    assert len([s for s in held if s["kernels"] == "cmsis-nn"]) >= 3
    for kernels in ("cmsis-nn", "cmsis-nn-2020"):
        worst = max(abs(s["error"]) for s in held if s["kernels"] == kernels)
        assert worst <= cycles.error_band(kernels) < worst + 0.05
    assert cycles.error_band("reference") is None          # one measurement, fitted on it


def test_fit_and_held_out_use_distinct_measurements(calibration):
    ids = [s["id"] for s in calibration["sources"]]
    assert len(ids) == len(set(ids))
    for s in calibration["sources"]:
        assert s["role"] in ("fit", "held-out") and s["source"] and s["figure"]


def test_model_shapes_match_the_references(calibration):
    m = calibration["models"]
    # MLPerf Tiny references: ResNet-8 ~12.5 M MACs / 78k params, DS-CNN ~2.7 M MACs,
    # MobileNetV1-0.25 at 96x96x3 ~7.5 M MACs, FC autoencoder 264k MACs / 270k params
    assert m["mlperf_ic_resnet8"]["macs"] == 12_501_632 and m["mlperf_ic_resnet8"]["params"] == 78_666
    assert m["mlperf_kws_dscnn"]["macs"] == 2_656_768
    assert m["mlperf_vww_mobilenet"]["macs"] == 7_489_664
    assert m["mlperf_ad_autoencoder"]["macs"] == 264_192


def test_kernels_order_and_validation():
    ops = [{"index": 0, "op": "CONV_2D", "macs": 1_000_000, "out_elements": 10_000, "work": 0}]
    ms = {k: cycles.estimate_ops(ops, "cortex-m4", 100, k)[0]["ms"] for k in cycles.KERNELS}
    assert ms["cmsis-nn"] < ms["cmsis-nn-2020"] < ms["reference"]
    m7 = cycles.estimate_ops(ops, "cortex-m7", 100)[0]["ms"]
    assert m7 < ms["cmsis-nn"]
    with pytest.raises(ValueError, match="kernels must be one of"):
        cycles.mac_cycles("CONV_2D", "cortex-m4", "cmsis")
    with pytest.raises(ValueError, match="no cycle model for core"):
        cycles.estimate_ops(ops, "cortex-a53", 100)
    # tfjpq's latency cost reads these three names
    assert cycles.mac_cycles("CONV_2D", "cortex-m4") == pytest.approx(3.73)
    assert cycles.INT4_UNPACK > 0 and cycles.CORE_FACTORS["cortex-m4"][1] == 1.0
