"""Figures for docs/precrop.md from benchmarks/results/precrop.json.

Usage::

    python benchmarks/plot_precrop.py [--results benchmarks/results/precrop.json] [--out docs/figures]

Writes ``precrop_accuracy.png`` (accuracy against parameters, MACs and
estimated latency, PreCrop vs mask vs dense) and ``precrop_layers.png`` (for ResNet-8 at
density 0.2: each layer's density from the scores next to the share of its
weights the cropped model keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = {"snip": "tab:blue", "grasp": "tab:orange", "synflow": "tab:green"}


def accuracy_figure(rows, path):
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 3, figsize=(14, 3.6 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        panels = (("params", "parameters (nonzero for the mask)"), ("macs", "MACs per inference"),
                  ("latency_ms", "estimated latency, ms (nano33ble)"))
        for j, (key, label) in enumerate(panels):
            ax = axes[i, j]
            for r in mine:
                if r["variant"] == "dense":
                    ax.scatter(r[key], 100 * r["acc"], marker="*", s=160, color="black", label="dense", zorder=3)
            for method, color in COLORS.items():
                for variant, marker in (("precrop", "o"), ("mask", "x")):
                    pts = sorted((r[key], 100 * r["acc"]) for r in mine
                                 if r["method"] == method and r["variant"] == variant and r.get(key) is not None)
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, marker=marker, linestyle="-" if variant == "precrop" else "none",
                                color=color, label=f"{variant} ({method})")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy, %")
            ax.set_title(model)
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("PreCrop (narrower, dense) vs unstructured mask at the same parameter count (densities 0.5, 0.2, 0.1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _layers_figure(rows, path, model_name="resnet8", density=0.2):
    import importlib.util

    from tfjpq import precrop

    spec = importlib.util.spec_from_file_location("bench_precrop", os.path.join(HERE, "precrop.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    picked = [r for r in rows if r["model"] == model_name and r["variant"] == "precrop" and r["density"] == density]
    if not picked:
        return False
    fig, axes = plt.subplots(1, len(picked), figsize=(4.5 * len(picked), 3.8), squeeze=False)
    for ax, r in zip(axes[0], picked):
        model = bench.MODELS[model_name](0)
        dens = r["layer_densities"]
        mask = [m for m in rows if m["model"] == model_name and m["variant"] == "mask"
                and m["method"] == r["method"] and m["density"] == density]
        small = precrop.crop(model, dens, target_params=mask[0]["params"] if mask else None)
        names = list(dens)
        kept = [np.prod(small.get_layer(n).kernel.shape) / np.prod(model.get_layer(n).kernel.shape) for n in names]
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, [dens[n] for n in names], 0.4, label="density from scores", color=COLORS[r["method"]])
        ax.bar(pos + 0.2, kept, 0.4, label="kept by the cropped model", color="lightgray", edgecolor="black")
        ax.set_xticks(pos, names, rotation=70, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{model_name}, {r['method']}, global density {density}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(HERE, "results", "precrop.json"))
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "figures"))
    args = p.parse_args(argv)
    with open(args.results) as f:
        rows = json.load(f)["rows"]
    os.makedirs(args.out, exist_ok=True)
    accuracy_figure(rows, os.path.join(args.out, "precrop_accuracy.png"))
    print("wrote", os.path.join(args.out, "precrop_accuracy.png"))
    if _layers_figure(rows, os.path.join(args.out, "precrop_layers.png")):
        print("wrote", os.path.join(args.out, "precrop_layers.png"))


if __name__ == "__main__":
    main()
