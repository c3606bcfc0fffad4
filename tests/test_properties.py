"""Properties of the quantizers, the packing and the export, checked with hypothesis.

Examples are kept few (``max_examples`` 8..60, no deadline) so the file runs in well under a minute.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfjpq import quantizers
from tflm_export import packing, schema, storage

# derandomize: CI runs the same examples every time (a fresh machine found the FLT_MIN case below);
# explore further with `pytest tests/test_properties.py --hypothesis-seed=<n>` and a larger max_examples.
FAST = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])

BITS = st.sampled_from([2, 3, 4, 5, 6, 7, 8])
METHODS = st.sampled_from(list(quantizers.WEIGHT_QUANTIZERS))
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)
weights = hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 6)), elements=finite)


@FAST
@given(w=weights, bits=BITS, method=METHODS)
def test_grid_has_at_most_2b_minus_1_levels_per_channel(w, bits, method):
    q = quantizers.quantize_weights_np(w, bits, method=method)
    assert (quantizers.distinct_levels_per_channel(q) <= 2 ** bits - 1).all()
    n = quantizers.weight_levels(bits)
    scale = quantizers.channel_scales_np(w, bits, method=method)
    k = q / scale
    assert np.allclose(k, np.round(k), atol=1e-3) and np.abs(np.round(k)).max() <= n


@FAST
@given(w=weights, bits=BITS)
# found on a fresh machine: a channel at exactly float32's smallest normal gave NaN / 0 in TensorFlow
@example(w=np.array([[[1.1754944e-38], [0.0]]], np.float32), bits=3)
@example(w=np.array([[[1.1754944e-38]]], np.float32), bits=8)
def test_quantizing_twice_changes_nothing(w, bits):
    for method in quantizers.WEIGHT_QUANTIZERS:
        once = quantizers.quantize_weights_np(w, bits, method=method)
        twice = quantizers.quantize_weights_np(once, bits, method=method)
        np.testing.assert_array_equal(once, twice)
        tf_once = quantizers.quantize_weights(tf.constant(once), bits, method=method).numpy()
        np.testing.assert_array_equal(tf_once, once)


@FAST
@given(w=weights, bits=BITS, method=METHODS)
def test_tensorflow_and_numpy_quantizers_agree(w, bits, method):
    a = quantizers.quantize_weights(tf.constant(w), bits, method=method).numpy()
    b = quantizers.quantize_weights_np(w, bits, method=method)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(w).max() + 1))


def _nudged_range(low, high, bits):
    """The range fake_quant really uses: [low, high] shifted so that 0 is a grid point (TensorFlow's nudge)."""
    low, high = np.float32(low), np.float32(high)
    qmax = np.float32(2 ** bits - 1)
    scale = (high - low) / qmax
    zero = np.clip(np.round(-low / scale), 0, qmax)      # round half away from zero, as std::round
    return float((0 - zero) * scale), float((qmax - zero) * scale)


@FAST
@given(x=hnp.arrays(np.float32, st.integers(1, 32), elements=st.floats(-20, 20, width=32)),
       clip=st.floats(0.5, 10.0), bits=st.sampled_from([2, 4, 8]), signed=st.booleans())
def test_pact_gradient_passes_inside_the_clip_and_stops_outside(x, clip, bits, signed):
    """d/dx is 1 inside the clip range and 0 outside; d/d(clip) sums the upstream gradient beyond the clip.

    The range is [0, a] (unsigned) or [-a, a] (signed) *as TensorFlow nudges it* so that 0 is on the
    grid: unsigned exactly [0, a]; signed shifted by up to half a step (at 2 bits, [-6, 6] becomes
    [-8, 4]). See docs/reliability.md.
    """
    low, high = _nudged_range(-clip if signed else 0.0, clip, bits)
    if not signed:
        assert (low, high) == (0.0, pytest.approx(clip, rel=1e-6))
    margin = 1e-3 * clip
    x = x[(np.abs(x - high) > margin) & (np.abs(x - low) > margin)]
    if x.size == 0:
        return
    xv, cv = tf.constant(x), tf.Variable(clip)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xv)
        total = tf.reduce_sum(quantizers.quantize_activations(xv, cv, bits, signed))
    gx = tape.gradient(total, xv).numpy()
    gclip = float(tape.gradient(total, cv))
    inside = (x > low) & (x < high)
    np.testing.assert_array_equal(gx, inside.astype(np.float32))
    expected = float((x > high).sum()) - (float((x < low).sum()) if signed else 0.0)
    assert gclip == pytest.approx(expected, abs=1e-4)


