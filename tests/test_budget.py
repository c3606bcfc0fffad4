"""tfjpq.budget, budget mode: wrap(target=...) lands on the budget; hard cost, projection, errors, saved controller state."""

import os

import keras
import numpy as np
import pytest
from conftest import random_choices

import tfjpq
from tfjpq import budget
from tfjpq import cost as cost_lib

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _frozen_cost(search):
    return float(tfjpq.freeze(search, project=False).cost())


@pytest.mark.parametrize("cost", ["size", "bitops", "mpic", "tflm"])
def test_hard_cost_is_the_cost_of_what_freeze_keeps(cost, trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, cost=cost)
    assert float(search.hard_cost()) == pytest.approx(search.reference_cost, rel=1e-5)  # all at 8 bits
    random_choices(search, seed=3)
    hard = float(search.hard_cost())
    assert hard < search.reference_cost
    assert hard == pytest.approx(_frozen_cost(search), rel=1e-5)
    assert budget.minimum_cost(search) < hard


def test_hard_cost_counts_the_channels_freeze_rescues(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, min_channels=3)
    alpha = np.zeros((4, 16), np.float32)
    alpha[0] = 5.0  # prune every channel of conv1
    alpha[3, [2, 7, 9]] = (1.0, 3.0, 2.0)  # the three the floor brings back, at 8 bits
    choice = search.get_layer("conv1_wbits")
    choice.alpha.assign(alpha)
    assert sorted(np.nonzero(choice.selected_bits())[0]) == [2, 7, 9]
    np.testing.assert_array_equal(choice.hard_theta().numpy().argmax(0), choice.selected_index())
    frozen = tfjpq.freeze(search)
    assert (frozen.get_layer("conv1_wbits").selected_bits() == 8).sum() == 3
    assert float(search.hard_cost()) == pytest.approx(float(frozen.cost()), rel=1e-6)
    assert tfjpq.profile(frozen).totals["weight_bytes"] == pytest.approx(float(frozen.cost()))


def test_strength_is_normalised_by_the_all_8_bit_cost(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn)
    # conv1 9x1x16 + conv2 9x16x32 + dense 512x10 weights, one byte each
    assert search.reference_cost == pytest.approx(9 * 16 + 9 * 16 * 32 + 512 * 10)
    assert search.strength == pytest.approx(tfjpq.search.DEFAULT_STRENGTH)


@pytest.mark.parametrize("target", [0.3, 0.7])
def test_freeze_projects_onto_the_target_both_ways(target, trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, min_channels=2)
    random_choices(search, seed=1)
    goal = target * search.reference_cost
    search.target = goal
    before = float(search.hard_cost())
    frozen = tfjpq.freeze(search)
    after = float(frozen.hard_cost())
    assert abs(after / goal - 1) <= 0.03, (before, after, goal)
    assert frozen.projection["before"] == pytest.approx(before)
    assert frozen.projection["moves"] > 0
    assert all((c.selected_bits() != 0).sum() >= min(2, c.channels) for c in frozen.precision_choices())
    # the projected choices are the frozen model's argmax, and export agrees with them
    assert tfjpq.profile(frozen).totals["weight_bytes"] == pytest.approx(after)


