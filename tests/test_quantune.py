"""Quantune: the space, what each option does to the deployed flatbuffer, and the search loop."""

import json
import os

import keras
import numpy as np
import pytest

import tflm_export
from tfjpq import datasets, quantune, zoo
from tfjpq.errors import UnsupportedModelError
from tfjpq.quantune import Config, QuantuneError, Space, ranges
from tflm_export import modelinfo


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = datasets.load("digits")
    return x, y, xt[:200], yt[:200]


@pytest.fixture(scope="module")
def trained(digits):
    x, y, _, _ = digits
    model = zoo.small_cnn(width=8)
    zoo.train(model, x, y, epochs=4)
    return model


def _weights(art_bytes):
    info = modelinfo.inspect_model(art_bytes)
    out = []
    for op in info.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out.append((op.name, info.tensors[op.inputs[1]], info.tensors[op.inputs[2]] if len(op.inputs) > 2 else None))
    return out


def _table(space, seed=0):
    """A synthetic measured table: a score per config with a clear structure and one best."""
    rng = np.random.default_rng(seed)
    table = {}
    for c in space:
        s = 90.0 + {"minmax": 0, "percentile-99.99": 1, "kl": -2, "mse": 2}.get(c.act_range, 0)
        s += 1.5 * (c.calibration == "real-256") - 3 * (c.weights != "int8") + 0.5 * c.bias_correction
        s += 0.1 * rng.standard_normal()
        table[c.key] = {"status": "ok", "score": float(s), "bytes": 1000, "seconds": 0.0, "error": None}
    return table


FEATS = {"conv": 2, "depthwise": 0, "pointwise": 0, "dense": 1, "bn": 2, "skip": 0, "log_params": 3.5, "log_macs": 5}


# -- the space ----------------------------------------------------------------------------------

def test_space_enumerates_and_round_trips_json():
    space = Space()
    assert 50 <= len(space) <= 100 and len(set(space)) == len(space)
    assert len(Space.full()) == 180
    for axis, vals in quantune.VALUES.items():
        assert set(vals) == set(Space.full().axes[axis])
    for c in list(space)[::7]:
        assert Config.from_json(c.to_json()) == c and hash(Config.from_json(c.to_json())) == hash(c)
        assert space.index(c) == list(space).index(c)
    assert Space.from_json(space.to_json()) == space
    json.dumps([c.to_dict() for c in space])
    small = Space(act_range=("minmax", "mse"), weights="int8", bias_correction=(True,))
    assert len(small) == 2 * 3 * 2 and all(c.bias_correction for c in small)
    with pytest.raises(QuantuneError, match="act_range"):
        Config(act_range="median")
    with pytest.raises(QuantuneError, match="unknown Space axes"):
        Space(bits=(4,))
    assert Config(calibration="real-7").calibration == "real-7"


def test_range_estimators_clip_heavy_tails():
    v = np.random.default_rng(0).standard_normal(50_000)
    v[:5] = 40.0
    lo, hi = ranges.minmax(v)
    assert hi == 40.0
    for name in ("percentile-99.9", "kl"):
        lo2, hi2 = ranges.estimator(name)("t", v)
        assert lo2 <= 0 <= hi2 and hi2 < 10, (name, lo2, hi2)
    lap = np.random.default_rng(1).laplace(size=50_000)
    lo3, hi3 = ranges.mse(lap)
    assert lap.min() < lo3 < 0 < hi3 < lap.max()
    assert ranges._qdq_error(lap, lo3, hi3) < ranges._qdq_error(lap, *ranges.minmax(lap))
    relu = np.abs(v)
    assert ranges.kl(relu)[0] == 0.0 and ranges.percentile(relu, 99.9)[0] == 0.0


# -- each option changes the deployed flatbuffer as it says -------------------------------------

