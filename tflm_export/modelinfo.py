"""Reading and checking a .tflite flatbuffer in pure Python, before any C++ sees it.

:func:`inspect_model` verifies the bytes (file identifier, every offset the
reader follows, tensor / buffer / operator-code indices, constant buffer sizes
against tensor shapes) and returns a :class:`ModelInfo`: the operators in
execution order with their MACs, the tensors, and which operators the TFLM
interpreter provides. A truncated or corrupted file raises
:class:`~tflm_export.errors.CorruptModelError`; an operator TFLM lacks is named
by :func:`check_tflm_ops` (:class:`~tflm_export.errors.UnsupportedOpError`).

Example::

    from tflm_export import modelinfo
    info = modelinfo.inspect_model(open("model.tflite", "rb").read())
    [(op.name, op.macs) for op in info.ops]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tflm_export import schema
from tflm_export.errors import CorruptModelError, UnsupportedOpError

_fb = schema.fb()  # the generated schema module has no C++ behind it: cheap to load here

__all__ = [
    "TFLITE_IDENTIFIER", "DECODE_OP", "TFLM_BUILTIN_OPS", "TFLM_CUSTOM_OPS", "TYPE_BITS", "TensorInfo",
    "OpInfo", "ModelInfo", "inspect_model", "check_tflm_ops",
]

TFLITE_IDENTIFIER = b"TFL3"
DECODE_OP = "TFLM_DECODE"

#: Builtin operators registered by the TFLM interpreter in the pinned
#: ``tflite-micro`` package (read from its ``Register_*`` kernels).
TFLM_BUILTIN_OPS = frozenset(
    """ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND
    BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTHWISE_CONV_2D
    DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR
    FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF
    L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC
    LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE
    READ_VARIABLE REDUCE_ALL REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR
    REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V
    SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV
    UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE""".split()
)
#: Custom operators the TFLM interpreter registers.
TFLM_CUSTOM_OPS = frozenset({DECODE_OP, "CIRCULAR_BUFFER", "TFLite_Detection_PostProcess", "ethos-u"})

_TYPE_NAMES = {v: k for k, v in vars(_fb.TensorType).items() if not k.startswith("_")}
#: Bits per element of each tensor type (sub-byte types pack).
TYPE_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "INT32": 32, "UINT8": 8, "INT64": 64, "BOOL": 8, "INT16": 16,
    "INT8": 8, "FLOAT64": 64, "UINT64": 64, "UINT32": 32, "UINT16": 16, "INT4": 4, "BFLOAT16": 16,
    "INT2": 2, "UINT4": 4, "COMPLEX64": 64, "COMPLEX128": 128,
}


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple
    dtype: str
    buffer: int
    data_bytes: int                   # bytes of constant data (0 for activations)
    scales: tuple = ()
    zero_points: tuple = ()
    quantized_dimension: int = 0

    @property
    def is_constant(self) -> bool:
        return self.data_bytes > 0

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class OpInfo:
    index: int
    name: str                         # builtin name, or the custom code
    inputs: tuple
    outputs: tuple
    macs: int = 0                     # multiply-accumulates (conv / depthwise / fully connected)
    out_elements: int = 0
    work: int = 0                     # elements the op touches (pool windows, decoded values, ...)
    weight_tensor: int | None = None


@dataclass
class ModelInfo:
    size: int
    tensors: list
    ops: list
    inputs: tuple
    outputs: tuple
    buffers_bytes: int                # all constant data
    description: str = ""
    subgraphs: int = 1
    op_names: tuple = field(default_factory=tuple)

    def tensor(self, i) -> TensorInfo:
        return self.tensors[i]

    @property
    def total_macs(self) -> int:
        return int(sum(op.macs for op in self.ops))


_INT_RANGE = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767), "INT4": (-8, 7)}


def _s(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else (x or "")


def _bad(msg):
    return CorruptModelError(f"not a valid TFLite flatbuffer: {msg}")


def inspect_model(model_bytes) -> ModelInfo:
    """Verify a .tflite flatbuffer and describe it; raises CorruptModelError if it is malformed.

    Example::

        info = inspect_model(artifact.model_bytes)
        info.total_macs, sorted(set(info.op_names))
    """
    if isinstance(model_bytes, (bytearray, memoryview)):
        model_bytes = bytes(model_bytes)
    if not isinstance(model_bytes, bytes):
        raise TypeError(f"model must be bytes, got {type(model_bytes).__name__}")
    n = len(model_bytes)
    if n < 16:
        raise _bad(f"only {n} bytes long")
    if model_bytes[4:8] != TFLITE_IDENTIFIER:
        raise _bad(f"file identifier is {model_bytes[4:8]!r}, expected {TFLITE_IDENTIFIER!r} (is this a .tflite file?)")
    root = int.from_bytes(model_bytes[0:4], "little")
    if root < 8 or root + 4 > n:
        raise _bad(f"root table offset {root} outside the {n}-byte file (truncated?)")
    try:
        m = _fb.ModelT.InitFromPackedBuf(model_bytes, 0)
    except Exception as e:  # the generated reader fails with struct / index / value errors
        raise _bad(f"the flatbuffer cannot be read ({type(e).__name__}: {e}); the file is truncated or corrupted") from None

    if m.version != 3:
        raise _bad(f"schema version {m.version}, expected 3")
    if not m.subgraphs:
        raise _bad("no subgraphs")
    _utf8(m.description, "the model description")
    opcodes = m.operatorCodes or []
    for ci, code in enumerate(opcodes):
        _utf8(code.customCode, f"operator code {ci}'s custom code")
    buffers = m.buffers or []
    for entry in m.metadata or []:
        _utf8(entry.name, "a metadata name")
        if not 0 <= entry.buffer < len(buffers):
            raise _bad(f"metadata {_s(entry.name)!r} refers to buffer {entry.buffer}, but there are {len(buffers)}")
    for sd in m.signatureDefs or []:
        if not 0 <= sd.subgraphIndex < len(m.subgraphs or []):
            raise _bad(f"a signature refers to subgraph {sd.subgraphIndex}, but there are {len(m.subgraphs or [])}")
    # buffer sizes (inline data, or offset/size for >2 GB files)
    buf_bytes = []
    for i, b in enumerate(buffers):
        if b.offset and b.offset > 1:
            if b.offset + b.size > n:
                raise _bad(f"buffer {i} points at bytes {b.offset}..{b.offset + b.size}, past the end ({n})")
            buf_bytes.append(int(b.size))
        else:
            buf_bytes.append(0 if b.data is None else len(b.data))

    described = None
    for si, sg in enumerate(m.subgraphs):   # TFLM reads every subgraph (IF / WHILE bodies): check them all
        got = _check_subgraph(si, sg, buffers, buf_bytes, opcodes)
        if described is None:
            described = got
    tensors, ops, inputs, outputs = described
    _check_called_subgraphs(m)

    return ModelInfo(
        size=n, tensors=tensors, ops=ops,
        inputs=inputs, outputs=outputs,
        buffers_bytes=int(sum(buf_bytes)), description=_s(m.description), subgraphs=len(m.subgraphs),
        op_names=tuple(o.name for o in ops),
    )


#: Largest element count of one tensor (TFLM computes byte sizes in 32-bit integers).
MAX_TENSOR_ELEMENTS = 2 ** 31 - 1


def _check_subgraph(si, sg, buffers, buf_bytes, opcodes):
    """Verify one subgraph's tensors, operators, inputs and outputs; returns (tensors, ops, inputs, outputs)."""
    where = "" if si == 0 else f"subgraph {si}: "
    tensors = []
    for ti, t in enumerate(sg.tensors or []):
        if not (0 <= t.buffer < max(len(buffers), 1)):
            raise _bad(f"{where}tensor {ti} refers to buffer {t.buffer}, but there are {len(buffers)} buffers")
        shape = tuple(int(s) for s in (t.shape if t.shape is not None else []))
        if len(shape) > 8 or any(s < 0 or s > 1 << 28 for s in shape):
            raise _bad(f"{where}tensor {ti} has an impossible shape {shape}")
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise _bad(f"{where}tensor {ti} has {math.prod(shape):,} elements (shape {shape}); "
                       f"TFLM handles at most {MAX_TENSOR_ELEMENTS:,}")
        dtype = _TYPE_NAMES.get(t.type)
        if dtype is None:
            raise _bad(f"{where}tensor {ti} has unknown type code {t.type}")
        _utf8(t.name, f"{where}tensor {ti}'s name")
        data = buf_bytes[t.buffer] if buffers else 0
        if data and dtype not in TYPE_BITS:
            raise _bad(f"{where}tensor {ti} holds {data} bytes of constant data of type {dtype}, which has no size")
        if data and dtype in TYPE_BITS:
            expect = math.ceil(math.prod(shape) * TYPE_BITS[dtype] / 8)
            if data != expect:
                raise _bad(f"{where}tensor {ti} ({_s(t.name)!r}) has {data} data bytes, its {dtype}{list(shape)} "
                           f"needs {expect}")
        q = t.quantization
        scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
        zps = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ()))
        qd = int(q.quantizedDimension) if q is not None else 0
        if any(not math.isfinite(s) or s <= 0 for s in scales):
            raise _bad(f"{where}tensor {ti} has a scale that is not a positive finite number: {scales[:8]}")
        if scales and len(zps) not in (0, 1, len(scales)):
            raise _bad(f"{where}tensor {ti} has {len(scales)} scales but {len(zps)} zero points")
        if dtype in _INT_RANGE and any(not _INT_RANGE[dtype][0] <= z <= _INT_RANGE[dtype][1] for z in zps):
            raise _bad(f"{where}tensor {ti} has a zero point outside the {dtype} range: {zps[:8]}")
        # (UINT8 skipped: TFLM's LUT compressor leaves the old scales on the encoded tensor)
        if len(scales) > 1 and dtype != "UINT8" and not (0 <= qd < len(shape) and shape[qd] == len(scales)):
            raise _bad(f"{where}tensor {ti} has {len(scales)} scales but shape {shape} along axis {qd}")
        tensors.append(TensorInfo(ti, _s(t.name), shape, dtype, int(t.buffer), data, scales, zps, qd))

    def idx(lst, what, optional=True):
        out = tuple(int(i) for i in (lst if lst is not None else []))
        for i in out:
            if not (optional and i == -1) and not 0 <= i < len(tensors):
                raise _bad(f"{where}{what} refers to tensor {i}, but the subgraph has {len(tensors)} tensors")
        return out

    ops = []
    for oi, op in enumerate(sg.operators or []):
        if not 0 <= op.opcodeIndex < len(opcodes):
            raise _bad(f"{where}operator {oi} uses opcode {op.opcodeIndex}, but there are {len(opcodes)} "
                       "operator codes")
        name = schema.opcode_name(opcodes[op.opcodeIndex])
        for kind, options in ((op.builtinOptionsType, op.builtinOptions), (op.builtinOptions2Type, op.builtinOptions2)):
            if kind and options is None:
                # C++ readers (the flatbuffer aligner, TFLite) dereference the missing table
                raise _bad(f"{where}operator {oi} ({name}) declares options of type {kind} but has none")
        info = OpInfo(oi, name, idx(op.inputs, f"operator {oi} ({name})"),
                      idx(op.outputs, f"operator {oi} ({name}) output", optional=False))
        _check_arity(where, info, tensors)
        _count_work(info, op, tensors)
        ops.append(info)
    inputs = idx(sg.inputs, "the subgraph's inputs", optional=False)
    outputs = idx(sg.outputs, "the subgraph's outputs", optional=False)
    if not outputs:
        raise _bad(f"{where or 'the main subgraph '}has no outputs")
    _utf8(sg.name, f"{where}the subgraph's name")
    # every input exists before its operator runs: a constant, a variable, a subgraph input or an earlier output
    ready = set(inputs) | {t.index for t in tensors if t.is_constant}
    ready |= {ti for ti, t in enumerate(sg.tensors or []) if t.isVariable}
    for op in ops:
        for i in op.inputs:
            if i >= 0 and i not in ready and (i in op.outputs or any(i in later.outputs for later in ops[op.index:])):
                raise _bad(f"{where}operator {op.index} ({op.name}) reads tensor {i} before an operator computes it "
                           "(the operators are not in execution order, or an operator reads its own output)")
        ready.update(op.outputs)
    # a weight operator's filter and bias are constants, or computed by an operator (TFLM_DECODE)
    produced = {o for op in ops for o in op.outputs}
    for op in ops:
        k = _CONSTANT_INPUTS.get(op.name, ())
        for pos in k:
            if pos < len(op.inputs) and op.inputs[pos] >= 0:
                t = tensors[op.inputs[pos]]
                if not t.is_constant and t.index not in produced:
                    raise _bad(f"{where}operator {op.index} ({op.name}): its {('filter', 'bias')[pos - 1]} "
                               f"(tensor {t.index}) has no data and no operator computes it")
    return tensors, ops, inputs, outputs


