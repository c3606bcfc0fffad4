"""Calibrate tflm_export.cycles against published TFLM latencies on Cortex-M boards.

Every figure in SOURCES was read from the cited public source (see docs/tflm_export.md,
"Cycle model: calibration"); nothing here is measured on a board by us.

What it does:

1. Rebuilds the models the sources ran, as Keras models with the reference layer shapes
   (MLPerf Tiny ResNet-8 / DS-CNN / MobileNetV1-0.25 / FC autoencoder, the TFLM
   person-detection MobileNetV1-0.25 on grayscale input, MobileNetV2-0.30 at 80x80),
   converts them with ``tflm_export.keras_to_int8`` (random calibration data: latency does
   not depend on the values) and counts MACs and elements per operator with
   ``tflm_export.modelinfo``.
2. Fits a few per-operator constants by least squares on log latency, on the sources marked
   ``fit`` only (``--fit`` prints the fitted values; the constants in tflm_export/cycles.py are
   these values, rounded).
3. Prints, for every source (fit and held out), the published and the estimated latency and
   the relative error, and writes benchmarks/results/latency_calibration.json with the per-op
   statistics, so tests can recompute the estimates without TensorFlow.

Run::

    .venv/bin/python benchmarks/latency_calibration.py          # table + JSON
    .venv/bin/python benchmarks/latency_calibration.py --fit    # also refit the constants
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "latency_calibration.json")

# ---------------------------------------------------------------------------------------------
# Published measurements. ms = milliseconds per inference; where a source gives throughput
# (MLPerf Tiny "Median throughput ... inf./sec."), ms = 1000 / throughput.
# role: "fit" (used to fit the constants) or "held-out" (only checked).
# ---------------------------------------------------------------------------------------------
MLPERF_V05_REF = ("MLPerf Tiny v0.5, closed, reference submission (Harvard/Digital Catapult), "
                  "github.com/mlcommons/tiny_results_v0.5 closed/reference/results/Nucleo-L4R5ZI/<bm>/performance/results.txt; "
                  "system: closed/reference/systems/Nucleo_L4R5ZI_System_Description.json (TFLM v2.3.1, mbed-os, "
                  "GCC-ARM 6-2017-q2); CMSIS-NN: the reference build tree mlcommons/tiny "
                  "benchmark/reference_submissions/image_classification/BUILD/NUCLEO_L4R5ZI/GCC_ARM/tensorflow/lite/micro/"
                  "kernels/cmsis-nn/{conv,depthwise_conv,fully_connected,pooling,add,softmax}.o and mlcommons/tiny PR #44 "
                  "'Support CMSIS-NN' (runtime ~8 s -> well under 1 s)")
MLPERF_V07_RENESAS = ("MLPerf Tiny v0.7, closed, Renesas EK-RA6M4, github.com/mlcommons/tiny_results_v0.7 "
                      "closed/renesas/results/EK-RA6M4/<bm>/performance/results.txt; system: "
                      "closed/renesas/systems/EK-RA6M4_System_Description.json (Cortex-M33 200 MHz, "
                      "'Inference Framework: tflite-micro', 'Software Libraries: CMSIS')")
MLPERF_V11_KRAI = ("MLPerf Tiny v1.1, closed, Krai, microTVM with CMSIS-NN kernels (not the TFLM interpreter), "
                   "github.com/mlcommons/tiny_results_v1.1 closed/Krai/results/README.md, table 'microtvm_cmsis_nn', "
                   "NUCLEO_L4R5ZI (Cortex-M4 120 MHz)")
ONE_7598 = ("Samsung/ONE issue #7598 '[luci-interpreter] Benchmark modes from tflite-micro', comment by m-bronnikov "
            "2021-09-15, github.com/Samsung/ONE/issues/7598: TFLM person_detection on NUCLEO_F413ZH "
            "(STM32F413ZH Cortex-M4; clock not stated, the board's maximum and mbed default is 100 MHz)")
PLUMERAI_2021 = ("Plumerai blog 'The world's fastest deep learning inference software for Arm Cortex-M', 2021-10-04, "
                 "blog.plumerai.com/2021/10/cortex-m-inference-software/: 'TensorFlow Lite for Microcontrollers 2.5 "
                 "(with CMSIS-NN) 129 ms', MobileNetV2 (alpha=0.30, resolution=80x80, classes=1000), "
                 "STM32F746G-Discovery at 216 MHz")

SOURCES = [
    # Current CMSIS-NN (2021+): fitted on IC, VWW and AD of two MLPerf Tiny systems (TFLM on an M33, and the
    # same kernels under microTVM on the M4 reference board); KWS of both, a TFLM M4 board and an M7 are held out.
    dict(id="renesas-ra6m4-ic", source=MLPERF_V07_RENESAS, model="mlperf_ic_resnet8", board="EK-RA6M4",
         core="cortex-m33", clock_mhz=200, kernels="cmsis-nn", figure="4.062 inf./sec.", ms=1000 / 4.062, role="fit"),
    dict(id="renesas-ra6m4-kws", source=MLPERF_V07_RENESAS, model="mlperf_kws_dscnn", board="EK-RA6M4",
         core="cortex-m33", clock_mhz=200, kernels="cmsis-nn", figure="19.774 inf./sec.", ms=1000 / 19.774, role="held-out"),
    dict(id="renesas-ra6m4-vww", source=MLPERF_V07_RENESAS, model="mlperf_vww_mobilenet", board="EK-RA6M4",
         core="cortex-m33", clock_mhz=200, kernels="cmsis-nn", figure="6.159 inf./sec.", ms=1000 / 6.159, role="fit"),
    dict(id="renesas-ra6m4-ad", source=MLPERF_V07_RENESAS, model="mlperf_ad_autoencoder", board="EK-RA6M4",
         core="cortex-m33", clock_mhz=200, kernels="cmsis-nn", figure="216.772 inf./sec.", ms=1000 / 216.772, role="fit"),
    # TFLM person detection on a Cortex-M4 board (held out)
    dict(id="one7598-f413zh-person-cmsis", source=ONE_7598, model="tflm_person_detection", board="NUCLEO_F413ZH",
         core="cortex-m4", clock_mhz=100, kernels="cmsis-nn", figure="invokation time: 386595us", ms=386.595,
         role="held-out"),
    # Same CMSIS-NN kernels under the microTVM runtime on the MLPerf Tiny reference board
    dict(id="krai-l4r5-ic", source=MLPERF_V11_KRAI, model="mlperf_ic_resnet8", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn", figure="2.567 inf./sec", ms=1000 / 2.567,
         role="fit", note="microTVM runtime, CMSIS-NN kernels"),
    dict(id="krai-l4r5-kws", source=MLPERF_V11_KRAI, model="mlperf_kws_dscnn", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn", figure="10.019 inf./sec", ms=1000 / 10.019,
         role="held-out", note="microTVM runtime, CMSIS-NN kernels"),
    dict(id="krai-l4r5-vww", source=MLPERF_V11_KRAI, model="mlperf_vww_mobilenet", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn", figure="3.324 inf./sec", ms=1000 / 3.324,
         role="fit", note="microTVM runtime, CMSIS-NN kernels"),
    dict(id="krai-l4r5-ad", source=MLPERF_V11_KRAI, model="mlperf_ad_autoencoder", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn", figure="116.212 inf./sec", ms=1000 / 116.212,
         role="fit", note="microTVM runtime, CMSIS-NN kernels"),
    # Cortex-M7 (held out: the M7 factor is not fitted)
    dict(id="plumerai-f746-mbv2", source=PLUMERAI_2021, model="mobilenet_v2_030_80", board="STM32F746G-Discovery",
         core="cortex-m7", clock_mhz=216, kernels="cmsis-nn", figure="129 ms", ms=129.0, role="held-out"),
    # MLPerf Tiny v0.5 reference: TFLM 2.3.1 (2020) with the CMSIS-NN of its time.
    # Its conv / depthwise factor is fitted on IC, its fully-connected factor on AD; VWW and KWS are held out.
    dict(id="mlperf05-l4r5-ic", source=MLPERF_V05_REF, model="mlperf_ic_resnet8", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn-2020", figure="1.420 inf./sec.", ms=1000 / 1.420, role="fit"),
    dict(id="mlperf05-l4r5-vww", source=MLPERF_V05_REF, model="mlperf_vww_mobilenet", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn-2020", figure="1.665 inf./sec.", ms=1000 / 1.665,
         role="held-out"),
    dict(id="mlperf05-l4r5-kws", source=MLPERF_V05_REF, model="mlperf_kws_dscnn", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn-2020", figure="5.497 inf./sec.", ms=1000 / 5.497,
         role="held-out"),
    dict(id="mlperf05-l4r5-ad", source=MLPERF_V05_REF, model="mlperf_ad_autoencoder", board="NUCLEO_L4R5ZI",
         core="cortex-m4", clock_mhz=120, kernels="cmsis-nn-2020", figure="99.487 inf./sec.", ms=1000 / 99.487,
         role="fit"),
    # Reference (portable C) kernels: one measurement, so its factor is fitted on it and not checked.
    dict(id="one7598-f413zh-person-ref", source=ONE_7598, model="tflm_person_detection", board="NUCLEO_F413ZH",
         core="cortex-m4", clock_mhz=100, kernels="reference", figure="invokation time: 13005446us", ms=13005.446,
         role="fit"),
]


# ---------------------------------------------------------------------------------------------
# Models, with the layer shapes of the reference implementations.
# ---------------------------------------------------------------------------------------------
def mlperf_ic_resnet8():
    """MLPerf Tiny IC: mlcommons/tiny benchmark/training/image_classification/keras_model.py
    resnet_v1_eembc, with the 16/32/64 filters of the v0.5-v1.x pretrained model (~78k params)."""
    import keras
    from keras import layers as L

    def bn_relu(x):
        return L.Activation("relu")(L.BatchNormalization()(x))

    inp = keras.Input((32, 32, 3))
    x = bn_relu(L.Conv2D(16, 3, padding="same")(inp))
    f = 16
    for stack in range(3):
        stride = 1 if stack == 0 else 2
        y = bn_relu(L.Conv2D(f, 3, strides=stride, padding="same")(x))
        y = L.BatchNormalization()(L.Conv2D(f, 3, padding="same")(y))
        if stack > 0:
            x = L.Conv2D(f, 1, strides=2, padding="same")(x)
        x = L.Activation("relu")(L.add([x, y]))
        f *= 2
    x = L.AveragePooling2D(pool_size=8)(x)
    out = L.Dense(10, activation="softmax")(L.Flatten()(x))
    return keras.Model(inp, out, name="mlperf_ic_resnet8")


def mlperf_kws_dscnn():
    """MLPerf Tiny KWS DS-CNN: 49x10x1 MFCC, Conv 64 (10,4)/2, 4 x (DW 3x3 + PW 64), avg pool, Dense 12."""
    import keras
    from keras import layers as L

    inp = keras.Input((49, 10, 1))
    x = L.Conv2D(64, (10, 4), strides=(2, 2), padding="same")(inp)
    x = L.Activation("relu")(L.BatchNormalization()(x))
    for _ in range(4):
        x = L.DepthwiseConv2D(3, padding="same")(x)
        x = L.Activation("relu")(L.BatchNormalization()(x))
        x = L.Conv2D(64, 1, padding="same")(x)
        x = L.Activation("relu")(L.BatchNormalization()(x))
    x = L.AveragePooling2D(pool_size=x.shape[1:3])(x)
    out = L.Dense(12, activation="softmax")(L.Flatten()(x))
    return keras.Model(inp, out, name="mlperf_kws_dscnn")


def _mobilenet_v1(shape, alpha, classes, name):
    import keras

    return keras.applications.MobileNet(input_shape=shape, alpha=alpha, weights=None, classes=classes,
                                        include_top=True, name=name)


def mlperf_vww_mobilenet():
    """MLPerf Tiny VWW: MobileNetV1 alpha 0.25, 96x96x3, 2 classes."""
    return _mobilenet_v1((96, 96, 3), 0.25, 2, "mlperf_vww_mobilenet")


def tflm_person_detection():
    """TFLM person_detection example model: MobileNetV1 alpha 0.25 on 96x96 grayscale, 2 classes."""
    return _mobilenet_v1((96, 96, 1), 0.25, 2, "tflm_person_detection")


def mlperf_ad_autoencoder():
    """MLPerf Tiny AD: Dense 640 -> 128x4 -> 8 -> 128x4 -> 640 with BatchNorm + ReLU."""
    import keras
    from keras import layers as L

    inp = keras.Input((640,))
    x = inp
    for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
        x = L.Activation("relu")(L.BatchNormalization()(L.Dense(units)(x)))
    return keras.Model(inp, L.Dense(640)(x), name="mlperf_ad_autoencoder")


def mobilenet_v2_030_80():
    """MobileNetV2 alpha 0.30, 80x80x3, 1000 classes (Plumerai's comparison model)."""
    import keras

    return keras.applications.MobileNetV2(input_shape=(80, 80, 3), alpha=0.30, weights=None, classes=1000,
                                          include_top=True, name="mobilenet_v2_030_80")


MODELS = {f.__name__: f for f in (mlperf_ic_resnet8, mlperf_kws_dscnn, mlperf_vww_mobilenet, tflm_person_detection,
                                  mlperf_ad_autoencoder, mobilenet_v2_030_80)}


def op_stats(name):
    """Per-operator statistics of the int8 conversion of MODELS[name] (list of dicts)."""
    import keras

    from tflm_export import cycles, modelinfo
    from tflm_export.convert import keras_to_int8

    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    shape = (64,) + tuple(model.input_shape[1:])
    rep = np.random.default_rng(0).uniform(-1, 1, size=shape).astype("float32")
    data = keras_to_int8(model, rep)
    info = modelinfo.inspect_model(data)
    return {"ops": cycles.op_records(info), "macs": int(info.total_macs), "params": int(model.count_params()),
            "tflite_bytes": len(data)}


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------
def _features(ops):
    """MACs per op class and output elements of MAC ops: the quantities the fitted constants multiply."""
    f = {"CONV_2D": 0.0, "DEPTHWISE_CONV_2D": 0.0, "FULLY_CONNECTED": 0.0, "out": 0.0}
    for r in ops:
        if r["op"] in f and r["macs"]:
            f[r["op"]] += r["macs"]
            f["out"] += r["out_elements"]
    return f


def fit(stats):
    """Least squares on log(estimated / published) over the 'fit' sources, per kernel family."""
    from scipy.optimize import least_squares

    from tflm_export import cycles

    out = {}
    modern = [s for s in SOURCES if s["role"] == "fit" and s["kernels"] == "cmsis-nn"]
    keys = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]

    def resid_modern(p):
        table = dict(zip(keys, p[:3]))
        res = []
        for s in modern:
            est = cycles.estimate_ops(stats[s["model"]]["ops"], s["core"], s["clock_mhz"], "cmsis-nn",
                                      mac_table=table, out_cycles=p[3])
            res.append(np.log(sum(r["ms"] for r in est) / s["ms"]))
        return np.array(res)

    p0 = [cycles._M4_MAC[k] for k in keys] + [cycles.OUT_CYCLES]
    # four constants, four fit sources: regularize towards the prior so the fit is not an exact solve
    prior = np.log(np.array(p0))

    def resid_reg(p):
        return np.concatenate([resid_modern(p), 0.1 * (np.log(p) - prior)])

    r = least_squares(resid_reg, p0, bounds=([0.2, 0.2, 0.2, 0.0], [20, 20, 20, 200]))
    out["cmsis-nn"] = dict(zip(keys + ["OUT_CYCLES"], [round(float(v), 3) for v in r.x]))

    legacy = {s["model"]: s for s in SOURCES if s["role"] == "fit" and s["kernels"] == "cmsis-nn-2020"}
    for name, ops_ in (("conv", ("CONV_2D", "DEPTHWISE_CONV_2D")), ("fc", ("FULLY_CONNECTED",))):
        ratios = []
        for s in legacy.values():
            est = cycles.estimate_ops(stats[s["model"]]["ops"], s["core"], s["clock_mhz"], "cmsis-nn")
            part = sum(r["ms"] for r in est if r["op"] in ops_)
            if part > 0.5 * sum(r["ms"] for r in est):     # the model this factor is read from
                rest = sum(r["ms"] for r in est if r["op"] not in ops_)
                ratios.append((s["ms"] - rest) / part)
        out[f"cmsis-nn-2020 {name} factor"] = round(float(np.exp(np.mean(np.log(ratios)))), 3)

    ref = [s for s in SOURCES if s["role"] == "fit" and s["kernels"] == "reference"]
    rr = []
    for s in ref:
        est = cycles.estimate_ops(stats[s["model"]]["ops"], s["core"], s["clock_mhz"], "cmsis-nn")
        mac = sum(r["ms"] for r in est if r["macs"])
        rest = sum(r["ms"] for r in est) - mac
        rr.append((s["ms"] - rest) / mac)
    out["reference factor"] = round(float(np.exp(np.mean(np.log(rr)))), 2)
    return out


