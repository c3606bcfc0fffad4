"""Lean flatbuffers: drop what TFLite Micro never reads, write what repeats once.

The TFLite converter writes a flatbuffer for every TFLite runtime. On a
microcontroller much of it is dead flash. :func:`strip` rewrites a model so
that TFLM runs it with bit-identical outputs and the same arena, but without:

* tensor and subgraph names, the model description;
* signature defs and metadata entries other than those TFLM reads
  (``OfflineMemoryAllocation``);
* quantization records of int32/int64 biases of ``CONV_2D`` and
  ``DEPTHWISE_CONV_2D`` (the kernels take the bias scale from input and filter
  scales); a ``FULLY_CONNECTED`` bias keeps one scale, which TFLM's kernel
  checks against ``input_scale * filter_scale``;
* per-channel zero-point vectors whose values are all equal: TFLM's allocator
  accepts a single zero point for a per-channel tensor ("as a space-saving
  optimization", micro_allocator.cc) and broadcasts it;
* min/max records of quantization parameters;
* unreferenced buffers and padding: each data buffer is aligned to its
  element size (at least 4 bytes) instead of 16.

It also writes every repeated vector (shapes, scales, zero points, operator
inputs), every repeated quantization record, operator options table and
constant buffer once; flatbuffer offsets may point to the same object from
several tables.

:func:`breakdown` attributes every byte of a flatbuffer to one of
``weights``, ``biases``, ``lut_tables``, ``other_constants``,
``quantization``, ``names``, ``metadata``, ``graph`` and ``padding``; the
parts sum to the file size.

Example::

    from tflm_export import lean
    small = lean.strip(model_bytes)
    lean.breakdown(small)["parts"]     # {'weights': ..., 'graph': ..., ...}
"""

from __future__ import annotations

import numpy as np

from tflm_export import modelinfo, schema

__all__ = ["strip", "breakdown", "TFLM_METADATA", "DATA_ALIGNMENT"]

#: Metadata entries the TFLM runtime reads; every other entry is dropped.
TFLM_METADATA = frozenset({"OfflineMemoryAllocation"})
#: Minimum alignment of a data buffer (int32 biases need 4; wider types their own size).
DATA_ALIGNMENT = 4

#: Operators with a constant filter, and the input index of their bias
#: (TRANSPOSE_CONV's inputs are output shape, filter, activation, bias).
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
_WEIGHT_OPS = tuple(_BIAS_INPUT)
_BIAS_SCALE_NOT_READ = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")


def _bias_index(name, inputs):
    """The bias tensor index of a weight operator, or None (no bias input, or -1)."""
    k = _BIAS_INPUT.get(name)
    if k is None or inputs is None or len(inputs) <= k or inputs[k] < 0:
        return None
    return int(inputs[k])


def _itemsize(fb, tensor_type) -> int:
    t = fb.TensorType
    return {t.INT64: 8, t.FLOAT64: 8, t.UINT64: 8, t.COMPLEX64: 8, t.COMPLEX128: 16,
            t.INT32: 4, t.FLOAT32: 4, t.UINT32: 4, t.INT16: 2, t.FLOAT16: 2, t.UINT16: 2}.get(tensor_type, 1)


def _simplify(model, keep_names: bool):
    """Edit the unpacked ModelT in place: drop what TFLM does not read."""
    fb = schema.fb()
    model.description = None
    model.signatureDefs = None
    model.metadataBuffer = None
    if model.metadata:
        kept = []
        for entry in model.metadata:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name in TFLM_METADATA:
                kept.append(entry)
        model.metadata = kept or None
    ops = {i: schema.opcode_name(c) for i, c in enumerate(model.operatorCodes or [])}
    for sg in model.subgraphs:
        if not keep_names:
            sg.name = None
        bias_role = {}
        for op in sg.operators or []:
            name = ops.get(op.opcodeIndex, "")
            bias = _bias_index(name, op.inputs)
            if bias is not None:
                prev = bias_role.get(bias)
                role = "drop" if name in _BIAS_SCALE_NOT_READ else "one"
                bias_role[bias] = "one" if "one" in (prev, role) else role
        for ti, t in enumerate(sg.tensors or []):
            if not keep_names:
                t.name = None
            t.shapeSignature = None
            q = t.quantization
            if q is None:
                continue
            q.min = q.max = None
            role = bias_role.get(ti)
            if role == "drop" and q.scale is not None:
                t.quantization = None
                continue
            if role == "one" and q.scale is not None and len(q.scale) > 1:
                q.scale = [q.scale[0]]
                q.zeroPoint = [q.zeroPoint[0]] if q.zeroPoint is not None and len(q.zeroPoint) else [0]
                q.quantizedDimension = 0
            zp = q.zeroPoint
            if zp is not None and len(zp) > 1 and np.all(np.asarray(zp) == zp[0]):
                q.zeroPoint = [int(zp[0])]
            if (q.scale is None or len(q.scale) == 0) and q.details is None:
                t.quantization = None


