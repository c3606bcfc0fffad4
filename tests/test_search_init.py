"""tfjpq.search_init: the search's logits start tilted by weight magnitude, and (with a target) at the budget."""

import numpy as np
import pytest

import tfjpq
from tfjpq import search_init, zoo
from tfjpq.export import folded_kernel_and_bias


def _folded_l1(layer):
    w, _ = folded_kernel_and_bias(layer)
    k = np.abs(np.moveaxis(w, layer.channel_axis, -1))
    return k.reshape(-1, k.shape[-1]).mean(0)


def test_channel_magnitudes_rank_like_the_folded_kernels(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, init="flat")
    scores = search_init.channel_magnitudes(search)
    conv1 = search.get_layer("conv1")
    l1 = _folded_l1(conv1)
    np.testing.assert_array_equal(np.argsort(scores[conv1.group]), np.argsort(l1))
    np.testing.assert_allclose(scores[conv1.group].mean(), 1.0, rtol=1e-5)  # normalised per member layer
    # BatchNorm's scale counts: the raw kernel alone ranks differently on a trained model
    raw = np.abs(conv1.kernel.numpy()).reshape(-1, 16).mean(0)
    assert not np.array_equal(np.argsort(raw), np.argsort(l1))


@pytest.mark.filterwarnings("ignore:tfjpq.wrap. the BatchNormalization")
def test_shared_groups_sum_their_members():
    search = tfjpq.wrap(zoo.resnet8((16, 16, 1)), init="flat")
    scores = search_init.channel_magnitudes(search)
    a, b = search.get_layer("block2_conv2"), search.get_layer("block2_short")
    assert a.group == b.group
    want = _folded_l1(a) / _folded_l1(a).mean() + _folded_l1(b) / _folded_l1(b).mean()
    np.testing.assert_allclose(scores[a.group], want, rtol=1e-5)


def test_tilt_follows_the_ranking_and_keeps_every_argmax_at_the_widest_width(trained_small_cnn):
    flat = tfjpq.wrap(trained_small_cnn, init="flat")
    search = tfjpq.wrap(trained_small_cnn, init="magnitude")
    scores = search_init.channel_magnitudes(search)
    for choice in search.precision_choices():
        if not choice.prunable:
            continue
        delta = choice.alpha.numpy() - flat.get_layer(choice.name).alpha.numpy()
        order = np.argsort(scores[choice.name], kind="stable")
        weakest, strongest = order[0], order[-1]
        zero, top = choice.bits.index(0), choice.bits.index(max(choice.bits))
        # the weakest channel leans towards pruning, the strongest towards 8 bits, monotonically in the rank
        assert delta[zero, weakest] > 0 > delta[zero, strongest]
        assert np.all(np.diff(delta[zero, order]) <= 1e-7)
        assert np.all(np.diff(delta[top, order]) >= -1e-7)
        alpha = choice.alpha.numpy()
        assert np.ptp(alpha[:, weakest]) < 0.1 * np.ptp(alpha[:, strongest])  # nearly indifferent
        assert np.all(np.argmax(alpha, axis=0) == top)  # nothing pruned or lowered before the search
    # without a target "budget" is "magnitude"
    default = tfjpq.wrap(trained_small_cnn, init="budget")
    for c in default.precision_choices():
        np.testing.assert_allclose(c.alpha.numpy(), search.get_layer(c.name).alpha.numpy(), atol=1e-6)


def test_budget_start_meets_the_target_before_any_training_and_prunes_the_weakest_first(trained_small_cnn):
    w8 = float(tfjpq.wrap(trained_small_cnn, weight_bits=(8,), strength=0.0).hard_cost())
    flat = tfjpq.wrap(trained_small_cnn, weight_bits=(0, 8), target=0.6 * w8, init="flat")
    assert float(flat.hard_cost()) > 0.9 * w8  # the paper's start: everything at 8 bits
    search = tfjpq.wrap(trained_small_cnn, weight_bits=(0, 8), target=0.6 * w8, init="budget")
    assert abs(float(search.hard_cost()) / (0.6 * w8) - 1) <= 0.03
    assert search.initial_projection["moves"] > 0
    scores = search_init.channel_magnitudes(search)
    pruned_any = False
    for choice in search.precision_choices():
        if not choice.prunable:
            continue
        kept = choice.selected_index() != choice.bits.index(0)
        if kept.all():
            continue
        pruned_any = True
        assert scores[choice.name][~kept].max() <= scores[choice.name][kept].min()
        # the moved channels lead by START_MARGIN, not by freeze's large margin
        alpha = choice.alpha.numpy()
        lead = alpha[0, ~kept] - alpha[1, ~kept]
        np.testing.assert_allclose(lead, search_init.START_MARGIN, atol=1e-5)
    assert pruned_any


def test_budget_start_with_mixed_widths_steps_weak_channels_down_in_every_layer(trained_small_cnn):
    w8 = float(tfjpq.wrap(trained_small_cnn, weight_bits=(8,), strength=0.0).hard_cost())
    search = tfjpq.wrap(trained_small_cnn, target=0.3 * w8, init="budget")  # (0, 2, 4, 8)
    assert abs(float(search.hard_cost()) / (0.3 * w8) - 1) <= 0.03
    for choice in search.precision_choices():
        bits = choice.selected_bits()
        assert (bits < 8).any(), choice.name  # every layer gave something, not the alphabetically first ones
    frozen = tfjpq.freeze(search)  # nothing left to project
    assert frozen.projection["moves"] == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_scale_is_a_clear_error(trained_small_cnn, bad):
    search = tfjpq.wrap(trained_small_cnn, init="flat")
    with pytest.raises(ValueError, match="scale"):
        search_init.magnitude_init(search, bad)


def test_default_is_the_papers_flat_start(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, target=3000)
    for c in search.precision_choices():
        a = c.alpha.numpy()
        np.testing.assert_allclose(a, np.repeat((np.array(c.bits) / max(c.bits))[:, None], c.channels, 1))
    assert search.initial_projection is None


def test_bad_init_is_a_clear_error(trained_small_cnn):
    with pytest.raises(ValueError, match="init must be one of"):
        tfjpq.wrap(trained_small_cnn, init="l2")
    with pytest.raises(ValueError, match="needs a search with a target"):
        search_init.start_at_target(tfjpq.wrap(trained_small_cnn))
