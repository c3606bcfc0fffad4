"""tfjpq.graph.check, the bad-models test: every entry point rejects the same bad models with one error class."""

import keras
import numpy as np
import pytest
from keras import layers

import tfjpq
from tfjpq import precrop, quantune, zeroq
from tfjpq.errors import TfjpqError, UnsupportedModelError


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_net")
        self.dense = layers.Dense(3)
        self.bn = layers.BatchNormalization()

    def call(self, x):
        return self.bn(self.dense(x))


def _subclassed():
    model = _Subclassed()
    model(np.zeros((1, 4), np.float32))
    return model


def _nested():
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(4), layers.BatchNormalization()], name="inner_block")
    inp = keras.Input((4,))
    return keras.Model(inp, layers.Dense(2)(inner(inp)))


def _lstm():
    inp = keras.Input((6, 4))
    x = layers.LSTM(8, name="recurrent")(inp)
    x = layers.BatchNormalization()(x)
    return keras.Model(inp, layers.Dense(2)(x))


def _shared():
    inp = keras.Input((4,))
    twice = layers.Dense(4, name="twice")
    x = layers.BatchNormalization()(twice(twice(inp)))
    return keras.Model(inp, layers.Dense(2)(x))


def _tf_keras():
    import tf_keras

    return tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)], name="legacy_net")


BAD_MODELS = {
    "subclassed": (_subclassed, r"'subclassed_net' \(_Subclassed\) is a subclassed model"),
    "nested": (_nested, r"'inner_block' \(Sequential\) is a nested model"),
    "lstm": (_lstm, r"'recurrent' \(LSTM\) is not supported"),
    "shared": (_shared, r"'twice' \(Dense\) is called more than once"),
    "tf_keras": (_tf_keras, r"'legacy_net' \(Sequential\) is a tf_keras"),
}

ENTRY_POINTS = {
    "wrap": lambda m: tfjpq.wrap(m),
    "precrop.densities": lambda m: precrop.densities(m, "synflow", 0.5, iterations=1),
    "precrop.crop": lambda m: precrop.crop(m, 0.5),
    "zeroq.distill": lambda m: zeroq.distill(m, num_samples=2, iterations=1, verbose=0),
    # and the other entry points that read a model's graph
    "precrop.scores": lambda m: precrop.scores(m, "synflow"),
    "zeroq.sensitivity": lambda m: zeroq.sensitivity(m, np.zeros((2, 4), np.float32)),
    "quantune.tune": lambda m: quantune.tune(m, np.zeros((2, 4), np.float32),
                                            (np.zeros((2, 4), np.float32), np.zeros(2, int)), trials=1),
    "quantune.model_features": lambda m: quantune.model_features(m),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", sorted(BAD_MODELS))
def test_every_entry_point_rejects_the_bad_model_alike(bad, entry):
    build, message = BAD_MODELS[bad]
    with pytest.raises(UnsupportedModelError, match=message) as info:
        ENTRY_POINTS[entry](build())
    assert type(info.value) is UnsupportedModelError
    assert isinstance(info.value, TfjpqError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", sorted(set(BAD_MODELS) - {"lstm"}))
def test_summary_rejects_the_same_graphs(bad):
    # summary reads any layer (exported models hold custom quantizer layers), so only the graph's shape counts
    build, message = BAD_MODELS[bad]
    with pytest.raises(UnsupportedModelError, match=message):
        tfjpq.profile(build())


def test_old_error_names_are_the_same_class():
    assert precrop.UnsupportedLayerError is UnsupportedModelError
    assert tfjpq.TfjpqError is TfjpqError
    assert issubclass(UnsupportedModelError, TypeError)  # zeroq's old check raised TypeError