def test_projection_can_order_moves_by_margin_per_byte(trained_small_cnn, monkeypatch):
    search = tfjpq.wrap(trained_small_cnn)
    for c in search.precision_choices():  # every channel at 8 bits, the same margin over 4 bits everywhere
        alpha = np.zeros(c.alpha.shape, np.float32)
        alpha[c.bits.index(8)] = 1.0
        c.alpha.assign(alpha)
    sel = {c.name: c.selected_index() for c in search.precision_choices()}
    monkeypatch.setattr(budget, "DIRECT_PRUNE", False)
    monkeypatch.setattr(budget, "MOVE_ORDER", "margin")
    first = budget._moves(search, sel, down=True, acts={})[0]
    monkeypatch.setattr(budget, "MOVE_ORDER", "margin_per_byte")
    moves = budget._moves(search, sel, down=True, acts={})
    saved, base = {}, budget.selection_cost(search, sel, {})
    for c in search.precision_choices():
        saved[c.name] = budget._move_bytes(search, sel, {}, c, down=True, base=base)[c.bits.index(8)]
    # equal margins: by margin the first group's channel leads; per byte, one of the group saving the most
    assert first[1] == search.precision_choices()[0].name
    assert moves[0][1] == max(saved, key=saved.get) and saved[moves[0][1]] > saved[first[1]]
    goal = 0.6 * search.reference_cost
    search.target = goal
    assert abs(float(tfjpq.freeze(search).hard_cost()) / goal - 1) <= 0.03


def test_projection_prunes_in_one_move_where_single_steps_save_little(trained_small_cnn, monkeypatch):
    # the default order: per byte, with prunes, where the cost prices layer splits; by margin elsewhere
    assert budget._order(tfjpq.wrap(trained_small_cnn, cost="size")) == (False, False)
    assert budget._order(tfjpq.wrap(trained_small_cnn, cost="tflm")) == (True, True)
    with monkeypatch.context() as m:
        m.setattr(budget, "MOVE_ORDER", "per_byte")
        with pytest.raises(ValueError, match="MOVE_ORDER must be one of"):
            budget._order(tfjpq.wrap(trained_small_cnn, cost="size"))
    # with the flatbuffer cost, one channel moved 8 -> 4 bits costs a layer split before it saves anything
    moves = {}
    for direct in (False, True):
        monkeypatch.setattr(budget, "DIRECT_PRUNE", direct)
        search = tfjpq.wrap(trained_small_cnn, cost="tflm")
        goal = 0.97 * float(search.hard_cost())
        sel = {c.name: c.selected_index() for c in search.precision_choices()}
        candidates = budget._moves(search, sel, down=True, acts={})
        channels = [(m[1], m[2]) for m in candidates]
        assert len(channels) == len(set(channels))  # one move per channel
        straight = [m for m in candidates  # 8 bits -> pruned in one move
                    if not isinstance(m[2], tuple) and sel[m[1]][m[2]] - m[3] > 1]
        assert bool(straight) == direct
        report = budget.project(search, goal)
        assert 0.97 * goal <= report["after"] <= goal
        moves[direct] = report["moves"]
    assert moves[True] < moves[False], moves