def test_chosen_activation_ranges_are_the_deployed_ones(trained, digits):
    x = digits[0][:128]
    chosen = {}

    def clip_at_p99(name, values):
        lo, hi = ranges.percentile(values, 99.0)
        chosen[name] = (lo, hi)
        return lo, hi

    art = tflm_export.convert(trained, x, activation_ranges=clip_at_p99, check_tflm=False)
    plain = tflm_export.convert(trained, x, check_tflm=False)
    assert chosen and art.report["activation_ranges"].keys() == chosen.keys()
    info = modelinfo.inspect_model(art.int8_model_bytes)
    by_name = {t.name: t for t in info.tensors}
    plain_by_name = {t.name: t for t in modelinfo.inspect_model(plain.int8_model_bytes).tensors}
    # the conv outputs (ReLU fused) and the logits take exactly the chosen ranges
    free = [n for n in chosen if "Relu" in n or n == info.tensors[info.outputs[0]].name]
    assert len(free) >= 3
    for n in free:
        lo, hi = chosen[n]
        t = by_name[n]
        assert t.scales[0] == pytest.approx((hi - lo) / 255, rel=1e-5)
        assert t.zero_points[0] == pytest.approx(-128 - lo / t.scales[0], abs=1.0)
        assert t.scales[0] < plain_by_name[n].scales[0]       # 99th percentile < max
    # min-max through the same path reproduces the converter's own calibration
    same = tflm_export.convert(trained, x, activation_ranges=lambda n, v: ranges.minmax(v), check_tflm=False)
    for n in free:
        t, p = {t.name: t for t in modelinfo.inspect_model(same.int8_model_bytes).tensors}[n], plain_by_name[n]
        assert t.scales[0] == pytest.approx(p.scales[0], rel=1e-5) and t.zero_points == p.zero_points


def test_granularity_sets_the_number_of_weight_scales(trained, digits):
    m = quantune.Measurer(trained, digits[0][:64], digits[2:])
    pc = _weights(m.artifact(Config(calibration="real-32")).int8_model_bytes)
    pt = _weights(m.artifact(Config(calibration="real-32", granularity="per-tensor")).int8_model_bytes)
    assert [len(w.scales) for _, w, _ in pc] == [w.shape[0] for _, w, _ in pc]
    assert [len(w.scales) for _, w, _ in pt] == [1, 1, 1]
    # 4-bit per tensor: INT4 needs a per-channel record, but the scale is one value
    art = m.artifact(Config(calibration="real-32", granularity="per-tensor", weights="int4-all"))
    for _, w, _ in _weights(art.model_bytes):
        assert len(set(w.scales)) == 1


def test_weight_bits_change_the_packed_bytes(trained, digits):
    m = quantune.Measurer(trained, digits[0][:64], digits[2:])
    rows = {}
    for w in ("int8", "int4-inner", "int4-all"):
        art = m.artifact(Config(calibration="real-32", weights=w))
        rows[w] = (art.size, {r["layer"]: (r["stored_bits"], r["method"]) for r in art.report["tensors"]})
    assert rows["int8"][1] == {"conv1": (8, "int8"), "conv2": (8, "int8"), "logits": (8, "int8")}
    assert rows["int4-inner"][1]["conv2"] == (4, "int4")
    assert rows["int4-inner"][1]["conv1"][0] == 8 and rows["int4-inner"][1]["logits"][0] == 8
    assert all(bits <= 4 for bits, _ in rows["int4-all"][1].values())
    conv2 = 8 * 3 * 3 * 16                       # the inner conv's weights
    assert rows["int8"][0] - rows["int4-inner"][0] >= conv2 // 2 - 64
    assert rows["int4-all"][0] < rows["int4-inner"][0]


def test_bias_correction_cancels_the_mean_shift_and_changes_the_bias(trained, digits):
    x = digits[0][:256]
    folded = quantune.fold_batchnorm(trained)
    np.testing.assert_allclose(folded.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-4)
    plain = quantune.prepare_model(folded, Config(weights="int4-all"))
    corr = quantune.prepare_model(folded, Config(weights="int4-all", bias_correction=True), x)
    dense_in = keras.Model(folded.inputs, folded.get_layer("logits").input).predict(x, verbose=0)
    w, b = folded.get_layer("logits").get_weights()
    wq, bq = plain.get_layer("logits").get_weights()
    wc, bc = corr.get_layer("logits").get_weights()
    np.testing.assert_array_equal(wq, wc)
    float_mean = (dense_in @ w + b).mean(0)
    assert np.abs((dense_in @ wc + bc).mean(0) - float_mean).max() < 1e-4
    assert np.abs((dense_in @ wq + bq).mean(0) - float_mean).max() > 1e-3
    # and the deployed int32 biases differ
    m = quantune.Measurer(trained, x, digits[2:])
    b0 = [np.asarray(t) for t in _bias_arrays(m.artifact(Config(weights="int4-all")).int8_model_bytes)]
    b1 = [np.asarray(t) for t in _bias_arrays(m.artifact(Config(weights="int4-all", bias_correction=True)).int8_model_bytes)]
    assert all(a.shape == c.shape for a, c in zip(b0, b1)) and any((a != c).any() for a, c in zip(b0, b1))


