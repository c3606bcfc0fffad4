"""The same seed and data give the same choices and the same flatbuffer bytes twice in a row (CPU).

Each pipeline runs twice in this process, with ``keras.utils.set_random_seed``
before each run and TensorFlow's default settings (no
``enable_op_determinism``, which these CPU kernels do not need; it selects
other kernels, so its bytes differ from the default's, and are as repeatable).
tests/test_resume.py shows the same across processes: its killed-and-resumed
child runs end bit for bit where an uninterrupted one does.
"""

import hashlib

import keras
import numpy as np
import pytest

import tfjpq
import tflm_export
from tfjpq import datasets, precrop, quantune, zeroq, zoo

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt) = datasets.load("digits")
    return x[:384], y[:384], xt[:100], yt[:100]


@pytest.fixture(scope="module")
def base(data):
    x, y, _, _ = data
    keras.utils.set_random_seed(0)
    model = zoo.small_cnn(width=8)
    zoo.train(model, x, y, epochs=2)
    return model


def _digest(b):
    return hashlib.sha256(b).hexdigest()


def test_search_freeze_export_convert_is_repeatable(base, data):
    x, y, _, _ = data

    def run():
        keras.utils.set_random_seed(1)
        search = tfjpq.wrap(base, target=2_600)
        search.compile(optimizer="adam", loss=LOSS, teacher=base)
        search.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfjpq.callbacks.TemperatureDecay()])
        tuned = tfjpq.freeze(search)
        tuned.compile(optimizer="adam", loss=LOSS)
        tuned.fit(x, y, epochs=1, batch_size=64, verbose=0)
        art = tflm_export.convert(tfjpq.export(tuned), representative_data=x[:64])
        choices = np.concatenate([c.selected_index() for c in tuned.precision_choices()])
        return choices, float(search.strength), art.model_bytes

    (c1, s1, b1), (c2, s2, b2) = run(), run()
    assert len(set(c1.tolist())) > 1  # a mixed result, not a trivial one
    assert np.array_equal(c1, c2) and s1 == s2
    assert _digest(b1) == _digest(b2)


def test_zeroq_distill_and_convert_are_repeatable(base):
    def run():
        xs = zeroq.distill(base, num_samples=16, iterations=30, verbose=0, input_range=(0, 1))
        return xs, tflm_export.convert(base, representative_data=xs).model_bytes

    (x1, b1), (x2, b2) = run(), run()
    assert np.array_equal(x1, x2)
    assert _digest(b1) == _digest(b2)


def test_precrop_densities_and_crop_are_repeatable(base):
    def run():
        keras.utils.set_random_seed(2)
        dens = precrop.densities(base, method="synflow", density=0.3)
        small = precrop.crop(base, dens)
        return dens, [w.copy() for w in small.get_weights()]

    (d1, w1), (d2, w2) = run(), run()
    assert d1 == d2 and any(v < 0.9 for v in d1.values())
    assert [w.shape for w in w1] == [w.shape for w in w2]
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))


def test_quantune_trials_and_best_artifact_are_repeatable(base, data):
    x, _, xt, yt = data
    space = quantune.Space(act_range=("minmax", "mse"), calibration=("real-32",),
                           granularity=("per-channel", "per-tensor"), weights=("int8",), bias_correction=(False,))

    def run():
        res = quantune.tune(base, x[:64], (xt, yt), space=space, strategy="xgboost", trials=3, seed=0, verbose=0)
        return [(t["config"], t["score"], t["bytes"]) for t in res.history], res.artifact.model_bytes

    (h1, b1), (h2, b2) = run(), run()
    assert len(h1) == 3 and h1 == h2
    assert _digest(b1) == _digest(b2)
