import numpy as np
import pytest
import tensorflow as tf

from tfjpq import quantizers


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_grid_has_at_most_2b_minus_1_levels_per_channel(bits):
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype("float32")
    q = quantizers.quantize_weights_np(w, bits)
    levels = quantizers.distinct_levels_per_channel(q)
    assert np.all(levels <= 2 ** bits - 1)
    # the extreme of every channel is kept exactly (min-max scale)
    np.testing.assert_allclose(np.abs(q).max(axis=(0, 1, 2)), np.abs(w).max(axis=(0, 1, 2)), rtol=1e-6)
    # rounding error is at most half a step
    step = np.abs(w).max(axis=(0, 1, 2)) / quantizers.weight_levels(bits)
    assert np.all(np.abs(q - w) <= step / 2 + 1e-6)


def test_zero_bits_prunes():
    w = np.ones((4, 3), np.float32)
    assert not quantizers.quantize_weights_np(w, 0).any()
    assert not quantizers.quantize_weights(tf.constant(w), 0).numpy().any()


def test_tf_and_numpy_agree_and_channel_axis_is_respected():
    w = np.random.default_rng(1).normal(size=(3, 3, 6, 1)).astype("float32")
    a = quantizers.quantize_weights(tf.constant(w), 4, channel_axis=2).numpy()
    b = quantizers.quantize_weights_np(w, 4, channel_axis=2)
    np.testing.assert_array_equal(a, b)
    assert np.all(quantizers.distinct_levels_per_channel(b, channel_axis=2) <= 15)


def test_straight_through_gradient_is_identity():
    w = tf.Variable(np.random.default_rng(2).normal(size=(5, 4)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizers.quantize_weights(w, 2) * 3.0)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), 3.0)


def test_pact_clip_gets_gradient_from_values_above_it():
    x = tf.constant([-1.0, 0.5, 2.0, 7.0, 9.0])
    clip = tf.Variable(6.0)
    with tf.GradientTape() as tape:
        y = quantizers.quantize_activations(x, clip, 8, signed=False)
        loss = tf.reduce_sum(y)
    assert tape.gradient(loss, clip).numpy() == pytest.approx(2.0)  # two values above the clip
    assert y.numpy()[0] == 0.0 and y.numpy()[-1] == pytest.approx(6.0, abs=0.03)


@pytest.mark.parametrize("bad", [1, 9, 2.5, "4", True])
def test_bad_bit_widths_are_rejected(bad):
    with pytest.raises(ValueError, match="bit-width"):
        quantizers.check_weight_bits(bad)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_rule_never_has_more_error_than_minmax_and_keeps_its_grid(bits):
    w = np.random.default_rng(3).standard_t(4, size=(3, 3, 8, 16)).astype("float32")  # heavy tails, as trained weights
    mse = quantizers.quantize_weights_np(w, bits, method="mse")
    minmax = quantizers.quantize_weights_np(w, bits)
    err = lambda q: ((q - w) ** 2).sum(axis=(0, 1, 2))  # noqa: E731
    assert np.all(err(mse) <= err(minmax) * (1 + 1e-6))
    assert np.all(quantizers.distinct_levels_per_channel(mse) <= 2 ** bits - 1)
    n = quantizers.weight_levels(bits)
    scale = quantizers.channel_scales_np(w, bits, method="mse")
    ratio = (scale * n / np.abs(w).max(axis=(0, 1, 2), keepdims=True)).ravel()
    assert np.all(np.min(np.abs(ratio[:, None] - np.array(quantizers.MSE_CLIP_RATIOS)[None]), axis=1) < 1e-5)
    # the top level is occupied (clipped weights sit on it), so TFLite's max/127 scale keeps the grid
    np.testing.assert_allclose(np.abs(mse).max(axis=(0, 1, 2)), n * scale.ravel(), rtol=1e-6)
    if bits == 2:  # min-max rounds most weights of a channel to zero at 2 bits; the MSE rule does not
        assert (mse == 0).mean() < 0.6 < (minmax == 0).mean()
        assert np.all(ratio < 1.0)


def test_mse_rule_in_tensorflow_equals_numpy_and_passes_the_gradient_straight_through():
    w = np.random.default_rng(4).normal(size=(3, 3, 6, 1)).astype("float32")
    a = quantizers.quantize_weights(tf.constant(w), 2, channel_axis=2, method="mse").numpy()
    np.testing.assert_array_equal(a, quantizers.quantize_weights_np(w, 2, channel_axis=2, method="mse"))
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizers.quantize_weights(v, 2, channel_axis=2, method="mse") * 3.0)
    inside = np.abs(w) <= quantizers.channel_scales_np(w, 2, channel_axis=2, method="mse")
    np.testing.assert_allclose(tape.gradient(loss, v).numpy(), np.where(inside, 3.0, 0.0))


def test_unknown_weight_quantizer_is_a_clear_error():
    with pytest.raises(ValueError, match="weight quantizer 'lsq'"):
        quantizers.quantize_weights_np(np.ones((2, 2), np.float32), 4, method="lsq")


def test_mse_gradient_stops_at_the_clip():
    w = np.random.default_rng(5).standard_t(3, size=(64, 4)).astype("float32")
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizers.quantize_weights(v, 2, method="mse"))
    grad = tape.gradient(loss, v).numpy()
    limit = quantizers.channel_scales_np(w, 2, method="mse")  # n = 1 at 2 bits
    np.testing.assert_array_equal(grad, (np.abs(w) <= limit).astype("float32"))
    assert (grad == 0).any()  # heavy tails: some weights are cut
