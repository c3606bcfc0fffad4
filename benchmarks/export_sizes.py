"""Flash bytes of one mixed-precision model exported three ways: int8-only, INT4/LUT-packed, ideal.

The model: zoo.small_cnn (width 16) trained on offline MNIST-5k, BatchNorm folded, then put on
channel-wise mixed 2/4/8-bit grids in the layout tfjpq.export produces (one layer per precision
group, named ``<layer>__w<bits>``, joined by Concatenate). Until the searched model from
tfjpq.export is wired in, the precision groups are fixed here (GROUPS).

    int8-only    tflm_export.convert(..., pack="int8")
    packed       tflm_export.convert(..., pack="auto")   INT4 for conv groups <= 4 bits, LUT for Dense
    ideal        the int8 file with every weight costing exactly bits / 8 bytes

Flash = flatbuffer bytes (+ the TFLM runtime-code estimate for the ops used, printed separately).
Writes benchmarks/results/export_sizes.json.

Run: .venv/bin/python benchmarks/export_sizes.py
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import tflm_export  # noqa: E402
from tfjpq import datasets, quantizers, zoo  # noqa: E402

# output channels per precision, in channel order: {layer: [(bits, channels), ...]}
GROUPS = {
    "conv1": [(8, 4), (4, 12)],
    "conv2": [(2, 12), (4, 12), (8, 8)],
    "logits": [(4, 10)],
}
EPOCHS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_sizes.json")


def fold_bn(kernel, bias, bn):
    gamma, beta, mean, var = bn.get_weights()
    f = gamma / np.sqrt(var + bn.epsilon)
    return kernel * f, (bias - mean) * f + beta


def mixed_precision_model(trained):
    """Rebuild small_cnn without BN, each layer split into precision groups + Concatenate."""
    L = {l.name: l for l in trained.layers}
    inp = keras.Input(trained.input_shape[1:], name="input")

    def grouped_conv(x, name, bn):
        conv = L[name]
        k, b = fold_bn(conv.get_weights()[0], np.zeros(conv.filters, np.float32), L[bn])
        outs, start = [], 0
        for bits, ch in GROUPS[name]:
            sl = slice(start, start + ch)
            start += ch
            g = layers.Conv2D(ch, conv.kernel_size, padding=conv.padding, name=f"{name}__w{bits}")
            y = g(x)
            g.set_weights([quantizers.quantize_weights_np(k[..., sl], bits), b[sl]])
            outs.append(y)
        return layers.Concatenate(name=f"{name}_concat")(outs) if len(outs) > 1 else outs[0]

    x = layers.ReLU(name="relu1")(grouped_conv(inp, "conv1", "bn1"))
    x = layers.ReLU(name="relu2")(grouped_conv(x, "conv2", "bn2"))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    dense = L["logits"]
    (bits, _), = GROUPS["logits"]
    d = layers.Dense(dense.units, name=f"logits__w{bits}")
    out = d(x)
    k, b = dense.get_weights()
    d.set_weights([quantizers.quantize_weights_np(k, bits), b])
    return keras.Model(inp, out, name="mnist_mixed")


def main():
    t0 = time.time()
    (x_tr, y_tr), (x_te, y_te) = datasets.load("mnist5k")
    model = zoo.small_cnn(input_shape=(28, 28, 1), width=16)
    zoo.train(model, x_tr, y_tr, epochs=EPOCHS, lr=3e-3)
    acc_float = float((model.predict(x_te, verbose=0).argmax(-1) == y_te).mean())
    mixed = mixed_precision_model(model)
    acc_keras = float((mixed.predict(x_te, verbose=0).argmax(-1) == y_te).mean())

    int8 = tflm_export.convert(mixed, x_tr[:200], pack="int8", name="mnist_mixed")
    packed = tflm_export.convert(mixed, x_tr[:200], pack="auto", name="mnist_mixed")
    tot = packed.report["totals"]
    ideal_weights = tot["weights_ideal_bytes"]
    ideal_file = int8.size - int8.report["totals"]["weights_int8_bytes"] + ideal_weights

    rows = {}
    for label, art in (("int8", int8), ("packed", packed)):
        run = tflm_export.emulate(art, board="nucleo-l4r5zi", inputs=x_te)
        rows[label] = {
            "model_bytes": art.size,
            "weight_bytes": art.report["totals"]["weights_stored_bytes"],
            "flash_bytes": run.flash_bytes,
            "runtime_code_bytes": run.runtime_code_bytes,
            "arena_bytes": run.arena_bytes,
            "latency_ms_l4r5zi": round(run.latency_ms, 3),
            "tflm_accuracy": float((run.outputs.argmax(-1) == y_te).mean()),
            "methods": art.report["totals"]["methods"],
        }
    code = rows["packed"]["runtime_code_bytes"]
    rows["ideal"] = {"model_bytes": int(round(ideal_file)), "weight_bytes": ideal_weights,
                     "flash_bytes": int(round(ideal_file)) + rows["int8"]["runtime_code_bytes"]}

    print(f"model: small_cnn/16 on MNIST-5k, groups {GROUPS}, Keras accuracy float {acc_float:.2%} / mixed-precision {acc_keras:.2%} (no fine-tuning)")
    print(f"{'export':8s} {'model B':>9s} {'weights B':>10s} {'flash B':>9s} {'arena B':>8s} {'TFLM acc':>9s}  methods")
    for label in ("int8", "packed", "ideal"):
        r = rows[label]
        arena = f"{r['arena_bytes']:>8,}" if "arena_bytes" in r else f"{'-':>8s}"
        acc = f"{r['tflm_accuracy']:>9.2%}" if "tflm_accuracy" in r else f"{'-':>9s}"
        print(f"{label:8s} {r['model_bytes']:>9,} {r['weight_bytes']:>10,.0f} {r['flash_bytes']:>9,} "
              f"{arena} {acc}  {r.get('methods', '')}")
    print(f"(flash = model + TFLM runtime-code estimate ~{code:,} B for the ops used; ideal = int8 file with "
          f"weights at bits/8)")
    saved = 1 - rows["packed"]["model_bytes"] / rows["int8"]["model_bytes"]
    gap = rows["packed"]["model_bytes"] / rows["ideal"]["model_bytes"] - 1
    print(f"packed model is {saved:.1%} smaller than int8-only and {gap:.1%} above the ideal bit count")

    result = {
        "model": f"zoo.small_cnn(width=16), MNIST-5k, {EPOCHS} epochs (Adam 3e-3), BN folded",
        "groups": {k: [list(g) for g in v] for k, v in GROUPS.items()},
        "keras_float_accuracy": acc_float,
        "keras_mixed_accuracy": acc_keras,
        "exports": rows,
        "packed_vs_int8_saving": saved,
        "packed_over_ideal": gap,
        "per_tensor": [{k: r[k] for k in ("layer", "op", "shape", "grid_bits", "method", "stored_bytes",
                                          "measured_data_bytes", "int8_bytes", "ideal_bytes")}
                       for r in packed.report["tensors"]],
        "seconds": round(time.time() - t0, 1),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
