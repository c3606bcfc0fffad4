"""Prune-then-width choices (``PrecisionChoice(conditional=True)``) and the tflm cost's shared width gradient.

Where pruning a channel saves many more bytes than a narrower width (the
``tflm`` cost), the plain softmax gives every kept width's logit a gradient of
the same sign; these tests pin the mechanism that separates the two decisions.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfjpq
import tfjpq.search
import tfjpq.tflm_cost
from tfjpq.layers import PrecisionChoice, select

# per-channel bytes of each width (0, 2, 4, 8 bits) of a layer where pruning also drops bias, scale and inputs
COSTS = tf.constant([[0.0], [50.0], [52.0], [60.0]])


def _grad(alpha, zero):
    alpha = tf.Variable(alpha)
    with tf.GradientTape() as tape:
        theta = select(alpha, 1.0, "soft", True, zero=zero)
        loss = tf.reduce_sum(theta * COSTS)
    return theta, tape.gradient(loss, alpha).numpy()


def test_conditional_select_has_softmax_values_and_ranks_kept_widths_among_themselves():
    alpha = np.tile(np.array([[0.0], [0.25], [0.5], [1.0]], np.float32), (1, 3))   # wrap's initial logits
    plain_theta, plain = _grad(alpha, None)
    cond_theta, cond = _grad(alpha, 0)
    np.testing.assert_allclose(cond_theta.numpy(), tf.nn.softmax(alpha, axis=0).numpy(), atol=1e-6)
    np.testing.assert_allclose(plain_theta.numpy(), cond_theta.numpy(), atol=1e-6)
    np.testing.assert_allclose(cond[0], plain[0], rtol=1e-5)   # the prune logit's gradient is unchanged
    # plain softmax: every kept width costs more than the mean (pruning is cheap), so all their logits fall
    assert (plain[1:] > 0).all()
    # conditional: the kept widths compete among themselves, the narrowest is pushed up, the widest down
    assert (cond[1] < 0).all() and (cond[3] > 0).all()
    np.testing.assert_allclose(cond[1:].sum(axis=0), 0.0, atol=1e-5)   # no net pull on the kept widths


def test_wrap_makes_choices_conditional_for_the_tflm_cost_only(trained_small_cnn, monkeypatch):
    tflm = tfjpq.wrap(trained_small_cnn, cost="tflm")
    size = tfjpq.wrap(trained_small_cnn, cost="size")
    assert [c.conditional for c in tflm.precision_choices()] == [c.prunable for c in tflm.precision_choices()]
    assert not any(c.conditional for c in size.precision_choices())
    monkeypatch.setattr(tfjpq.search, "PRUNE_THEN_WIDTH", True)
    assert any(c.conditional for c in tfjpq.wrap(trained_small_cnn, cost="size").precision_choices())
    # a conditional choice survives a config round trip
    choice = next(c for c in tflm.precision_choices() if c.conditional)
    assert PrecisionChoice.from_config(choice.get_config()).conditional
    # without 0 bits, or with one width left, there is nothing to separate
    assert not PrecisionChoice(4, bits=(2, 4, 8), conditional=True).conditional
    assert not PrecisionChoice(4, bits=(0, 8), conditional=True).conditional


def test_training_steps_leave_the_kept_widths_level_so_only_the_zero_logit_prunes(trained_small_cnn, digits):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, cost="tflm", target=7_000)
    search.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    choices = [c for c in search.precision_choices() if c.conditional]
    before = [c.kept_level().numpy() for c in choices]
    alphas = [c.alpha.numpy() for c in choices]
    search.fit(x[:640], y[:640], epochs=1, batch_size=64, verbose=0)
    for c, level, alpha in zip(choices, before, alphas):
        np.testing.assert_allclose(c.kept_level().numpy(), level, atol=1e-4)
        assert not np.allclose(c.alpha.numpy(), alpha)   # the logits did train
    # the widths moved: some channel's kept-width logits changed order or spread
    spread = [np.ptp(c.alpha.numpy()[1:], axis=0) for c in choices]
    assert any(not np.allclose(s, np.ptp(a[1:], axis=0)) for s, a in zip(spread, alphas))


def test_tflm_one_tensor_term_gives_each_channel_a_share_of_the_layer_moving_down(monkeypatch):
    """Near every channel on 8 bits, one channel's move to 4 bits saves ~nothing exactly, but has a gradient."""
    cost = tfjpq.tflm_cost.TFLMCost()
    # a soft layer mostly at 8 bits: stored as one 8-bit tensor (a split would pay for its operators)
    theta = tf.Variable(np.tile(np.array([[0.0], [0.0], [0.1], [0.9]], np.float32), (1, 16)))
    terms = tfjpq.cost.LayerTerms(name="c", kind="conv", taps=9, pixels=64, cin=16, cin_eff=tf.constant(16.0),
                                  theta=theta, weight_bits=(0, 2, 4, 8), act_bits=(8,), phi=tf.ones((1,)),
                                  regroup=True)
    values, grads = {}, {}
    for shared in (False, True):
        monkeypatch.setattr(tfjpq.tflm_cost, "SHARED_WIDTH_GRADIENT", shared)
        with tf.GradientTape() as tape:
            value = cost.layer_cost(terms)
        values[shared], grads[shared] = float(value), tape.gradient(value, theta).numpy()
    assert values[True] == pytest.approx(values[False])      # the cost itself is exact either way
    # d cost / d theta[4 bits, c] - d cost / d theta[8 bits, c]: what moving channel c from 8 to 4 bits is worth
    exact = grads[False][2] - grads[False][3]
    shared = grads[True][2] - grads[True][3]
    np.testing.assert_allclose(exact, 0.0, atol=1e-3)
    per_channel = 9 * 16 / 2                                   # half of a channel's 8-bit bytes, stored as INT4
    np.testing.assert_allclose(shared, -per_channel, rtol=0.05)