def evaluate(stats):
    from tflm_export import cycles

    rows = []
    for s in SOURCES:
        est_rows = cycles.estimate_ops(stats[s["model"]]["ops"], s["core"], s["clock_mhz"], s["kernels"])
        est = sum(r["ms"] for r in est_rows)
        by_op = {}
        for r in est_rows:
            by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["ms"]
        rows.append({**{k: s[k] for k in ("id", "model", "board", "core", "clock_mhz", "kernels", "figure", "role")},
                     "published_ms": round(s["ms"], 3), "estimated_ms": round(est, 3),
                     "error": round(est / s["ms"] - 1.0, 4), "macs": stats[s["model"]]["macs"],
                     "estimated_ms_by_op": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
                     "note": s.get("note", ""), "source": s["source"]})
    return rows


def summarize(rows):
    summary = {}
    for kernels in ("cmsis-nn", "cmsis-nn-2020", "reference"):
        for role in ("fit", "held-out"):
            errs = [abs(r["error"]) for r in rows if r["kernels"] == kernels and r["role"] == role]
            if errs:
                summary[f"{kernels} {role}"] = {"n": len(errs), "max_abs_error": round(max(errs), 4),
                                                "mean_abs_error": round(float(np.mean(errs)), 4)}
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="refit the constants and print them")
    ap.add_argument("--reuse", action="store_true", help="reuse the per-op statistics in the JSON (no TensorFlow)")
    args = ap.parse_args(argv)

    t0 = time.time()
    stats = None
    if args.reuse and os.path.exists(OUT):
        with open(OUT) as f:
            stats = json.load(f)["models"]
    if stats is None:
        stats = {}
        for name in MODELS:
            stats[name] = op_stats(name)
            print(f"  {name:24s} {stats[name]['macs']:>12,} MACs  {stats[name]['params']:>9,} params  "
                  f"{stats[name]['tflite_bytes']:>9,} B tflite", flush=True)
    if args.fit:
        print("fitted constants:", json.dumps(fit(stats), indent=1))

    rows = evaluate(stats)
    hdr = f"{'source':28s} {'model':22s} {'board':20s} {'core':10s} {'MHz':>4s} {'kernels':13s} " \
          f"{'published':>10s} {'estimated':>10s} {'error':>7s}  role"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['id']:28s} {r['model']:22s} {r['board']:20s} {r['core']:10s} {r['clock_mhz']:>4g} "
              f"{r['kernels']:13s} {r['published_ms']:>8.2f}ms {r['estimated_ms']:>8.2f}ms "
              f"{100 * r['error']:>+6.1f}%  {r['role']}")
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))

    from tflm_export import cycles

    result = {"description": "tflm_export.cycles vs published TFLM latencies; see docs/tflm_export.md",
              "constants": cycles.constants(), "error_band": cycles.ERROR_BAND, "summary": summary,
              "sources": rows, "models": stats, "seconds": round(time.time() - t0, 1)}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    return result


if __name__ == "__main__":
    main()
