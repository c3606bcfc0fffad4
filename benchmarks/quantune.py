"""Quantune on real offline data: how many trials each search strategy needs to find the best PTQ config.

Four CNNs trained on real offline data (MNIST-5k 28x28 and sklearn digits 8x8):
ResNet-8 and DS-CNN (tfjpq.zoo), a MobileNetV2-style CNN (inverted residuals), all on
MNIST-5k, and the zoo's small CNN on digits. For each model:

1. The whole default space (tfjpq.quantune.Space(), 96 configurations) is measured once:
   every configuration converted by tflm_export.convert and scored by its TFLM top-1 on
   the same held-out images (real TFLM interpreter, reference kernels).
2. Each strategy (random, grid, genetic, xgboost, and xgboost with transfer: the other
   models' full tables as history, leave-one-model-out) is replayed on that table with
   tfjpq.quantune.simulate for SEEDS seeds: a strategy only sees the measurements it asks
   for, so this is the trial sequence tune() would produce, without repeating conversions.
3. Trials to reach the exhaustive best (within 0.1 point): median (and quartiles) over seeds.

Writes benchmarks/results/quantune.json (the tables, every run's trials-to-best) and
quantune.png (best-so-far against trials, median over seeds). Measured tables are kept in
the JSON as they are taken; a re-run reuses them (delete the file to re-measure).

Run: nice -n 10 .venv/bin/python benchmarks/quantune.py          (about 30 minutes on 2 cores)
     .venv/bin/python benchmarks/quantune.py --quick              (24-point space, 3 seeds)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from tfjpq import datasets, quantune, zoo  # noqa: E402
from tfjpq.quantune.tune import FORMAT  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
TOL = 0.1
STRATEGIES = ("random", "grid", "genetic", "xgboost", "xgboost+transfer")


def mobilenet_style(input_shape=(28, 28, 1), num_classes=10, width=16, seed=0):
    """A MobileNetV2-style CNN: stem, three inverted-residual blocks (expand 1x1, depthwise 3x3, project 1x1)."""
    keras.utils.set_random_seed(seed)
    m = zoo.BN_MOMENTUM
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(momentum=m, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (out_c, stride) in enumerate([(width, 1), (2 * width, 2), (2 * width, 1)]):
        h = layers.Conv2D(4 * x.shape[-1], 1, use_bias=False, name=f"b{i}_expand")(x)
        h = layers.BatchNormalization(momentum=m, name=f"b{i}_expand_bn")(h)
        h = layers.ReLU(6.0, name=f"b{i}_expand_relu")(h)
        h = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"b{i}_dw")(h)
        h = layers.BatchNormalization(momentum=m, name=f"b{i}_dw_bn")(h)
        h = layers.ReLU(6.0, name=f"b{i}_dw_relu")(h)
        h = layers.Conv2D(out_c, 1, use_bias=False, name=f"b{i}_project")(h)
        h = layers.BatchNormalization(momentum=m, name=f"b{i}_project_bn")(h)
        x = layers.Add(name=f"b{i}_add")([x, h]) if stride == 1 and out_c == x.shape[-1] else h
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="mobilenet_style")


MODELS = {
    "resnet8": dict(data="mnist5k", build=lambda: zoo.resnet8((28, 28, 1)), epochs=5),
    "ds_cnn": dict(data="mnist5k", build=lambda: zoo.ds_cnn((28, 28, 1)), epochs=10),
    "mobilenet_style": dict(data="mnist5k", build=mobilenet_style, epochs=8),
    "small_cnn": dict(data="digits", build=lambda: zoo.small_cnn((8, 8, 1)), epochs=15),
}


def trials_to_best(rows, best):
    for i, r in enumerate(rows):
        if r.get("score") is not None and r["score"] >= best - TOL:
            return i + 1
    return None


def best_so_far(rows, n):
    out, b = [], -np.inf
    for i in range(n):   # after the last row the curve stays where it ended
        if i < len(rows) and rows[i].get("score") is not None:
            b = max(b, rows[i]["score"])
        out.append(b if np.isfinite(b) else np.nan)
    return out


def record_of(entry):
    """A measured table as a transfer record (what tune(out=...) writes)."""
    return {"format": FORMAT, "features": entry["features"], "float_score": entry["float_score"],
            "trials": [{"config": dict(zip(quantune.AXES, _parse_key(k))), **v} for k, v in entry["table"].items()]}


def _parse_key(key):
    a, c, g, w, b = key.split("|")
    return a, c, g, w, b == "bc"


def measure_model(name, spec, space, n_val, results, save):
    """Train the model and measure every configuration of ``space`` (resuming a partial table)."""
    entry = results["models"].get(name)
    if entry is not None and len(entry["table"]) == len(space):
        return entry
    (x, y), (xt, yt) = datasets.load(spec["data"])
    xv, yv = xt[:n_val], yt[:n_val]
    t0 = time.time()
    model = spec["build"]()
    zoo.train(model, x, y, epochs=spec["epochs"])
    train_s = time.time() - t0
    m = quantune.Measurer(model, x[:256], (xv, yv), input_range=(0.0, 1.0))
    t1 = time.time()
    m.distilled()
    distill_s = time.time() - t1
    entry = {"data": spec["data"], "epochs": spec["epochs"], "validation_images": int(len(xv)),
             "params": int(model.count_params()), "features": quantune.model_features(model),
             "float_score": m.float_score(), "train_s": train_s, "distill_s": distill_s, "table": {}}
    results["models"][name] = entry
    print(f"{name}: float top-1 {entry['float_score']:.2f} % on {len(xv)} {spec['data']} images "
          f"({train_s:.0f} s training, {distill_s:.0f} s ZeroQ distillation)", flush=True)
    for i, c in enumerate(space):
        row = m.measure(c)
        entry["table"][c.key] = row
        score = "" if row["score"] is None else f"{row['score']:.2f}"
        print(f"  [{i + 1}/{len(space)}] {c.key}: {row['status']} {score} {row['bytes'] or ''} B "
              f"{row['seconds']:.1f} s {(row['error'] or '')[:100]}", flush=True)
        if i % 8 == 7:
            save()
    save()
    return entry


def analyse(results, space, seeds):
    names = list(results["models"])
    summary = {}
    for name in names:
        e = results["models"][name]
        ok = {k: v for k, v in e["table"].items() if v["status"] == "ok"}
        best_key = max(ok, key=lambda k: ok[k]["score"])
        best = ok[best_key]["score"]
        n_best = sum(v["score"] >= best - TOL for v in ok.values())
        default = quantune.Config().key if quantune.Config() in space else space[0].key
        others = [record_of(results["models"][o]) for o in names if o != name]
        runs = {}
        curves = {}
        for strat in STRATEGIES:
            base = "xgboost" if strat.startswith("xgboost") else strat
            hist = others if strat == "xgboost+transfer" else None
            t_list, curve = [], []
            for seed in range(seeds):
                # stop once within TOL of the best: the curves are flat from there on (at >= best - TOL)
                rows = quantune.simulate(e["table"], base, space, seed=seed, features=e["features"],
                                         float_score=e["float_score"], history=hist, until=best - TOL)
                t_list.append(trials_to_best(rows, best))
                curve.append(best_so_far(rows, len(space)))
            runs[strat] = t_list
            curves[strat] = np.nanmedian(np.asarray(curve, float), axis=0).tolist()
        summary[name] = {
            "float": e["float_score"], "best": best, "best_config": best_key, "best_bytes": ok[best_key]["bytes"],
            "configs_within_tol": int(n_best), "measured": len(ok), "failed": len(e["table"]) - len(ok),
            "default_config": default, "default_score": e["table"].get(default, {}).get("score"),
            "default_bytes": e["table"].get(default, {}).get("bytes"),
            "loss_vs_float": e["float_score"] - best,
            "trials_to_best": runs,
            "median": {s: float(np.median(v)) for s, v in runs.items()},
            "quartiles": {s: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for s, v in runs.items()},
            "curves": curves,
        }
    return summary


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = summary[name]
        for strat in STRATEGIES:
            c = np.asarray(s["curves"][strat])
            ax.plot(np.arange(1, len(c) + 1), s["best"] - c, label=strat)
        ax.axhline(TOL, color="gray", lw=0.8, ls=":")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xscale("log")
        ax.set_title(f"{name} (float {s['float']:.1f}, best {s['best']:.1f})", fontsize=9)
        ax.set_xlabel("trials")
        ax.set_ylabel("points below exhaustive best (median)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(summary):
    head = (f"| model | float top-1 | default PTQ | best (exhaustive) | best config | bytes (best / default) | "
            + " | ".join(STRATEGIES) + " |")
    lines = [head, "|" + "---|" * (6 + len(STRATEGIES))]
    for name, s in summary.items():
        med = " | ".join(f"{s['median'][k]:g} [{s['quartiles'][k][0]:g}-{s['quartiles'][k][1]:g}]" for k in STRATEGIES)
        lines.append(f"| {name} | {s['float']:.2f} | {s['default_score']:.2f} | {s['best']:.2f} "
                     f"({s['configs_within_tol']} within {TOL}) | {s['best_config']} | "
                     f"{s['best_bytes']:,} / {s['default_bytes']:,} | {med} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="24-point space, 3 seeds, 200 validation images")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        space = quantune.Space(act_range=("minmax", "percentile-99.99", "mse"), calibration=("real-32", "zeroq"),
                               granularity=("per-channel", "per-tensor"), weights=("int8", "int4-inner"),
                               bias_correction=(False,))
        seeds, n_val = args.seeds or 3, 200
    else:
        space, seeds, n_val = quantune.Space(), args.seeds or 10, 500
    out = args.out or os.path.join(RESULTS, "quantune_quick.json" if args.quick else "quantune.json")
    results = {"space": space.to_dict(), "validation_images": n_val, "tolerance": TOL, "models": {}}
    if os.path.exists(out):
        with open(out) as f:
            old = json.load(f)
        if old.get("space") == results["space"] and old.get("validation_images") == n_val:
            results["models"] = old.get("models", {})

    def save():
        _save(out, results)

    t0 = time.time()
    for name in args.models.split(","):
        measure_model(name, MODELS[name], space, n_val, results, save)
    summary = analyse(results, space, seeds)
    results["summary"] = summary
    results["seeds"] = seeds
    results["wall_s"] = time.time() - t0
    _save(out, results)
    plot(summary, out.replace(".json", ".png"))
    print(table(summary))
    for name, s in summary.items():
        r, x = s["median"]["random"], s["median"]["xgboost+transfer"]
        print(f"{name}: xgboost+transfer {x:g} vs random {r:g} trials (target <= {r / 4:g}: "
              f"{'met' if x <= r / 4 else 'missed'}); best {s['loss_vs_float']:.2f} points below float "
              f"(target <= 0.7: {'met' if s['loss_vs_float'] <= 0.7 else 'missed'})")


def _save(path, obj):
    import tempfile

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