def _bias_arrays(model_bytes):
    from tflite_micro.tensorflow.lite.micro.compression import model_editor as me

    from tflm_export.packing import op_name

    sg = me.read(model_bytes).subgraphs[0]
    return [op.inputs[2].array for op in sg.operators
            if op_name(op) in ("CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 2]


def test_model_features_come_from_the_graph():
    f = quantune.model_features(zoo.resnet8((28, 28, 1)))
    assert (f["skip"], f["dense"], f["depthwise"], f["pointwise"]) == (3, 1, 0, 2)
    assert f["conv"] == 7 and f["bn"] == 9
    d = quantune.model_features(zoo.ds_cnn())
    assert (d["depthwise"], d["pointwise"], d["conv"], d["skip"]) == (3, 3, 1, 0)


# -- the search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", quantune.STRATEGIES)
def test_strategies_respect_the_trial_budget_and_the_seed(strategy):
    space = Space()
    table = _table(space)
    a = quantune.simulate(table, strategy, space, trials=11, seed=3, features=FEATS, float_score=95.0)
    b = quantune.simulate(table, strategy, space, trials=11, seed=3, features=FEATS, float_score=95.0)
    assert len(a) == 11 and len({json.dumps(r["config"], sort_keys=True) for r in a}) == 11
    assert [r["config"] for r in a] == [r["config"] for r in b]
    full = quantune.simulate(table, strategy, space, seed=1, features=FEATS, float_score=95.0)
    assert len(full) == len(space)      # every strategy reaches the whole space, without repeats
    if strategy == "random":
        c = quantune.simulate(table, strategy, space, trials=11, seed=4)
        assert [r["config"] for r in a] != [r["config"] for r in c]


def test_xgboost_transfer_starts_from_other_models(tmp_path):
    space = Space()
    table = _table(space)
    other = {"format": "tfjpq.quantune/1", "features": dict(FEATS, conv=4),
             "float_score": 95.0, "trials": [{"config": c.to_dict(), **table[c.key]} for c in space]}
    path = tmp_path / "other.json"
    quantune.save_history(path, other)
    prior = quantune.load_history(str(path))
    assert len(prior) == 1 and len(prior[0]["trials"]) == len(space)
    rows = quantune.simulate(table, "xgboost", space, trials=3, seed=0, features=FEATS, float_score=95.0,
                             history=[str(path)])
    cold = quantune.simulate(table, "xgboost", space, trials=3, seed=0, features=FEATS, float_score=95.0)
    best = max(table[k]["score"] for k in table)
    assert max(r["score"] for r in rows) >= best - 0.5
    assert Config.from_dict(rows[0]["config"]).key != Config.from_dict(cold[0]["config"]).key
    bad = tmp_path / "bad.json"
    bad.write_text('{"trials": 3}')
    with pytest.raises(QuantuneError, match="not a Quantune history"):
        quantune.load_history(str(bad))
    with pytest.raises(QuantuneError, match="does not exist"):
        quantune.load_history(str(tmp_path / "missing.json"))


def test_tune_on_tflm_records_failures_and_goes_on(digits, capsys):
    x, y, xt, yt = digits
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c")(inp)
    out = keras.layers.Dense(10, name="d")(keras.layers.Flatten()(h))
    no_bn = keras.Model(inp, out)
    zoo.train(no_bn, x, y, epochs=3)
    space = Space(act_range=("minmax",), calibration=("zeroq", "real-32"), granularity=("per-channel",),
                  weights=("int8", "int4-all"), bias_correction=(False,))
    res = quantune.tune(no_bn, x[:64], (xt, yt), space=space, strategy="grid", trials=4)
    status = [r["status"] for r in res.history]
    assert len(res.history) == 4 and status.count("failed") == 2 and status.count("ok") == 2
    assert all("BatchNormalization" in r["error"] for r in res.history if r["status"] == "failed")
    assert res.best_config.calibration == "real-32" and res.artifact.arena_bytes > 0
    assert res.best_score > 80 and abs(res.loss_vs_float) < 5
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("quantune grid [")]
    assert len(lines) == 4


def test_budget_makes_configs_infeasible(trained, digits):
    x, y, xt, yt = digits
    space = Space(act_range=("minmax",), calibration=("real-32",), granularity=("per-channel",),
                  weights=("int8", "int4-all"), bias_correction=(False,))
    int8 = quantune.Measurer(trained, x[:32], (xt, yt)).artifact(space[0]).size
    res = quantune.tune(trained, x[:64], (xt, yt), space=space, strategy="grid", trials=2, budget_bytes=int8 - 1,
                        verbose=0)
    assert [r["status"] for r in res.history] == ["infeasible", "ok"]
    assert res.best_config.weights == "int4-all" and res.artifact.size <= int8 - 1


def test_resume_after_interruption_gives_the_uninterrupted_trials(trained, digits, tmp_path):
    x, y, xt, yt = digits
    space = Space(act_range=("minmax", "mse"), calibration=("real-32",), granularity=("per-channel", "per-tensor"),
                  weights=("int8",), bias_correction=(False, True))
    calls = []

    def score(art):
        calls.append(art.size)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return float(art.size % 97)

    path = tmp_path / "h.json"
    with pytest.raises(KeyboardInterrupt):
        quantune.tune(trained, x[:64], space=space, strategy="xgboost", trials=5, evaluate=score, out=path, seed=2,
                      verbose=0)
    assert len(json.loads(path.read_text())["trials"]) == 2
    resumed = quantune.tune(trained, x[:64], space=space, strategy="xgboost", trials=5, evaluate=score, out=path,
                            seed=2, verbose=0)
    fresh = quantune.tune(trained, x[:64], space=space, strategy="xgboost", trials=5,
                          evaluate=lambda a: float(a.size % 97), seed=2, verbose=0)
    assert [r["config"] for r in resumed.history] == [r["config"] for r in fresh.history]
    assert [r["score"] for r in resumed.history] == [r["score"] for r in fresh.history]
    with pytest.raises(QuantuneError, match="strategy"):
        quantune.tune(trained, x[:64], space=space, strategy="random", trials=5, evaluate=score, out=path, verbose=0)


def test_bad_inputs_give_clear_errors(trained, digits):
    x, y, xt, yt = digits
    with pytest.raises(QuantuneError, match="unknown strategy"):
        quantune.tune(trained, x[:32], (xt, yt), strategy="bayes")
    with pytest.raises(QuantuneError, match="trials"):
        quantune.tune(trained, x[:32], (xt, yt), trials=0)
    with pytest.raises(QuantuneError, match="validation_data"):
        quantune.tune(trained, x[:32])
    with pytest.raises(QuantuneError, match="labels"):
        quantune.tune(trained, x[:32], (xt, yt[:5]))
    with pytest.raises(QuantuneError, match="calibration_data"):
        quantune.tune(trained, x[:32, :4], (xt, yt))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(UnsupportedModelError, match="subclassed"):
        quantune.tune(Sub(), x[:32], (xt, yt))


@pytest.mark.slow
def test_workers_do_not_change_the_trials(trained, digits):
    x, y, xt, yt = digits
    space = Space(act_range=("minmax", "kl"), calibration=("real-32",), granularity=("per-channel", "per-tensor"),
                  weights=("int8",), bias_correction=(False,))
    one = quantune.tune(trained, x[:64], (xt, yt), space=space, strategy="random", trials=4, verbose=0)
    two = quantune.tune(trained, x[:64], (xt, yt), space=space, strategy="random", trials=4, workers=2, verbose=0)
    assert [(r["config"], r["score"], r["bytes"]) for r in one.history] == \
           [(r["config"], r["score"], r["bytes"]) for r in two.history]
