"""Training the search: the cost really pulls the model smaller; callbacks; separate arch optimizer."""

import os

import keras
import numpy as np
import pytest

import tfjpq

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _search(model, x, y, strength, epochs=4, **fit_kwargs):
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", strength=strength)
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"],
                   arch_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))  # the paper's kind of rule
    history = search.fit(x, y, epochs=epochs, batch_size=64, verbose=0, **fit_kwargs)
    return search, history


def test_strong_strength_prunes_and_lowers_cost_weak_keeps_accuracy(trained_small_cnn, digits):
    (x, y), (xt, yt) = digits
    start = tfjpq.profile(tfjpq.wrap(trained_small_cnn)).totals
    weak, _ = _search(trained_small_cnn, x, y, strength=0.0)
    strong, hist = _search(trained_small_cnn, x, y, strength=10.0)  # normalised: 10x the all-8-bit cost
    w, s = tfjpq.profile(weak).totals, tfjpq.profile(strong).totals
    assert s["channels_kept"] < start["channels_kept"]  # channels were pruned
    assert s["bits_histogram"].get(0, 0) > 0
    assert s["weight_bytes"] < 0.5 * w["weight_bytes"]
    assert hist.history["cost"][-1] < hist.history["cost"][0]
    # without cost pressure, accuracy stays that of a quantized trained model
    acc = (weak.predict(xt, verbose=0).argmax(1) == yt).mean()
    assert acc > 0.9


def test_arch_optimizer_trains_only_logits_with_its_own_rule(trained_small_cnn, digits):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, strength=1.0)
    kernel_before = search.get_layer("conv1").kernel.numpy().copy()
    alpha_before = search.get_layer("conv1_wbits").alpha.numpy().copy()
    search.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS,  # weights frozen by a zero learning rate
                   arch_optimizer=keras.optimizers.SGD(0.1))
    search.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    np.testing.assert_array_equal(search.get_layer("conv1").kernel.numpy(), kernel_before)
    assert np.abs(search.get_layer("conv1_wbits").alpha.numpy() - alpha_before).max() > 1e-4


def test_callbacks_schedule_and_log(trained_small_cnn, digits, tmp_path):
    (x, y), _ = digits
    logger = tfjpq.callbacks.SearchLogger(verbose=0, log_dir=str(tmp_path / "tfjpq"))
    tb = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"))
    search, hist = _search(
        trained_small_cnn, x[:512], y[:512], strength=1e-4, epochs=3,
        callbacks=[tfjpq.callbacks.StrengthWarmup(epochs=2), tfjpq.callbacks.TemperatureDecay(rate=0.5),
                   logger, tb],
    )
    h = hist.history
    for key in ("cost", "kept", "bits_0", "bits_8", "size_bytes", "kept_fraction", "temperature", "strength"):
        assert key in h and len(h[key]) == 3, key
    assert h["strength"] == pytest.approx([0.0, 5e-5, 1e-4])
    assert search.strength == pytest.approx(1e-4)
    np.testing.assert_allclose(h["temperature"], np.exp(-0.5 * np.arange(1, 4)), rtol=1e-5)
    assert float(search.get_layer("conv1_wbits").temperature.numpy()) == pytest.approx(np.exp(-1.5), rel=1e-5)
    # kept + pruned channels account for every channel, every epoch
    total = sum(c.channels for c in search.precision_choices())
    np.testing.assert_allclose(np.array(h["kept"]) + np.array(h["bits_0"]), total)
    assert len(logger.records) == 3 and logger.records[-1]["rows"][0]["name"] == "conv1"
    assert os.listdir(tmp_path / "tfjpq") and os.listdir(tmp_path / "tb" / "train")


