"""freeze / export: equivalence, pruning for real, grids, BN folding, save/load round trips."""

import os

import keras
import numpy as np
import pytest
from keras import layers

import tfjpq
from tfjpq import quantizers, zoo
from tfjpq.summary import detect_channel_bits

from conftest import random_choices


def _concat_model():
    inp = keras.Input((8, 8, 1))
    a = layers.Conv2D(6, 3, padding="same", use_bias=False, name="a")(inp)
    a = layers.BatchNormalization(name="a_bn")(a)
    a = layers.ReLU(name="a_relu")(a)
    b = layers.Conv2D(5, 1, activation="relu", name="b")(inp)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.ZeroPadding2D(1, name="pad")(x)
    x = layers.Conv2D(8, 3, activation="relu6", name="c")(x)
    x = layers.AveragePooling2D(2, name="avg")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(12, activation="relu", name="hidden")(x)
    out = layers.Dense(10, name="out")(x)
    return keras.Model(inp, out, name="concat_net")


def _reshape_model():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(6, 3, strides=2, padding="same", name="a")(inp)
    x = layers.BatchNormalization(name="a_bn")(x)
    x = layers.Activation("relu6", name="a_relu6")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.LeakyReLU(0.1, name="leaky")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Reshape((-1,), name="reshape")(x)
    x = layers.Dense(7, name="hidden")(x)
    x = layers.BatchNormalization(name="hidden_bn")(x)
    x = layers.ReLU(name="hidden_relu")(x)
    out = layers.Dense(10, name="out")(x)
    return keras.Model(inp, out, name="reshape_net")


BUILDERS = {
    "small_cnn": lambda: zoo.small_cnn(),
    "resnet8": lambda: zoo.resnet8((8, 8, 1)),
    "ds_cnn": lambda: zoo.ds_cnn((8, 8, 1)),
    "concat_net": _concat_model,
    "reshape_net": _reshape_model,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_export_equals_frozen_with_mixed_precisions_and_pruning(name, digits):
    (x, y), (xt, _) = digits
    model = BUILDERS[name]()
    zoo.train(model, x[:512], y[:512], epochs=1)  # non-trivial BN statistics
    search = tfjpq.wrap(model, act_bits=(4, 8))
    random_choices(search, seed=1)
    frozen = tfjpq.freeze(search)
    deploy = tfjpq.export(frozen)
    a = frozen.predict(xt, verbose=0)
    b = deploy.predict(xt, verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(a).max()))
    # no search machinery and no BatchNorm folded into a conv is left
    kinds = {type(layer).__name__ for layer in deploy.layers}
    assert not kinds & {"PrecisionChoice", "ActivationChoice", "SearchConv2D", "SearchDense"}
    assert "BatchNormalization" not in kinds
    # the exported parameters are exactly the kept ones
    assert tfjpq.profile(deploy).totals["params"] == tfjpq.profile(frozen).totals["params"]
    # the recorded bit-widths are those of the frozen choices, and the weights lie on them
    assert set(deploy.channel_bits) <= {layer.name for layer in deploy.layers}
    for layer_name, bits in deploy.channel_bits.items():
        kernel = deploy.get_layer(layer_name).get_weights()[0]
        axis = tfjpq.graph.kernel_channel_axis(deploy.get_layer(layer_name))
        assert np.all(detect_channel_bits(kernel, axis) <= np.array(bits))
    assert tfjpq.profile(deploy).totals["bits_histogram"] == {
        b: n for b, n in tfjpq.profile(frozen).totals["bits_histogram"].items() if b != 0}


