"""The pipeline Keras users run today: tfmot magnitude pruning, then quantization-aware training.

tensorflow-model-optimization works only with the legacy ``tf_keras``, so this
script runs in its own process (``benchmarks/pareto.py`` starts it) and never
imports tfjpq. It rebuilds the zoo architecture in ``tf_keras`` with the same
layer names, loads the float weights the other pipelines start from, and:

1. ``prune_low_magnitude`` (polynomial decay to ``--sparsity`` over the first
   70 % of the pruning epochs) for ``--prune-epochs`` epochs at lr 1e-3;
2. ``strip_pruning``, then QAT for ``--qat-epochs`` epochs at lr 3e-4 with the
   sparsity-preserving 8-bit scheme (``--bits 8``) or tfmot's experimental
   n-bit scheme (``--bits 4``: 4-bit weights, 8-bit activations);
3. converts to a full-int8 flatbuffer (int8 input and output) with the TFLite
   converter, as a user would.

Usage (normally from pareto.py)::

    TF_USE_LEGACY_KERAS=1 python benchmarks/tfmot_baseline.py --io run.npz --arch resnet8 \
        --sparsity 0.5 --bits 8 --prune-epochs 3 --qat-epochs 1 --out model.tflite

``--io`` holds ``x``, ``y`` (training), ``cal`` (calibration inputs) and the
float weights as ``w/<layer>/<i>``. It writes the .tflite and ``<out>.json``
(wall-clock seconds, measured sparsity).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

L = keras.layers
BN_MOMENTUM = 0.9  # as tfjpq.zoo


def _res_block(x, filters, stride, name):
    y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = L.ReLU(name=f"{name}_relu1")(y)
    y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        s = L.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_short")(x)
        s = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_short_bn")(s)
    else:
        s = x
    y = L.Add(name=f"{name}_add")([y, s])
    return L.ReLU(name=f"{name}_out")(y)


def resnet8(input_shape, num_classes, width=16):
    """tfjpq.zoo.resnet8 in tf_keras (same layer names)."""
    inp = keras.Input(input_shape, name="input")
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = _res_block(x, width, 1, "block1")
    x = _res_block(x, 2 * width, 2, "block2")
    x = _res_block(x, 4 * width, 2, "block3")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(num_classes, name="logits")(x), name="resnet8")


def ds_cnn(input_shape, num_classes, width=32, blocks=3):
    """tfjpq.zoo.ds_cnn in tf_keras (same layer names)."""
    inp = keras.Input(input_shape, name="input")
    x = L.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    for i in range(blocks):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{i}_bn")(x)
        x = L.ReLU(name=f"dw{i}_relu")(x)
        x = L.Conv2D(width, 1, use_bias=False, name=f"pw{i}")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"pw{i}_bn")(x)
        x = L.ReLU(name=f"pw{i}_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.2, name="drop")(x)
    return keras.Model(inp, L.Dense(num_classes, name="logits")(x), name="ds_cnn")


ARCHS = {"resnet8": resnet8, "ds_cnn": ds_cnn}


def load_weights(model, data):
    for layer in model.layers:
        ws = [data[f"w/{layer.name}/{i}"] for i in range(len(layer.get_weights()))]
        if ws:
            layer.set_weights(ws)


def _prunable(layer):
    return isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense))


def sparsity(model):
    kernels = [w for layer in model.layers if _prunable(layer) for w in layer.get_weights()[:1]]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def run(args):
    data = np.load(args.io)
    x, y, cal = data["x"], data["y"], data["cal"]
    keras.utils.set_random_seed(args.seed)
    t0 = time.time()
    model = ARCHS[args.arch](x.shape[1:], int(data["num_classes"]))
    load_weights(model, data)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    steps = int(np.ceil(len(x) / args.batch_size)) * args.prune_epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=args.sparsity,
                                                    begin_step=0, end_step=max(1, int(0.7 * steps)), frequency=10)

    def prune(layer):
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule) if _prunable(layer) else layer

    pruned = keras.models.clone_model(model, clone_function=prune)
    pruned.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    pruned.fit(x, y, epochs=args.prune_epochs, batch_size=args.batch_size, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)

    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    if args.bits == 8:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    else:
        from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (
            default_n_bit_quantize_scheme as nbit,
        )
        scheme = nbit.DefaultNBitQuantizeScheme(num_bits_weight=args.bits, num_bits_activation=8)
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    qat.compile(optimizer=keras.optimizers.Adam(3e-4), loss=loss)
    qat.fit(x, y, epochs=args.qat_epochs, batch_size=args.batch_size, verbose=0)
    train_s = time.time() - t0

    conv = tf.lite.TFLiteConverter.from_keras_model(qat)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for i in range(len(cal)):
            yield [cal[i:i + 1].astype(np.float32)]

    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    flat = conv.convert()
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flat)
    os.replace(tmp, args.out)
    info = {"wall_s": time.time() - t0, "train_s": train_s, "sparsity": sparsity(stripped),
            "keras_params": int(stripped.count_params())}
    with open(args.out + ".json", "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--io", required=True)
    p.add_argument("--arch", choices=sorted(ARCHS), required=True)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--bits", type=int, choices=(4, 8), default=8)
    p.add_argument("--prune-epochs", type=int, default=3)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
