"""Per-core cycle model for TFLM operators, and the runtime-code flash estimate.

Latency of one operator on a core::

    cycles = OP_OVERHEAD + MACs * cycles_per_mac[core][op]
             + elements * cycles_per_element[core][op]
             + (INT4 filter)  filter values * INT4_UNPACK
    ms     = cycles / (clock_MHz * 1000)

``MACs`` are counted from the flatbuffer (conv: output elements x kh x kw x
c_in; depthwise: output elements x kh x kw; fully connected: outputs x
inputs). ``elements`` is the output size for element-wise operators, the
output size times the window for pooling, the decoded values for
``TFLM_DECODE``.

Sources and calibration of the constants (``kernels="cmsis-nn"``, the
optimized kernels a Cortex-M firmware links):

* Cortex-M7 convolution, 1.75 cycles/MAC: Lai, Suda, Chandra, "CMSIS-NN:
  Efficient Neural Network Kernels for Arm Cortex-M CPUs", arXiv:1801.06601
  (2018) report their CIFAR-10 CNN (about 12.3 M MACs, three 5x5 conv layers)
  at 99.1 ms on a 216 MHz Cortex-M7 (STM32F746): 21.4 M cycles, 1.74
  cycles/MAC with pooling and activations included.
* Reference (portable C) kernels, the ones the host TFLM package runs:
  the same paper measures CMSIS-NN 4.6x faster than the baseline kernels,
  so ``kernels="reference"`` multiplies MAC costs by 4.6.
* Cortex-M4 / M33 (same DSP extension, SMLAD: two 16-bit MACs per cycle,
  single issue, Arm Cortex-M4 Technical Reference Manual) versus the
  dual-issue M7: 1.6x the M7 figure. Cortex-M3 and M0+ have no SIMD MAC
  (CMSIS-NN falls back to C): 4x and 6x. Cortex-M55 with Helium (MVE,
  16 int8 lanes): 0.35x. These ratios are engineering estimates, not
  measurements; depthwise convolution (little data reuse) and fully
  connected layers (each weight loaded once, memory bound) carry their own
  factors.
* Per-operator overhead (interpreter dispatch, per-channel requantization
  setup) and element-wise costs are estimates.

Treat the result as a +-50% estimate. To calibrate against a board, measure
one model there and pass ``scale=`` (measured / estimated) or your own table.

Flash: TFLM's README states the core runtime "just fits in 16 KB on an Arm
Cortex M3"; per-kernel code sizes (``KERNEL_CODE_BYTES``) are estimates for
CMSIS-NN builds at -Os, documented here so they can be replaced.

Example::

    from tflm_export import cycles, modelinfo
    info = modelinfo.inspect_model(model_bytes)
    rows = cycles.estimate(info, core="cortex-m4", clock_mhz=64)
    sum(r["cycles"] for r in rows)
"""

from __future__ import annotations

OP_OVERHEAD = 800            # cycles per operator invocation
INT4_UNPACK = 1.5            # cycles per INT4 filter value unpacked to int8 per invocation (Cortex-M4)
REFERENCE_FACTOR = 4.6       # CMSIS-NN vs portable kernels (Lai et al. 2018)

# cycles per MAC on a Cortex-M7 with CMSIS-NN
_M7_MAC = {"CONV_2D": 1.75, "DEPTHWISE_CONV_2D": 2.6, "FULLY_CONNECTED": 1.6, "TRANSPOSE_CONV": 2.5,
           "BATCH_MATMUL": 2.0}
# cycles per element on a Cortex-M4 (element-wise / data movement)
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

#: core -> (MAC factor vs M7, element factor vs M4)
CORE_FACTORS = {
    "cortex-m7": (1.0, 0.6),
    "cortex-m4": (1.6, 1.0),
    "cortex-m33": (1.6, 1.0),
    "cortex-m3": (4.0, 1.3),
    "cortex-m0+": (6.0, 1.8),
    "cortex-m55": (0.35, 0.5),
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


def mac_cycles(op: str, core: str, kernels: str = "cmsis-nn") -> float:
    """Cycles per MAC of ``op`` on ``core``."""
    if core not in CORE_FACTORS:
        raise ValueError(f"no cycle model for core {core!r}; known cores: {sorted(CORE_FACTORS)}")
    if kernels not in ("cmsis-nn", "reference"):
        raise ValueError(f"kernels must be 'cmsis-nn' or 'reference', got {kernels!r}")
    c = _M7_MAC.get(op, 2.0) * CORE_FACTORS[core][0]
    return c * (REFERENCE_FACTOR if kernels == "reference" else 1.0)


def element_cycles(op: str, core: str) -> float:
    """Cycles per processed element of a non-MAC op on ``core``."""
    return _M4_ELEM.get(op, _DEFAULT_ELEM) * CORE_FACTORS[core][1]


def estimate(info, core: str, clock_mhz: float, kernels: str = "cmsis-nn", scale: float = 1.0) -> list:
    """Per-operator cycle and latency estimate for a :class:`~tflm_export.modelinfo.ModelInfo`."""
    rows = []
    for op in info.ops:
        c = OP_OVERHEAD * CORE_FACTORS[core][1]
        if op.macs:
            c += op.macs * mac_cycles(op.name, core, kernels)
            w = info.tensors[op.weight_tensor] if op.weight_tensor is not None else None
            if w is not None and w.dtype == "INT4":
                c += w.elements * INT4_UNPACK * CORE_FACTORS[core][1]
        else:
            c += op.work * element_cycles(op.name, core)
        c *= scale
        rows.append({"index": op.index, "op": op.name, "macs": int(op.macs), "elements": int(op.work or op.out_elements),
                     "cycles": int(round(c)), "ms": c / (clock_mhz * 1000.0)})
    return rows


def runtime_code_bytes(ops) -> int:
    """Estimated flash of the TFLM runtime plus one kernel per distinct op."""
    return TFLM_CORE_CODE_BYTES + sum(KERNEL_CODE_BYTES.get(op, DEFAULT_KERNEL_CODE_BYTES) for op in set(ops))