def test_default_compile_prunes_under_a_strong_strength(trained_small_cnn, digits):
    (x, y), (xt, yt) = digits
    search = tfjpq.wrap(trained_small_cnn, strength=0.3)
    alpha_before = search.get_layer("conv2_wbits").alpha.numpy().copy()
    search.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])  # no arch_optimizer
    assert isinstance(search.arch_optimizer, keras.optimizers.Adam)
    assert float(search.arch_optimizer.learning_rate) == pytest.approx(tfjpq.search.DEFAULT_ARCH_LR)
    search.fit(x, y, epochs=3, batch_size=64, verbose=0)
    t = tfjpq.profile(search).totals
    assert np.abs(search.get_layer("conv2_wbits").alpha.numpy() - alpha_before).max() > 0.3
    assert t["bits_histogram"].get(8, 0) < 0.5 * t["channels"]  # most channels left 8 bits
    assert t["weight_bytes"] < 0.5 * search.reference_cost
    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=LOSS)
    tuned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert (tuned.predict(xt, verbose=0).argmax(1) == yt).mean() > 0.85  # pruned, not collapsed


def test_shared_arch_optimizer_is_the_old_behaviour(trained_small_cnn, digits):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, strength=1.0)
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, arch_optimizer="shared")
    assert search.arch_optimizer is None
    before = search.get_layer("conv2_wbits").alpha.numpy().copy()
    search.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    moved = np.abs(search.get_layer("conv2_wbits").alpha.numpy() - before).max()
    assert 0 < moved < 0.01 + 4 * 1e-3  # four Adam 1e-3 steps


@pytest.mark.parametrize("mode", ["hard", "gumbel"])
def test_hard_and_gumbel_modes_train(mode, trained_small_cnn, digits):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, mode=mode, strength=1e-4)
    search.compile(optimizer="adam", loss=LOSS)
    hist = search.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))


@pytest.mark.slow
def test_normalised_strength_means_the_same_on_two_model_sizes(digits):
    """The same strength gives a similar relative reduction on a 4x wider model (whose all-8-bit cost is 7x)."""
    from tfjpq import zoo

    (x, y), _ = digits
    rel = {}
    for width in (8, 32):
        model = zoo.small_cnn(width=width)
        zoo.train(model, x, y, epochs=3)
        search = tfjpq.wrap(model, strength=0.2)
        search.compile(optimizer="adam", loss=LOSS)
        search.fit(x, y, epochs=4, batch_size=64, verbose=0)
        rel[width] = float(search.hard_cost()) / search.reference_cost
    assert rel[8] < 0.6 and rel[32] < 0.6  # both searched in earnest
    assert 0.4 < rel[32] / rel[8] < 2.5, rel  # per-byte strength would have pruned the wide model far harder


def test_distillation_teacher_stays_outside_the_search(trained_small_cnn, digits, tmp_path):
    """A teacher adds to the loss but its weights never join the search's variables, optimizer or file."""
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, strength=0.0)
    n_vars = len(search.trainable_variables)
    teacher_kernel = trained_small_cnn.get_layer("conv1").kernel.numpy().copy()
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, teacher=trained_small_cnn, distill=1.0)
    assert len(search.trainable_variables) == n_vars
    plain = tfjpq.wrap(trained_small_cnn, strength=0.0)
    plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    # distill=1.0: the loss is the KL to the teacher alone, which is not the task loss
    kd = search.evaluate(x[:128], y[:128], verbose=0, return_dict=True)
    keras.utils.set_random_seed(0)
    h_kd = search.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0).history["loss"][0]
    keras.utils.set_random_seed(0)
    h_plain = plain.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0).history["loss"][0]
    assert abs(h_kd - h_plain) > 1e-3, (kd, h_kd, h_plain)
    np.testing.assert_array_equal(trained_small_cnn.get_layer("conv1").kernel.numpy(), teacher_kernel)
    path = str(tmp_path / "s.keras")
    search.save(path)
    assert len(keras.models.load_model(path).trainable_variables) == n_vars


def _conv1_output(search, x, training=False):
    probe = keras.Model(search.inputs, search.get_layer("conv1").output)
    return probe(x[:16], training=training).numpy()


