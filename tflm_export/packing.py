"""Flatbuffer surgery: sub-byte storage of int8 weights (INT4 packing, TFLM LUT compression).

Input is a full-int8 flatbuffer from the TFLite converter. For every
``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / ``FULLY_CONNECTED`` weight tensor this
module

1. detects the grid each output channel lies on: the converter maps a channel
   on a ``b``-bit narrow-range grid (``n = 2**(b-1) - 1`` levels) to int8
   values ``v = round(k * 127 / n)``; the smallest ``n`` in 1, 3, 7, ... 63
   for which ``round(round(v * n / 127) * 127 / n) == v`` holds for every value
   is the channel's grid (127, i.e. 8 bits, when none does);
2. chooses a storage method with :func:`tflm_export.storage.plan_tensor` (the
   same rules the cost model uses);
3. rewrites the tensor:

   * ``int4``: ``q = round(v * n / 127)`` in [-7, 7], per-channel scale
     ``scale * 127 / n``, the int32 bias requantized to the new
     ``input_scale * filter_scale`` (``round(bias * n / 127)``), stored as
     ``TensorType.INT4`` two values a byte, low nibble first. The stored
     weights are then the grid's own values ``k * s`` rather than their int8
     rounding, so outputs can differ from the plain int8 model by a few LSB
     (measured in the tests); they are bit-exact against the same model kept
     in int8 after the regridding (``regrid_only=True``).
   * ``lut``: ``tflite_micro``'s own ``compression.compress`` with
     ``LookUpTableCompression(index_bitwidth=i, mode=PerChannel(axis))``, which
     inserts a ``TFLM_DECODE`` operator. Lossless: bit-exact against int8.

Example::

    from tflm_export import packing
    weights = packing.analyze(int8_model_bytes)
    plans = packing.plan(weights, pack="auto")
    packed = packing.apply(int8_model_bytes, weights, plans)
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

from tflm_export import modelinfo, schema, storage
from tflm_export.errors import PackingError

__all__ = ["CHANNEL_BITS_ATTR", "WeightTensor", "detect_levels", "recorded_channel_bits", "analyze", "op_name", "plan",
           "pack_int4", "unpack_int4", "apply"]

_GRID_LEVELS = (1, 3, 7, 15, 31, 63)   # 2, 3, ... 7 bits
_BITS_LEVEL = {b: 2 ** (b - 1) - 1 for b in range(2, 9)}  # bits -> grid levels n (8 bits: 127)
#: The model attribute holding ``{layer name: per-output-channel bits}``, written by ``tfjpq.export``.
CHANNEL_BITS_ATTR = "channel_bits"
_LEVEL_BITS = {1: 2, 3: 3, 7: 4, 15: 5, 31: 6, 63: 7, 127: 8}


def _editor():
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    return model_editor


@dataclass
class WeightTensor:
    """One packable weight tensor of the int8 model and what analysis found in it."""

    tensor_index: int
    name: str
    op: str
    op_index: int
    layer: str | None
    shape: tuple
    channel_axis: int
    levels: np.ndarray            # per-channel grid levels n (0 = all-zero channel, 127 = 8 bits)
    distinct: np.ndarray          # per-channel distinct values
    bias_index: int | None = None
    forced_bits: int | None = None
    tensor_distinct: int = 0      # distinct values in the whole tensor (one LUT table serves all channels)

    @property
    def channels(self) -> int:
        return int(self.shape[self.channel_axis])

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def channel_bits(self) -> np.ndarray:
        """Per-channel bits (0 for an all-zero channel)."""
        return np.array([0 if n == 0 else _LEVEL_BITS[int(n)] for n in self.levels])

    @property
    def bits(self) -> int:
        if self.forced_bits is not None:
            return int(self.forced_bits)
        return int(max(1, self.channel_bits.max())) if self.levels.size else 8


def detect_levels(values: np.ndarray) -> int:
    """Grid levels ``n`` of one channel's int8 values (0 when all zero, 127 when on no coarser grid).

    >>> detect_levels(np.array([-127, -36, 0, 18, 127]))   # 4-bit grid: k * 127 / 7 rounded
    7
    """
    v = np.asarray(values, dtype=np.int64)
    if not v.any():
        return 0
    for n in _GRID_LEVELS:
        q = np.round(v * n / 127.0)
        if np.abs(q).max() <= n and np.array_equal(np.round(q * 127.0 / n).astype(np.int64), v):
            return n
    return 127


def _layer_for(names, layer_names):
    """The Keras layer a flatbuffer tensor came from (longest layer name appearing as a path token)."""
    best = None
    for name in names:
        if not name:
            continue
        tokens = re.split(r"[/;:]", name)
        for layer in layer_names:
            pat = re.compile(re.escape(layer) + r"(_\d+)?")
            if any(pat.fullmatch(t) for t in tokens) and (best is None or len(layer) > len(best)):
                best = layer
        if best:
            return best
    return best


def recorded_channel_bits(model) -> dict:
    """``{layer name: per-output-channel bits}`` the model carries (``tfjpq.export`` records them), else ``{}``."""
    return {name: tuple(int(b) for b in bits) for name, bits in dict(getattr(model, CHANNEL_BITS_ATTR, None) or {}).items()}


def analyze(model_bytes: bytes, layer_names=(), weight_bits=None, channel_bits=None) -> list:
    """Find the packable weight tensors of an int8 flatbuffer and their per-channel grids.

    Args:
        layer_names: Keras layer names, to label tensors (and to resolve ``weight_bits``).
        weight_bits: optional ``{layer_name: bits}`` override of the grid.
        channel_bits: optional ``{layer_name: per-output-channel bits}`` recorded at export
            (:func:`recorded_channel_bits`); layers without a record get their grids
            detected from the int8 values.
    """
    info = modelinfo.inspect_model(model_bytes)   # CorruptModelError on a malformed flatbuffer
    me = _editor()
    model = me.read(model_bytes)
    sg = model.subgraphs[0]
    weight_bits = dict(weight_bits or {})
    unknown = set(weight_bits) - set(layer_names)
    if unknown and layer_names:
        raise PackingError(f"weight_bits names layers the model does not have: {sorted(unknown)}; "
                           f"layers are {sorted(layer_names)}")
    found = []
    seen = set()
    for oi, op in enumerate(sg.operators):
        fbname = op_name(op)
        if fbname not in storage.WEIGHT_OPS or len(op.inputs) < 2:
            continue
        t = op.inputs[1]
        if t is None or t.buffer is None or t.dtype != schema.fb().TensorType.INT8 or id(t) in seen:
            continue
        if not info.tensors[t.index].is_constant:   # computed at run time (not a stored weight)
            continue
        seen.add(id(t))
        axis = storage.CHANNEL_AXIS[fbname]
        if len(t.shape) <= axis:
            continue
        arr = t.array
        per_channel = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        layer = _layer_for([t.name, op.outputs[0].name if op.outputs else ""], layer_names)
        recorded = (channel_bits or {}).get(layer)
        if recorded is not None and len(recorded) == len(per_channel):
            levels = np.array([_BITS_LEVEL[int(b)] if c.any() else 0 for c, b in zip(per_channel, recorded)])
        else:
            levels = np.array([detect_levels(c) for c in per_channel])
        distinct = np.array([len(np.unique(c)) for c in per_channel])
        bias = op.inputs[2] if len(op.inputs) > 2 else None
        wt = WeightTensor(t.index, t.name or f"tensor{t.index}", fbname, oi, layer, tuple(int(s) for s in t.shape),
                          axis, levels, distinct, None if bias is None else bias.index,
                          tensor_distinct=int(np.unique(arr).size))
        if layer is not None and layer in weight_bits:
            b = int(weight_bits[layer])
            if b not in range(2, 9):
                raise PackingError(f"weight_bits[{layer!r}] = {b}: stored grids take 2..8 bits")
            wt.forced_bits = b
        found.append(wt)
    return found


def op_name(op) -> str:
    """The name of a model-editor operator ("CONV_2D", or a custom code)."""
    return schema.op_name(op.opcode, op.custom_code)


def plan(weights, pack: str = "auto", strip: bool = True) -> dict:
    """Storage plan per tensor index, by the rules of :mod:`tflm_export.storage`.

    ``strip=False`` prices the LUT tensor names that a non-lean flatbuffer keeps.
    """
    plans = {}
    for w in weights:
        tensor_distinct = w.tensor_distinct or None
        if w.forced_bits is not None:
            distinct = min(storage.grid_values(w.forced_bits), int(w.distinct.max()) if w.forced_bits >= 8 else 10**9)
            if w.forced_bits < 8:   # snapped onto one grid shared by every channel
                tensor_distinct = min(storage.grid_values(w.forced_bits), tensor_distinct or 10**9)
        else:
            distinct = int(w.distinct.max()) if w.distinct.size else 1
        names = 0 if strip else storage.lut_graph_bytes(w.name, strip=False) - storage.lut_graph_bytes(strip=False)
        p = storage.plan_tensor(w.op, w.shape, bits=w.bits, distinct=distinct, pack=pack,
                                tensor_distinct=tensor_distinct, extra_graph_bytes=names, strip=strip)
        if p.method == "int4" and w.forced_bits is None and w.channel_bits.max() > storage.INT4_MAX_BITS:
            p = storage.plan_tensor(w.op, w.shape, bits=8, pack="int8")
        plans[w.tensor_index] = p
    return plans


def _snap(arr, axis, levels):
    """Per-channel (q, int8 grid values) for levels n (n=0 channels stay zero)."""
    moved = np.moveaxis(arr.astype(np.int64), axis, 0)
    q = np.zeros_like(moved)
    v = np.zeros_like(moved)
    for c, n in enumerate(levels):
        if n == 0:
            continue
        q[c] = np.clip(np.round(moved[c] * n / 127.0), -n, n)
        v[c] = np.round(q[c] * 127.0 / n)
    return np.moveaxis(q, 0, axis), np.moveaxis(v, 0, axis)


def pack_int4(q: np.ndarray) -> bytes:
    """Pack int values in [-8, 7] two a byte, low nibble first (flattened in C order).

    >>> pack_int4(np.array([1, -1, 7]))
    b'\\xf1\\x07'
    """
    flat = np.asarray(q, dtype=np.int64).ravel()
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise PackingError("INT4 values must lie in [-8, 7]")
    nib = (flat & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.concatenate([nib, np.zeros(1, np.uint8)])
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`."""
    b = np.frombuffer(data, dtype=np.uint8)
    nib = np.empty(b.size * 2, dtype=np.int8)
    nib[0::2] = (b & 0xF).astype(np.int8)
    nib[1::2] = (b >> 4).astype(np.int8)
    nib = np.where(nib > 7, nib - 16, nib)
    return nib[:count]