@FAST
@given(q=hnp.arrays(np.int64, st.integers(0, 301), elements=st.integers(-8, 7)))
def test_int4_packing_round_trips(q):
    data = packing.pack_int4(q)
    assert len(data) == (q.size + 1) // 2 == storage.int4_bytes(q.size)
    np.testing.assert_array_equal(packing.unpack_int4(data, q.size), q)


# -- on flatbuffers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_model():
    """The tiny conv / depthwise / dense model (benchmarks/fuzz.py) as the converter's int8 flatbuffer."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import fuzz

    from tflm_export import repair
    from tflm_export.convert import keras_to_int8

    model = fuzz.tiny_model()
    x = np.random.default_rng(0).uniform(0, 1, (16, 6, 6, 1)).astype(np.float32)
    return _Bytes(repair.fix_bias_scales(keras_to_int8(model, x))[0])


class _Bytes(bytes):
    def __repr__(self):   # hypothesis prints fixtures of failing examples: keep it short
        return f"<flatbuffer of {len(self)} bytes>"


def _with_weights(model_bytes, op_name, values):
    """The flatbuffer with ``op_name``'s int8 filter replaced by ``values`` (same shape)."""
    import flatbuffers

    fb = schema.fb()
    m = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sg = m.subgraphs[0]
    op = next(o for o in sg.operators if schema.opcode_name(m.operatorCodes[o.opcodeIndex]) == op_name)
    t = sg.tensors[op.inputs[1]]
    if values is None:
        return model_bytes, tuple(int(s) for s in t.shape), op.inputs[1]
    m.buffers[t.buffer].data = np.asarray(values, np.int8).reshape(tuple(t.shape)).view(np.uint8).ravel()
    b = flatbuffers.Builder(4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), tuple(int(s) for s in t.shape), op.inputs[1]


def _grid_values(rng, shape, axis, bits_per_channel):
    """int8 values on each channel's b-bit grid (round(k * 127 / n)), the largest level present."""
    moved = np.zeros((shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis), np.int64)
    for c, b in enumerate(bits_per_channel):
        n = 2 ** (b - 1) - 1
        k = rng.integers(-n, n + 1, moved[c].shape)
        k.flat[0] = n
        moved[c] = np.round(k * 127.0 / n)
    return np.moveaxis(moved, 0, axis)


def _packed_on_grid(int8_model, data, bits, method):
    """The fixture's conv filter on per-channel ``bits`` grids (values seeded from ``data``), packed by ``method``.

    Returns ``(packed flatbuffer, packing.analyze weights, plans, filter tensor index, shape, int8 values)``.
    """
    seed = data.draw(st.integers(0, 2 ** 16))
    _, shape, _ = _with_weights(int8_model, "CONV_2D", None)
    values = _grid_values(np.random.default_rng(seed), shape, 0, bits)
    model, shape, ti = _with_weights(int8_model, "CONV_2D", values)
    weights = packing.analyze(model)
    plans = packing.plan(weights, method)
    packed, _ = packing.apply(model, weights, plans)
    return packed, weights, plans, ti, shape, values


def _decode_lut(model_bytes, tensor_index):
    """Decode a TFLM_DECODE'd tensor from the packed flatbuffer: indices (big-endian bit order) into value tables."""
    fb = schema.fb()
    m = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sg = m.subgraphs[0]
    dec = next(o for o in sg.operators if schema.opcode_name(m.operatorCodes[o.opcodeIndex]) == "TFLM_DECODE"
               and tensor_index in list(o.outputs) + list(o.inputs))
    enc, anc, out = sg.tensors[dec.inputs[0]], sg.tensors[dec.inputs[1]], sg.tensors[dec.outputs[0]]
    header = bytes(m.buffers[anc.buffer].data)
    axis, bits, stride = header[5] >> 4, header[5] & 0x7, header[6]
    tables = np.frombuffer(header[16:], np.int8).reshape(-1, stride)
    raw = bytes(m.buffers[enc.buffer].data)
    shape = tuple(int(s) for s in out.shape)
    count = int(np.prod(shape))
    bitstr = "".join(f"{byte:08b}" for byte in raw)
    idx = np.array([int(bitstr[i * bits:(i + 1) * bits], 2) for i in range(count)]).reshape(shape)
    chan = np.indices(shape)[axis] if axis != 0xF else np.zeros(shape, int)
    return tables[chan, idx]


