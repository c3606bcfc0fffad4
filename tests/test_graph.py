"""tfjpq.graph: the layer registry, the model check and the channel-group walk."""

import keras
import numpy as np
import pytest
from keras import layers

from tfjpq import graph
from tfjpq.errors import UnsupportedModelError


def test_registry_knows_each_layer_once_with_its_op_and_axis():
    assert graph.layer_kind(layers.DepthwiseConv2D(3)) == "depthwise"
    assert graph.layer_kind(layers.Conv2D(4, 3)) == "conv"
    assert graph.layer_kind(layers.Conv2DTranspose(4, 3)) == "unsupported"
    assert graph.layer_kind(layers.LSTM(4)) == "unsupported"
    assert graph.tflite_op("conv") == graph.tflite_op("Conv2D") == "CONV_2D"
    assert graph.tflite_op(graph.kind_of(layers.Dense(3))) == "FULLY_CONNECTED"
    assert graph.tflite_kernel_shape("Conv2D", (3, 3, 16, 32)) == (32, 3, 3, 16)
    assert graph.tflite_kernel_shape("depthwise", (3, 3, 8, 2)) == (1, 3, 3, 16)
    assert graph.kernel_channel_axis(layers.DepthwiseConv2D(3)) == 2
    assert graph.kernel_channel_axis(layers.Dense(3)) == -1
    with pytest.raises(KeyError):
        graph.tflite_op("bn")
    classes = [c for k in graph.KINDS for c in k.classes]
    assert len(classes) == len(set(classes)), "a Keras class in two kinds"


def test_capabilities_are_consistent():
    for kind in graph.KINDS:
        if kind.searchable and kind.name != "rescale":
            assert kind.croppable, kind.name  # PreCrop narrows whatever the search reads, Rescaling aside
        if kind.scorable or kind.quantizable:
            assert kind.tflite_op and kind.channel_axis is not None, kind.name
    assert graph.supports(layers.UpSampling2D(), "croppable")
    assert not graph.supports(layers.UpSampling2D(), "searchable")
    assert graph.supports(layers.Conv1D(2, 3)) and not graph.supports(layers.LSTM(2))


def test_check_model_turns_a_sequential_into_its_functional_twin():
    seq = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="d")])
    fn = graph.check_model(seq)
    assert isinstance(fn, keras.Model) and not isinstance(fn, keras.Sequential)
    assert fn.get_layer("d") is seq.get_layer("d")


def test_check_model_capability_decides_per_entry_point():
    inp = keras.Input((16, 3))
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling1D()(layers.Conv1D(4, 3, name="c")(inp))))
    assert graph.check_model(model, "croppable", "precrop.crop") is model
    with pytest.raises(UnsupportedModelError, match=r"'c' \(Conv1D\) is not supported by tfjpq.wrap"):
        graph.check_model(model)
    lam = keras.Model(inp, layers.Lambda(lambda t: t * 2, name="twice")(inp))
    assert graph.check_model(lam, None, "tfjpq.summary") is lam  # structure only
    with pytest.raises(UnsupportedModelError, match=r"'twice' \(Lambda\)"):
        graph.check_model(lam, "known", "zeroq.distill")


def _walk(model):
    return graph.ChannelWalk(graph.check_model(model, "croppable", "test")).run()


def test_walk_joins_adds_and_fixes_outputs_and_inputs():
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(8, 1, name="b")(inp)
    x = layers.Add(name="add")([a, b])
    x = layers.Add(name="add_in")([layers.Conv2D(3, 1, name="c")(x), inp])
    out = layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x))
    walk = _walk(keras.Model(inp, out))
    pg = walk.producer_group
    assert pg["a"] == pg["b"] and walk.groups[pg["a"]].prunable
    assert sorted(walk.groups[pg["a"]].members) == ["a", "b"]
    assert not walk.groups[pg["c"]].prunable  # added to the model input
    assert not walk.groups[pg["out"]].prunable and not walk.groups[pg["out"]].regroup


def test_walk_layouts_of_concat_flatten_and_depthwise():
    inp = keras.Input((4, 4, 2))
    a = layers.Conv2D(3, 1, name="a")(inp)
    b = layers.Conv2D(5, 1, name="b")(inp)
    cat = layers.Concatenate(name="cat")([a, b])
    dw = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(cat)
    flat = layers.Flatten(name="flat")(dw)
    model = keras.Model(inp, layers.Dense(2, name="out")(flat))
    walk = _walk(model)
    ga, gb = walk.producer_group["a"], walk.producer_group["b"]
    assert walk.layouts[id(cat)] == graph.Layout(((ga, 3), (gb, 5)))
    assert walk.layouts[id(dw)] == graph.Layout(((ga, 6), (gb, 10)))
    assert walk.layouts[id(flat)].repeat == 16 and walk.layouts[id(flat)].channels == 16
    assert walk.layouts[id(model.inputs[0])] == graph.Layout(((None, 2),))


def test_analyze_absorbs_bn_and_knows_signs():
    inp = keras.Input((6, 6, 1))
    x = layers.Conv2D(4, 3, name="c1")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    r = layers.ReLU(name="r")(x)
    y = layers.Conv2D(4, 3, name="c2")(r)
    model = keras.Model(inp, layers.Dense(2, name="d")(layers.Flatten()(y)))
    info = graph.analyze(graph.check_model(model))
    assert info.absorbed_bn == {"bn": "c1"} and info.linears["c1"].bn is model.get_layer("bn")
    assert info.linears["c1"].input_raw and not info.linears["c2"].input_raw
    assert info.nonneg[id(r)] and not info.nonneg[id(x)]
    assert info.linears["c2"].input_layout == graph.Layout(((info.linears["c1"].group, 4),))
    assert np.all([g.parent is None for g in info.groups.values()])