def test_projection_moves_a_split_layer_to_one_width_in_one_move(trained_small_cnn, monkeypatch):
    """Where the cost prices splits, the 8-bit half of a layer split 4 / 8 moves to 4 bits as one move."""
    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    sel = {c.name: c.selected_index() for c in search.precision_choices()}
    c = max((c for c in search.precision_choices() if c.prunable), key=lambda c: c.channels)
    four, eight = c.bits.index(4), c.bits.index(8)
    sel[c.name][: c.channels // 2] = four                    # a layer split into a 4-bit and an 8-bit part
    wide = tuple(int(ch) for ch in np.nonzero(sel[c.name] == eight)[0])
    candidates = budget._moves(search, sel, down=True, acts={})
    group = [m for m in candidates if m[1] == c.name and isinstance(m[2], tuple) and m[3] == four]
    assert [m[2] for m in group] == [wide]
    moved = budget._apply(sel, group)
    assert (moved[c.name] == four).all()
    # the one move saves the split's operators on top of the channels' bytes
    base = budget.selection_cost(search, sel, {})
    single = base - budget.selection_cost(search, budget._apply(sel, [(None, c.name, wide[0], four)]), {})
    saved = base - budget.selection_cost(search, moved, {})
    assert saved > len(wide) * single + 100, (saved, single)
    # and ranks before every single step of those channels
    steps = [i for i, m in enumerate(candidates) if m[1] == c.name and m[2] in wide and m[3] == four]
    assert candidates.index(group[0]) < min(steps)
    # a group move leaves a channel already narrower (here: pruned by an earlier move) where it is
    pruned = budget._apply(sel, [(None, c.name, wide[0], c.bits.index(0))] + group)
    assert pruned[c.name][wide[0]] == c.bits.index(0)
    # not where it would save more than the room left above the window
    assert not any(isinstance(m[2], tuple) and m[1] == c.name and m[3] == four
                   for m in budget._moves(search, sel, down=True, acts={}, room=saved - 1))
    monkeypatch.setattr(budget, "GROUP_MOVES", False)
    assert not any(isinstance(m[2], tuple) for m in budget._moves(search, sel, down=True, acts={}))
    # with the size cost (margin order) there are no group moves
    size = tfjpq.wrap(trained_small_cnn, cost="size")
    monkeypatch.setattr(budget, "GROUP_MOVES", True)
    sel = {c.name: c.selected_index() for c in size.precision_choices()}
    assert not any(isinstance(m[2], tuple) for m in budget._moves(size, sel, down=True, acts={}))


def test_projection_prices_only_the_layers_a_trial_changes_and_gets_the_same_costs(trained_small_cnn):
    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    random_choices(search, seed=4)
    rng = np.random.default_rng(0)
    start = {c.name: c.selected_index() for c in search.precision_choices()}
    trials = []
    for c in search.precision_choices():
        for _ in range(3):
            sel = {k: v.copy() for k, v in start.items()}
            sel[c.name][rng.integers(c.channels)] = rng.integers(len(c.bits))
            trials.append(sel)
    plain = [budget.selection_cost(search, s) for s in trials]
    priced, layer_cost = [], search.cost_model.layer_cost
    search.cost_model.layer_cost = lambda t: priced.append(t.name) or layer_cost(t)
    with search.cost_model.remembering_layers():
        remembered = [budget.selection_cost(search, s) for s in trials]
    del search.cost_model.layer_cost
    assert remembered == plain  # the same floats, bit for bit
    assert len(priced) < len(trials) * len(search.search_layers()) / 2
    assert "_remembered" not in vars(search.cost_model)  # forgotten on the way out


def test_target_errors_are_clear(trained_small_cnn):
    with pytest.raises(ValueError, match="positive"):
        tfjpq.wrap(trained_small_cnn, target=0)
    with pytest.raises(ValueError, match="positive"):
        tfjpq.wrap(trained_small_cnn, target=-5)
    low = budget.minimum_cost(tfjpq.wrap(trained_small_cnn))
    with pytest.raises(ValueError, match=f"minimum achievable cost {low:,.6g} bytes"):
        tfjpq.wrap(trained_small_cnn, target=low / 2)

    class NoUnit(cost_lib.CostModel):
        def layer_cost(self, t):
            return t.macs()

    with pytest.raises(ValueError, match="unit"):
        tfjpq.wrap(trained_small_cnn, cost=NoUnit(), target=1000)
    with pytest.raises(ValueError, match="min_channels"):
        tfjpq.wrap(trained_small_cnn, min_channels=0)
    search = tfjpq.wrap(trained_small_cnn, target=5000)
    search.compile(optimizer="adam", loss=LOSS)
    (x, y), _ = (np.zeros((8, 8, 8, 1), np.float32), np.zeros(8, np.int32)), None
    with pytest.raises(ValueError, match="StrengthWarmup"):
        search.fit(x, y, epochs=1, verbose=0, callbacks=[tfjpq.callbacks.StrengthWarmup()])


def test_target_mode_lands_within_tolerance_with_a_plain_compile(trained_small_cnn, digits, capsys):
    (x, y), (xt, yt) = digits
    search = tfjpq.wrap(trained_small_cnn, target=3500)  # bytes; the all-8-bit model has 9,872
    search.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])  # no arch_optimizer: Adam(0.02) on the logits
    hist = search.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[tfjpq.callbacks.SearchLogger()])
    out = capsys.readouterr().out
    assert "target 3500" in out and "hard cost" in out and "strength" in out
    h = hist.history
    assert h["target"] == [3500] * 4 and len(h["hard_cost"]) == 4
    # the controller itself brought the hard cost from 9,872 B to the budget's neighbourhood
    assert 0.5 * 3500 < h["hard_cost"][-1] < 1.3 * 3500
    assert h["strength"][0] > tfjpq.search.DEFAULT_STRENGTH  # it raised the multiplier while over budget
    tuned = tfjpq.freeze(search)
    assert abs(float(tuned.hard_cost()) / 3500 - 1) <= 0.03
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=LOSS)
    tuned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert (tuned.predict(xt, verbose=0).argmax(1) == yt).mean() > 0.9
    assert tfjpq.profile(tfjpq.export(tuned)).totals["weight_bytes"] == pytest.approx(float(tuned.hard_cost()))