@SLOW
@given(data=st.data(), bits=st.lists(st.integers(2, 8), min_size=4, max_size=4))
def test_lut_packing_round_trips_exactly(int8_model, data, bits):
    packed, _, plans, ti, _, values = _packed_on_grid(int8_model, data, bits, "lut")
    if plans[ti].method != "lut":          # an index of 8 bits: the tensor stays int8
        assert max(bits) == 8
        return
    np.testing.assert_array_equal(_decode_lut(packed, ti), values)


@SLOW
@given(data=st.data(), bits=st.lists(st.integers(2, 4), min_size=4, max_size=4))
def test_int4_packing_of_a_flatbuffer_round_trips_onto_the_grid(int8_model, data, bits):
    packed, _, _, ti, shape, values = _packed_on_grid(int8_model, data, bits, "int4")
    fb = schema.fb()
    m = fb.ModelT.InitFromPackedBuf(bytearray(packed), 0)
    t = m.subgraphs[0].tensors[ti]
    assert t.type == fb.TensorType.INT4
    q = packing.unpack_int4(bytes(m.buffers[t.buffer].data), int(np.prod(shape))).reshape(shape).astype(np.int64)
    n = np.array([2 ** (b - 1) - 1 for b in bits]).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(np.round(q * 127.0 / n), values)     # the int8 grid values come back exactly


@SLOW
@given(data=st.data(), pack=st.sampled_from(["int8", "int4", "lut", "auto"]),
       bits=st.lists(st.integers(2, 8), min_size=4, max_size=4))
def test_storage_rules_equal_the_flatbuffers_bytes(int8_model, data, pack, bits):
    """What storage.plan_tensor prices (the cost model's rules) is what the packed flatbuffer stores."""
    from tflm_export import lean, modelinfo

    packed, weights, plans, _, _, _ = _packed_on_grid(int8_model, data, bits, pack)
    info = modelinfo.inspect_model(lean.strip(packed))
    ancillary = {op.inputs[0]: op.inputs[1] for op in info.ops if op.name == "TFLM_DECODE"}
    for w in weights:
        p = plans[w.tensor_index]
        stored = info.tensors[w.tensor_index].data_bytes
        rule = p.weight_bytes
        if p.method == "lut":   # data: indices + ancillary (header and tables); the graph records are priced apart
            stored += info.tensors[ancillary[w.tensor_index]].data_bytes
            rule = storage.lut_bytes(w.elements, w.channels, p.index_bits, p.table_len, graph=False, tables=p.lut_tables)
            assert p.weight_bytes == rule + storage.lut_overhead_bytes(w.channels)
        assert stored == rule, (w.name, p.method, stored, rule)


# -- the whole path: frozen choices -> exported bits -------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exported_bits_equal_frozen_choices(seed):
    import keras

    import tfjpq
    import tflm_export
    from tests.conftest import random_choices

    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8))
    random_choices(search, seed)
    frozen = tfjpq.freeze(search)
    chosen = {}
    for choice in frozen.precision_choices():
        sel = np.asarray(choice.bits)[np.asarray(choice.alpha).argmax(0)]
        for layer in frozen.search_layers():
            if layer.group == choice.name:
                chosen[layer.name] = sorted(int(b) for b in sel if b)
    deploy = tfjpq.export(frozen)
    recorded = {k: sorted(int(b) for b in v) for k, v in deploy.channel_bits.items()}
    art = tflm_export.convert(deploy, np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 1)).astype(np.float32),
                              check_tflm=False)
    in_file = {}
    for row in art.report["tensors"]:
        in_file.setdefault(row["layer"], []).extend(int(b) for b, n in row["channel_bits"].items() for _ in range(n))
    assert set(chosen) == {"c1", "c2", "fc"} and len({b for bits in chosen.values() for b in bits}) >= 2
    for layer, bits in chosen.items():
        assert recorded[layer] == bits, (layer, recorded[layer], bits)
        assert sorted(b for b in in_file[layer] if b) == bits, (layer, in_file[layer], bits)
