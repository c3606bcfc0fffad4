"""Storage rules: how many bytes a weight tensor takes under the exporter's packing.

This module is pure Python (no TensorFlow, no flatbuffers) so that a cost model
can follow exactly what :func:`tflm_export.convert` will store. The exporter
itself calls :func:`plan_tensor` to choose a method, so the two never disagree.

The rules
---------

A weight tensor holds ``N`` values in ``C`` output channels; its precision
group has ``b`` bits on the symmetric narrow-range grid of ``tfjpq.quantizers``
(``2**b - 1`` distinct values per channel). One tensor has one storage method:

``int8``   ``N`` bytes. Always possible.

``int4``   ``ceil(N / 2)`` bytes, two values a byte, low nibble first
           (TFLite ``TensorType.INT4``). Only for ``CONV_2D`` and
           ``DEPTHWISE_CONV_2D`` filters (TFLM rejects per-channel INT4 in
           ``FULLY_CONNECTED``), and only for ``b <= 4`` (values in [-7, 7]).
           The exporter rescales each channel (``q = round(v * n / 127)``,
           ``scale' = scale * 127 / n``) and requantizes the int32 bias.
           At run time TFLM unpacks the filter into an int8 scratch buffer of
           ``N`` bytes in the arena (``int4_arena_bytes``).

``lut``    TFLM's look-up-table compression (the ``TFLM_DECODE`` path),
           one value table per output channel:
           ``ceil(N * i / 8)`` packed indices with ``i = index_bits`` (1..7),
           plus the ancillary tensor: a 16-byte header (``LUT_HEADER_BYTES``)
           and ``C * T`` table bytes, ``T`` = the largest number of distinct
           values in a channel (``2**b - 1`` for a full ``b``-bit grid, so
           ``i = b``), plus ``lut_overhead_bytes(C)`` of flatbuffer bookkeeping (the
           DECODE operator and two extra tensor records). Possible for any op
           while ``i <= 7``. At run time the DECODE operator writes the
           decoded int8 tensor (``N`` bytes) into the arena just before the
           consumer runs (``lut_arena_bytes``).

``pack="auto"`` takes the smallest of the possible methods by the byte counts
above (ties prefer int8, then int4); LUT is used only where it really saves
bytes. ``pack="int8" | "int4" | "lut"`` forces one method wherever it applies;
tensors it cannot serve stay int8.

Biases are int32: ``4 * C`` bytes (:func:`bias_bytes`). Every flatbuffer
buffer is aligned to 16 bytes, so each stored buffer may take up to 15 more
bytes (:func:`aligned`); the figures above leave that padding out.

For a differentiable cost, pass ``exact=False``: the functions then use only
``+ * /`` (no ``ceil``) and accept tensors (e.g. expected bits from a softmax).

Example::

    from tflm_export import storage
    p = storage.plan_tensor("CONV_2D", (32, 3, 3, 16), bits=4)
    p.method, p.weight_bytes, p.arena_bytes     # ('int4', 2304, 4608)
    storage.plan_tensor("FULLY_CONNECTED", (10, 256), bits=2).method   # 'lut'
    storage.weight_bytes("lut", n=2560, channels=10, index_bits=2, table_len=3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tflm_export.errors import InvalidArgumentError

__all__ = [
    "METHODS", "PACK_MODES", "INT4_OPS", "WEIGHT_OPS", "CHANNEL_AXIS", "SHARED_LUT_TABLES",
    "LUT_HEADER_BYTES", "LUT_MAX_INDEX_BITS", "LUT_GRAPH_BYTES", "LUT_GRAPH_BYTES_UNSTRIPPED",
    "LUT_GRAPH_BYTES_PER_CHANNEL_UNSTRIPPED", "SPLIT_PART_BYTES", "SPLIT_CONCAT_BYTES", "INT4_MAX_BITS",
    "BIAS_BYTES_PER_CHANNEL", "ALIGNMENT", "grid_values", "grid_union_values", "index_bits_for", "int8_bytes",
    "int4_bytes", "lut_bytes", "lut_overhead_bytes", "lut_graph_bytes", "weight_bytes", "bias_bytes",
    "int4_arena_bytes", "lut_arena_bytes", "aligned", "TensorPlan", "plan_tensor", "split_overhead_bytes",
    "layer_bytes",
]

METHODS = ("int8", "int4", "lut")
PACK_MODES = ("auto",) + METHODS

#: Operators whose filters TFLM accepts as per-channel INT4.
INT4_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})
#: Operators whose weights the exporter considers for packing at all.
WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
#: Output-channel axis of each op's weight tensor in the flatbuffer (OHWI, 1HWO, OI).
CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}

#: One LUT value table for a whole tensor would serve grid-aligned weights (every channel
#: has the same int8 values), but the TFLM DECODE kernel of the pinned tflite-micro
#: (0.dev20261023) gives wrong outputs with per-tensor tables on CONV_2D, DEPTHWISE_CONV_2D
#: and FULLY_CONNECTED (checked by tests/test_lean.py). Off until that is fixed upstream.
SHARED_LUT_TABLES = False
LUT_HEADER_BYTES = 16
LUT_MAX_INDEX_BITS = 7
#: Flatbuffer bytes a LUT-compressed tensor adds besides its data, in the lean
#: flatbuffer ``convert`` writes by default (:mod:`tflm_export.lean`): the DECODE
#: operator record, the ancillary and decoded tensor records and the ancillary
#: buffer record. Measured on this exporter's output (tests/test_storage.py).
LUT_GRAPH_BYTES = 140
#: ... within about +-30 bytes (buffer alignment; the first LUT tensor also brings the DECODE
#: operator code, about 24 bytes).
#: The same, for ``strip=False`` flatbuffers: DECODE and tensor records with
#: their per-channel quantization copies (a float32 scale and an int64 zero
#: point per channel); the two derived tensor names come on top.
LUT_GRAPH_BYTES_UNSTRIPPED = 64
LUT_GRAPH_BYTES_PER_CHANNEL_UNSTRIPPED = 12
#: Flatbuffer bytes each extra precision part adds when a layer is split into one
#: operator per precision (an operator record, its weight, bias and output tensor
#: records, two buffer records), and the Concatenate joining the parts. Measured on
#: lean flatbuffers: 2 parts +272 B, 4 parts +664 B over one tensor (tests/test_lean.py).
SPLIT_PART_BYTES = 200
SPLIT_CONCAT_BYTES = 80
INT4_MAX_BITS = 4
BIAS_BYTES_PER_CHANNEL = 4
ALIGNMENT = 16


def _ceil(x, exact):
    return int(math.ceil(x)) if exact else x


def grid_values(bits: int) -> int:
    """Distinct values of the symmetric narrow-range ``bits`` grid (``2**bits - 1``; 0 bits -> 1, the zero)."""
    return 1 if bits == 0 else 2 ** int(bits) - 1


def grid_union_values(widths) -> int:
    """Distinct int8 values of the union of several narrow-range grids (as the converter stores them).

    A ``b``-bit channel takes the values ``round(k * 127 / n)``, ``n = 2**(b-1) - 1``;
    a tensor whose channels use several widths has the union of their grids.

    >>> grid_union_values([2, 4]), grid_union_values([3, 4])
    (15, 19)
    """
    values = {0}
    for b in widths:
        if int(b) <= 0:
            continue
        if int(b) >= 8:
            return 255
        n = 2 ** (int(b) - 1) - 1
        values.update(int(round(k * 127 / n)) for k in range(-n, n + 1))
    return len(values)


def index_bits_for(distinct: int) -> int:
    """LUT index width that addresses ``distinct`` table entries (at least 1)."""
    return max(1, int(math.ceil(math.log2(max(int(distinct), 1)))))


def int8_bytes(n, exact: bool = True):
    """Bytes of ``n`` int8 weights."""
    return n


def int4_bytes(n, exact: bool = True):
    """Bytes of ``n`` INT4 weights packed two a byte."""
    return _ceil(n / 2, exact)


def lut_bytes(n, channels, index_bits, table_len, value_bytes: int = 1, exact: bool = True, graph: bool = True,
              tables=None, strip: bool = True):
    """Bytes of a LUT-compressed tensor: indices + header + value tables (+ graph records).

    ``tables`` is the number of value tables: ``channels`` (the default, one per
    channel) or 1 (one table for the whole tensor; see :data:`SHARED_LUT_TABLES`).
    """
    tables = channels if tables is None else tables
    b = _ceil(n * index_bits / 8, exact) + LUT_HEADER_BYTES + tables * table_len * value_bytes
    return b + (lut_overhead_bytes(channels, strip) if graph else 0)


def lut_overhead_bytes(channels, strip: bool = True):
    """Flatbuffer records one LUT tensor adds besides its data (names aside).

    Lean (default): ``LUT_GRAPH_BYTES``; ``strip=False``: ``64 + 12 * channels``.
    """
    if strip:
        return LUT_GRAPH_BYTES
    return LUT_GRAPH_BYTES_UNSTRIPPED + LUT_GRAPH_BYTES_PER_CHANNEL_UNSTRIPPED * channels


def lut_graph_bytes(tensor_name: str = "", strip: bool = True) -> int:
    """Flatbuffer bookkeeping of one LUT tensor, with the two derived tensor names when not stripped."""
    if strip:
        return LUT_GRAPH_BYTES
    n = len(tensor_name.encode()) if tensor_name else 0
    return LUT_GRAPH_BYTES_UNSTRIPPED + (2 * n + len("_decoded") + len("_ancillary") if n else 0)


def weight_bytes(method: str, n, channels=1, index_bits=None, table_len=None, exact: bool = True):
    """Bytes a weight tensor of ``n`` values takes under ``method`` (``int8``/``int4``/``lut``)."""
    if method == "int8":
        return int8_bytes(n, exact)
    if method == "int4":
        return int4_bytes(n, exact)
    if method == "lut":
        if index_bits is None:
            raise InvalidArgumentError("lut needs index_bits")
        if table_len is None:
            table_len = 2 ** index_bits
        return lut_bytes(n, channels, index_bits, table_len, exact=exact)
    raise InvalidArgumentError(f"unknown storage method {method!r}; choose one of {METHODS}")


def bias_bytes(channels) -> int:
    """Bytes of an int32 bias over ``channels`` output channels."""
    return BIAS_BYTES_PER_CHANNEL * channels


def int4_arena_bytes(n) -> int:
    """Arena scratch TFLM takes to unpack an INT4 filter of ``n`` values (int8, ``n`` bytes)."""
    return n


def lut_arena_bytes(n, value_bytes: int = 1) -> int:
    """Arena bytes of the DECODE output of a LUT tensor (alive only around its consumer)."""
    return n * value_bytes


def aligned(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """``nbytes`` rounded up to the flatbuffer buffer alignment."""
    return -(-int(nbytes) // alignment) * alignment


@dataclass
class TensorPlan:
    """The storage chosen for one weight tensor (see :func:`plan_tensor`)."""

    method: str
    weight_bytes: int
    storage_bits: int               # bits per stored value: 8, 4 or the LUT index width
    arena_bytes: int = 0            # extra arena the method needs at run time
    index_bits: int | None = None   # LUT only
    table_len: int | None = None    # LUT only
    lut_tables: int | None = None   # LUT only: 1 (one table for all channels) or the channel count
    candidates: dict = field(default_factory=dict)   # method -> bytes, for every possible method
    reason: str = ""


def plan_tensor(op: str, shape, bits=8, distinct=None, pack: str = "auto", extra_graph_bytes: int = 0,
                tensor_distinct=None, strip: bool = True) -> TensorPlan:
    """Choose the storage of one weight tensor, exactly as the exporter does.

    Args:
        op: TFLite operator name of the consumer (``"CONV_2D"``, ``"DEPTHWISE_CONV_2D"``,
            ``"FULLY_CONNECTED"``; anything else stays int8).
        shape: weight shape as stored in the flatbuffer (OHWI / 1HWO / OI).
        bits: grid bits of the tensor, an int or one per output channel (the
            tensor takes the widest). 0 means a pruned (all-zero) channel.
        distinct: largest number of distinct values in a channel, if known
            (defaults to the full grid, ``2**bits - 1``).
        tensor_distinct: distinct values in the whole tensor, if known. Grid-aligned
            weights share one set of values across channels (defaults to ``distinct``
            below 8 bits), so one LUT table serves every channel.
        strip: price the lean flatbuffer ``convert`` writes by default.
        pack: ``"auto"``, or ``"int8"`` / ``"int4"`` / ``"lut"`` to force one method.
        extra_graph_bytes: bytes a LUT tensor adds on top of ``LUT_GRAPH_BYTES``
            (e.g. its derived tensor names).

    Returns:
        A :class:`TensorPlan`.

    Example::

        plan_tensor("DEPTHWISE_CONV_2D", (1, 3, 3, 64), bits=[2] * 32 + [4] * 32).method   # 'int4'
    """
    if pack not in PACK_MODES:
        raise InvalidArgumentError(f"pack must be one of {PACK_MODES}, got {pack!r}")
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    b = int(max(bits)) if hasattr(bits, "__len__") else int(bits)
    b = max(b, 1) if b == 0 else b
    axis = CHANNEL_AXIS.get(op)
    channels = shape[axis] if axis is not None and shape else 1
    if distinct is None:
        distinct = grid_values(b) if b < 8 else 255
    distinct = max(int(distinct), 1)
    ib = index_bits_for(distinct)
    if tensor_distinct is None and b < 8:
        widths = sorted({int(v) for v in bits}) if hasattr(bits, "__len__") else [b]
        tensor_distinct = max(distinct, grid_union_values(widths)) if len(widths) > 1 else distinct
    tables, table_len = channels, distinct
    if SHARED_LUT_TABLES and tensor_distinct is not None and index_bits_for(tensor_distinct) <= ib:
        tables, table_len, ib = 1, max(int(tensor_distinct), 1), index_bits_for(tensor_distinct)

    cands = {"int8": n}
    if op in INT4_OPS and b <= INT4_MAX_BITS:
        cands["int4"] = int4_bytes(n)
    if op in WEIGHT_OPS and ib <= LUT_MAX_INDEX_BITS and axis is not None:
        cands["lut"] = lut_bytes(n, channels, ib, table_len, tables=tables, strip=strip) + int(extra_graph_bytes)

    def make(method, reason):
        if method == "int8":
            return TensorPlan("int8", n, 8, 0, candidates=cands, reason=reason)
        if method == "int4":
            return TensorPlan("int4", cands["int4"], 4, int4_arena_bytes(n), candidates=cands, reason=reason)
        return TensorPlan("lut", cands["lut"], ib, lut_arena_bytes(n), ib, table_len, lut_tables=tables,
                          candidates=cands, reason=reason)

    if op not in WEIGHT_OPS:
        return make("int8", f"{op} weights are not packed")
    if pack == "int8":
        return make("int8", "forced int8")
    if pack in ("int4", "lut"):
        if pack in cands:
            return make(pack, f"forced {pack}")
        why = ("INT4 needs a CONV_2D/DEPTHWISE_CONV_2D filter on a <=4-bit grid" if pack == "int4"
               else f"LUT needs <= {LUT_MAX_INDEX_BITS} index bits ({distinct} distinct values per channel)")
        return make("int8", f"forced {pack} does not apply: {why}")
    order = ("int8", "int4", "lut")
    best = min((m for m in order if m in cands), key=lambda m: (cands[m], order.index(m)))
    if best == "int8":
        return make("int8", f"{b}-bit grid: no method smaller than int8")
    return make(best, f"{b}-bit grid: {best} is smallest ({cands[best]} vs {n} bytes int8)")


def split_overhead_bytes(parts) -> int:
    """Graph bytes of splitting one layer into ``parts`` precision parts (0 for one part)."""
    return 0 if parts <= 1 else SPLIT_CONCAT_BYTES + SPLIT_PART_BYTES * (int(parts) - 1)


def _layer_shape(op, channels, per_channel_weights):
    if op == "DEPTHWISE_CONV_2D":
        return (1, int(per_channel_weights), 1, int(channels))
    if op == "FULLY_CONNECTED":
        return (int(channels), int(per_channel_weights))
    return (int(channels), int(per_channel_weights), 1, 1)


def layer_bytes(op, per_channel_weights, channel_bits, split=None) -> tuple:
    """``(split, bytes)`` for one layer's kept channels: one tensor per precision, or one tensor.

    A split layer pays :func:`split_overhead_bytes` for its extra operators; a
    single tensor with mixed grids is stored by its widest channel. With
    ``split=None`` the smaller wins (ties keep one tensor), which is the rule
    ``tfjpq.export`` follows; the byte figure is weights plus graph constants
    (biases, 4 bytes per kept channel either way, are not included).

    Example::

        layer_bytes("CONV_2D", 9, [2] * 3 + [8])            # (False, 36): one int8 tensor
        layer_bytes("CONV_2D", 9 * 16, [2] * 30 + [8] * 2)  # (True, 1894): LUT part + int8 part
    """
    kept = [int(b) for b in channel_bits if int(b) != 0]
    if not kept:
        return False, 0
    one = plan_tensor(op, _layer_shape(op, len(kept), per_channel_weights), bits=kept).weight_bytes
    widths = sorted(set(kept))
    if len(widths) == 1 or op == "DEPTHWISE_CONV_2D" or split is False:
        return False, int(one)
    parts = sum(plan_tensor(op, _layer_shape(op, kept.count(b), per_channel_weights), bits=b).weight_bytes
                for b in widths) + split_overhead_bytes(len(widths))
    if split is True or parts < one:
        return True, int(parts)
    return False, int(one)
