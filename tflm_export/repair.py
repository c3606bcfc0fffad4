"""Repairs to the converter's int8 flatbuffer before packing.

Bias scales. An int8 kernel computes ``acc = sum(x_q * w_q) + b_q`` and reads
the result at the scale ``input_scale * filter_scale[c]``, so the int32 bias
must be stored at exactly that scale. The TFLite converter (2.21) can break
this: when a tensor's scale is decided late (a ``Concatenate`` whose inputs
must share one scale, followed by a fake-quant range), it quantizes the
consumer's bias with the *calibrated* input scale and then gives the input
tensor the fake-quant scale. The kernel then adds a bias off by their ratio
(seen on exported tfjpq models: a constant shift of 0.8 on outputs in the
range of +-7, and TFLM accuracy 74% where Keras had 96%).

:func:`fix_bias_scales` finds every CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED whose bias scale is not ``input_scale * filter_scale`` and
requantizes the bias to it (``round(b_q * old / new)``), which is what the
converter meant.

Example::

    fixed, notes = fix_bias_scales(int8_model_bytes)
    notes    # {'conv2__w4/bias': {'ratio': 1.53, ...}, ...}
"""

from __future__ import annotations

import numpy as np

__all__ = ["BIAS_OPS", "RTOL", "fix_bias_scales"]

BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
RTOL = 1e-4


def fix_bias_scales(model_bytes: bytes) -> tuple:
    """Requantize int32 biases stored at the wrong scale; returns ``(bytes, notes)``."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me

    from tflm_export import schema
    from tflm_export.packing import op_name

    from tflm_export import modelinfo

    modelinfo.inspect_model(model_bytes)   # CorruptModelError on a malformed flatbuffer
    fb = schema.fb()
    model = me.read(model_bytes)
    notes = {}
    users = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            for t in op.inputs:
                if t is not None:
                    users[id(t)] = users.get(id(t), 0) + 1
    for sg in model.subgraphs:
        for op in sg.operators:
            if op_name(op) not in BIAS_OPS or len(op.inputs) < 3 or op.inputs[2] is None:
                continue
            x, w, b = op.inputs[0], op.inputs[1], op.inputs[2]
            if b.dtype != fb.TensorType.INT32 or not (x.quantization and w.quantization and b.quantization):
                continue
            in_scale = float(x.quantization.scales[0])
            w_scales = np.asarray(w.quantization.scales, np.float64)
            b_scales = np.asarray(b.quantization.scales, np.float64)
            want = in_scale * w_scales
            if want.size != b_scales.size and want.size == 1:
                want = np.full(b_scales.size, want[0])
            if np.allclose(b_scales, want, rtol=RTOL, atol=0):
                continue
            if want.size != b_scales.size or not np.all(np.isfinite(want.astype(np.float32)) & (want.astype(np.float32) > 0)):
                notes[b.name or "bias"] = {"skipped": "input and filter scales give no usable bias scale"}
                continue
            if users.get(id(b), 0) > 1:
                notes[b.name or "bias"] = {"skipped": "bias shared by several operators"}
                continue
            bq = b.array.astype(np.float64)
            new = np.clip(np.round(bq * b_scales / want), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
            b.buffer = me.Buffer(data=new.tobytes())
            b.quantization = me.Quantization(scales=[float(np.float32(s)) for s in want],
                                             zero_points=[0] * len(want), axis=0)
            notes[b.name or "bias"] = {"ratio": float(np.median(b_scales / want)), "channels": int(len(want))}
    if not notes:
        return model_bytes, notes
    me.prune_buffers(model)
    return bytes(model.build()), notes
