"""ZeroQ: distilled data, sensitivity, Pareto mixed precision (real data: sklearn digits)."""

import itertools
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from tfjpq import quantizers, zoo  # noqa: E402
from tfjpq import zeroq  # noqa: E402
from tfjpq.zeroq.distill import _Objective  # noqa: E402
from tfjpq.zeroq.sensitivity import Sensitivity  # noqa: E402


def _set_bn_momentum(model, momentum=0.9):
    for l in model.layers:
        if isinstance(l, layers.BatchNormalization):
            l.momentum = momentum
    return model


def _calibrate_bn(model, x):
    """Set every BN's running statistics to those of its input on real images, input side first.

    A cheap stand-in for training: the targets are then statistics real images really produce.
    """
    for l in model.layers:
        if isinstance(l, layers.BatchNormalization):
            f = keras.Model(model.inputs[0], l.input)(x, training=False).numpy()
            axes = tuple(range(f.ndim - 1))
            l.moving_mean.assign(f.mean(axes))
            l.moving_variance.assign(f.var(axes))
    return model


@pytest.fixture(scope="module")
def trained(digits):
    (x_tr, y_tr), (x_te, y_te) = digits
    model = _set_bn_momentum(zoo.small_cnn())
    zoo.train(model, x_tr, y_tr, epochs=12, batch_size=32)
    acc = float(np.mean(np.argmax(model.predict(x_te, verbose=0), -1) == y_te))
    assert acc > 0.9, acc
    return model


@pytest.fixture(scope="module")
def distilled(trained):
    # the pure BN objective: digits live in [0, 1], so the paper's (0, 1) input term would fight bn1
    return zeroq.distill(trained, num_samples=64, iterations=300, verbose=0, input_stats=None, return_info=True)


def _bn_terms(model, x, input_stats=None):
    per_bn, inp = _Objective(model, input_stats).terms(tf.constant(x))
    return np.array([float(v) for v in per_bn]), float(inp)


# ---------------------------------------------------------------- distill

def test_distill_shape_and_loss_falls(trained, distilled):
    x, info = distilled
    assert x.shape == (64, 8, 8, 1) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    # the optimised loss falls by a large factor from the starting noise
    assert info["final_loss"][0] < info["initial_loss"][0] / 10, info
    noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    assert zeroq.bn_loss(trained, x, input_stats=None) < zeroq.bn_loss(trained, noise, input_stats=None) / 10


def test_distill_default_input_term(trained):
    x, info = zeroq.distill(trained, num_samples=32, iterations=200, verbose=0, return_info=True)
    assert info["final_loss"][0] < info["initial_loss"][0] / 5, info
    _, inp = _bn_terms(trained, x, input_stats=(0.0, 1.0))
    assert inp < 0.1


def test_distilled_bn_statistics_close_to_running_stats(trained, distilled):
    x, _ = distilled
    feats = keras.Model(trained.inputs[0], [trained.get_layer(n).input for n in ("bn1", "bn2")])(x, training=False)
    for name, f in zip(("bn1", "bn2"), feats):
        bn = trained.get_layer(name)
        f = f.numpy()
        mean, std = f.mean((0, 1, 2)), f.std((0, 1, 2))
        rm, rs = bn.moving_mean.numpy(), np.sqrt(bn.moving_variance.numpy())
        scale = np.mean(rs)
        # per channel, within a small fraction of the channels' typical spread
        assert np.mean(np.abs(mean - rm)) < 0.15 * scale, (name, mean, rm)
        assert np.mean(np.abs(std - rs)) < 0.15 * scale, (name, std, rs)
    noise = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    nb, _ = _bn_terms(trained, noise)
    db, _ = _bn_terms(trained, x)
    assert np.all(db < nb / 5), (db, nb)


