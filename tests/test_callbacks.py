"""tfjpq.callbacks: temperature decay, strength warm-up and the search logger, epoch by epoch."""

import keras
import numpy as np
import pytest

import tfjpq
from tfjpq import zoo
from tfjpq.callbacks import SearchLogger, StrengthWarmup, TemperatureDecay


def _search(**kwargs):
    search = tfjpq.wrap(zoo.small_cnn(), weight_bits=(0, 4, 8), **kwargs)
    search.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return search


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)


def test_bad_arguments_and_models():
    with pytest.raises(ValueError, match="rate"):
        TemperatureDecay(rate=-1)
    with pytest.raises(ValueError, match="epochs"):
        StrengthWarmup(epochs=0)
    warm = StrengthWarmup()
    warm.set_model(zoo.small_cnn())
    with pytest.raises(TypeError, match="tfjpq.wrap"):
        warm.on_train_begin()
    warm.set_model(_search(target=5_000))
    with pytest.raises(ValueError, match="target"):
        warm.on_train_begin()


def test_warmup_ramps_and_restores_the_strength():
    search = _search(strength=0.2)
    warm = StrengthWarmup(epochs=4, start=0.5)
    warm.set_model(search)
    warm.on_train_begin()
    seen = []
    for epoch in range(5):
        warm.on_epoch_begin(epoch)
        seen.append(search.strength)
    assert seen == pytest.approx([0.1, 0.125, 0.15, 0.175, 0.2])
    warm.on_train_end()
    assert search.strength == pytest.approx(0.2)


def test_decay_and_logger_write_their_logs(capsys):
    search = _search()
    x, y = _data()
    logger = SearchLogger()
    hist = search.fit(x, y, epochs=2, batch_size=32, verbose=0,
                      callbacks=[TemperatureDecay(rate=0.5, minimum=0.5), logger])
    assert hist.history["temperature"] == pytest.approx([np.exp(-0.5), 0.5])
    assert len(logger.records) == 2 and logger.records[0]["target"] is None
    assert hist.history["hard_cost"][-1] == pytest.approx(float(search.hard_cost()))
    assert "[tfjpq] epoch 2: hard cost" in capsys.readouterr().out