class _Writer:
    """Packs a ModelT with shared vectors and records (see module docstring)."""

    def __init__(self, model, size_hint: int):
        import flatbuffers

        self.fb = schema.fb()
        self.model = model
        self.b = flatbuffers.Builder(max(1024, size_hint))
        self._vectors = {}
        self._tables = {}

    def vector(self, values, dtype):
        arr = np.asarray(values, dtype=dtype).ravel()
        key = (np.dtype(dtype).str, arr.tobytes())
        if key not in self._vectors:
            self._vectors[key] = self.b.CreateNumpyVector(arr)
        return self._vectors[key]

    def data(self, payload: bytes, alignment: int):
        b = self.b
        b.StartVector(1, len(payload), alignment)
        b.head = b.head - len(payload)
        b.Bytes[b.head:b.head + len(payload)] = payload
        b.vectorNumElems = len(payload)
        return b.EndVector()

    def string(self, s):
        if s is None:
            return None
        s = s.decode() if isinstance(s, bytes) else s
        key = ("str", s)
        if key not in self._vectors:
            self._vectors[key] = self.b.CreateString(s)
        return self._vectors[key]

    def offsets(self, items):
        b = self.b
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def quantization(self, q):
        fb, b = self.fb, self.b
        if q.details is not None:
            return q.Pack(b)  # rare (custom details): written as is
        scale = self.vector(q.scale, np.float32) if q.scale is not None else None
        zp = self.vector(q.zeroPoint, np.int64) if q.zeroPoint is not None else None
        key = ("q", scale, zp, int(q.quantizedDimension or 0))
        if key not in self._tables:
            fb.QuantizationParametersStart(b)
            if scale is not None:
                fb.QuantizationParametersAddScale(b, scale)
            if zp is not None:
                fb.QuantizationParametersAddZeroPoint(b, zp)
            fb.QuantizationParametersAddQuantizedDimension(b, int(q.quantizedDimension or 0))
            self._tables[key] = fb.QuantizationParametersEnd(b)
        return self._tables[key]

    def options(self, kind, obj):
        """An operator's options table, written once for all operators with equal options."""
        if obj is None:
            return None
        import flatbuffers

        probe = flatbuffers.Builder(64)
        probe.Finish(obj.Pack(probe))
        key = ("options", kind, bytes(probe.Output()))
        if key not in self._tables:
            self._tables[key] = obj.Pack(self.b)
        return self._tables[key]

    def tensor(self, t, buffer_index):
        fb, b = self.fb, self.b
        shape = self.vector(t.shape if t.shape is not None else [], np.int32)
        quant = self.quantization(t.quantization) if t.quantization is not None else None
        sparsity = t.sparsity.Pack(b) if t.sparsity is not None else None
        variants = None
        if t.variantTensors:
            variants = self.offsets([v.Pack(b) for v in t.variantTensors])
        name = self.string(t.name)
        fb.TensorStart(b)
        fb.TensorAddShape(b, shape)
        fb.TensorAddType(b, int(t.type))
        fb.TensorAddBuffer(b, int(buffer_index))
        if name is not None:
            fb.TensorAddName(b, name)
        if quant is not None:
            fb.TensorAddQuantization(b, quant)
        fb.TensorAddIsVariable(b, bool(t.isVariable))
        if sparsity is not None:
            fb.TensorAddSparsity(b, sparsity)
        if t.hasRank:
            fb.TensorAddHasRank(b, True)
        if variants is not None:
            fb.TensorAddVariantTensors(b, variants)
        return fb.TensorEnd(b)

    def operator(self, op):
        fb, b = self.fb, self.b
        inputs = self.vector(op.inputs if op.inputs is not None else [], np.int32)
        outputs = self.vector(op.outputs if op.outputs is not None else [], np.int32)
        options = self.options(op.builtinOptionsType, op.builtinOptions)
        options2 = self.options(("2", op.builtinOptions2Type), op.builtinOptions2)
        custom = (self.data(np.asarray(op.customOptions, np.uint8).tobytes(), 1) if op.customOptions is not None else None)
        mutating = (self.vector(op.mutatingVariableInputs, np.bool_) if op.mutatingVariableInputs is not None else None)
        inter = self.vector(op.intermediates, np.int32) if op.intermediates is not None else None
        fb.OperatorStart(b)
        fb.OperatorAddOpcodeIndex(b, int(op.opcodeIndex))
        fb.OperatorAddInputs(b, inputs)
        fb.OperatorAddOutputs(b, outputs)
        fb.OperatorAddBuiltinOptionsType(b, int(op.builtinOptionsType))
        if options is not None:
            fb.OperatorAddBuiltinOptions(b, options)
        if custom is not None:
            fb.OperatorAddCustomOptions(b, custom)
        fb.OperatorAddCustomOptionsFormat(b, int(op.customOptionsFormat))
        if mutating is not None:
            fb.OperatorAddMutatingVariableInputs(b, mutating)
        if inter is not None:
            fb.OperatorAddIntermediates(b, inter)
        if op.largeCustomOptionsOffset:
            fb.OperatorAddLargeCustomOptionsOffset(b, int(op.largeCustomOptionsOffset))
            fb.OperatorAddLargeCustomOptionsSize(b, int(op.largeCustomOptionsSize))
        fb.OperatorAddBuiltinOptions2Type(b, int(op.builtinOptions2Type))
        if options2 is not None:
            fb.OperatorAddBuiltinOptions2(b, options2)
        return fb.OperatorEnd(b)

    def write(self, buffer_align) -> bytes:
        fb, b, model = self.fb, self.b, self.model
        # Data first: the builder writes back to front, so the buffers end up at the end of the file.
        buffers = []
        for i, buf in enumerate(model.buffers):
            payload = np.asarray(buf.data, np.uint8).tobytes() if buf.data is not None else b""
            data = self.data(payload, buffer_align.get(i, DATA_ALIGNMENT)) if payload else None
            fb.BufferStart(b)
            if data is not None:
                fb.BufferAddData(b, data)
            buffers.append(fb.BufferEnd(b))
        buffers_vec = self.offsets(buffers)
        subgraphs = []
        for sg in model.subgraphs:
            tensors = [self.tensor(t, int(t.buffer)) for t in sg.tensors or []]
            ops = [self.operator(op) for op in sg.operators or []]
            tvec, ovec = self.offsets(tensors), self.offsets(ops)
            ins = self.vector(sg.inputs if sg.inputs is not None else [], np.int32)
            outs = self.vector(sg.outputs if sg.outputs is not None else [], np.int32)
            name = self.string(sg.name)
            fb.SubGraphStart(b)
            fb.SubGraphAddTensors(b, tvec)
            fb.SubGraphAddInputs(b, ins)
            fb.SubGraphAddOutputs(b, outs)
            fb.SubGraphAddOperators(b, ovec)
            if name is not None:
                fb.SubGraphAddName(b, name)
            subgraphs.append(fb.SubGraphEnd(b))
        sub_vec = self.offsets(subgraphs)
        codes = []
        for c in model.operatorCodes or []:
            custom = self.string(c.customCode)
            fb.OperatorCodeStart(b)
            fb.OperatorCodeAddDeprecatedBuiltinCode(b, int(c.deprecatedBuiltinCode))
            if custom is not None:
                fb.OperatorCodeAddCustomCode(b, custom)
            fb.OperatorCodeAddVersion(b, int(c.version))
            fb.OperatorCodeAddBuiltinCode(b, int(c.builtinCode))
            codes.append(fb.OperatorCodeEnd(b))
        codes_vec = self.offsets(codes)
        meta_vec = None
        if model.metadata:
            entries = []
            for entry in model.metadata:
                name = self.string(entry.name)
                fb.MetadataStart(b)
                fb.MetadataAddName(b, name)
                fb.MetadataAddBuffer(b, int(entry.buffer))
                entries.append(fb.MetadataEnd(b))
            meta_vec = self.offsets(entries)
        fb.ModelStart(b)
        fb.ModelAddVersion(b, int(model.version))
        fb.ModelAddOperatorCodes(b, codes_vec)
        fb.ModelAddSubgraphs(b, sub_vec)
        fb.ModelAddBuffers(b, buffers_vec)
        if meta_vec is not None:
            fb.ModelAddMetadata(b, meta_vec)
        root = fb.ModelEnd(b)
        b.Finish(root, file_identifier=b"TFL3")
        return bytes(b.Output())


