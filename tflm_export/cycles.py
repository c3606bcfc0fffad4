"""Per-core cycle model for TFLM operators, and the runtime-code flash estimate.

Latency of one operator on a core (``m`` = MAC factor, ``e`` = element factor of the core)::

    MAC ops:   cycles = OP_OVERHEAD*e + (MACs * c_mac[op] + outputs * OUT_CYCLES) * m * k[kernels][op]
                        (+ INT4 filter values * INT4_UNPACK * e)
    other ops: cycles = OP_OVERHEAD*e + elements * c_elem[op] * e
    ms         = cycles / (clock_MHz * 1000)

``MACs`` are counted from the flatbuffer (conv: outputs x kh x kw x c_in; depthwise: outputs x
kh x kw; fully connected: outputs x inputs); ``outputs`` is the op's output element count.

Calibration (``benchmarks/latency_calibration.py``; every source, figure and error is listed in
docs/tflm_export.md, "Cycle model: calibration"): the Cortex-M4 constants ``c_mac`` and
``OUT_CYCLES`` are a least-squares fit (log latency) to published MLPerf Tiny latencies of the
ResNet-8, MobileNetV1-0.25 and FC autoencoder on two systems with current CMSIS-NN kernels
(Renesas EK-RA6M4 TFLM, v0.7; Nucleo-L4R5ZI microTVM+CMSIS-NN, v1.1). Held out: the DS-CNN on
both, TFLM person detection on a Nucleo-F413ZH, MobileNetV2 on an STM32F746 (Cortex-M7): largest
held-out error 19 %, hence ``ERROR_BAND["cmsis-nn"] = 0.20``.

``kernels="cmsis-nn-2020"`` is TFLM <= 2.4 with the CMSIS-NN of 2020 (the MLPerf Tiny v0.5
reference submission): ``LEGACY_FACTORS`` fitted on its ResNet-8 (conv) and autoencoder (FC),
checked on its MobileNet and DS-CNN (largest error 17 %). ``kernels="reference"`` (portable C)
multiplies MAC-op cost by ``REFERENCE_FACTOR``, fitted on the one published pair of TFLM runs of
the same model with and without CMSIS-NN (person detection, Nucleo-F413ZH: 13.0 s vs 0.387 s);
no held-out measurement, so its error band is unknown.

Not fitted (engineering estimates, documented as such): the core factors other than M4 / M33
(the M7 factor 0.625 = 1/1.6, dual issue, was checked on one held-out M7 measurement: -4 %), the
Cortex-M3 / M0+ / M55 factors, element-wise costs, per-op overhead and INT4 unpacking.

Flash: TFLM's README states the core runtime "just fits in 16 KB on an Arm Cortex M3"; per-kernel
code sizes (``KERNEL_CODE_BYTES``) are estimates for CMSIS-NN builds at -Os, documented here so
they can be replaced.

Example::

    from tflm_export import cycles, modelinfo
    info = modelinfo.inspect_model(model_bytes)
    rows = cycles.estimate(info, core="cortex-m4", clock_mhz=64)
    sum(r["cycles"] for r in rows), cycles.error_band("cmsis-nn")
"""

from __future__ import annotations

from tflm_export.errors import InvalidArgumentError

__all__ = [
    "KERNELS", "OP_OVERHEAD", "INT4_UNPACK", "OUT_CYCLES", "LEGACY_FACTORS", "REFERENCE_FACTOR", "ERROR_BAND",
    "CORE_FACTORS", "TFLM_CORE_CODE_BYTES", "KERNEL_CODE_BYTES", "DEFAULT_KERNEL_CODE_BYTES", "mac_cycles",
    "element_cycles", "op_records", "estimate_ops", "estimate", "error_band", "constants",
    "runtime_code_bytes",
]

KERNELS = ("cmsis-nn", "cmsis-nn-2020", "reference")

OP_OVERHEAD = 800            # cycles per operator invocation (interpreter dispatch, per-channel setup)
INT4_UNPACK = 1.5            # cycles per INT4 filter value unpacked to int8 per invocation (Cortex-M4)

