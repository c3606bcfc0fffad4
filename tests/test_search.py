"""tfjpq.search.wrap: structure of the search model, shared choices, and every rejected input."""

import keras
import numpy as np
import pytest
from keras import layers

import tfjpq
from tfjpq import zoo
from tfjpq.errors import NotASearchModelError, UnsupportedModelError


def _choice_of(search, name):
    return search.get_layer(search.get_layer(name).group)


def test_wrap_keeps_weights_and_model_untouched(trained_small_cnn, digits):
    _, (xt, _) = digits
    before = [w.copy() for w in trained_small_cnn.get_weights()]
    search = tfjpq.wrap(trained_small_cnn, weight_bits=(0, 2, 4, 8))
    for choice in search.precision_choices():  # all channels at 8 bits
        a = np.zeros(choice.alpha.shape, np.float32)
        a[-1] = 10.0
        choice.alpha.assign(a)
    ref = trained_small_cnn.predict(xt, verbose=0)
    out = search.predict(xt, verbose=0)
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.97  # W8A8 of a trained model
    assert np.abs(out - ref).max() < 0.15 * np.abs(ref).max()
    for a, b in zip(before, trained_small_cnn.get_weights()):
        np.testing.assert_array_equal(a, b)  # the user's model is not modified
    # BN is absorbed into the search layer, kernels are copied
    conv1 = search.get_layer("conv1")
    assert conv1.bn is not None
    np.testing.assert_array_equal(conv1.kernel.numpy(), trained_small_cnn.get_layer("conv1").kernel.numpy())


def test_residual_adds_share_one_choice_and_outputs_never_prune():
    search = tfjpq.wrap(zoo.resnet8((16, 16, 1)))
    # identity shortcut: block1's second conv joins the stem's channels
    assert search.get_layer("block1_conv2").group == search.get_layer("stem").group
    # projection shortcut: both sides of the Add share
    assert search.get_layer("block2_conv2").group == search.get_layer("block2_short").group
    assert search.get_layer("block1_conv1").group != search.get_layer("stem").group
    assert 0 in _choice_of(search, "stem").bits
    assert 0 not in _choice_of(search, "logits").bits
    assert search.get_layer("logits_wbits").regroup is False


def test_depthwise_follows_its_producer():
    search = tfjpq.wrap(zoo.ds_cnn((16, 16, 1)))
    assert search.get_layer("dw0").group == search.get_layer("stem").group
    assert search.get_layer("dw1").group == search.get_layer("pw0").group


def test_activation_quantizers_know_their_sign():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    a = layers.ReLU(name="r")(x)
    b = layers.Conv2D(4, 3, padding="same", name="c2")(a)  # reads a ReLU output: unsigned
    c = layers.Conv2D(4, 1, name="c3")(b)  # reads a linear conv output: signed
    out = layers.Dense(3, name="d")(layers.Flatten()(c))
    search = tfjpq.wrap(keras.Model(inp, out), act_bits=(4, 8))
    assert search.get_layer("r_aq").signed is False
    assert search.get_layer("c2_aq").signed is True
    assert search.get_layer("c1").act_quantizer is None  # the raw input is quantized by the converter
    assert search.get_layer("c2").act_quantizer == "r_aq"


def test_sequential_models_are_accepted():
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.ReLU(), layers.Flatten(),
                              layers.Dense(10)])
    search = tfjpq.wrap(model)
    assert len(search.search_layers()) == 2


def test_standalone_bn_and_sigmoid_stop_pruning_upstream():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    x = layers.BatchNormalization(name="bn")(x)  # after a ReLU: not absorbable
    y = layers.Conv2D(4, 3, name="c2")(x)
    y = layers.Activation("sigmoid", name="sig")(y)
    out = layers.Dense(2, name="d")(layers.GlobalAveragePooling2D()(y))
    search = tfjpq.wrap(keras.Model(inp, out))
    assert 0 not in _choice_of(search, "c1").bits
    assert 0 not in _choice_of(search, "c2").bits
    # the user can see why
    assert "BatchNormalization bn" in _choice_of(search, "c1").note
    notes = {r["name"]: r.get("note", "") for r in tfjpq.profile(search).rows}
    assert "sig maps 0 to a non-zero value" in notes["c2"]
    assert "reaches a model output" in notes["d"]


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = layers.Dense(3)

    def call(self, x):
        return self.d(x)