def strip(model_bytes: bytes, keep_names: bool = False) -> bytes:
    """The same model without what TFLM never reads (see the module docstring).

    Outputs and arena in TFLM are unchanged; ``tests/test_lean.py`` checks it on
    conv, depthwise, dense, Add and Concatenate models at int8, INT4 and LUT.

    Args:
        model_bytes: a TFLite flatbuffer (one produced by the converter, or by
            :func:`tflm_export.packing.apply`).
        keep_names: keep tensor and subgraph names (for debugging).

    Example::

        lean_bytes = strip(open("model.tflite", "rb").read())
    """
    fb = schema.fb()
    modelinfo.inspect_model(model_bytes)   # CorruptModelError before the reader below meets a bad offset
    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if any(getattr(buf, "offset", 0) for buf in model.buffers or []):
        return bytes(model_bytes)  # buffers stored outside the flatbuffer (>2 GB): leave as is
    _simplify(model, keep_names)
    _renumber_buffers(model)
    align = {}
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            i = int(t.buffer)
            align[i] = max(align.get(i, DATA_ALIGNMENT), _itemsize(fb, t.type))
    return _Writer(model, len(model_bytes)).write(align)


def _renumber_buffers(model) -> None:
    """Keep buffer 0 (the empty sentinel) and the referenced buffers with data, in first-use order."""
    fb = schema.fb()
    new_buffers = [fb.BufferT()]
    index = {}

    def new_index(old):
        buf = model.buffers[old]
        if buf.data is None or len(buf.data) == 0:
            return 0
        if old not in index:
            index[old] = len(new_buffers)
            new_buffers.append(buf)
        return index[old]

    by_payload = {}

    def shared_index(old):
        i = new_index(old)
        if i == 0:
            return 0
        payload = np.asarray(model.buffers[old].data, np.uint8).tobytes()
        return by_payload.setdefault(payload, i)

    for sg in model.subgraphs:
        for t in sg.tensors or []:
            if t.isVariable:   # state lives in the buffer: never shared
                t.buffer = new_index(int(t.buffer))
            else:
                t.buffer = shared_index(int(t.buffer))
    for entry in model.metadata or []:
        entry.buffer = new_index(int(entry.buffer))
    used = sorted({int(t.buffer) for sg in model.subgraphs for t in sg.tensors or []}
                  | {int(e.buffer) for e in model.metadata or []} | {0})
    compact = {old: new for new, old in enumerate(used)}
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            t.buffer = compact[int(t.buffer)]
    for entry in model.metadata or []:
        entry.buffer = compact[int(entry.buffer)]
    model.buffers = [new_buffers[i] for i in used]


