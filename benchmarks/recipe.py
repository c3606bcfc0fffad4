"""Ablation of the joint search's recipe, at a fixed total of epochs, measured in TFLM.

Every variant starts from ``pareto.py``'s float model of the same seed and gets the
same number of epochs as pareto's uniform QAT points (search + fine-tune), so a
variant that searches for fewer epochs fine-tunes the frozen model for more.

    python benchmarks/recipe.py --model ds_cnn --seeds 0 --budgets w4 w4-w2 w2

Writes ``benchmarks/results/recipe.json`` (one row per variant, budget and seed,
written after every point) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import pareto  # noqa: E402

# search: soft search epochs at lr 1e-3; hard: search epochs in straight-through (argmax) mode;
# ft_hi / ft_lo: fine-tune epochs of the frozen model at 1e-3 / 3e-4. Each variant sums to 4 epochs.
VARIANTS = {
    "base": dict(search=3, hard=0, ft_hi=0, ft_lo=1),
    "hard-last": dict(search=2, hard=1, ft_hi=0, ft_lo=1),
    "freeze-early": dict(search=2, hard=0, ft_hi=1, ft_lo=1),
    "freeze-early1": dict(search=1, hard=0, ft_hi=2, ft_lo=1),
    "hard-early": dict(search=1, hard=1, ft_hi=1, ft_lo=1),
    "no-2bit": dict(search=2, hard=0, ft_hi=1, ft_lo=1, bits=(0, 4, 8)),
    "distill": dict(search=2, hard=0, ft_hi=1, ft_lo=1, distill=0.5),
    "early1-distill": dict(search=1, hard=0, ft_hi=2, ft_lo=1, distill=0.5),
    "early1-no-2bit": dict(search=1, hard=0, ft_hi=2, ft_lo=1, bits=(0, 4, 8)),
    "early1-lo": dict(search=1, hard=0, ft_hi=1, ft_lo=2),
    "early1-distill-no-2bit": dict(search=1, hard=0, ft_hi=2, ft_lo=1, distill=0.5, bits=(0, 4, 8)),
}


def run_variant(b, name, spec, cost, target, label):
    """One variant through pareto's joint pipeline (``Bench.joint``), with its epochs, widths and distillation."""
    return b.joint(cost, target, label, method=name, search_epochs=spec["search"], hard_epochs=spec["hard"],
                   ft_hi=spec["ft_hi"], ft_lo=spec["ft_lo"], bits=spec.get("bits", (0, 2, 4, 8)),
                   distill=spec.get("distill", 0.0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ds_cnn", choices=["resnet8", "ds_cnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--budgets", nargs="+", default=["w4", "w4-w2", "w2"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--float-epochs", type=int, default=None)
    p.add_argument("--cost", default="size", choices=["size", "tflm"])
    p.add_argument("--out", default=os.path.join(pareto.RESULTS, "recipe.json"))
    p.add_argument("--cache", default=os.path.join(os.path.dirname(pareto.HERE), "build", "pareto_cache"))
    args = p.parse_args(argv)
    from tfjpq import datasets

    data = datasets.load("mnist5k")
    ns = argparse.Namespace(float_epochs=args.float_epochs, cache=args.cache, search_epochs=3, finetune_epochs=1)
    rows = json.load(open(args.out))["rows"] if os.path.exists(args.out) else []
    for seed in args.seeds:
        b = pareto.Bench(args.model, seed, data, ns)
        w = {f"w{k}": b.uniform_cost(k, args.cost) for k in (8, 4, 2)}
        named = pareto.budgets(w["w8"], w["w4"], w["w2"])
        print(f"== {args.model} seed {seed}: float {b.float_acc:.3f}", flush=True)
        for label in args.budgets:
            for name in args.variants:
                row = run_variant(b, name, VARIANTS[name], args.cost, named[label], label)
                row["float_epochs"], row["float_acc"] = b.float_epochs, b.float_acc
                row["spec"] = {k: list(v) if isinstance(v, tuple) else v for k, v in VARIANTS[name].items()}
                rows = [r for r in rows if (r["model"], r["seed"], r["method"], r["budget"], r["cost"])
                        != (row["model"], row["seed"], row["method"], row["budget"], row["cost"])] + [row]
                tmp = args.out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"date": datetime.date.today().isoformat(), "rows": rows}, f, indent=1)
                os.replace(tmp, args.out)
                print(f"  {label:<6} {name:<14} acc {row['tflm_acc']:.3f} flash {row['flash_bytes']:>7,} B "
                      f"err {row['target_error']:+.1%} moves {row['moves']}  {row['wall_s']:.0f} s", flush=True)
    print("\n| budget | variant | TFLM accuracy (mean over seeds) | flash bytes | n |")
    print("|---|---|---:|---:|---:|")
    for label in args.budgets:
        for name in args.variants:
            rs = [r for r in rows if r["model"] == args.model and r["budget"] == label and r["method"] == name
                  and r["cost"] == args.cost]
            if rs:
                print(f"| {label} | {name} | {100 * np.mean([r['tflm_acc'] for r in rs]):.1f} | "
                      f"{np.mean([r['flash_bytes'] for r in rs]):,.0f} | {len(rs)} |")


if __name__ == "__main__":
    main()
