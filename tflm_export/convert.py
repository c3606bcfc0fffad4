"""Keras 3 model -> full-int8 TFLite flatbuffer with sub-byte weights (see :func:`convert`)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

from tflm_export import lean, modelinfo, packing, repair, storage
from tflm_export.artifact import Artifact, check_finite, check_out_dir, io_details
from tflm_export.codegen import c_identifier
from tflm_export.errors import ConversionError, InvalidArgumentError

__all__ = ["MAX_CALIBRATION_SAMPLES", "MAX_RANGE_VALUES", "keras_to_int8", "activation_values", "convert", "build_report"]

MAX_CALIBRATION_SAMPLES = 300


def _input_specs(model):
    import tensorflow as tf

    specs = []
    for i, t in enumerate(model.inputs):
        shape = tuple(t.shape)
        if any(s is None for s in shape[1:]):
            raise ConversionError(
                f"input {i} ({getattr(t, 'name', '?')}) has shape {shape}: TFLM needs static shapes; "
                "build the model with a fixed input size (keras.Input(shape=(H, W, C)))"
            )
        specs.append(tf.TensorSpec((1,) + shape[1:], getattr(t, "dtype", None) or tf.float32, name=f"input_{i}"))
    return specs


def _check_finite(a, what):
    """Refuse NaN / Inf calibration inputs: they give NaN activation ranges and a broken model."""
    check_finite(a, what, ConversionError, "calibration needs finite inputs")


def _calibration(representative_data, specs, seed=0):
    """A representative_dataset callable yielding one batch-1 sample per step."""
    n_in = len(specs)
    if representative_data is None:
        warnings.warn(
            "convert(): no representative_data given; calibrating activation ranges on random "
            "uniform [0, 1] inputs. Pass ~100 real samples for a usable int8 model.",
            UserWarning, stacklevel=3,
        )
        rng = np.random.default_rng(seed)
        arrays = [rng.uniform(0, 1, (32,) + tuple(s.shape[1:])).astype("float32") for s in specs]
    elif callable(representative_data):
        def gen():
            for k, item in enumerate(representative_data()):
                values = [np.asarray(v, np.float32) for v in (item if isinstance(item, (list, tuple)) else [item])]
                for v in values:
                    _check_finite(v, f"representative_data() item {k}")
                yield values
        return gen
    else:
        arrays = list(representative_data) if isinstance(representative_data, (list, tuple)) else [representative_data]
        if n_in == 1 and len(arrays) != 1:
            arrays = [np.asarray(representative_data)]
        arrays = [np.asarray(a, np.float32) for a in arrays]
        if len(arrays) != n_in:
            raise ConversionError(f"representative_data has {len(arrays)} arrays; the model has {n_in} inputs")
        for a, s in zip(arrays, specs):
            if tuple(a.shape[1:]) != tuple(s.shape[1:]):
                if tuple(a.shape) == tuple(s.shape[1:]):
                    raise ConversionError(f"representative_data needs a leading sample axis: got {a.shape}, "
                                          f"expected (N,) + {tuple(s.shape[1:])}")
                raise ConversionError(f"representative_data shape {a.shape} does not match the model input "
                                      f"(N,) + {tuple(s.shape[1:])}")
        for i, a in enumerate(arrays):
            _check_finite(a, f"representative_data[{i}]" if n_in > 1 else "representative_data")
    count = min(len(arrays[0]), MAX_CALIBRATION_SAMPLES)

    def gen():
        for k in range(count):
            yield [a[k : k + 1] for a in arrays]

    return gen


def keras_to_int8(model, representative_data=None, per_channel: bool = True, activation_ranges=None,
                  ranges_out: dict | None = None) -> bytes:
    """The plain full-int8 flatbuffer (int8 inputs and outputs, batch 1) of a Keras 3 model.

    ``per_channel=False`` quantizes every weight tensor with one scale (per tensor).
    ``activation_ranges`` replaces the converter's min-max calibration of the activation
    tensors (see :func:`convert`); the ranges written go into ``ranges_out`` when given.

    Example::

        b = keras_to_int8(model, x_train[:100])
        b = keras_to_int8(model, x_train[:100], per_channel=False,
                          activation_ranges=lambda name, v: (min(0, v.min()), np.percentile(v, 99.9)))
    """
    import tensorflow as tf

    if not hasattr(model, "inputs") or not model.inputs:
        raise ConversionError(f"convert() needs a built Keras model with known inputs, got {type(model).__name__}; "
                              "call the model once or build it with keras.Input")
    import keras

    specs = _input_specs(model)
    # Fix the batch at 1 so the graph has static shapes (no SHAPE / PACK ops for Flatten).
    try:
        fixed_in = [keras.Input(batch_shape=tuple(sp.shape), dtype=sp.dtype.name, name=f"tflm_input_{i}")
                    for i, sp in enumerate(specs)]
        fixed_out = model(fixed_in[0] if len(fixed_in) == 1 else fixed_in)
        fixed = keras.Model(fixed_in[0] if len(fixed_in) == 1 else fixed_in, fixed_out, name=model.name)
    except Exception as e:
        raise ConversionError(f"could not rebuild the model with a batch of 1: {type(e).__name__}: {e}") from e
    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _calibration(representative_data, specs)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    if not per_channel:
        conv._experimental_disable_per_channel = True
    if activation_ranges is not None:
        return _int8_with_ranges(conv, representative_data, specs, per_channel, activation_ranges, ranges_out)
    try:
        # The converter prints the saved-model signature and warns about input statistics
        # it does not need (int8 inputs carry their own); keep the user's console readable.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(conv.convert())
    except Exception as e:
        msg = str(e).strip().splitlines()
        short = "\n".join(line for line in msg if "error" in line.lower())[:1500] or "\n".join(msg[-5:])
        raise ConversionError(
            "the TFLite converter could not produce a full-int8 model (a layer without an int8 TFLite "
            f"kernel?):\n{short}"
        ) from e


#: Values kept per activation tensor for a range estimator (a seeded sample beyond this; min and max stay exact).
MAX_RANGE_VALUES = 200_000


def _converter_error(e):
    msg = str(e).strip().splitlines()
    short = "\n".join(line for line in msg if "error" in line.lower())[:1500] or "\n".join(msg[-5:])
    return ConversionError(
        "the TFLite converter could not produce a full-int8 model (a layer without an int8 TFLite "
        f"kernel?):\n{short}"
    )


def activation_values(float_model_bytes: bytes, samples, tensors, max_values: int = MAX_RANGE_VALUES,
                      seed: int = 0) -> dict:
    """``{tensor index: float32 values}`` of the given tensors of a float flatbuffer over ``samples``.

    ``samples``: an iterable of per-step input lists (batch 1, as a representative dataset yields).
    Each tensor keeps at most ``max_values`` values: a seeded uniform sample of every step's values,
    plus the exact minimum and maximum, so min-max ranges are exact.
    """
    import tensorflow as tf

    with warnings.catch_warnings():  # the deprecation notice and the preserve-all-tensors advice
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(
            model_content=float_model_bytes, experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    ins = interp.get_input_details()
    samples = list(samples)
    rng = np.random.default_rng(seed)
    kept = {i: [] for i in tensors}
    lo = {i: np.inf for i in tensors}
    hi = {i: -np.inf for i in tensors}
    budget = max(1, max_values // max(1, len(samples)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in samples:
            for d, v in zip(ins, step):
                interp.set_tensor(d["index"], np.asarray(v, d["dtype"]).reshape(d["shape"]))
            interp.invoke()
            for i in tensors:
                v = np.asarray(interp.get_tensor(i), np.float32).ravel()
                lo[i] = min(lo[i], float(v.min()))
                hi[i] = max(hi[i], float(v.max()))
                kept[i].append(v if v.size <= budget else rng.choice(v, budget, replace=False))
    out = {}
    for i in tensors:
        v = np.concatenate(kept[i]) if kept[i] else np.zeros(1, np.float32)
        out[i] = np.concatenate([v, np.array([lo[i], hi[i]], np.float32)])
    return out


def _int8_with_ranges(conv, representative_data, specs, per_channel, activation_ranges, ranges_out):
    """Calibrate, let ``activation_ranges`` choose each activation tensor's range, then quantize.

    The converter's calibration pass records a min / max per float tensor (``_experimental_calibrate_only``);
    those records are replaced by the chosen ranges before the MLIR quantizer turns them into int8
    scales and zero points, so every constraint the quantizer applies (pooling, reshape and
    concatenation share one scale; biases at ``input_scale * filter_scale``) holds for the chosen ranges.
    The model inputs keep their min-max range.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert
    from tensorflow.lite.tools import flatbuffer_utils

    conv._experimental_calibrate_only = True
    gen = conv.representative_dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            calibrated = bytes(conv.convert())
    except Exception as e:
        raise _converter_error(e) from e
    fbm = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    sg = fbm.subgraphs[0]
    inputs = set(int(i) for i in sg.inputs)
    chosen = [i for i, t in enumerate(sg.tensors)
              if i not in inputs and t.quantization is not None and t.quantization.min is not None
              and len(t.quantization.min) == 1 and t.buffer is not None
              and (fbm.buffers[t.buffer].data is None or len(fbm.buffers[t.buffer].data) == 0)]
    values = activation_values(calibrated, gen(), chosen)
    written = {}
    for i in chosen:
        t = sg.tensors[i]
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        lo, hi = (float(r) for r in activation_ranges(name, values[i]))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise InvalidArgumentError(f"activation_ranges gave ({lo}, {hi}) for tensor {name!r}; "
                                       "it must return a finite (low, high) with low <= high")
        t.quantization.min = [lo]
        t.quantization.max = [hi]
        written[name] = (lo, hi)
    if ranges_out is not None:
        ranges_out.update(written)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bytes(tfl_convert.mlir_quantize(
                bytes(flatbuffer_utils.convert_object_to_bytearray(fbm)), not per_channel,
                input_data_type=tf.int8, output_data_type=tf.int8))
    except Exception as e:
        raise _converter_error(e) from e