def test_distill_is_deterministic_and_respects_options(trained):
    a = zeroq.distill(trained, num_samples=6, iterations=20, batch_size=4, verbose=0, seed=3)
    b = zeroq.distill(trained, num_samples=6, iterations=20, batch_size=4, verbose=0, seed=3)
    assert a.shape == (6, 8, 8, 1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    c, info = zeroq.distill(trained, num_samples=8, iterations=30, verbose=0, input_range=(0, 1),
                            return_info=True)
    assert c.min() >= 0 and c.max() <= 1
    assert info["input_stats"] is None           # "auto": a stated range replaces the (0, 1) input term
    _, info = zeroq.distill(trained, num_samples=8, iterations=2, verbose=0, return_info=True)
    assert info["input_stats"] == (0.0, 1.0)     # the paper's term by default
    with pytest.raises(ValueError, match="input_range"):
        zeroq.distill(trained, num_samples=8, iterations=2, verbose=0, input_range=(1, 0))


def test_distill_early_stop_and_progress(trained, capsys):
    _, info = zeroq.distill(trained, num_samples=8, iterations=400, verbose=2, tol=0.5, patience=20,
                            return_info=True)
    assert info["steps"][0] < 400
    assert "zeroq.distill" in capsys.readouterr().out
    _, info = zeroq.distill(trained, num_samples=8, iterations=60, verbose=0, tol=0, return_info=True)
    assert info["steps"] == [60]


def _odd_bn_model():
    """BN after an Add, after a depthwise conv and after a Dense layer."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    a = layers.Conv2D(8, 3, padding="same")(inp)
    b = layers.Conv2D(8, 1)(inp)
    x = layers.Add()([a, b])
    x = layers.BatchNormalization(name="bn_after_add")(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.BatchNormalization(name="bn_after_dw")(x)
    x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16)(x)
    x = layers.BatchNormalization(name="bn_after_dense")(x)
    x = layers.ReLU()(x)
    out = layers.Dense(10)(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize("build", [
    _odd_bn_model,
    lambda: zoo.resnet8(input_shape=(8, 8, 1), width=8),
    lambda: zoo.ds_cnn(input_shape=(8, 8, 1), width=16, blocks=2),
], ids=["add-depthwise-dense", "resnet8", "ds_cnn"])
def test_distill_wherever_bn_sits(digits, build):
    (x_tr, _), _ = digits
    model = _calibrate_bn(build(), x_tr[:256])
    x, info = zeroq.distill(model, num_samples=32, iterations=200, verbose=0, input_stats=None,
                            return_info=True)
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    nb, _ = _bn_terms(model, noise)
    db, _ = _bn_terms(model, x)
    assert len(db) == sum(isinstance(l, layers.BatchNormalization) for l in model.layers)
    assert db.mean() < nb.mean() / 10, (db, nb)


def test_distill_clear_errors():
    inp = keras.Input((8, 8, 1))
    no_bn = keras.Model(inp, layers.Dense(3)(layers.Flatten()(layers.Conv2D(4, 3)(inp))), name="plain")
    with pytest.raises(ValueError, match="no BatchNormalization"):
        zeroq.distill(no_bn, verbose=0)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    sub = Sub()
    sub(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="functional"):
        zeroq.distill(sub, verbose=0)

    inner = keras.Sequential([keras.Input((4,)), layers.Dense(4), layers.BatchNormalization()], name="inner")
    i2 = keras.Input((4,))
    nested = keras.Model(i2, layers.Dense(2)(inner(i2)))
    with pytest.raises(ValueError, match="nested"):
        zeroq.distill(nested, verbose=0)

    free = keras.Model(*(lambda i: (i, layers.BatchNormalization()(layers.Conv2D(2, 3)(i))))(keras.Input((None, None, 1))))
    with pytest.raises(ValueError, match="fully defined input shape"):
        zeroq.distill(free, verbose=0)


def test_distill_sequential_model():
    seq = keras.Sequential([keras.Input((6,)), layers.Dense(8), layers.BatchNormalization(), layers.Dense(3)])
    x = zeroq.distill(seq, num_samples=16, iterations=20, verbose=0)
    assert x.shape == (16, 6)


# ---------------------------------------------------------------- sensitivity

def test_sensitivity_ordering_and_restore(trained, distilled):
    x, _ = distilled
    before = [w.copy() for w in trained.get_weights()]
    sens = zeroq.sensitivity(trained, x, bits=(8, 2, 4))
    assert sens.bits == (2, 4, 8)
    assert sens.layers == ["conv1", "conv2", "logits"]
    assert sens.params == {"conv1": 144, "conv2": 4608, "logits": 5120}
    for n in sens.layers:
        kl = sens.kl[n]
        assert kl[2] > kl[4] > kl[8] >= 0, (n, kl)
    for a, b in zip(before, trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "KL@2b" in str(sens) and len(sens.rows()) == 3
    assert sens.to_dict()["layers"][0]["layer"] == "conv1"


def test_sensitivity_matches_a_direct_computation(trained, digits):
    (x_tr, _), _ = digits
    x = x_tr[:50]
    sens = zeroq.sensitivity(trained, x, bits=(2,), layers=["conv2"])
    clone = keras.models.clone_model(trained)
    clone.set_weights(trained.get_weights())
    k = clone.get_layer("conv2").kernel
    k.assign(quantizers.quantize_weights_np(k.numpy(), 2, channel_axis=-1))
    p = tf.nn.softmax(trained(x)).numpy().astype(np.float64)
    q = tf.nn.softmax(clone(x)).numpy().astype(np.float64)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    assert sens.kl["conv2"][2] == pytest.approx(kl, rel=1e-3, abs=1e-7)


def test_sensitivity_depthwise_grid_and_errors():
    model = zoo.ds_cnn(input_shape=(8, 8, 1), width=8, blocks=1)
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    sens = zeroq.sensitivity(model, x, bits=(2, 8))
    assert sens.classes["dw0"] == "DepthwiseConv2D"
    assert sens.kl["dw0"][2] > sens.kl["dw0"][8]
    with pytest.raises(ValueError, match="0 bits"):
        zeroq.sensitivity(model, x, bits=(0, 8))
    with pytest.raises(ValueError, match="not top-level"):
        zeroq.sensitivity(model, x, layers=["nope"])


# ---------------------------------------------------------------- pareto

def _fake_sens(seed=0, n=5):
    rng = np.random.default_rng(seed)
    bits = (2, 4, 8)
    names = [f"l{i}" for i in range(n)]
    params = {nm: int(rng.integers(10, 400)) for nm in names}
    kl = {}
    for nm in names:
        base = rng.random() + 0.01
        kl[nm] = {2: base, 4: base * rng.uniform(0.01, 0.3), 8: base * rng.uniform(1e-4, 1e-3)}
    return Sensitivity(bits=bits, layers=names, classes={nm: "Dense" for nm in names}, params=params, kl=kl)


def _brute(sens, budget):
    best = None
    for combo in itertools.product(sens.bits, repeat=len(sens.layers)):
        size = sum(sens.weight_bytes(n, b) for n, b in zip(sens.layers, combo))
        if size > budget:
            continue
        s = sum(sens.kl[n][b] for n, b in zip(sens.layers, combo))
        if best is None or s < best[0] - 1e-15:
            best = (s, size, combo)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pareto_dp_is_optimal_against_brute_force(seed):
    sens = _fake_sens(seed)
    lo = sum(sens.weight_bytes(n, 2) for n in sens.layers)
    hi = sum(sens.weight_bytes(n, 8) for n in sens.layers)
    for budget in np.linspace(lo, hi, 9).astype(int):
        plan = zeroq.pareto(None, sens, budget_bytes=int(budget), bin_bytes=1)
        s, _, _ = _brute(sens, budget)
        assert plan.bytes <= budget
        assert plan.sensitivity == pytest.approx(s, rel=1e-9)
        assert plan.bytes == sum(sens.weight_bytes(n, b) for n, b in plan.bits.items())


def test_pareto_takes_the_cost_registry():
    sens = _fake_sens(0)
    budget = 2 * sum(sens.weight_bytes(n, 2) for n in sens.layers)
    assert zeroq.pareto(None, sens, budget, cost="size").bits == zeroq.pareto(None, sens, budget).bits
    with pytest.raises(ValueError, match="cost must be .*tflm"):
        zeroq.pareto(None, sens, budget, cost="bitops")  # registered, but not in bytes


def test_pareto_coarse_bins_respect_budget_and_beat_uniform():
    sens = _fake_sens(3, n=7)
    u4 = zeroq.uniform_plan(sens, 4)
    for q in (1, 7, 50):
        plan = zeroq.pareto(None, sens, budget_bytes=u4.bytes, bin_bytes=q)
        assert plan.bytes <= u4.bytes
        assert plan.sensitivity <= u4.sensitivity + 1e-12
    with pytest.raises(ValueError, match="below the smallest plan"):
        zeroq.pareto(None, sens, budget_bytes=10)


def test_pareto_frontier_is_the_brute_force_frontier(tmp_path):
    sens = _fake_sens(4)
    front = zeroq.pareto(None, sens, bin_bytes=1)
    sizes = [e[0] for e in front]
    vals = [e[1] for e in front]
    assert sizes == sorted(sizes) and all(a > b for a, b in zip(vals, vals[1:]))
    for size, val, plan in front:
        assert val == pytest.approx(_brute(sens, size)[0], rel=1e-9)
        assert plan.bytes == size
    # every brute-force optimum is on it
    for budget in (sizes[0], (sizes[0] + sizes[-1]) // 2, sizes[-1]):
        assert front.plan_for(budget).sensitivity == pytest.approx(_brute(sens, budget)[0], rel=1e-9)
    png = tmp_path / "frontier.png"
    front.plot(str(png))
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    front.plan_for(sizes[-1]).plot(str(tmp_path / "plan.png"))
    assert len(front.to_dict()) == len(front)


def test_plan_apply_gives_planned_grids(trained, distilled):
    x, _ = distilled
    sens = zeroq.sensitivity(trained, x, bits=(2, 4, 8))
    u4 = zeroq.uniform_plan(sens, 4)
    plan = zeroq.pareto(trained, sens, budget_bytes=u4.bytes)
    assert plan.bytes <= u4.bytes and plan.sensitivity <= u4.sensitivity
    plan.bits = {"conv1": 8, "conv2": 2, "logits": 4}  # a mixed plan, whatever the DP chose
    deploy = plan.apply(trained)
    assert deploy is not trained
    assert deploy.channel_bits == {n: (b,) * deploy.get_layer(n).kernel.shape[-1] for n, b in plan.bits.items()}
    for name, b in plan.bits.items():
        w = deploy.get_layer(name).kernel.numpy()
        levels = quantizers.distinct_levels_per_channel(w)
        assert levels.max() <= 2 ** b - 1, (name, b, levels.max())
        np.testing.assert_allclose(w, quantizers.quantize_weights_np(trained.get_layer(name).kernel.numpy(), b),
                                   rtol=0, atol=1e-7)
    np.testing.assert_array_equal(deploy.get_layer("bn1").moving_mean.numpy(),
                                  trained.get_layer("bn1").moving_mean.numpy())
    assert quantizers.distinct_levels_per_channel(trained.get_layer("conv2").kernel.numpy()).max() > 3
    with pytest.raises(ValueError, match="another model"):
        zeroq.Plan(bits={"missing": 4}, bytes=0, sensitivity=0.0).apply(trained)


def test_plan_apply_depthwise_grid():
    model = zoo.ds_cnn(input_shape=(8, 8, 1), width=8, blocks=1)
    plan = zeroq.Plan(bits={"dw0": 2, "pw0": 4}, bytes=0, sensitivity=0.0)
    deploy = plan.apply(model)
    w = deploy.get_layer("dw0").kernel.numpy()  # (3, 3, 8, 1)
    assert quantizers.distinct_levels_per_channel(w, channel_axis=2).max() <= 3
    assert deploy.channel_bits["dw0"] == (2,) * 8


def test_pareto_costs_tflm_and_callable(trained, distilled):
    x, _ = distilled
    sens = zeroq.sensitivity(trained, x, bits=(2, 3, 4, 8))
    assert sens.shapes["conv2"] == (3, 3, 16, 32)
    from tflm_export import storage
    u4 = zeroq.uniform_plan(sens, 4, cost="tflm")
    # conv kernels at 4 bits are INT4 (half a byte a value); 3 bits: LUT with 3-bit indices + tables
    assert u4.layer_bytes["conv2"] == 4608 // 2
    assert zeroq.uniform_plan(sens, 3, cost="tflm").layer_bytes["conv2"] == storage.plan_tensor(
        "CONV_2D", (32, 3, 3, 16), bits=3).weight_bytes
    assert zeroq.uniform_plan(sens, 8, cost="tflm").layer_bytes["conv2"] == 4608
    assert u4.layer_bytes["logits"] == storage.plan_tensor("FULLY_CONNECTED", (10, 512), bits=4).weight_bytes
    plan = zeroq.pareto(trained, sens, budget_bytes=u4.bytes, cost="tflm")
    assert plan.bytes <= u4.bytes and plan.sensitivity <= u4.sensitivity
    front = zeroq.pareto(trained, sens, cost="tflm")
    assert front.cost == "tflm" and front.plan_for(u4.bytes).sensitivity == pytest.approx(plan.sensitivity)
    flat = zeroq.pareto(trained, sens, budget_bytes=3, cost=lambda name, cls, shape, bits: int(bits == 2))
    assert set(flat.bits.values()) <= {2, 3, 4, 8} and flat.bytes <= 3
    with pytest.raises(ValueError, match="cost must be"):
        zeroq.pareto(trained, sens, cost="flash")
    with pytest.raises(ValueError, match="non-negative int"):
        zeroq.pareto(trained, sens, cost=lambda *a: -1.5)


# ---------------------------------------------------------------- end to end (tflm_export + TFLM)

@pytest.mark.slow
def test_data_free_path_and_planned_widths_in_the_flatbuffer(trained, digits, distilled):
    import tflm_export
    from tflm_export import storage

    (x_tr, _), (x_te, y_te) = digits
    x_syn = zeroq.distill(trained, num_samples=64, iterations=300, verbose=0, input_range=(0, 1))
    acc = {}
    for key, cal in (("real", x_tr[:64]), ("distilled", x_syn)):
        run = tflm_export.emulate(tflm_export.convert(trained, representative_data=cal), inputs=x_te)
        acc[key] = float(np.mean(run.outputs.argmax(-1) == y_te))
    assert acc["distilled"] >= acc["real"] - 0.02, acc

    sens = zeroq.sensitivity(trained, distilled[0], bits=(2, 4, 8))
    plan = zeroq.pareto(trained, sens, budget_bytes=zeroq.uniform_plan(sens, 4, cost="tflm").bytes, cost="tflm")
    plan.bits = {"conv1": 8, "conv2": 2, "logits": 4}        # force a truly mixed plan
    art = tflm_export.convert(plan.apply(trained), representative_data=x_syn)
    rows = {r["layer"]: r for r in art.report["tensors"]}
    for name, b in plan.bits.items():
        assert rows[name]["grid_bits"] == b, (name, rows[name])
        cls = type(trained.get_layer(name)).__name__
        shape = tuple(trained.get_layer(name).kernel.shape)
        # the exporter's figure adds the LUT tensors' derived names, which the cost cannot know
        names = storage.lut_graph_bytes(rows[name]["tensor"]) - storage.LUT_GRAPH_BYTES if rows[name]["method"] == "lut" else 0
        assert rows[name]["stored_bytes"] == zeroq.tflm_cost(name, cls, shape, b) + names, rows[name]
    run = tflm_export.emulate(art, inputs=x_te)
    assert float(np.mean(run.outputs.argmax(-1) == y_te)) > 0.8
