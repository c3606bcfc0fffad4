"""Epoch time of the search model vs the same float model, side by side in one run.

    python benchmarks/search_overhead.py            # ResNet-8 shape on MNIST-5k
    python benchmarks/search_overhead.py --repeats 5
    python benchmarks/search_overhead.py --old-defaults   # also min-max weights + soft gate, side by side

Both models train on the same data with the same batch size; rounds alternate
(float, search, float, search, ...) after one warm-up epoch each, so machine
noise hits both alike. Each round is one ``fit`` of ``--epochs-per-round``
epochs, timed per epoch by a callback (``fit``'s own start-up is not an epoch).
The figure is the ratio of median epoch times; the target is at most 1.5x.
Results go to benchmarks/results/search_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tfjpq  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


def timed_epochs(model, x, y, batch_size, epochs):
    timer = EpochTimer()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[timer])
    return timer.seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--repeats", type=int, default=3, help="rounds per model")
    p.add_argument("--epochs-per-round", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-bits", default="0,2,4,8")
    p.add_argument("--act-bits", default="8")
    p.add_argument("--old-defaults", action="store_true",
                   help="also time the search with the defaults before 2026-12 (min-max weights, soft prune gate)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "search_overhead.json"))
    args = p.parse_args(argv)
    (x, y), _ = datasets.load(args.dataset)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    float_model = zoo.resnet8(input_shape=x.shape[1:])
    float_model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    wbits = tuple(int(b) for b in args.weight_bits.split(","))
    abits = tuple(int(b) for b in args.act_bits.split(","))
    def search_model(**kw):
        with warnings.catch_warnings():   # an untrained model on purpose: only the epoch time is measured
            warnings.filterwarnings("ignore", message=".*BatchNormalization layer.*initial statistics")
            m = tfjpq.wrap(zoo.resnet8(input_shape=x.shape[1:]), weight_bits=wbits, act_bits=abits, strength=0.08,
                           **kw)
        m.compile(optimizer="adam", loss=loss, metrics=["accuracy"],
                  arch_optimizer=keras.optimizers.SGD(1e-2, momentum=0.9))
        return m

    models = {"float": float_model, "search": search_model()}
    if args.old_defaults:
        models["search_minmax_soft"] = search_model(weight_quantizer="minmax", prune_gate="soft")

    print(f"warm-up (trace + first epoch) on {args.dataset}, {len(x)} images ...", flush=True)
    for model in models.values():
        timed_epochs(model, x, y, args.batch_size, 1)
    times = {name: [] for name in models}
    for r in range(args.repeats):
        for name, model in models.items():
            times[name].extend(timed_epochs(model, x, y, args.batch_size, args.epochs_per_round))
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{name} {statistics.median(t[-args.epochs_per_round:]):.2f} s" for name, t in times.items())
            + " per epoch", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["search"] / med["float"]
    result = {
        "benchmark": "search_overhead", "model": "resnet8", "dataset": args.dataset, "images": int(len(x)),
        "weight_bits": list(wbits), "act_bits": list(abits), "batch_size": args.batch_size,
        "epoch_seconds": times, "median_seconds": med, "ratio": ratio, "target_ratio": 1.5,
        "meets_target": ratio <= 1.5, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    if args.old_defaults:
        result["ratio_minmax_soft"] = med["search_minmax_soft"] / med["float"]
        print(f"with min-max weights and the soft gate: ratio {result['ratio_minmax_soft']:.2f}x")
    print(f"median epoch: float {med['float']:.2f} s, search {med['search']:.2f} s -> ratio {ratio:.2f}x "
          f"(target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
