"""Cost models: exact values on hard choices, gradients through channel counts, custom models."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfjpq
from tfjpq import cost as cost_lib


def _two_conv():
    inp = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = layers.ReLU(name="r1")(x)
    x = layers.Conv2D(3, 3, name="c2")(x)  # valid: 4x4 output
    out = layers.Dense(5, name="d")(layers.Flatten(name="f")(x))
    return keras.Model(inp, out)


def _set(search, name, bits_per_channel):
    choice = search.get_layer(name)
    alpha = np.full(choice.alpha.shape, -20.0, np.float32)
    for c, b in enumerate(bits_per_channel):
        alpha[choice.bits.index(b), c] = 20.0
    choice.alpha.assign(alpha)


def test_size_cost_counts_bits_and_pruned_inputs_exactly():
    search = tfjpq.wrap(_two_conv(), cost="size", mode="hard")
    _set(search, "c1_wbits", [0, 2, 4, 8])
    _set(search, "c2_wbits", [8, 8, 0])
    _set(search, "d_wbits", [8, 8, 8, 8, 8])
    # c1: 9 taps x 2 inputs x (0+2+4+8) bits; c2: 9 taps x 3 live inputs x 16 bits; d: 16 pos x 2 live ch x 5 x 8
    expected_bits = 9 * 2 * 14 + 9 * 3 * 16 + 16 * 2 * 5 * 8
    assert float(search.cost()) == pytest.approx(expected_bits / 8, rel=1e-5)
    prof = tfjpq.profile(search)
    assert prof.totals["weight_bytes"] == pytest.approx(expected_bits / 8)
    assert prof.totals["macs"] == 36 * 9 * 2 * 3 + 16 * 9 * 3 * 2 + 32 * 5


def test_bitops_and_mpic_follow_their_formulas():
    search = tfjpq.wrap(_two_conv(), cost="bitops", act_bits=(4, 8), mode="hard")
    _set(search, "c1_wbits", [8, 8, 8, 8])
    _set(search, "c2_wbits", [2, 2, 2])
    _set(search, "d_wbits", [8] * 5)
    for aq in search.activation_choices():
        aq.beta.assign(np.array([5.0, -5.0], np.float32))  # 4-bit activations
    c1 = 36 * 9 * 2 * 4 * 8 * 8  # raw input counts as 8-bit
    c2 = 16 * 9 * 4 * 3 * 2 * 4
    d = 1 * 48 * 5 * 8 * 4
    assert float(search.cost()) == pytest.approx(c1 + c2 + d, rel=1e-5)
    search.cost_model = cost_lib.get("mpic")
    t = cost_lib.MPIC_MACS_PER_CYCLE
    cycles = 36 * 9 * 2 * 4 / t[8][8] + 16 * 9 * 4 * 3 / t[4][2] + 48 * 5 / t[4][8]
    assert float(search.cost()) == pytest.approx(cycles, rel=1e-5)


def test_cost_is_differentiable_in_own_and_producer_logits():
    search = tfjpq.wrap(_two_conv(), cost="size")
    c1 = search.get_layer("c1_wbits").alpha
    c2 = search.get_layer("c2_wbits").alpha
    with tf.GradientTape() as tape:
        total = search.cost(training=True)
    g1, g2 = tape.gradient(total, [c1, c2])
    assert np.abs(g2.numpy()).sum() > 0
    # c1's pruning logit lowers c2's input channel count: raising it must lower the cost
    assert np.all(g1.numpy()[0] < 0)


def test_custom_cost_model_plugs_in():
    class MACCount(cost_lib.CostModel):
        unit = "MACs"

        def layer_cost(self, t):
            return t.macs()

    search = tfjpq.wrap(_two_conv(), cost=MACCount(), mode="hard")
    for name in ("c1_wbits", "c2_wbits"):
        _set(search, name, [8] * search.get_layer(name).channels)
    _set(search, "d_wbits", [8] * 5)
    assert float(search.cost()) == pytest.approx(36 * 9 * 2 * 4 + 16 * 9 * 4 * 3 + 48 * 5)
    assert search.cost_model.unit == "MACs"


def test_cost_registry_names_builtin_tflm_and_user_costs():
    from tfjpq.tflm_cost import TFLMCost

    assert {"size", "bitops", "mpic", "tflm"} <= set(cost_lib.registered())
    assert isinstance(cost_lib.get("tflm"), TFLMCost)
    assert cost_lib.get("tflm:nucleo-f746zg").board.name == "nucleo-f746zg"
    with pytest.raises(ValueError, match="unknown cost 'energy'.*'tflm'"):
        cost_lib.get("energy")

    @cost_lib.register("test_macs")
    class MACCount(cost_lib.CostModel):
        name = "test_macs"
        unit = "MACs"

        def layer_cost(self, t):
            return t.macs()

    search = tfjpq.wrap(_two_conv(), cost="test_macs")
    assert isinstance(search.cost_model, MACCount)


def test_byte_costs_price_one_kernel():
    assert cost_lib.get("size").kernel_bytes("conv", (3, 3, 16, 32), 3) == 1728
    assert cost_lib.get("tflm").kernel_bytes("Conv2D", (3, 3, 16, 32), 4) == 4608 // 2
    with pytest.raises(NotImplementedError, match="bitops"):
        cost_lib.get("bitops").kernel_bytes("conv", (3, 3, 16, 32), 4)
