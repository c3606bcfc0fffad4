"""tflm_export.packing: per-channel grids of the int8 weights, recorded or detected."""

import keras
import numpy as np
from keras import layers

from tflm_export import packing
from tflm_export.convert import keras_to_int8


def _dense_on_coarse_grid():
    """A Dense whose 4-bit-grid weights only use the 2-bit levels (-max, 0, max)."""
    inp = keras.Input((6,))
    model = keras.Model(inp, layers.Dense(3, name="d")(inp))
    w = np.random.default_rng(0).choice([-0.5, 0.0, 0.5], size=(6, 3)).astype(np.float32)
    w[0] = 0.5  # every channel reaches its max
    model.get_layer("d").set_weights([w, np.zeros(3, np.float32)])
    return model


def test_recorded_bits_replace_detection():
    model = _dense_on_coarse_grid()
    x = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    int8 = keras_to_int8(model, x)
    detected = packing.analyze(int8, ["d"])
    assert detected[0].layer == "d" and detected[0].channel_bits.tolist() == [2, 2, 2]
    assert packing.recorded_channel_bits(model) == {}
    model.channel_bits = {"d": (4, 4, 4)}
    recorded = packing.analyze(int8, ["d"], channel_bits=packing.recorded_channel_bits(model))
    assert recorded[0].channel_bits.tolist() == [4, 4, 4]