def test_rejects_subclassed_model():
    m = _Subclassed()
    m(np.zeros((1, 4), np.float32))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        tfjpq.wrap(m)


def test_rejects_nested_model():
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(3)], name="inner")
    inp = keras.Input((4,))
    out = layers.Dense(2)(inner(inp))
    with pytest.raises(UnsupportedModelError, match="'inner'.*nested"):
        tfjpq.wrap(keras.Model(inp, out))


def test_rejects_unsupported_layer_by_name_and_class():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, name="c")(inp)
    x = layers.UpSampling2D(name="up")(x)
    out = layers.Dense(2)(layers.Flatten()(x))
    with pytest.raises(UnsupportedModelError, match=r"'up' \(UpSampling2D\)"):
        tfjpq.wrap(keras.Model(inp, out))


def test_rejects_multiply_and_depth_multiplier():
    inp = keras.Input((8, 8, 2))
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)
    with pytest.raises(UnsupportedModelError, match="'dw'.*depth_multiplier"):
        tfjpq.wrap(keras.Model(inp, layers.Dense(2)(layers.Flatten()(x))))
    a = layers.Conv2D(2, 1, name="a")(inp)
    m = layers.Multiply(name="mul")([a, inp])
    with pytest.raises(UnsupportedModelError, match=r"'mul' \(Multiply\)"):
        tfjpq.wrap(keras.Model(inp, layers.Dense(2)(layers.Flatten()(m))))


def test_rejects_sequential_without_input_shape():
    with pytest.raises(UnsupportedModelError, match="no input shape"):
        tfjpq.wrap(keras.Sequential([layers.Dense(3)]))


def test_rejects_tf_keras_model():
    import tf_keras

    m = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="tf_keras"):
        tfjpq.wrap(m)


def test_rejects_other_backend(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UnsupportedModelError, match="TensorFlow backend"):
        tfjpq.wrap(zoo.small_cnn())


def test_rejects_non_models_and_bad_arguments():
    with pytest.raises(UnsupportedModelError, match="keras.Model"):
        tfjpq.wrap("model.keras")
    model = zoo.small_cnn()
    with pytest.raises(ValueError, match="bit-width"):
        tfjpq.wrap(model, weight_bits=(0, 1, 8))
    with pytest.raises(ValueError, match="prune everything"):
        tfjpq.wrap(model, weight_bits=(0,))
    with pytest.raises(ValueError, match="unknown cost"):
        tfjpq.wrap(model, cost="energy")
    with pytest.raises(ValueError, match="mpic"):
        tfjpq.wrap(model, weight_bits=(0, 3, 8), cost="mpic")
    with pytest.raises(ValueError, match="strength"):
        tfjpq.wrap(model, strength=-1)
    with pytest.raises(NotASearchModelError, match="tfjpq.wrap"):
        tfjpq.freeze(model)
    with pytest.raises(NotASearchModelError, match="tfjpq.wrap"):
        tfjpq.export(model)


def test_the_initial_temperature_is_colder_with_the_tflm_cost_and_given_values_are_kept(trained_small_cnn):
    from tfjpq import search as search_lib

    def temperatures(search):
        return {float(c.temperature.numpy()) for c in search.precision_choices()}

    assert temperatures(tfjpq.wrap(trained_small_cnn, cost="tflm")) == {search_lib.COLD_TEMPERATURE}
    assert temperatures(tfjpq.wrap(trained_small_cnn, cost="size")) == {1.0}
    assert temperatures(tfjpq.wrap(trained_small_cnn, cost="tflm", temperature=1.0)) == {1.0}
    assert temperatures(tfjpq.wrap(trained_small_cnn, cost="size", temperature="auto")) == {1.0}
    # the flat start puts more of a channel's weight on its widest width when colder: 58 % against 41 %
    cold = tfjpq.wrap(trained_small_cnn, cost="tflm").precision_choices()[0].theta(False).numpy()
    warm = tfjpq.wrap(trained_small_cnn, cost="tflm", temperature=1.0).precision_choices()[0].theta(False).numpy()
    np.testing.assert_allclose(cold[-1], 0.579, atol=0.005)
    np.testing.assert_allclose(warm[-1], 0.409, atol=0.005)
    with pytest.raises(ValueError, match="temperature must be"):
        tfjpq.wrap(trained_small_cnn, temperature="cold")
