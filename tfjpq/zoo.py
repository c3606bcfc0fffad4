"""Reference TinyML model builders (Keras 3 functional), used by examples, tests and benchmarks.

Shapes follow the MLPerf Tiny reference models, scaled by ``width``.
BatchNorm layers use momentum 0.9 (Keras' default 0.99 needs thousands of
steps before its moving statistics are usable, more than small data sets give).

Example::

    from tfjpq import zoo
    model = zoo.resnet8(input_shape=(28, 28, 1), num_classes=10)
    model.count_params()   # about 78k
"""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["BN_MOMENTUM", "small_cnn", "resnet8", "ds_cnn", "train", "build_compiled_state"]

BN_MOMENTUM = 0.9


def small_cnn(input_shape=(8, 8, 1), num_classes=10, width=16, seed=0):
    """Conv-BN-ReLU x2, pooling, Dense. Tiny and quick; the tests' workhorse."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(2 * width, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="small_cnn")


def _res_block(x, filters, stride, name):
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        s = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_short")(x)
        s = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_short_bn")(s)
    else:
        s = x
    y = layers.Add(name=f"{name}_add")([y, s])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet8(input_shape=(32, 32, 3), num_classes=10, width=16, seed=0):
    """MLPerf Tiny's ResNet-8 (three residual stages of 16/32/64 filters at width 16)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = _res_block(x, width, 1, "block1")
    x = _res_block(x, 2 * width, 2, "block2")
    x = _res_block(x, 4 * width, 2, "block3")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="resnet8")


def ds_cnn(input_shape=(28, 28, 1), num_classes=10, width=32, blocks=3, seed=0):
    """A depthwise-separable CNN in the shape of MLPerf Tiny's DS-CNN."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i in range(blocks):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{i}_bn")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(x)
        x = layers.Conv2D(width, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"pw{i}_bn")(x)
        x = layers.ReLU(name=f"pw{i}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="ds_cnn")


def train(model, x, y, epochs=3, batch_size=64, lr=1e-3, verbose=0, validation_data=None, callbacks=None):
    """Compile with Adam + sparse categorical cross-entropy (logits) and fit; returns the History.

    Example::

        zoo.train(model, x, y, epochs=15)
    """
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    build_compiled_state(model, x, y)
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose, validation_data=validation_data,
                     callbacks=callbacks)


def build_compiled_state(model, x, y):
    """Build a compiled plain Keras model's metrics and loss from one sample of arrays before ``fit``.

    Without a ``tf.distribute`` strategy Keras 3 builds them inside the first
    trace of the train step, and the variables created there make
    ``tf.function`` trace the step twice (``tfjpq.wrap``'s search model does
    this itself). Under a strategy Keras builds them first anyway.

    Example::

        model.compile("adam", loss, metrics=["accuracy"])
        zoo.build_compiled_state(model, x, y)
        model.fit(x, y)                        # traced once
    """
    arrays = [a for a in keras.tree.flatten((x, y)) if a is not None]
    if (getattr(model, "_distribute_strategy", None) is not None or not hasattr(model, "_symbolic_build")
            or not arrays or not all(hasattr(a, "shape") for a in arrays)):
        return  # a strategy, or data Keras batches itself (a tf.data.Dataset, a generator): left to fit

    def first(a):
        return None if a is None else a[:1]

    model._symbolic_build(data_batch=(keras.tree.map_structure(first, x), keras.tree.map_structure(first, y)))