def _per_channel_records(model_bytes: bytes) -> bytes:
    """Per-tensor conv / depthwise weight scales written once per output channel (the same value each).

    INT4 storage needs a per-channel quantization record; the values stay per-tensor (one distinct
    scale), so outputs do not change.
    """
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me

    from tflm_export.packing import op_name

    model = me.read(model_bytes)
    changed = False
    for sg in model.subgraphs:
        for op in sg.operators:
            name = op_name(op)
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or len(op.inputs) < 2 or op.inputs[1] is None:
                continue
            w = op.inputs[1]
            q = w.quantization
            if q is None or len(q.scales) != 1:
                continue
            axis = storage.CHANNEL_AXIS[name]
            channels = int(w.shape[axis])
            if channels > 1:
                w.quantization = me.Quantization(scales=[float(q.scales[0])] * channels,
                                                 zero_points=[0] * channels, axis=axis)
                b = op.inputs[2] if len(op.inputs) > 2 else None
                if b is not None and b.quantization is not None and len(b.quantization.scales) == 1:
                    b.quantization = me.Quantization(scales=[float(b.quantization.scales[0])] * channels,
                                                     zero_points=[0] * channels, axis=0)
                changed = True
    return bytes(model.build()) if changed else model_bytes


def convert(model, representative_data=None, pack: str = "auto", out_dir=None, overwrite: bool = False,
            weight_bits=None, name: str | None = None, check_tflm: bool = True, strip: bool = True,
            per_channel: bool = True, activation_ranges=None) -> Artifact:
    """Convert a Keras 3 model to a full-int8 TFLite flatbuffer with sub-byte weight storage.

    Args:
        model: a built Keras 3 model, e.g. the output of ``tfjpq.export`` (weights per output channel
            on a symmetric narrow-range grid, whose bit-widths it records in ``model.channel_bits``)
            or any plain model (whose grids are detected from the int8 values).
        representative_data: calibration inputs, an array ``(N, ...)`` (a list of arrays for several
            inputs) or a callable returning an iterable of samples. ``None`` calibrates on random data
            (with a warning).
        pack: ``"auto"`` (smallest storage per tensor, see :mod:`tflm_export.storage`), or ``"int8"``,
            ``"int4"``, ``"lut"`` to force one method wherever it applies.
        out_dir: if given, the directory receives ``model.tflite``, ``model_data.cc/.h``,
            ``op_resolver.h``, ``model_settings.h`` (``kTensorArenaSize``) and ``report.json``,
            written atomically.
        overwrite: replace an existing ``out_dir`` (otherwise OutDirExistsError).
        weight_bits: optional ``{layer_name: bits}`` overriding the bits detected from the weight values
            (values are snapped onto that grid if they are not on it already).
        name: C identifier for ``g_<name>_model_data``; defaults to the Keras model name.
        check_tflm: fail with UnsupportedOpError when the flatbuffer uses an operator TFLM lacks,
            and measure the arena with the TFLM interpreter.
        strip: drop what TFLM never reads (names, signature defs, metadata, bias quantization,
            repeated zero points) and write repeated records once (:mod:`tflm_export.lean`);
            outputs and arena in TFLM are unchanged. ``False`` keeps the converter's records.
        per_channel: one weight scale per output channel (default, the converter's choice); ``False``
            quantizes every weight tensor with one scale.
        activation_ranges: ``None`` keeps the converter's min-max calibration. A callable
            ``f(tensor_name, values) -> (low, high)`` chooses the float range of every activation tensor
            (the model inputs keep min-max) from its float ``values`` on ``representative_data``
            (at most :data:`MAX_RANGE_VALUES` of them, min and max exact), e.g. a percentile, KL or MSE
            estimator (``tfjpq.quantune.ranges``). The quantizer turns each range into the tensor's
            scale and zero point (widened to hold 0). The ranges go into ``report["activation_ranges"]``.

    Returns:
        An :class:`~tflm_export.artifact.Artifact`.

    Example::

        import tflm_export
        art = tflm_export.convert(deploy, representative_data=x_train[:200], out_dir="build/digits")
        print(art.size, art.arena_bytes, art.report["totals"])
    """
    if pack not in storage.PACK_MODES:
        raise InvalidArgumentError(f"pack must be one of {storage.PACK_MODES}, got {pack!r}")
    if out_dir is not None:
        check_out_dir(os.path.abspath(os.fspath(out_dir)), overwrite)   # fail before the slow part
    layer_names = [l.name for l in getattr(model, "layers", [])]
    if activation_ranges is not None and not callable(activation_ranges):
        raise InvalidArgumentError("activation_ranges must be None or a callable (tensor_name, values) -> (low, high), "
                                   f"got {type(activation_ranges).__name__}")
    ranges = {} if activation_ranges is not None else None
    int8_bytes, bias_notes = repair.fix_bias_scales(
        keras_to_int8(model, representative_data, per_channel=per_channel, activation_ranges=activation_ranges,
                      ranges_out=ranges))
    base_info = modelinfo.inspect_model(int8_bytes)
    if check_tflm:
        modelinfo.check_tflm_ops(base_info)

    recorded = packing.recorded_channel_bits(model)
    if not per_channel and (weight_bits or any(min(b) < 8 for b in recorded.values() if b)):
        int8_bytes = _per_channel_records(int8_bytes)
    weights = packing.analyze(int8_bytes, layer_names, weight_bits, recorded)
    plans = packing.plan(weights, pack, strip=strip)
    packed, notes = packing.apply(int8_bytes, weights, plans)
    plain = lean.strip(int8_bytes) if strip else int8_bytes
    if strip:
        packed = lean.strip(packed)
    if pack == "auto" and len(packed) >= len(plain) and not weight_bits:
        # packing bookkeeping outweighed the savings: keep the plain int8 model
        plans = packing.plan(weights, "int8", strip=strip)
        packed, notes = plain, {}
    info = modelinfo.inspect_model(packed)

    arena = None
    if check_tflm:
        from tflm_export import runner

        zeros = [np.full([1] + list(info.tensors[i].shape[1:]),
                         info.tensors[i].zero_points[0] if info.tensors[i].zero_points else 0,
                         dtype=np.int8 if info.tensors[i].dtype == "INT8" else np.float32)
                 for i in info.inputs]
        arena = runner.run_tflm(packed, zeros, num_outputs=len(info.outputs)).arena_bytes

    cname = c_identifier(name or getattr(model, "name", None) or "model")
    report = build_report(cname, pack, int8_bytes, packed, info, base_info, weights, plans, notes, arena)
    if bias_notes:
        report["bias_scale_repairs"] = bias_notes
    if not per_channel:
        report["weight_granularity"] = "per-tensor"
    if ranges is not None:
        report["activation_ranges"] = {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}
    art = Artifact(cname, packed, int8_bytes, report, arena or 0, io_details(info, "inputs"),
                   io_details(info, "outputs"), tuple(dict.fromkeys(info.op_names)))
    if out_dir is not None:
        art.save(out_dir, overwrite=overwrite)
    return art