def test_controller_state_is_saved_and_restored(trained_small_cnn, digits, tmp_path):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, target=4000, tolerance=0.05)
    search.compile(optimizer="adam", loss=LOSS)
    search.fit(x[:512], y[:512], epochs=1, batch_size=64, verbose=0)
    assert search.strength != pytest.approx(tfjpq.search.DEFAULT_STRENGTH)
    path = os.path.join(tmp_path, "search.keras")
    search.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.target == 4000 and loaded.tolerance == 0.05
    assert loaded.strength == pytest.approx(search.strength)
    assert float(loaded._multiplier.numpy()) == pytest.approx(float(search._multiplier.numpy()))
    assert float(loaded._hard_cost_var.numpy()) == pytest.approx(float(search._hard_cost_var.numpy()))
    assert loaded.reference_cost == pytest.approx(search.reference_cost)
    # the loaded model goes on searching under the same controller
    loaded.compile(optimizer="adam", loss=LOSS)
    loaded.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)
    assert loaded.strength != pytest.approx(search.strength)


def test_tflm_cost_is_the_whole_flatbuffer_and_its_target_lands_on_the_converted_file(trained_small_cnn, digits):
    import tflm_export

    from tfjpq.tflm_cost import flatbuffer_bytes

    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    # calibrated on the all-8-bit export: the hard cost is that flatbuffer's size once training has moved the
    # activation clips apart; fresh, they are all 6.0 and the file stores their equal quantization records once
    fixed = search.cost_model.fixed_bytes
    assert fixed > 0
    untrained = tflm_export.convert(tfjpq.export(tfjpq.freeze(search)), representative_data=x[:64]).size
    for i, act in enumerate(search.activation_choices()):
        act.clip.assign(4.0 + 0.37 * i)
    art = tflm_export.convert(tfjpq.export(tfjpq.freeze(search)), representative_data=x[:64])
    assert float(search.hard_cost()) == pytest.approx(art.size, abs=8)
    assert untrained < art.size
    # the per-layer terms follow the file when channels are pruned and narrowed
    random_choices(search, seed=2)
    assert float(search.hard_cost()) == pytest.approx(flatbuffer_bytes(search), rel=0.03)
    # a target is bytes of the converted flatbuffer, within tolerance after freeze
    goal = 0.45 * search.reference_cost
    search = tfjpq.wrap(trained_small_cnn, cost="tflm", target=goal)
    search.compile(optimizer="adam", loss=LOSS)
    search.fit(x, y, epochs=1, batch_size=64, verbose=0)
    tuned = tfjpq.freeze(search)
    measured = tflm_export.convert(tfjpq.export(tuned), representative_data=x[:64]).size
    assert tuned.projection["flatbuffer_bytes"] == measured
    assert 0.97 * goal <= measured <= goal  # a flash budget is a ceiling
    # the calibration belongs to one model: an instance passed in is not changed
    mine = tfjpq.tflm_cost.TFLMCost()
    tfjpq.wrap(trained_small_cnn, cost=mine)
    assert mine.fixed_bytes is None


