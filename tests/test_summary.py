"""tfjpq.summary: per-layer channels, bit-widths, bytes and MACs of plain, search and exported models."""

import keras
import numpy as np
import pytest
from keras import layers

import tfjpq
from tfjpq import quantizers, zoo
from tfjpq.errors import UnsupportedModelError
from tfjpq.summary import detect_channel_bits


def test_detect_channel_bits_finds_the_smallest_grid():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    for c, b in enumerate((2, 3, 4, 8)):
        w[..., c] = quantizers.quantize_weights_np(w[..., c:c + 1], b)[..., 0]
    w[..., 4] = 0.0
    assert detect_channel_bits(w).tolist() == [2, 3, 4, 8, 0]
    assert detect_channel_bits(np.moveaxis(w, -1, 2), channel_axis=2).tolist() == [2, 3, 4, 8, 0]


def test_profile_of_a_plain_model_counts_weights_and_macs():
    inp = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, name="c")(inp)  # 4x4 output
    model = keras.Model(inp, layers.Dense(3, name="d")(layers.Flatten()(x)))
    prof = tfjpq.profile(model)
    rows = {r["name"]: r for r in prof.rows}
    assert rows["c"]["params"] == 3 * 3 * 2 * 4 and rows["c"]["macs"] == 16 * 3 * 3 * 2 * 4
    assert rows["d"]["params"] == 64 * 3 and rows["d"]["bits_histogram"] == {8: 3}  # float weights: 8 bits
    assert prof.totals["weight_bytes"] == pytest.approx(72 + 192)
    assert prof.totals["size_ratio"] == pytest.approx(1.0)


def test_summary_of_search_and_exported_models_agree():
    search = tfjpq.wrap(zoo.small_cnn(), weight_bits=(0, 4, 8))
    for c in search.precision_choices():
        alpha = np.zeros(c.alpha.shape, np.float32)
        alpha[c.bits.index(4)] = 1.0
        c.alpha.assign(alpha)
    lines = []
    prof = tfjpq.summary(search, print_fn=lines.append)
    assert "conv1" in lines[1] and prof.totals["bits_histogram"] == {4: prof.totals["channels"]}
    deployed = tfjpq.export(search)
    plain = tfjpq.profile(deployed)
    assert plain.totals["weight_bytes"] == pytest.approx(prof.totals["weight_bytes"])
    assert plain.totals["macs"] == prof.totals["macs"]


def test_profile_rejects_a_subclassed_model():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(UnsupportedModelError, match="subclassed"):
        tfjpq.profile(Sub())


def test_summary_reads_the_bits_a_model_records():
    inp = keras.Input((4,))
    model = keras.Model(inp, layers.Dense(3, name="d")(inp))  # float weights: detected as 8 bits
    assert tfjpq.profile(model).rows[0]["bits_histogram"] == {8: 3}
    model.channel_bits = {"d": (2, 4, 4)}
    assert tfjpq.profile(model).rows[0]["bits_histogram"] == {2: 1, 4: 2}