def test_pruned_channels_are_removed_and_groups_are_on_their_grids(trained_small_cnn, digits):
    search = tfjpq.wrap(trained_small_cnn, weight_bits=(0, 2, 4, 8))
    choice = search.get_layer("conv2_wbits")
    alpha = np.zeros((4, 32), np.float32)
    want = np.array([0] * 8 + [2] * 6 + [4] * 10 + [8] * 8)
    np.random.default_rng(0).shuffle(want)
    alpha[[0, 2, 4, 8].index(0)] = 0
    for c, b in enumerate(want):
        alpha[(0, 2, 4, 8).index(b), c] = 5.0
    choice.alpha.assign(alpha)
    deploy = tfjpq.export(tfjpq.freeze(search))
    for bits, count in ((2, 6), (4, 10), (8, 8)):
        layer = deploy.get_layer(f"conv2__w{bits}")
        kernel = layer.get_weights()[0]
        assert kernel.shape == (3, 3, 16, count)
        assert np.all(quantizers.distinct_levels_per_channel(kernel) <= 2 ** bits - 1)
        assert np.all(detect_channel_bits(kernel) <= bits)
    # the Dense after Flatten lost the rows of the 8 pruned channels at each of the 16 positions
    assert deploy.get_layer("logits").get_weights()[0].shape == (16 * 24, 10)
    assert deploy.get_layer("conv2__concat").output.shape[-1] == 24


def test_whole_group_pruned_keeps_one_channel(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn)
    alpha = np.zeros((4, 16), np.float32)
    alpha[0] = 3.0  # prune everything
    alpha[2, 5] = 2.0
    search.get_layer("conv1_wbits").alpha.assign(alpha)
    frozen = tfjpq.freeze(search)
    sel = frozen.get_layer("conv1_wbits").selected_bits()
    assert (sel != 0).sum() == 1 and sel[5] == 4


@pytest.mark.parametrize("stage", ["search", "frozen", "deploy"])
def test_save_and_load_round_trip(stage, trained_small_cnn, digits, tmp_path):
    _, (xt, _) = digits
    search = tfjpq.wrap(trained_small_cnn, cost="bitops", strength=0.3, act_bits=(4, 8))
    random_choices(search, seed=2)
    model = {"search": lambda: search, "frozen": lambda: tfjpq.freeze(search),
             "deploy": lambda: tfjpq.export(tfjpq.freeze(search))}[stage]()
    path = os.path.join(tmp_path, f"{stage}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(xt[:100], verbose=0), model.predict(xt[:100], verbose=0))
    assert type(loaded) is type(model)
    if stage != "deploy":
        assert loaded.strength == pytest.approx(0.3)
        assert loaded.cost_model.name == "bitops"
        assert float(loaded.cost()) == pytest.approx(float(model.cost()), rel=1e-6)
        # a loaded search model keeps its precision choices
        np.testing.assert_array_equal(loaded.get_layer("conv2_wbits").alpha.numpy(),
                                      model.get_layer("conv2_wbits").alpha.numpy())


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_export_keeps_the_weight_quantizer_of_the_search(method, trained_small_cnn, digits):
    _, (xt, _) = digits
    search = tfjpq.wrap(trained_small_cnn, weight_bits=(0, 2, 4, 8), weight_quantizer=method)
    assert {layer.weight_quantizer for layer in search.search_layers()} == {method}
    random_choices(search, seed=3)
    frozen = tfjpq.freeze(search)
    deploy = tfjpq.export(frozen)
    a, b = frozen.predict(xt, verbose=0), deploy.predict(xt, verbose=0)
    # equal up to float rounding, which can flip an 8-bit activation's rounding here and there (one step)
    assert np.mean(np.isclose(a, b, atol=1e-4 * max(1.0, np.abs(a).max()))) > 0.98
    np.testing.assert_allclose(a, b, atol=0.02 * max(1.0, np.abs(a).max()))
    # the 2-bit channels: min-max keeps each channel's extreme, so most of it rounds to zero; MSE clips instead
    conv = frozen.get_layer("conv2")
    sel = frozen.get_layer("conv2_wbits").selected_bits()
    k = np.moveaxis(conv.kernel.numpy(), -1, 0)[sel == 2]
    two = np.moveaxis(deploy.get_layer("conv2__w2").get_weights()[0], -1, 0)
    zeros = (two == 0).reshape(len(two), -1).mean()
    assert (zeros > 0.6) if method == "minmax" else (zeros < 0.6)
    assert len(k) == len(two)


def test_bad_weight_quantizer_is_a_clear_error(trained_small_cnn):
    with pytest.raises(ValueError, match="weight quantizer 'max'"):
        tfjpq.wrap(trained_small_cnn, weight_quantizer="max")