def test_search_measures_its_file_and_steers_the_modelled_cost_plus_the_offset(trained_small_cnn, digits):
    from tfjpq.tflm_cost import flatbuffer_bytes

    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    search.target = 0.45 * search.reference_cost
    assert float(search._measured_offset.numpy()) == 0.0
    batch, calls = [None], []
    measure = search.cost_model.measure

    def counted(model):
        calls.append(batch[0])
        return measure(model)

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            batch[0] = b

        def on_epoch_end(self, epoch, logs=None):
            batch[0] = "end"

    search.cost_model.measure = counted
    search.compile(optimizer="adam", loss=LOSS)
    steps = int(np.ceil(len(x) / 64))
    search.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[Watch()])
    del search.cost_model.measure
    # converted once when the ramp reached the target, once at the epoch's end
    assert calls == [int(budget.RAMP_FRACTION * steps) - 1, "end"]
    offset = float(search._measured_offset.numpy())
    assert offset == pytest.approx(flatbuffer_bytes(search) - float(search.hard_cost()))
    assert budget.measure_offset(search) == pytest.approx(offset)
    # the training step steers hard cost + offset: the same step with a larger offset pulls harder
    strengths = []
    start = float(tfjpq.wrap(trained_small_cnn, cost="tflm").hard_cost())  # a twin's gap: 0, or 0.2 with the offset
    for preset in (0.0, 0.2 * start):
        keras.utils.set_random_seed(0)
        twin = tfjpq.wrap(trained_small_cnn, cost="tflm", target=start)
        twin._measured_offset.assign(preset)
        twin.compile(optimizer="adam", loss=LOSS)
        twin.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)  # one step, no ramp
        strengths.append(twin.strength)
    assert strengths[1] > strengths[0] > 0
    # freeze aims the modelled cost at the budget less the offset; the file lands under the budget
    search._measured_offset.assign(300.0)
    tuned = tfjpq.freeze(search)
    assert tuned.projection["target"] == pytest.approx(search.target * (1 - search.tolerance / 2) - 300.0)
    assert 0.97 * search.target <= tuned.projection["flatbuffer_bytes"] <= search.target
    # the frozen model's fine-tune converts nothing and reports its constant cost
    conversions = []
    tuned.cost_model.measure = lambda model: conversions.append(model)
    tuned.compile(optimizer="adam", loss=LOSS)
    history = tuned.fit(x[:128], y[:128], epochs=2, batch_size=64, verbose=0).history
    del tuned.cost_model.measure
    assert conversions == []
    assert history["hard_cost"] == history["cost"] == [pytest.approx(float(tuned.hard_cost()))] * 2
    # a cost that cannot measure the file keeps no offset
    sized = tfjpq.wrap(trained_small_cnn, target=3000)
    assert budget.measure_offset(sized) is None and float(sized._measured_offset.numpy()) == 0.0