def _align(model_bytes: bytes) -> bytes:
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper as aw

    with tempfile.TemporaryDirectory(prefix="tflm_align_") as d:
        src, dst = os.path.join(d, "in.tflite"), os.path.join(d, "out.tflite")
        with open(src, "wb") as f:
            f.write(model_bytes)
        aw.align_tflite_model(src, dst)
        with open(dst, "rb") as f:
            return f.read()


def apply(model_bytes: bytes, weights, plans: dict, regrid_only: bool = False) -> tuple:
    """Rewrite the flatbuffer by the plans; returns ``(bytes, notes)``.

    ``regrid_only=True`` applies the INT4 rescaling but keeps the values as
    int8 (for checking INT4 packing bit for bit).
    """
    modelinfo.inspect_model(model_bytes)   # CorruptModelError on a malformed flatbuffer
    me = _editor()
    fb = schema.fb()
    notes = {}
    by_index = {w.tensor_index: w for w in weights}
    model = me.read(model_bytes)
    sg = model.subgraphs[0]
    changed = False

    # Forced bits that the int8 values do not already follow: snap them onto the grid.
    for w in weights:
        if w.forced_bits is None or w.forced_bits >= 8:
            continue
        n = 2 ** (w.forced_bits - 1) - 1
        t = sg.tensors[w.tensor_index]
        arr = t.array
        _, v = _snap(arr, w.channel_axis, [n if lv else 0 for lv in w.levels])
        if not np.array_equal(v, arr):
            notes.setdefault(w.name, {})["snapped_max_change"] = int(np.abs(v - arr).max())
            t.buffer = me.Buffer(data=v.astype(np.int8).tobytes())
            changed = True
        w.levels = np.array([n if lv else 0 for lv in w.levels])
        w.distinct = np.array([len(np.unique(c)) for c in np.moveaxis(v, w.channel_axis, 0).reshape(w.channels, -1)])

    consumers = {}
    for op in sg.operators:
        for t in op.inputs:
            if t is not None:
                consumers[id(t)] = consumers.get(id(t), 0) + 1

    for idx, p in plans.items():
        if p.method != "int4":
            continue
        w = by_index[idx]
        t = sg.tensors[idx]
        levels = [int(n) if n else 0 for n in w.levels]
        q, _ = _snap(t.array, w.channel_axis, levels)
        scales = list(t.quantization.scales) if t.quantization else None
        if not scales or len(scales) != w.channels:
            raise PackingError(f"INT4 needs per-channel scales on {w.name!r}; found {scales!r}")
        factor = [127.0 / n if n else 1.0 for n in levels]
        t.quantization = me.Quantization(scales=[float(np.float32(s * f)) for s, f in zip(scales, factor)],
                                         zero_points=[0] * w.channels, axis=w.channel_axis)
        if regrid_only:
            t.buffer = me.Buffer(data=q.astype(np.int8).tobytes())
        else:
            t.buffer = me.Buffer(data=pack_int4(q))
            t.dtype = fb.TensorType.INT4
        if w.bias_index is not None:
            b = sg.tensors[w.bias_index]
            if consumers.get(id(b), 0) > 1:
                raise PackingError(f"bias {b.name!r} is shared by several operators; cannot requantize it for INT4")
            bq = b.array.astype(np.int64)
            new_b = np.array([np.round(bq[c] * levels[c] / 127.0) if levels[c] else bq[c] for c in range(w.channels)])
            bs = list(b.quantization.scales) if b.quantization else None
            if bs is not None and len(bs) != w.channels:
                raise PackingError(f"INT4 needs a per-channel int32 bias scale on {b.name!r}")
            if bs is not None:   # a lean flatbuffer has none: TFLM does not read it
                b.quantization = me.Quantization(scales=[float(np.float32(s * f)) for s, f in zip(bs, factor)],
                                                 zero_points=[0] * w.channels, axis=0)
            b.buffer = me.Buffer(data=new_b.astype(np.int32).tobytes())
            exact_b = bq * np.array([n if n else 127 for n in levels], dtype=np.float64) / 127.0
            notes.setdefault(w.name, {})["bias_rounding_lsb"] = float(np.abs(exact_b - new_b).max()) if bq.size else 0.0
        changed = True

    lut = [(idx, p) for idx, p in plans.items() if p.method == "lut"]
    if not changed and not lut:
        return model_bytes, notes
    if changed:
        # drop the replaced int8 buffers (read() keeps the whole buffer table) before building
        me.prune_buffers(model)
        out = bytes(model.build())
    else:
        out = model_bytes
    if lut:
        from tflite_micro.tensorflow.lite.micro.compression import spec
        from tflite_micro.tensorflow.lite.micro.compression.compress import compress as lut_compress

        specs = [spec.Tensor(subgraph=0, tensor=idx,
                             compression=[spec.LookUpTableCompression(
                                 index_bitwidth=p.index_bits,
                                 mode=(spec.PerTensor() if p.lut_tables == 1
                                       else spec.PerChannel(axis=by_index[idx].channel_axis)))])
                 for idx, p in lut]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = bytes(lut_compress(out, specs))
    else:
        out = _align(out)
    return out, notes