# Fitted (benchmarks/latency_calibration.py --fit): cycles per MAC on a Cortex-M4 with CMSIS-NN ...
_M4_MAC = {"CONV_2D": 3.73, "DEPTHWISE_CONV_2D": 7.7, "FULLY_CONNECTED": 3.58}
# ... and cycles per output element of a MAC op (requantization, im2col, per-pixel loop control).
OUT_CYCLES = 13.2
# Not fitted: ops without published timings take the closest fitted kernel's figure.
_M4_MAC_OTHER = {"TRANSPOSE_CONV": "CONV_2D", "BATCH_MATMUL": "FULLY_CONNECTED"}
# TFLM <= 2.4 (2020) with the CMSIS-NN of its time, as in the MLPerf Tiny v0.5 reference submission:
# MAC ops cost these factors more (conv / depthwise fitted on its ResNet-8, fully connected on its
# autoencoder; its DS-CNN and MobileNet are held out).
LEGACY_FACTORS = {"CONV_2D": 1.76, "DEPTHWISE_CONV_2D": 1.76, "FULLY_CONNECTED": 1.24}
# TFLM reference (portable C) kernels: MAC-op cost relative to CMSIS-NN (fitted on one measurement).
REFERENCE_FACTOR = 39.5

#: Relative error band of the latency estimate per kernel family: the largest held-out error of
#: benchmarks/latency_calibration.py (None: no held-out measurement, the band is unknown).
ERROR_BAND = {"cmsis-nn": 0.20, "cmsis-nn-2020": 0.20, "reference": None}

# cycles per element on a Cortex-M4 (element-wise / data movement); estimates, not fitted
_M4_ELEM = {
    "ADD": 6.0, "SUB": 6.0, "MUL": 6.0, "SQUARED_DIFFERENCE": 8.0,
    "MAX_POOL_2D": 1.5, "AVERAGE_POOL_2D": 2.0, "L2_POOL_2D": 4.0, "MEAN": 2.5, "SUM": 2.0,
    "RELU": 1.5, "RELU6": 1.5, "LEAKY_RELU": 4.0, "PRELU": 5.0, "HARD_SWISH": 8.0,
    "LOGISTIC": 12.0, "TANH": 12.0, "SOFTMAX": 40.0, "LOG_SOFTMAX": 45.0,
    "QUANTIZE": 8.0, "DEQUANTIZE": 6.0,
    "RESHAPE": 0.3, "SQUEEZE": 0.3, "EXPAND_DIMS": 0.3, "CONCATENATION": 0.6, "PAD": 1.0, "PADV2": 1.0,
    "STRIDED_SLICE": 1.0, "SLICE": 1.0, "TRANSPOSE": 2.0, "SPLIT": 0.6, "SPLIT_V": 0.6,
    "RESIZE_NEAREST_NEIGHBOR": 2.0, "RESIZE_BILINEAR": 8.0,
    "TFLM_DECODE": 5.0,
}
_DEFAULT_ELEM = 4.0

#: core -> (MAC factor vs Cortex-M4, element factor vs Cortex-M4)
CORE_FACTORS = {
    "cortex-m4": (1.0, 1.0),
    "cortex-m33": (1.0, 1.0),
    "cortex-m7": (0.625, 0.6),
    "cortex-m3": (2.5, 1.3),
    "cortex-m0+": (3.75, 1.8),
    "cortex-m55": (0.22, 0.5),
}

#: Estimated code bytes of each kernel (Cortex-M, CMSIS-NN, -Os); TFLM core runtime separately.
TFLM_CORE_CODE_BYTES = 16 * 1024
KERNEL_CODE_BYTES = {
    "CONV_2D": 10 * 1024, "DEPTHWISE_CONV_2D": 10 * 1024, "FULLY_CONNECTED": 5 * 1024,
    "TRANSPOSE_CONV": 6 * 1024, "BATCH_MATMUL": 6 * 1024,
    "MAX_POOL_2D": 3 * 1024, "AVERAGE_POOL_2D": 3 * 1024, "MEAN": 4 * 1024,
    "ADD": 4 * 1024, "MUL": 4 * 1024, "SUB": 3 * 1024, "SOFTMAX": 4 * 1024, "LOGISTIC": 3 * 1024,
    "RELU": 2 * 1024, "RELU6": 2 * 1024, "QUANTIZE": 3 * 1024, "DEQUANTIZE": 2 * 1024,
    "RESHAPE": 1024, "SQUEEZE": 1024, "EXPAND_DIMS": 1024, "CONCATENATION": 2 * 1024,
    "PAD": 2 * 1024, "STRIDED_SLICE": 2 * 1024, "TFLM_DECODE": 4 * 1024,
}
DEFAULT_KERNEL_CODE_BYTES = 3 * 1024