def test_flatbuffer_check_keeps_a_margin_inside_the_ceiling_window(trained_small_cnn, monkeypatch):
    assert budget.ceiling_window(20_000) == pytest.approx((19_460.0, 19_940.0))  # 0.1 of the tolerance each side
    assert budget.ceiling_window(1_000) == pytest.approx((977.5, 992.5))  # at most a quarter of the window
    assert budget.ceiling_window(4_000) == pytest.approx((3_896.0, 3_984.0))  # at least 16 bytes

    search = tfjpq.wrap(trained_small_cnn, cost="tflm")
    search.target = float(search.hard_cost())
    target, tol = search.target, search.tolerance
    modelled = float(search.hard_cost())
    projected = []
    monkeypatch.setattr(budget, "project", lambda model, aim, t, **kw: projected.append((aim, t)) or
                        {"moves": 3, "after": aim})
    for files, reprojected in (([target - 4], True), ([target * (1 - tol) + 4], True),
                               ([budget.ceiling_window(target)[0] + 1], False)):
        projected.clear()
        sequence = iter(files + [None])
        monkeypatch.setattr(search.cost_model, "measure", lambda model: next(sequence))
        report = budget.check_flatbuffer(search, {"moves": 0})
        assert report["flatbuffer_bytes"] == int(files[0])
        # a file in the margin is projected again, to the middle of the window less the measured error
        assert projected == ([(pytest.approx(target * (1 - tol / 2) - (files[0] - modelled)), tol / 4)]
                             if reprojected else [])
        assert report["moves"] == (3 if reprojected else 0)
    # under the window with every move up overshooting the aim: projected again, to the window's top
    low, high = budget.ceiling_window(target)
    projected.clear()
    monkeypatch.setattr(budget, "project", lambda model, aim, t, **kw: projected.append((aim, t)) or
                        {"moves": 0 if len(projected) == 1 else 2, "after": aim})
    sequence = iter([target * (1 - tol) + 4, low + 1, None])
    monkeypatch.setattr(search.cost_model, "measure", lambda model: next(sequence))
    report = budget.check_flatbuffer(search, {"moves": 0})
    offset = target * (1 - tol) + 4 - modelled
    assert projected == [(pytest.approx(target * (1 - tol / 2) - offset), tol / 4),
                         (pytest.approx(high - offset), pytest.approx((high - low) / high))]
    assert report["moves"] == 2 and report["flatbuffer_bytes"] == int(low + 1)


def test_ramp_target_is_a_geometric_path_from_the_start_to_the_target():
    import tensorflow as tf

    f = lambda left, total: float(tfjpq.budget.ramp_target(tf.constant(100.0), tf.constant(400.0),  # noqa: E731
                                                           tf.constant(float(left)), tf.constant(float(total))))
    assert f(10, 10) == pytest.approx(400.0)
    assert f(5, 10) == pytest.approx(200.0)  # geometric midpoint
    assert f(0, 10) == pytest.approx(100.0)
    assert f(0, 0) == pytest.approx(100.0)  # no ramp: the target


def test_first_fit_ramps_the_budget_and_later_fits_do_not(trained_small_cnn, digits):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, target=3000)
    start = float(search.hard_cost())
    goals = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            goals.append(self.model.budget_goal)

    search.compile(optimizer="adam", loss=LOSS)
    steps = int(np.ceil(len(x) / 64))
    search.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[Watch()])
    total = int(tfjpq.budget.RAMP_FRACTION * steps * 2)
    assert float(search._ramp_total.numpy()) == total and float(search._ramp_from.numpy()) == pytest.approx(start)
    assert goals[0] < start and np.all(np.diff(goals[:total]) < 0)  # falls step by step ...
    assert goals[total - 1] == pytest.approx(3000, rel=1e-4) and goals[-1] == pytest.approx(3000)  # ... to the target
    search.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert float(search._ramp_total.numpy()) == total and search.budget_goal == pytest.approx(3000)  # no new ramp
    search.target = 2500  # a new budget ramps afresh in the next fit
    assert float(search._ramp_total.numpy()) == 0


def test_controller_pull_stops_a_tenth_under_the_budget_and_pushes_back_beyond():
    import tensorflow as tf

    def strength_at(hard):
        m, s = tf.Variable(1.0), tf.Variable(0.0)
        return float(tfjpq.budget.controller_update(m, s, tf.constant(hard), tf.constant(100.0)))

    assert strength_at(120.0) > strength_at(100.0) > strength_at(95.0) > 0  # over: pulls harder
    assert strength_at(90.0) == pytest.approx(0.0, abs=1e-6)  # 1 / GAIN_UNDER under the budget
    assert strength_at(80.0) < 0  # pushes precision back up