_SUBGRAPH_FIELDS = ("thenSubgraphIndex", "elseSubgraphIndex", "condSubgraphIndex", "bodySubgraphIndex",
                    "initSubgraphIndex")


def _check_called_subgraphs(m):
    """Subgraphs past the first exist only as bodies of IF / WHILE / CALL_ONCE operators.

    TFLM prepares every subgraph; one that no operator calls (seen: a second copy of the main
    graph) crashed the interpreter while loading.
    """
    count = len(m.subgraphs)
    called = set()
    for si, sg in enumerate(m.subgraphs):
        for oi, op in enumerate(sg.operators or []):
            for name in _SUBGRAPH_FIELDS:
                k = getattr(op.builtinOptions, name, None)
                if k is None:
                    continue
                if not 0 < int(k) < count:
                    raise _bad(f"subgraph {si} operator {oi} calls subgraph {k}, but there are {count} subgraphs "
                               "(the main subgraph 0 cannot be called)")
                called.add(int(k))
    uncalled = sorted(set(range(1, count)) - called)
    if uncalled:
        raise _bad(f"subgraph(s) {uncalled} are not called by any IF / WHILE / CALL_ONCE operator; TFLM would "
                   "still prepare them (a second copy of the main graph crashed it)")


#: Inputs of the weight operators that must hold data (filter, bias).
_CONSTANT_INPUTS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2)}