@pytest.mark.parametrize("training", [False, True])
def test_ste_gate_zeroes_channels_whose_choice_is_pruned_and_passes_the_soft_gradient(trained_small_cnn, digits,
                                                                                       training):
    import tensorflow as tf

    from tfjpq.layers import GATE_LEAK

    (x, y), _ = digits
    pruned, kept = np.arange(4), np.arange(4, 16)
    outputs = {}
    for gate in ("ste", "soft"):
        search = tfjpq.wrap(trained_small_cnn, prune_gate=gate, init="flat")
        choice = search.get_layer("conv1_wbits")
        alpha = choice.alpha.numpy()
        alpha[0, pruned] = 1.5  # 0 bits most likely for channels 0-3, but far from certain (theta_0 about 0.44)
        choice.alpha.assign(alpha)
        outputs[gate] = _conv1_output(search, x, training)
        with tf.GradientTape() as tape:
            loss = LOSS(y[:16], search(x[:16], training=True))
        grad = tape.gradient(loss, choice.alpha).numpy()
        # the task loss still tells the pruned channels whether to come back (through the leak, past the ReLU)
        assert np.all(np.abs(grad[0, pruned]) > 0), gate
    ste, soft = outputs["ste"], outputs["soft"]
    theta = tf.nn.softmax(alpha, axis=0).numpy()
    keep_pruned, keep_kept = 1 - theta[0, 0], 1 - theta[0, 5]
    if training:  # a leak of GATE_LEAK instead of the soft 1 - theta_0
        np.testing.assert_allclose(ste[..., pruned] * keep_pruned, soft[..., pruned] * GATE_LEAK, rtol=1e-4, atol=1e-6)
    else:
        assert not ste[..., pruned].any()  # exactly zero, as after freeze
    assert np.abs(soft[..., pruned]).max() > 0  # the paper's relaxation: scaled by 1 - theta_0, still there
    np.testing.assert_allclose(ste[..., kept] * keep_kept, soft[..., kept], rtol=1e-4, atol=1e-5)


def test_ste_gate_makes_the_search_model_score_what_freeze_keeps(trained_small_cnn, digits):
    (x, y), (xt, yt) = digits
    accs = {}
    for gate in ("ste", "soft"):
        keras.utils.set_random_seed(0)
        search = tfjpq.wrap(trained_small_cnn, target=3000, prune_gate=gate, init="flat")
        search.compile(optimizer="adam", loss=LOSS)
        search.fit(x, y, epochs=3, batch_size=64, verbose=0)
        frozen = tfjpq.freeze(search, project=False)
        accs[gate] = [float((m.predict(xt, verbose=0).argmax(1) == yt).mean()) for m in (search, frozen)]
    # with the straight-through gate the search model already computes without its pruned channels, so
    # freezing costs little; the soft relaxation leans on channels it then drops
    ste_gap = accs["ste"][0] - accs["ste"][1]
    soft_gap = accs["soft"][0] - accs["soft"][1]
    assert ste_gap < 0.1 and ste_gap < soft_gap, accs
    assert accs["ste"][1] > accs["soft"][1], accs


def test_bad_prune_gate_is_a_clear_error(trained_small_cnn):
    with pytest.raises(ValueError, match="prune_gate 'hard'"):
        tfjpq.wrap(trained_small_cnn, prune_gate="hard")


def test_frozen_model_fine_tunes_on_the_task_loss_alone(trained_small_cnn, digits):
    """A frozen model's cost is a constant: its loss is the task's, whatever strength the search ended with."""
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, strength=0.05)
    losses = []
    for strength in (0.0, -40.0):   # a search that ends under its budget leaves a negative strength
        frozen = tfjpq.freeze(search)
        frozen._strength.assign(strength)
        frozen.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
        keras.utils.set_random_seed(0)
        losses.append(frozen.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0, shuffle=False)
                      .history["loss"][0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[1] > 0
