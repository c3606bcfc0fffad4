"""fit traces the train step once: the compiled metrics are built before the first trace."""

import keras
import tensorflow as tf

import tfjpq
from tfjpq import zoo


def _counting_variable_creation(model):
    """Wrap ``model.train_step``; returns the list of variable names each trace created (one list per trace)."""
    traces = []
    step = model.train_step

    def counted(data):
        created = []
        traces.append(created)

        def creator(next_creator, **kwargs):
            created.append(kwargs.get("name"))
            return next_creator(**kwargs)

        with tf.variable_creator_scope(creator):
            return step(data)

    model.train_step = counted
    return traces


def test_search_fit_with_compiled_metrics_traces_the_step_once(digits, trained_small_cnn):
    (x, y), _ = digits
    search = tfjpq.wrap(trained_small_cnn, cost="size", strength=1e-3)
    search.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    traces = _counting_variable_creation(search)
    history = search.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert len(traces) == 1 and traces[0] == []      # no metric variables created inside the trace
    assert "accuracy" in history.history


def test_zoo_train_traces_once_on_arrays_and_still_takes_a_dataset(digits):
    (x, y), _ = digits
    model = zoo.small_cnn(input_shape=x.shape[1:], num_classes=10)
    traces = _counting_variable_creation(model)
    zoo.train(model, x[:256], y[:256], epochs=1)
    assert len(traces) == 1 and traces[0] == []
    # a tf.data.Dataset (y=None) is left to fit, as before
    model = zoo.small_cnn(input_shape=x.shape[1:], num_classes=10)
    history = zoo.train(model, tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(64), None, epochs=1)
    assert set(history.history) == {"accuracy", "loss"}