# -- where the bytes go -------------------------------------------------------

PARTS = ("weights", "biases", "lut_tables", "other_constants", "quantization", "names", "metadata", "graph",
         "padding")


class _Spans:
    """Byte ranges of a flatbuffer attributed to parts; the first claim of a byte wins."""

    def __init__(self, buf):
        self.buf = buf
        self.owner = np.full(len(buf), -1, dtype=np.int8)

    def claim(self, start, end, part):
        start, end = max(0, int(start)), min(len(self.buf), int(end))
        if end > start:
            seg = self.owner[start:end]
            seg[seg < 0] = PARTS.index(part)

    def vector(self, tab, slot, elem_size, part):
        o = tab.Offset(4 + 2 * slot)
        if not o:
            return None
        start, n = tab.Vector(o), tab.VectorLen(o)
        self.claim(start - 4, start + n * elem_size, part)
        return start, n

    def string(self, tab, slot, part):
        got = self.vector(tab, slot, 1, part)
        if got is not None:
            self.claim(got[0] + got[1], got[0] + got[1] + 1, part)  # the terminating zero

    def table(self, tab, part):
        import flatbuffers

        pos = tab.Pos
        vt = pos - flatbuffers.encode.Get(flatbuffers.packer.soffset, self.buf, pos)
        vt_size = flatbuffers.encode.Get(flatbuffers.packer.voffset, self.buf, vt)
        obj_size = flatbuffers.encode.Get(flatbuffers.packer.voffset, self.buf, vt + 2)
        self.claim(pos, pos + obj_size, part)
        self.claim(vt, vt + vt_size, part)


