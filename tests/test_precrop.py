"""PreCropping: scores, densities, the density-to-channels rule, the rebuild, the mask baseline.

Real data: scikit-learn's 8x8 digits. Real models: the zoo's small_cnn, resnet8, ds_cnn.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

from tfjpq import precrop, zoo  # noqa: E402

SHAPE = (8, 8, 1)
MODELS = {
    "small_cnn": lambda: zoo.small_cnn(input_shape=SHAPE),
    "resnet8": lambda: zoo.resnet8(input_shape=SHAPE),
    "ds_cnn": lambda: zoo.ds_cnn(input_shape=SHAPE),
}


def _kernel_count(model):
    return sum(int(np.prod(l.kernel.shape)) for l in precrop.scored_layers(model))


def _eval_acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


@pytest.fixture(scope="module")
def batch(digits):
    (x, y), _ = digits
    return x[:256], y[:256]


# --------------------------------------------------------------------------- scores and masks


@pytest.mark.parametrize("method", precrop.METHODS)
def test_scores_have_kernel_shapes_and_leave_model_unchanged(method, batch):
    model = MODELS["resnet8"]()
    before = [v.numpy().copy() for v in model.variables]
    s = precrop.scores(model, method, data=batch)
    assert list(s) == [l.name for l in precrop.scored_layers(model)]
    for layer in precrop.scored_layers(model):
        assert s[layer.name].shape == tuple(layer.kernel.shape)
        assert np.all(np.isfinite(s[layer.name]))
    if method != "grasp":  # SNIP and SynFlow are magnitudes
        assert all(np.all(v >= 0) for v in s.values())
    for v, b in zip(model.variables, before):  # BN moving stats included
        np.testing.assert_array_equal(v.numpy(), b)


def test_snip_is_weight_times_gradient(batch):
    import tensorflow as tf

    model = MODELS["small_cnn"]()
    x, y = batch
    s = precrop.scores(model, "snip", data=(x[:64], y[:64]), batch_size=64)
    kernel = model.get_layer("conv2").kernel
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:64], model(x[:64], training=True))
    g = tape.gradient(loss, kernel).numpy()
    np.testing.assert_allclose(s["conv2"], np.abs(kernel.numpy() * g), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method", precrop.METHODS)
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_masks_keep_exact_global_density(method, density, batch):
    model = MODELS["ds_cnn"]()
    m = precrop.masks(model, method, density, data=batch, iterations=10 if method == "synflow" else None)
    kept = sum(int(v.sum()) for v in m.values())
    total = sum(v.size for v in m.values())
    assert abs(kept - round(density * total)) <= 1
    dens = precrop.densities_from_masks(m)
    sizes = {l.name: int(np.prod(l.kernel.shape)) for l in precrop.scored_layers(model)}
    assert sum(dens[n] * sizes[n] for n in dens) / total == pytest.approx(density, abs=1e-3)


def test_synflow_is_data_free_and_iterative_differs_from_one_shot():
    model = MODELS["resnet8"]()
    one = precrop.masks(model, "synflow", 0.05, iterations=1)
    many = precrop.masks(model, "synflow", 0.05, iterations=20)
    d1, d20 = precrop.densities_from_masks(one), precrop.densities_from_masks(many)
    assert d1 != d20
    # Iterative SynFlow avoids layer collapse: every layer keeps something.
    assert min(d20.values()) > 0


def test_synflow_scores_the_logits_of_a_softmax_model():
    inp = keras.Input(SHAPE)
    x = layers.Flatten()(layers.Conv2D(8, 3, name="c")(inp))
    model = keras.Model(inp, layers.Dense(10, activation="softmax", name="out")(x))
    s = precrop.scores(model, "synflow")
    assert all(v.max() > 0 for v in s.values())  # with the softmax the sum is constant: all zero
    assert model.get_layer("out").activation is keras.activations.softmax
    with_layer = keras.Model(inp, layers.Softmax(name="sm")(layers.Dense(10)(x)))
    with pytest.raises(ValueError, match="'sm' \\(Softmax\\)"):
        precrop.scores(with_layer, "synflow")


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_methods_need_data(method):
    model = MODELS["small_cnn"]()
    with pytest.raises(ValueError, match=f"method='{method}' needs labelled data"):
        precrop.densities(model, method, 0.2)
    with pytest.raises(ValueError, match="needs labelled data"):
        precrop.scores(model, method)


def test_bad_arguments():
    model = MODELS["small_cnn"]()
    with pytest.raises(ValueError, match="unknown method"):
        precrop.densities(model, "magnitude", 0.2)
    for d in (0, 1.5, -0.1, "0.2"):
        with pytest.raises(ValueError, match="density must be"):
            precrop.densities(model, "synflow", d)
    with pytest.raises(ValueError, match="iterations"):
        precrop.masks(model, "synflow", 0.2, iterations=0)


def test_densities_read_off_the_global_top(batch):
    model = MODELS["resnet8"]()
    dens = precrop.densities(model, "snip", 0.2, data=batch)
    assert list(dens) == [l.name for l in precrop.scored_layers(model)]
    sizes = {l.name: int(np.prod(l.kernel.shape)) for l in precrop.scored_layers(model)}
    assert sum(dens[n] * sizes[n] for n in dens) / sum(sizes.values()) == pytest.approx(0.2, abs=1e-3)
    assert len(set(round(v, 3) for v in dens.values())) > 1  # not uniform: the method decides


# --------------------------------------------------------------------------- crop


@pytest.fixture(scope="module")
def synflow_densities():
    out = {}
    for name, make in MODELS.items():
        model = make()
        out[name] = {d: precrop.densities(model, "synflow", d, iterations=20) for d in (0.5, 0.2, 0.1)}
    return out


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("density", [0.5, 0.2, 0.1])
def test_cropped_parameter_counts_follow_the_density(name, density, synflow_densities):
    model = MODELS[name]()
    dens = synflow_densities[name][density]
    small = precrop.crop(model, dens)
    assert _kernel_count(small) / _kernel_count(model) == pytest.approx(density, rel=0.10)
    plan = precrop.crop_plan(model, dens)
    assert plan.params[1] == small.count_params()  # the plan's count is the built model's
    total = precrop.crop(model, dens, match="total")
    assert total.count_params() / model.count_params() == pytest.approx(density, rel=0.10)
    # Fresh, untrained weights of the same structure.
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    assert small.output_shape == model.output_shape


def test_target_params_hits_an_exact_budget(synflow_densities):
    model = MODELS["resnet8"]()
    for target in (9000, 20000):
        small = precrop.crop(model, synflow_densities["resnet8"][0.2], target_params=target)
        assert small.count_params() == pytest.approx(target, rel=0.02)
    with pytest.raises(ValueError, match="target_params"):
        precrop.crop(model, width_multipliers=0.5, target_params=1000)


def test_uniform_density_in_a_chain_gives_the_sqrt_rule():
    inp = keras.Input((8, 8, 3))
    x = inp
    for i in range(4):
        x = layers.Conv2D(32, 3, padding="same", name=f"c{i}")(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(10, name="out")(x))
    plan = precrop.crop_plan(model, 0.25, match=None)
    # Inner layers: out x sqrt(0.25), in x sqrt(0.25) -> each keeps about 1/4 of its weights.
    for name in ("c1", "c2", "c3"):
        assert abs(plan.widths[name][1] - 16) <= 2, plan.widths
    small = precrop.build(model, plan)
    for name in ("c1", "c2", "c3"):
        kept = np.prod(small.get_layer(name).kernel.shape) / np.prod(model.get_layer(name).kernel.shape)
        assert kept == pytest.approx(0.25, rel=0.2), name
    assert plan.widths["out"] == (10, 10)


def test_each_big_layer_follows_its_own_density(synflow_densities):
    model = MODELS["resnet8"]()
    dens = synflow_densities["resnet8"][0.2]
    small = precrop.crop(model, dens)
    sizes = {l.name: np.prod(l.kernel.shape) for l in precrop.scored_layers(model)}
    big = [n for n in sizes if sizes[n] >= 0.1 * max(sizes.values())]
    for name in big:
        kept = np.prod(small.get_layer(name).kernel.shape) / sizes[name]
        assert kept == pytest.approx(dens[name], rel=0.35, abs=0.03), (name, dens[name], kept)


def test_adds_join_widths_and_the_output_is_fixed(synflow_densities):
    model = MODELS["resnet8"]()
    plan = precrop.crop_plan(model, synflow_densities["resnet8"][0.1])
    assert sorted(plan.groups) == [["block1_conv2", "stem"], ["block2_conv2", "block2_short"],
                                   ["block3_conv2", "block3_short"]]
    for group in plan.groups:
        assert len({plan.widths[n][1] for n in group}) == 1
    assert plan.widths["logits"] == (10, 10) and plan.fixed == ["logits"]
    small = precrop.build(model, plan)
    for layer in small.layers:
        if isinstance(layer, layers.Add):
            shapes = {tuple(t.shape) for t in layer.input}
            assert len(shapes) == 1, layer.name
    assert small.get_layer("block3_conv1").filters < 64


def test_depthwise_follows_its_producer(synflow_densities):
    model = MODELS["ds_cnn"]()
    small = precrop.crop(model, synflow_densities["ds_cnn"][0.2])
    producers = {"dw0": "stem", "dw1": "pw0", "dw2": "pw1"}
    for dw, prod in producers.items():
        w = small.get_layer(prod).filters
        assert small.get_layer(dw).kernel.shape[2] == w
        assert small.get_layer(dw).output.shape[-1] == w
    assert small.get_layer("logits").units == 10
    assert small.get_layer("logits").kernel.shape[0] == small.get_layer("pw2").filters


def test_concatenate_and_flatten_dense():
    inp = keras.Input((6, 6, 2))
    a = layers.Conv2D(12, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(20, 1, name="b")(inp)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(x))
    small = precrop.crop(model, width_multipliers={"a": 0.5, "b": 0.25, "hidden": 0.5})
    assert small.get_layer("a").filters == 6 and small.get_layer("b").filters == 5
    assert small.get_layer("hidden").kernel.shape == (3 * 3 * 11, 8)  # flatten: 9 positions x (6 + 5)
    assert small.get_layer("bn").gamma.shape == (11,)
    assert small.get_layer("out").kernel.shape == (8, 3)
    plan = precrop.crop_plan(model, precrop.densities(model, "synflow", 0.3, iterations=5))
    assert plan.params[1] == precrop.build(model, plan).count_params()


def test_width_multipliers():
    model = MODELS["resnet8"]()
    small = precrop.crop(model, width_multipliers={"block3_conv1": 0.5, "block3_conv2": 0.25, "block3_short": 0.25})
    assert small.get_layer("block3_conv1").filters == 32
    assert small.get_layer("block3_conv2").filters == 16
    assert small.get_layer("logits").kernel.shape == (16, 10)
    assert small.get_layer("block2_conv1").filters == 32  # not named: unchanged
    half = precrop.crop(model, width_multipliers=0.5)
    assert half.get_layer("stem").filters == 8 and half.get_layer("logits").units == 10
    with pytest.raises(ValueError, match="joined .* must keep equal widths"):
        precrop.crop(model, width_multipliers={"block3_conv2": 0.5, "block3_short": 0.25})
    with pytest.raises(ValueError, match="feeds a model output"):
        precrop.crop(model, width_multipliers={"logits": 0.5})
    ds = MODELS["ds_cnn"]()
    with pytest.raises(ValueError, match="depthwise convolution"):
        precrop.crop(ds, width_multipliers={"dw0": 0.5})


def test_sequential_models_crop():
    model = keras.Sequential([
        keras.Input(SHAPE), layers.Conv2D(16, 3, name="c1"), layers.ReLU(),
        layers.Flatten(), layers.Dense(10, name="out"),
    ])
    small = precrop.crop(model, width_multipliers={"c1": 0.5})
    assert small.get_layer("c1").filters == 8
    assert small.get_layer("out").kernel.shape == (6 * 6 * 8, 10)


def test_crop_errors_name_the_layer():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, name="c1")(inp)
    x = layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(x))
    with pytest.raises(precrop.UnsupportedLayerError, match=r"'double' \(Lambda\)"):
        precrop.crop(model, 0.5)

    x = layers.Conv2D(4, 3, name="c1")(inp)
    x = layers.Reshape((6, 24), name="mix")(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(x))
    with pytest.raises(precrop.UnsupportedLayerError, match=r"'mix' \(Reshape\)"):
        precrop.crop(model, 0.5)

    inner = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, name="c")], name="inner")
    model = keras.Model(inp, layers.Dense(3, name="out")(layers.Flatten()(inner(inp))))
    with pytest.raises(precrop.UnsupportedLayerError, match=r"'inner' \(Sequential\).*nested"):
        precrop.crop(model, 0.5)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(3)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    with pytest.raises(precrop.UnsupportedLayerError, match="subclassed"):
        precrop.crop(sub, 0.5)

    small = MODELS["small_cnn"]()
    with pytest.raises(ValueError, match="not Conv/Dense/DepthwiseConv layers.*'bn1'"):
        precrop.crop(small, {"bn1": 0.5})
    with pytest.raises(ValueError, match="exactly one of"):
        precrop.crop(small)
    with pytest.raises(ValueError, match="density of 'conv1' must be"):
        precrop.crop(small, {"conv1": 2.0})


# --------------------------------------------------------------------------- training


def test_cropped_model_trains_on_digits(digits):
    (x, y), (xt, yt) = digits
    model = MODELS["small_cnn"]()
    small = precrop.crop(model, precrop.densities(model, "synflow", 0.2, iterations=20), seed=0)
    zoo.train(small, x, y, epochs=8, batch_size=32)
    assert _eval_acc(small, xt, yt) > 0.5  # chance is 0.1


def test_masks_stay_zero_after_training(digits):
    (x, y), (xt, yt) = digits
    model = MODELS["small_cnn"]()
    m = precrop.masks(model, "snip", 0.2, data=(x[:256], y[:256]))
    precrop.apply_masks(model, m)
    assert precrop.kept_fraction(model) == pytest.approx(0.2, abs=1e-3)
    zoo.train(model, x, y, epochs=4, batch_size=32)
    for layer in precrop.scored_layers(model):
        assert np.all(layer.kernel.numpy()[~m[layer.name]] == 0), layer.name
    assert precrop.kept_fraction(model) == pytest.approx(0.2, abs=1e-3)
    assert precrop.nonzero_params(model) < model.count_params()
    assert _eval_acc(model, xt, yt) > 0.3
    with pytest.raises(ValueError, match="shape"):
        precrop.apply_masks(model, {"conv1": np.ones((2, 2))})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "ds_cnn"])
def test_cropped_resnet_and_ds_cnn_train(name, digits, synflow_densities):
    (x, y), (xt, yt) = digits
    small = precrop.crop(MODELS[name](), synflow_densities[name][0.2], seed=0)
    zoo.train(small, x, y, epochs=6, batch_size=16)  # enough steps for BatchNorm's moving statistics
    assert _eval_acc(small, xt, yt) > 0.3
