"""Flash bytes of one searched mixed-precision model exported three ways: int8-only, INT4/LUT-packed, ideal.

The model: a ResNet-8 shape trained on offline MNIST-5k, searched with tfjpq (weight bits
0/2/4/8, size cost), frozen, fine-tuned and exported by tfjpq.export (pruned channels gone,
BN folded, one layer per precision group named ``<layer>__w<bits>``, joined by Concatenate).

    int8-only    tflm_export.convert(..., pack="int8")
    packed       tflm_export.convert(..., pack="auto")   INT4 for conv groups <= 4 bits, LUT where it saves
    ideal        the int8 file with every weight costing exactly bits / 8 bytes

Flash = flatbuffer bytes (+ the TFLM runtime-code estimate for the ops used, printed separately).

It first measures flash efficiency, (ideal weight bytes + bias bytes) / flatbuffer bytes, of
uniform w8 / w4 / w2 exports of ResNet-8 and the DS-CNN (one float epoch on MNIST-5k, then
tfjpq.wrap(weight_bits=(b,)) -> freeze -> export -> convert), with the converter's full
flatbuffer (strip=False) and the lean one convert writes by default.

Writes benchmarks/results/export_sizes.json.

Run: .venv/bin/python benchmarks/export_sizes.py [--efficiency-only]
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import tflm_export  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402

EPOCHS, SEARCH_EPOCHS, FINETUNE_EPOCHS, STRENGTH = 5, 6, 2, 0.05
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_sizes.json")


def searched_model(model, x, y):
    """Search, freeze, fine-tune and export with tfjpq; returns the plain deploy model."""
    import tfjpq

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), cost="size", strength=STRENGTH)
    search.compile(optimizer="adam", loss=loss, arch_optimizer=keras.optimizers.Adam(0.02))
    search.fit(x, y, epochs=SEARCH_EPOCHS, batch_size=64, verbose=0,
               callbacks=[tfjpq.callbacks.TemperatureDecay()])
    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=loss)
    tuned.fit(x, y, epochs=FINETUNE_EPOCHS, batch_size=64, verbose=0)
    return tfjpq.export(tuned)


def efficiency_table(x_tr, y_tr):
    """Flash efficiency of uniform exports, full vs lean flatbuffer."""
    import tfjpq

    rows = []
    for name, build in (("resnet8", zoo.resnet8), ("ds_cnn", zoo.ds_cnn)):
        model = build(input_shape=x_tr.shape[1:])
        zoo.train(model, x_tr, y_tr, epochs=1)
        for bits in (8, 4, 2):
            deploy = tfjpq.export(tfjpq.freeze(tfjpq.wrap(model, weight_bits=(bits,))))
            row = {"model": name, "weight_bits": bits}
            for strip in (False, True):
                art = tflm_export.convert(deploy, x_tr[:100], strip=strip, check_tflm=False)
                t = art.report["totals"]
                key = "lean" if strip else "full"
                row.update({f"{key}_bytes": art.size, f"{key}_efficiency": t["flash_efficiency"],
                            "ideal_weight_bytes": t["weights_ideal_bytes"], "bias_bytes": t["bias_bytes"]})
                if strip:
                    row["lean_breakdown"] = t["breakdown"]
                    row["methods"] = t["methods"]
            rows.append(row)
            print(f"{name:8s} w{bits}: weights {row['ideal_weight_bytes']:>9,.0f} B + biases {row['bias_bytes']:>5,} B | "
                  f"full {row['full_bytes']:>7,} B (eff {row['full_efficiency']:.3f}) -> lean {row['lean_bytes']:>7,} B "
                  f"(eff {row['lean_efficiency']:.3f}) {row['methods']}", flush=True)
    return rows


def main():
    t0 = time.time()
    (x_tr, y_tr), (x_te, y_te) = datasets.load("mnist5k")
    import tfjpq

    print("flash efficiency = (ideal weight bytes + bias bytes) / flatbuffer bytes")
    efficiency = efficiency_table(x_tr, y_tr)
    if "--efficiency-only" in sys.argv:
        _write({"efficiency": efficiency, "seconds": round(time.time() - t0, 1)}, merge=True)
        return

    model = zoo.resnet8(input_shape=(28, 28, 1))
    zoo.train(model, x_tr, y_tr, epochs=EPOCHS)
    acc_float = float((model.predict(x_te, verbose=0).argmax(-1) == y_te).mean())
    print(f"float ResNet-8 trained ({acc_float:.2%}); searching ...", flush=True)
    mixed = searched_model(model, x_tr, y_tr)
    prof = tfjpq.profile(mixed).totals
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

    print(f"model: searched ResNet-8 on MNIST-5k, bits {prof['bits_histogram']}, Keras accuracy float "
          f"{acc_float:.2%} / searched+fine-tuned {acc_keras:.2%}")
    print(f"tfjpq.profile predicts {prof['packed_bytes']:,} B of packed weights; the flatbuffer holds "
          f"{tot['weights_measured_data_bytes']:,} B")
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
        "model": f"zoo.resnet8 on MNIST-5k: {EPOCHS} float epochs, tfjpq search {SEARCH_EPOCHS} epochs "
                 f"(size cost, strength {STRENGTH}), {FINETUNE_EPOCHS} fine-tune epochs",
        "bits_histogram": {str(k): v for k, v in prof["bits_histogram"].items()},
        "profile_packed_bytes": prof["packed_bytes"],
        "measured_packed_bytes": tot["weights_measured_data_bytes"],
        "keras_float_accuracy": acc_float,
        "keras_mixed_accuracy": acc_keras,
        "exports": rows,
        "packed_vs_int8_saving": saved,
        "packed_over_ideal": gap,
        "per_tensor": [{k: r[k] for k in ("layer", "op", "shape", "grid_bits", "method", "stored_bytes",
                                          "measured_data_bytes", "int8_bytes", "ideal_bytes")}
                       for r in packed.report["tensors"]],
        "efficiency": efficiency,
        "seconds": round(time.time() - t0, 1),
    }
    _write(result)


def _write(result, merge=False):
    if merge and os.path.exists(OUT):
        with open(OUT) as f:
            old = json.load(f)
        old.update(result)
        result = old
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