def _check(core: str, kernels: str) -> None:
    if core not in CORE_FACTORS:
        raise InvalidArgumentError(f"no cycle model for core {core!r}; known cores: {sorted(CORE_FACTORS)}")
    if kernels not in KERNELS:
        raise InvalidArgumentError(f"kernels must be one of {KERNELS}, got {kernels!r}")


def _kernel_factor(op: str, kernels: str) -> float:
    if kernels == "reference":
        return REFERENCE_FACTOR
    if kernels == "cmsis-nn-2020":
        return LEGACY_FACTORS.get(op, LEGACY_FACTORS["CONV_2D"])
    return 1.0


def _base_mac(op: str, table=None) -> float:
    table = _M4_MAC if table is None else table
    return table.get(op, table.get(_M4_MAC_OTHER.get(op, "FULLY_CONNECTED"), 2.0))


def mac_cycles(op: str, core: str, kernels: str = "cmsis-nn") -> float:
    """Cycles per MAC of ``op`` on ``core`` (without the per-output and per-op terms)."""
    _check(core, kernels)
    return _base_mac(op) * CORE_FACTORS[core][0] * _kernel_factor(op, kernels)


def element_cycles(op: str, core: str) -> float:
    """Cycles per processed element of a non-MAC op on ``core``."""
    return _M4_ELEM.get(op, _DEFAULT_ELEM) * CORE_FACTORS[core][1]


def op_records(info) -> list:
    """Plain per-operator records of a :class:`~tflm_export.modelinfo.ModelInfo` (what :func:`estimate_ops` reads)."""
    rows = []
    for op in info.ops:
        w = info.tensors[op.weight_tensor] if op.weight_tensor is not None else None
        rows.append({"index": int(op.index), "op": op.name, "macs": int(op.macs), "out_elements": int(op.out_elements),
                     "work": int(op.work), "int4_filter": int(w.elements) if w is not None and w.dtype == "INT4" else 0})
    return rows


def estimate_ops(ops, core: str, clock_mhz: float, kernels: str = "cmsis-nn", scale: float = 1.0,
                 mac_table=None, out_cycles=None) -> list:
    """Per-operator cycles and milliseconds from :func:`op_records` rows.

    ``mac_table`` / ``out_cycles`` override the fitted constants (used by the calibration fit).
    """
    _check(core, kernels)
    fm, fe = CORE_FACTORS[core]
    oc = OUT_CYCLES if out_cycles is None else out_cycles
    rows = []
    for r in ops:
        c = OP_OVERHEAD * fe
        if r["macs"]:
            k = _kernel_factor(r["op"], kernels)
            c += (r["macs"] * _base_mac(r["op"], mac_table) + r["out_elements"] * oc) * fm * k
            c += r.get("int4_filter", 0) * INT4_UNPACK * fe
        else:
            c += r["work"] * element_cycles(r["op"], core)
        c *= scale
        rows.append({"index": r["index"], "op": r["op"], "macs": int(r["macs"]),
                     "elements": int(r["work"] or r["out_elements"]), "cycles": int(round(c)),
                     "ms": c / (clock_mhz * 1000.0)})
    return rows


def estimate(info, core: str, clock_mhz: float, kernels: str = "cmsis-nn", scale: float = 1.0) -> list:
    """Per-operator cycle and latency estimate for a :class:`~tflm_export.modelinfo.ModelInfo`."""
    return estimate_ops(op_records(info), core, clock_mhz, kernels, scale)


def error_band(kernels: str):
    """Relative error band (e.g. 0.25 for +-25 %) of the latency estimate, or None when unknown."""
    _check("cortex-m4", kernels)
    return ERROR_BAND.get(kernels)


def constants() -> dict:
    """The model's constants, as the calibration report records them."""
    return {"cycles_per_mac_m4": dict(_M4_MAC), "out_cycles": OUT_CYCLES, "op_overhead": OP_OVERHEAD,
            "legacy_factors": dict(LEGACY_FACTORS), "reference_factor": REFERENCE_FACTOR,
            "core_factors": {k: list(v) for k, v in CORE_FACTORS.items()}, "error_band": dict(ERROR_BAND)}


def runtime_code_bytes(ops) -> int:
    """Estimated flash of the TFLM runtime plus one kernel per distinct op."""
    return TFLM_CORE_CODE_BYTES + sum(KERNEL_CODE_BYTES.get(op, DEFAULT_KERNEL_CODE_BYTES) for op in set(ops))