def build_report(name, pack, int8_bytes, packed, info, base_info, weights, plans, notes, arena) -> dict:
    """Per-tensor storage (bits, bytes, method) and totals, as written to report.json."""
    rows = []
    tot_int8 = tot_stored = tot_ideal = tot_bias = tot_measured = 0
    # Stored data per weight tensor, by index: packing and stripping keep tensor indices
    # (names may be gone); a LUT tensor's ancillary data is the DECODE op's second input.
    ancillary = {op.inputs[0]: op.inputs[1] for op in info.ops if op.name == "TFLM_DECODE" and len(op.inputs) > 1}
    for w in weights:
        p = plans[w.tensor_index]
        bits_hist = {str(b): int((w.channel_bits == b).sum()) for b in sorted(set(w.channel_bits.tolist()))}
        ideal = sum(int(np.prod(w.shape)) // w.channels * int(b) for b in w.channel_bits) / 8.0
        bias = base_info.tensors[w.bias_index] if w.bias_index is not None else None
        bias_b = bias.data_bytes if bias is not None else 0
        measured = info.tensors[w.tensor_index].data_bytes
        if p.method == "lut" and w.tensor_index in ancillary:
            measured += info.tensors[ancillary[w.tensor_index]].data_bytes
        rows.append({
            "tensor": w.name, "layer": w.layer, "op": w.op, "shape": list(w.shape), "channels": w.channels,
            "grid_bits": w.bits, "channel_bits": bits_hist, "forced_bits": w.forced_bits,
            "method": p.method, "stored_bits": p.storage_bits, "stored_bytes": int(p.weight_bytes),
            "measured_data_bytes": int(measured),
            "int8_bytes": int(np.prod(w.shape)), "ideal_bytes": ideal,
            "index_bits": p.index_bits, "table_len": p.table_len, "arena_extra_bytes": int(p.arena_bytes),
            "bias_bytes": int(bias_b), "candidates": p.candidates, "reason": p.reason,
            **({"notes": notes[w.name]} if w.name in notes else {}),
        })
        tot_int8 += int(np.prod(w.shape))
        tot_stored += int(p.weight_bytes)
        tot_ideal += ideal
        tot_bias += bias_b
        tot_measured += measured
    methods = {}
    for r in rows:
        methods[r["method"]] = methods.get(r["method"], 0) + 1
    return {
        "name": name,
        "pack": pack,
        "file_bytes": len(packed),
        "int8_file_bytes": len(int8_bytes),
        "arena_bytes": arena,
        "total_macs": info.total_macs,
        "ops": list(info.op_names),
        "inputs": io_details(info, "inputs"),
        "outputs": io_details(info, "outputs"),
        "tensors": rows,
        "totals": {
            "weights_int8_bytes": tot_int8,
            "weights_stored_bytes": tot_stored,
            "weights_ideal_bytes": tot_ideal,
            "weights_measured_data_bytes": tot_measured,
            "bias_bytes": tot_bias,
            "constant_data_bytes": info.buffers_bytes,
            "flatbuffer_overhead_bytes": len(packed) - info.buffers_bytes,
            "breakdown": lean.breakdown(packed)["parts"],
            "flash_efficiency": round((tot_ideal + tot_bias) / len(packed), 4),
            "methods": methods,
            "saved_bytes_vs_int8": len(int8_bytes) - len(packed),
        },
    }