def _utf8(value, what):
    """Flatbuffer strings are UTF-8; a name that is not was corrupted."""
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"{what} is not UTF-8 text: {value[:40]!r}") from None


#: Inputs an operator cannot run without (TFLM's kernels read them unchecked), by operator.
_REQUIRED_INPUTS = {
    "CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3, "ADD": 2, "SUB": 2, "MUL": 2,
    "MEAN": 2, "SUM": 2, "REDUCE_MAX": 2, "PAD": 2, "PADV2": 2, "RESHAPE": 1, "SOFTMAX": 1, "MAX_POOL_2D": 1,
    "AVERAGE_POOL_2D": 1, "QUANTIZE": 1, "DEQUANTIZE": 1, "CONCATENATION": 1, "LOGISTIC": 1, "RELU": 1,
    "RELU6": 1, "TANH": 1, "HARD_SWISH": 1, "LEAKY_RELU": 1,
}
#: Rank of the input and filter of the weight operators.
_RANKS = {"CONV_2D": (4, 4), "DEPTHWISE_CONV_2D": (4, 4), "FULLY_CONNECTED": (None, 2)}


def _check_arity(where, info, tensors):
    name, ins, outs = info.name, info.inputs, info.outputs
    what = f"{where}operator {info.index} ({name})"
    if not outs:
        raise _bad(f"{what} has no output")
    need = _REQUIRED_INPUTS.get(name, 0)
    if len(ins) < need or any(i < 0 for i in ins[:need]):
        raise _bad(f"{what} needs {need} inputs, has {list(ins)}")
    if name == DECODE_OP and (len(ins) % 2 or len(ins) // 2 != len(outs) or any(i < 0 for i in ins)):
        raise _bad(f"{what} needs (encoded, ancillary) input pairs, one output each; has {list(ins)} -> {list(outs)}")
    if name in _RANKS:
        for i, rank in zip(ins, _RANKS[name]):
            if rank is not None and len(tensors[i].shape) != rank:
                raise _bad(f"{what}: tensor {i} has shape {tensors[i].shape}, the operator needs rank {rank}")


def _count_work(info: OpInfo, op, tensors):
    outs = [tensors[i] for i in info.outputs if i >= 0]
    info.out_elements = int(sum(t.elements for t in outs))
    ins = [tensors[i] if i >= 0 else None for i in info.inputs]
    if info.name == "CONV_2D" and len(ins) > 1 and ins[1] is not None:
        o, kh, kw, ci = (ins[1].shape + (1, 1, 1, 1))[:4]
        info.macs = info.out_elements * kh * kw * ci
        info.weight_tensor = ins[1].index
    elif info.name == "DEPTHWISE_CONV_2D" and len(ins) > 1 and ins[1] is not None:
        _, kh, kw, _ = (ins[1].shape + (1, 1, 1, 1))[:4]
        info.macs = info.out_elements * kh * kw
        info.weight_tensor = ins[1].index
    elif info.name == "FULLY_CONNECTED" and len(ins) > 1 and ins[1] is not None:
        k = ins[1].shape[-1] if ins[1].shape else 1
        info.macs = info.out_elements * k
        info.weight_tensor = ins[1].index
    elif info.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"):
        opts = op.builtinOptions
        win = (getattr(opts, "filterHeight", 1) or 1) * (getattr(opts, "filterWidth", 1) or 1)
        info.work = info.out_elements * win
    elif info.name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
        info.work = int(sum(t.elements for t in ins[:1] if t is not None))
    else:
        info.work = info.out_elements


def check_tflm_ops(info: ModelInfo) -> None:
    """Raise UnsupportedOpError naming every operator the TFLM interpreter does not provide."""
    missing = []
    for op in info.ops:
        ok = op.name in TFLM_BUILTIN_OPS or op.name in TFLM_CUSTOM_OPS
        if not ok and op.name not in missing:
            missing.append(op.name)
    if missing:
        where = {name: [o.index for o in info.ops if o.name == name] for name in missing}
        detail = ", ".join(f"{name} (operator #{', #'.join(map(str, idx))})" for name, idx in where.items())
        raise UnsupportedOpError(
            f"TFLM has no kernel for {detail}. Replace the layer that produces it "
            f"(e.g. use ReLU instead of GELU) or register a custom kernel in your firmware.",
            ops=missing,
        )