def breakdown(model_bytes: bytes) -> dict:
    """Where every byte of a flatbuffer goes; the parts sum to the file size.

    Parts: ``weights`` (filters of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV, or the encoded indices that a DECODE op expands into one),
    ``biases``, ``lut_tables`` (the DECODE ancillary data: header and value
    tables), ``other_constants``, ``quantization`` (scale and zero-point
    vectors and their records), ``names`` (tensor, subgraph and signature
    names), ``metadata`` (metadata entries and their buffers, signature defs,
    the description), ``padding`` (alignment zeros in front of data buffers)
    and ``graph`` (everything else: operator and tensor records, shapes,
    options, buffer records, the flatbuffer's offsets and vtables).

    Example::

        b = breakdown(open("model.tflite", "rb").read())
        b["parts"]["weights"], b["total"]
    """
    fb = schema.fb()
    modelinfo.inspect_model(model_bytes)   # CorruptModelError before the reader below meets a bad offset
    buf = bytearray(model_bytes)
    model = fb.Model.GetRootAs(buf, 0)
    spans = _Spans(buf)
    codes = [schema.opcode_name(fb.OperatorCodeT.InitFromObj(model.OperatorCodes(i)))
             for i in range(model.OperatorCodesLength())]
    role = {}   # buffer index -> part

    meta_buffers = set()
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        spans.table(m._tab, "metadata")
        spans.string(m._tab, 0, "metadata")
        meta_buffers.add(m.Buffer())
    spans.string(model._tab, 3, "metadata")                 # description
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        spans.table(sd._tab, "metadata")
        for slot, length, get in ((0, sd.InputsLength(), sd.Inputs), (1, sd.OutputsLength(), sd.Outputs)):
            spans.vector(sd._tab, slot, 4, "metadata")
            for k in range(length):
                tm = get(k)
                spans.table(tm._tab, "metadata")
                spans.string(tm._tab, 0, "names")
        spans.string(sd._tab, 2, "names")
    spans.vector(model._tab, 7, 4, "metadata")
    spans.vector(model._tab, 6, 4, "metadata")

    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        spans.string(sg._tab, 4, "names")
        tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
        decode_src = {}
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name = codes[op.OpcodeIndex()] if op.OpcodeIndex() < len(codes) else ""
            ins = [op.Inputs(j) for j in range(op.InputsLength())]
            outs = [op.Outputs(j) for j in range(op.OutputsLength())]
            if name == "TFLM_DECODE":
                for j in range(0, len(ins) - 1, 2):
                    if j // 2 < len(outs):
                        decode_src[outs[j // 2]] = ins[j]
                    role.setdefault(tensors[ins[j + 1]].Buffer(), "lut_tables")
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name = codes[op.OpcodeIndex()] if op.OpcodeIndex() < len(codes) else ""
            ins = [op.Inputs(j) for j in range(op.InputsLength())]
            if name in _WEIGHT_OPS and len(ins) > 1:
                w = decode_src.get(ins[1], ins[1])
                if w >= 0:
                    role.setdefault(tensors[w].Buffer(), "weights")
                bias = _bias_index(name, ins)
                if bias is not None:
                    b = decode_src.get(bias, bias)
                    role.setdefault(tensors[b].Buffer(), "biases")
        for t in tensors:
            spans.string(t._tab, 3, "names")
            q = t.Quantization()
            if q is not None:
                spans.table(q._tab, "quantization")
                for slot, size in ((0, 4), (1, 4), (2, 4), (3, 8)):
                    spans.vector(q._tab, slot, size, "quantization")

    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        part = "metadata" if i in meta_buffers else role.get(i, "other_constants")
        o = b._tab.Offset(4)
        if not o:
            continue
        start = b._tab.Vector(o) - 4
        if part != "metadata":
            spans.claim(start, start + 4, "graph")          # the length prefix is bookkeeping
        spans.vector(b._tab, 0, 1, part)
        k = start
        while k > 0 and start - k < 15 and buf[k - 1] == 0 and spans.owner[k - 1] < 0:
            k -= 1
        spans.claim(k, start, "padding")
    parts = {p: int((spans.owner == i).sum()) for i, p in enumerate(PARTS)}
    parts["graph"] += int((spans.owner < 0).sum())
    return {"total": len(buf), "parts": parts}
