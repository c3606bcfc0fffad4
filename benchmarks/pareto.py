"""Accuracy vs flash: the joint search against the simple alternatives, measured the way a board does.

For each model (``tfjpq.zoo`` ResNet-8 and DS-CNN) and seed, one float model is
trained, and every pipeline starts from a copy of it and gets the same
epochs: ``--search-epochs`` at lr 1e-3, then ``--finetune-epochs`` at lr 3e-4
(the joint search spends the first ``--joint-search-epochs`` of them searching).

- ``uniform-w8/w4/w2``: QAT with every weight at that width.
- ``joint-size`` / ``joint-tflm``: ``tfjpq.wrap(..., target=B)`` with the
  default recipe (plain compile, fit, ``freeze``, fine-tune), with budgets at
  the uniform w8, w4 and w2 costs, between them and below w2.
- ``l1-w8`` / ``l1-w4``: structured channel pruning, L1 ranking per channel
  group to the same budget, then uniform QAT (the paper's sequential baseline).
- ``tfmot-s<sparsity>-w<bits>``: tensorflow-model-optimization magnitude
  pruning then QAT, in tf_keras in its own process (``tfmot_baseline.py``),
  converted by the TFLite converter as users do.

Every point is converted to a flatbuffer and run in TFLite Micro on the 1000
test images: accuracy is TFLM top-1, bytes are the flatbuffer's (tfjpq's lean
export; for tfmot both the converter's file and the same file through
``tflm_export.lean.strip``).

Usage::

    python benchmarks/pareto.py              # full: 2 models x 3 seeds (about an hour on 2 cores)
    python benchmarks/pareto.py --quick      # DS-CNN, 1 seed, short: a few minutes
    python benchmarks/pareto.py --report-only   # redo tables and plots from pareto.json

Writes ``benchmarks/results/pareto.json`` (every point, written after each one),
``benchmarks/RESULTS.md`` (command, date, tables, targets), ``pareto.png`` and
``pareto_layers.png`` (per-layer widths and kept channels of the joint search).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
ISO = 0.005  # iso-accuracy: within half a point


# --------------------------------------------------------------------------- pipelines

class Bench:
    """Data, epochs and the measuring of one (model, seed)."""

    def __init__(self, arch, seed, data, args):
        import keras

        from tfjpq import zoo

        self.arch, self.seed, self.args = arch, seed, args
        (self.x, self.y), (self.xt, self.yt) = data
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        builder = {"resnet8": zoo.resnet8, "ds_cnn": zoo.ds_cnn}[arch]
        t0 = time.time()
        self.float_model = builder(input_shape=self.x.shape[1:], num_classes=int(self.y.max()) + 1, seed=seed)
        self.float_epochs = args.float_epochs or FLOAT_EPOCHS[arch]
        cache = os.path.join(args.cache, f"{arch}_seed{seed}_e{self.float_epochs}_n{len(self.x)}.weights.h5")
        if args.cache and os.path.exists(cache):  # the same float start for runs split over several invocations
            self.float_model.load_weights(cache)
        else:
            zoo.train(self.float_model, self.x, self.y, epochs=self.float_epochs)
            if args.cache:
                os.makedirs(args.cache, exist_ok=True)
                self.float_model.save_weights(cache)
        self.float_s = time.time() - t0
        self.float_acc = float((self.float_model.predict(self.xt, verbose=0, batch_size=256).argmax(-1)
                                == self.yt).mean())

    def _fit(self, model, lr, epochs, **compile_kwargs):
        import keras

        if epochs <= 0:
            return
        keras.utils.set_random_seed(self.seed)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=self.loss, **compile_kwargs)
        model.fit(self.x, self.y, epochs=epochs, batch_size=64, verbose=0)

    def uniform_cost(self, bits, cost):
        import tfjpq

        return float(tfjpq.wrap(self.float_model, weight_bits=(bits,), cost=cost, strength=0.0).hard_cost())

    def tflm_top1(self, artifact_or_bytes):
        """The TFLM run on the test images and its top-1 accuracy."""
        import tflm_export

        run = tflm_export.emulate(artifact_or_bytes, inputs=self.xt, check_fit=False)
        return run, tflm_export.top1_accuracy(run.outputs, self.yt)

    def measure(self, frozen, method, t0, **extra):
        """Export, convert, run in TFLM; one result row."""
        import tflm_export

        import tfjpq

        train_s = time.time() - t0
        deploy = tfjpq.export(frozen)
        art = tflm_export.convert(deploy, representative_data=self.x[:200])
        run, acc = self.tflm_top1(art)
        prof = tfjpq.profile(frozen)
        layers = {r["name"]: {str(b): int(n) for b, n in r["bits_histogram"].items()} for r in prof.rows}
        row = dict(model=self.arch, seed=self.seed, method=method, tflm_acc=acc, flash_bytes=art.size,
                   weight_bytes=float(prof.totals["weight_bytes"]), wall_s=time.time() - t0, train_s=train_s,
                   arena_bytes=int(run.arena_bytes), latency_ms=float(run.latency_ms),
                   efficiency=float(art.report["totals"].get("flash_efficiency", 0.0)), layers=layers)
        row.update(extra)
        return row

    # -- the pipelines ---------------------------------------------------------------------
    def uniform(self, bits):
        import keras

        import tfjpq

        t0 = time.time()
        keras.utils.set_random_seed(self.seed)
        frozen = tfjpq.freeze(tfjpq.wrap(self.float_model, weight_bits=(bits,), strength=0.0))
        self._fit(frozen, 1e-3, self.args.search_epochs)
        self._fit(frozen, 3e-4, self.args.finetune_epochs)
        return self.measure(frozen, f"uniform-w{bits}", t0, bits=bits)

    def joint(self, cost, target, label, method=None, search_epochs=None, hard_epochs=0, ft_hi=None, ft_lo=None,
              bits=(0, 2, 4, 8), distill=None, min_channels=1, mode="soft", init=None, temperature=None):
        """The joint search to ``target``: search briefly, freeze, fine-tune the frozen model for the rest.

        Of the same epochs the baselines get, ``--joint-search-epochs`` search (lr 1e-3), the rest
        of ``--search-epochs`` fine-tune the frozen model at 1e-3, then ``--finetune-epochs`` at
        3e-4; with ``--distill`` the float start is the teacher throughout (see docs/search.md).
        The keyword arguments override that recipe (``benchmarks/recipe.py`` varies them);
        ``hard_epochs`` search on in straight-through (argmax) mode before the freeze.
        """
        import keras

        import tfjpq

        a = self.args
        search_epochs = min(a.joint_search_epochs, a.search_epochs) if search_epochs is None else search_epochs
        ft_hi = a.search_epochs - search_epochs if ft_hi is None else ft_hi
        ft_lo = a.finetune_epochs if ft_lo is None else ft_lo
        distill = a.distill if distill is None else distill
        t0 = time.time()
        keras.utils.set_random_seed(self.seed)
        kd = dict(teacher=self.float_model, distill=distill) if distill else {}
        search = tfjpq.wrap(self.float_model, weight_bits=bits, act_bits=(8,), cost=cost, target=target,
                            min_channels=min_channels, mode=mode, **({"init": init} if init else {}),
                            **({"temperature": temperature} if temperature else {}))
        search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=self.loss, **kd)
        if search_epochs:
            search.fit(self.x, self.y, epochs=search_epochs, batch_size=64, verbose=0)
        if hard_epochs:
            for c in search.precision_choices():
                c.mode = "hard"
            search.train_function = None
            search.fit(self.x, self.y, epochs=hard_epochs, batch_size=64, verbose=0)
        end_cost = float(search.hard_cost())
        frozen = tfjpq.freeze(search)
        hard = float(frozen.hard_cost())
        self._fit(frozen, 1e-3, ft_hi, **kd)
        self._fit(frozen, 3e-4, ft_lo, **kd)
        return self.measure(frozen, method or f"joint-{cost}", t0, cost=cost, target=float(target), budget=label,
                            search_end_cost=end_cost, hard_cost=hard, target_error=hard / float(target) - 1.0,
                            moves=(frozen.projection or {}).get("moves"),
                            checked_bytes=(frozen.projection or {}).get("flatbuffer_bytes"))

    def l1(self, bits, target, label):
        """L1-ranked channel pruning to ``target`` bytes of weights, then uniform QAT at ``bits``."""
        import keras

        import tfjpq

        t0 = time.time()
        keras.utils.set_random_seed(self.seed)
        with warnings.catch_warnings():  # the choices are set by hand below: no cost in the loss is the point
            warnings.filterwarnings("ignore", message=r"tfjpq\.wrap\(strength=0\)", category=UserWarning)
            search = tfjpq.wrap(self.float_model, weight_bits=(0, bits), act_bits=(8,), cost="size", strength=0.0)
        scores = {}
        for layer in search.search_layers():
            k = np.abs(np.moveaxis(layer.kernel.numpy(), layer.channel_axis, -1))
            l1 = k.reshape(-1, k.shape[-1]).mean(0)
            scores[layer.group] = scores.get(layer.group, 0.0) + l1 / (l1.mean() + 1e-12)
        choices = search.precision_choices()

        def set_ratio(r):
            for c in choices:
                bits_ = list(c.bits)
                alpha = np.full((len(bits_), c.channels), -10.0, np.float32)
                keep = np.ones(c.channels, bool)
                if c.prunable:
                    n = max(1, int(round(r * c.channels)))
                    keep[:] = False
                    keep[np.argsort(-scores[c.name], kind="stable")[:n]] = True
                    alpha[bits_.index(0), ~keep] = 10.0
                alpha[bits_.index(bits), keep] = 10.0
                c.alpha.assign(alpha)
            return float(search.hard_cost())

        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if set_ratio(mid) <= target else (lo, mid)
        set_ratio(lo)
        frozen = tfjpq.freeze(search)
        self._fit(frozen, 1e-3, self.args.search_epochs)
        self._fit(frozen, 3e-4, self.args.finetune_epochs)
        return self.measure(frozen, f"l1-w{bits}", t0, bits=bits, target=float(target), budget=label,
                            keep_ratio=lo, hard_cost=float(frozen.hard_cost()))

    def tfmot(self, sparsity, bits, workdir):
        """tfmot prune-then-QAT in its own process; the flatbuffer is measured here."""
        from tflm_export import lean

        io_path = os.path.join(workdir, f"{self.arch}_{self.seed}.npz")
        if not os.path.exists(io_path):
            arrays = {"x": self.x, "y": self.y, "cal": self.x[:200], "num_classes": int(self.y.max()) + 1}
            for layer in self.float_model.layers:
                for i, w in enumerate(layer.get_weights()):
                    arrays[f"w/{layer.name}/{i}"] = w
            np.savez(io_path, **arrays)
        out = os.path.join(workdir, f"tfmot_{self.arch}_{self.seed}_{sparsity}_{bits}.tflite")
        cmd = [sys.executable, os.path.join(HERE, "tfmot_baseline.py"), "--io", io_path, "--arch", self.arch,
               "--sparsity", str(sparsity), "--bits", str(bits), "--seed", str(self.seed), "--out", out,
               "--prune-epochs", str(self.args.search_epochs), "--qat-epochs", str(self.args.finetune_epochs)]
        t0 = time.time()
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.time() - t0
        method = f"tfmot-w{bits}"
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-3:])
            return dict(model=self.arch, seed=self.seed, method=method, sparsity=sparsity, bits=bits,
                        failed=f"exit {proc.returncode}: {tail}", wall_s=wall)
        info = json.loads(open(out + ".json").read())
        flat = open(out, "rb").read()
        run, acc = self.tflm_top1(flat)
        lean_bytes = lean.strip(flat)
        return dict(model=self.arch, seed=self.seed, method=method, sparsity=sparsity, bits=bits, tflm_acc=acc,
                    flash_bytes=len(lean_bytes), converter_bytes=len(flat), wall_s=wall,
                    train_s=info["train_s"], measured_sparsity=info["sparsity"],
                    arena_bytes=int(run.arena_bytes), latency_ms=float(run.latency_ms))


# --------------------------------------------------------------------------- plan

def budgets(w8, w4, w2):
    """Named budgets: the uniform costs, geometric midpoints, 40 % of w8 (the issue's -60 %), and below w2."""
    return {"w8": w8, "w8-w4": (w8 * w4) ** 0.5, "w4": w4, "0.4w8": 0.4 * w8, "w4-w2": (w4 * w2) ** 0.5, "w2": w2,
            "0.7w2": 0.7 * w2, "0.5w2": 0.5 * w2}


def plan(quick):
    """(what, arguments) of every point for one (model, seed)."""
    if quick:
        return {"uniform": [8, 4, 2], "joint-size": ["w2"], "joint-tflm": ["w2"], "l1": [(4, "w2")],
                "tfmot": [(0.5, 8)]}
    # "tflm" budgets are flatbuffer bytes: 0.4w8 and 0.5w2 are the two byte targets
    return {"uniform": [8, 4, 2],
            "joint-size": ["w8", "w8-w4", "w4", "w4-w2", "w2", "0.7w2", "0.5w2"],
            "joint-tflm": ["w8", "w8-w4", "w4", "0.4w8", "w2", "0.7w2", "0.5w2"],
            "l1": [(8, "w4"), (8, "w2"), (4, "w2"), (4, "0.5w2")],
            "tfmot": [(0.5, 8), (0.5, 4)]}


METHODS = ("uniform", "joint-size", "joint-tflm", "l1", "tfmot")
FLOAT_EPOCHS = {"resnet8": 15, "ds_cnn": 20}  # a converged float start (DS-CNN learns slower per epoch, is cheap)
DISTILL = 0.5


def run_all(args):
    import keras

    from tfjpq import datasets

    data = datasets.load(args.dataset)
    (x, y), (xt, yt) = data
    if args.train_samples:
        data = ((x[:args.train_samples], y[:args.train_samples]), (xt, yt))
    out_json = args.out
    rows = []
    previous = None
    if args.append and os.path.exists(out_json):  # keep what this run does not redo
        previous = json.load(open(out_json))
        rows = [r for r in previous["rows"]
                if r["model"] not in args.models or r["seed"] not in args.seeds or not _redone(r, args.methods)]
    meta = dict(command="python benchmarks/" + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                date=datetime.date.today().isoformat(), dataset=args.dataset, models=args.models, seeds=args.seeds,
                float_epochs=args.float_epochs, search_epochs=args.search_epochs,
                finetune_epochs=args.finetune_epochs, joint_search_epochs=args.joint_search_epochs,
                distill=args.distill, train_samples=len(data[0][0]), test_samples=len(xt))
    if previous:
        meta["command"] = previous["meta"]["command"] + "` then `" + meta["command"]
        meta["total_s_before"] = previous["meta"].get("total_s", 0) + previous["meta"].get("total_s_before", 0)
    todo = {k: (v if k in args.methods else []) for k, v in plan(args.points == "few").items()}
    workdir = tempfile.mkdtemp(prefix="tfjpq-pareto-")
    t_all = time.time()

    def save():
        os.makedirs(os.path.dirname(out_json), exist_ok=True)
        tmp = out_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        os.replace(tmp, out_json)

    def add(row):
        rows.append(row)
        save()
        if row.get("failed"):
            print(f"  {row['method']:<12} FAILED ({row['failed'][:200]})", flush=True)
            return
        extra = f" target {row['budget']:<6} err {_target_error(row):+.1%}" if "target_error" in row else (
            f" {row['budget']:<6}" if "budget" in row else "")
        print(f"  {row['method']:<12}{extra} acc {row['tflm_acc']:.3f}  flash {row['flash_bytes']:>7,} B  "
              f"{row['wall_s']:5.0f} s  [{time.time() - t_all:5.0f} s total]", flush=True)

    for arch in args.models:
        for seed in args.seeds:
            keras.backend.clear_session()
            gc.collect()
            b = Bench(arch, seed, data, args)
            if not any(r["model"] == arch and r["seed"] == seed and r["method"] == "float" for r in rows):
                rows.append(dict(model=arch, seed=seed, method="float", tflm_acc=None, keras_acc=b.float_acc,
                                 wall_s=b.float_s))
            print(f"== {arch} seed {seed}: float {b.float_acc:.3f} after {b.float_epochs} epochs "
                  f"({b.float_s:.0f} s)", flush=True)
            costs = {c: {f"w{w}": b.uniform_cost(w, c) for w in (8, 4, 2)} for c in ("size", "tflm")}
            named = {c: budgets(v["w8"], v["w4"], v["w2"]) for c, v in costs.items()}
            for bits in todo["uniform"]:
                add(b.uniform(bits))
            for cost in ("size", "tflm"):
                for label in todo[f"joint-{cost}"]:
                    add(b.joint(cost, named[cost][label], label))
            for bits, label in todo["l1"]:
                add(b.l1(bits, named["size"][label], label))
            for sparsity, bits in todo["tfmot"]:
                add(b.tfmot(sparsity, bits, workdir))
    meta["total_s"] = time.time() - t_all
    save()
    return {"meta": meta, "rows": rows}


def _redone(row, methods):
    m = row["method"]
    return any(m == k or m.startswith(k + "-") for k in methods)


# --------------------------------------------------------------------------- analysis

def _target_error(row):
    """How far a joint point landed from its target: in the search's cost model, except for the "tflm" cost,
    whose target is the flatbuffer's bytes and is measured on the converted file."""
    if row.get("cost") == "tflm" and "flash_bytes" in row:
        return row["flash_bytes"] / row["target"] - 1.0
    return row["target_error"]


def _points(rows, arch):
    """{series: [(label, mean bytes, mean acc, std acc, n, mean wall)]} over seeds."""
    groups = {}
    for r in rows:
        if r["model"] != arch or r.get("failed") or r["method"] == "float":
            continue
        label = r.get("budget") or (f"s{r['sparsity']}" if "sparsity" in r else "")
        groups.setdefault((r["method"], label), []).append(r)
    out = {}
    for (method, label), rs in groups.items():
        acc = np.array([r["tflm_acc"] for r in rs])
        out.setdefault(method, []).append(dict(
            label=label, bytes=float(np.mean([r["flash_bytes"] for r in rs])), acc=float(acc.mean()),
            acc_std=float(acc.std()), n=len(rs), wall=float(np.mean([r["wall_s"] for r in rs])),
            target_error=(float(np.mean([_target_error(r) for r in rs])) if "target_error" in rs[0] else None),
            max_target_error=(float(np.max(np.abs([_target_error(r) for r in rs])))
                              if "target_error" in rs[0] else None),
            converter_bytes=(float(np.mean([r["converter_bytes"] for r in rs])) if "converter_bytes" in rs[0]
                             else None)))
    for v in out.values():
        v.sort(key=lambda p: -p["bytes"])
    return out


def _joint(pts):
    return [p for m in ("joint-size", "joint-tflm") for p in pts.get(m, [])]


def targets(rows, arch):
    """The issue's targets for one model, with the measured figures."""
    pts = _points(rows, arch)
    joint = _joint(pts)
    uni = {p_m: pts[p_m][0] for p_m in ("uniform-w8", "uniform-w4", "uniform-w2") if p_m in pts}
    out = {}
    if "uniform-w8" in uni and joint:
        w8 = uni["uniform-w8"]
        ok = [p for p in joint if p["acc"] >= w8["acc"] - ISO]
        best = min(ok, key=lambda p: p["bytes"]) if ok else None
        out["vs_w8"] = dict(w8_bytes=w8["bytes"], w8_acc=w8["acc"], best=best,
                            saving=(1 - best["bytes"] / w8["bytes"]) if best else None, goal=0.60,
                            met=bool(best and 1 - best["bytes"] / w8["bytes"] >= 0.60))
    if "uniform-w2" in uni and joint:
        w2 = uni["uniform-w2"]
        small = [p for p in joint if p["bytes"] <= 0.5 * w2["bytes"]]
        best = max(small, key=lambda p: p["acc"]) if small else None
        ok = [p for p in joint if p["acc"] >= w2["acc"] - ISO]
        smallest = min(ok, key=lambda p: p["bytes"]) if ok else None
        out["vs_w2"] = dict(w2_bytes=w2["bytes"], w2_acc=w2["acc"], best_at_half=best,
                            smallest_at_w2_acc=smallest,
                            ratio=(smallest["bytes"] / w2["bytes"]) if smallest else None,
                            met=bool(smallest and smallest["bytes"] <= 0.5 * w2["bytes"]))
    dom = []
    for m in ["uniform-w4"] + sorted(k for k in pts if k.startswith(("l1-", "tfmot-"))):
        for p in pts.get(m, []):
            better = [q for q in joint if q["bytes"] <= p["bytes"] and q["acc"] >= p["acc"]]
            dom.append(dict(method=m, label=p["label"], bytes=p["bytes"], acc=p["acc"], dominated=bool(better),
                            by=(min(better, key=lambda q: q["bytes"])["label"] if better else None)))
    out["dominance"] = dom
    errs = [_target_error(r) for r in rows if r["model"] == arch and "target_error" in r and not r.get("failed")]
    out["target_errors"] = dict(max_abs=float(np.max(np.abs(errs))) if errs else None, n=len(errs),
                                within=int(sum(abs(e) <= 0.03 for e in errs)))
    tflm_rows = [r for r in rows if r["model"] == arch and r["method"] == "joint-tflm" and not r.get("failed")]
    out["tflm_flash_vs_target"] = [r["flash_bytes"] / r["target"] - 1 for r in tflm_rows]
    walls = {m: float(np.mean([p["wall"] for p in v])) for m, v in pts.items()}
    joint_wall = np.mean([walls[m] for m in ("joint-size", "joint-tflm") if m in walls]) if joint else None
    seq = [walls[m] for m in walls if m.startswith(("l1-", "tfmot-"))]
    out["wall"] = dict(per_method=walls, joint=joint_wall, sequential=float(np.mean(seq)) if seq else None,
                       ratio=(joint_wall / np.mean(seq)) if seq and joint_wall else None, goal=0.6)
    return out


# --------------------------------------------------------------------------- report

COLORS = {"uniform": "#444444", "joint-size": "#d62728", "joint-tflm": "#ff7f0e", "l1-w8": "#1f77b4",
          "l1-w4": "#17becf", "tfmot-w8": "#2ca02c", "tfmot-w4": "#98df8a"}


def plot_pareto(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["meta"]["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, arch in zip(axes[0], models):
        pts = _points(result["rows"], arch)
        uni = [p | {"m": m} for m in ("uniform-w8", "uniform-w4", "uniform-w2") for p in pts.get(m, [])]
        if uni:
            ax.errorbar([p["bytes"] / 1000 for p in uni], [100 * p["acc"] for p in uni],
                        yerr=[100 * p["acc_std"] for p in uni], fmt="s", color=COLORS["uniform"], label="uniform QAT")
            for p in uni:
                ax.annotate(p["m"][-2:], (p["bytes"] / 1000, 100 * p["acc"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        for m in sorted(pts):
            if m.startswith("uniform"):
                continue
            ps = sorted(pts[m], key=lambda p: p["bytes"])
            ax.errorbar([p["bytes"] / 1000 for p in ps], [100 * p["acc"] for p in ps],
                        yerr=[100 * p["acc_std"] for p in ps], fmt="o-" if m.startswith("joint") else "^--",
                        color=COLORS.get(m, None), label=m, ms=5, capsize=2)
        ax.set_xscale("log")
        ax.set_xlabel("flatbuffer bytes (KB, log)")
        ax.set_ylabel("TFLM top-1 accuracy (%)")
        ax.set_title(f"{arch} on {result['meta']['dataset']}, mean of {len(result['meta']['seeds'])} seed(s)")
        lo = min([100 * p["acc"] for v in pts.values() for p in v] + [100])
        ax.set_ylim(max(lo - 2, 0), 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layers(result, path):
    """Per-layer mean bit-width of the kept channels and kept share, joint-size, first seed of each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["meta"]["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.6 * len(models)), squeeze=False)
    for row_axes, arch in zip(axes, models):
        seed = result["meta"]["seeds"][0]
        rs = [r for r in result["rows"] if r["model"] == arch and r["seed"] == seed and r["method"] == "joint-size"
              and not r.get("failed")]
        rs.sort(key=lambda r: -r["target"])
        if not rs:
            continue
        names = list(rs[0]["layers"])
        bits = np.zeros((len(names), len(rs)))
        kept = np.zeros((len(names), len(rs)))
        for j, r in enumerate(rs):
            for i, n in enumerate(names):
                h = {int(b): c for b, c in r["layers"][n].items()}
                total = sum(h.values())
                alive = sum(c for b, c in h.items() if b > 0)
                kept[i, j] = alive / max(total, 1)
                bits[i, j] = sum(b * c for b, c in h.items() if b > 0) / max(alive, 1)
        for ax, mat, title, cmap, vmax in ((row_axes[0], bits, "mean bits of kept channels", "viridis", 8),
                                           (row_axes[1], kept, "kept share of channels", "magma", 1)):
            im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xticks(range(len(rs)), [r["budget"] for r in rs], fontsize=8)
            ax.set_xlabel("budget (joint-size)")
            ax.set_title(f"{arch} seed {seed}: {title}", fontsize=9)
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    ax.text(j, i, f"{mat[i, j]:.1f}" if vmax == 8 else f"{mat[i, j]:.2f}", ha="center",
                            va="center", fontsize=6, color="w" if mat[i, j] < 0.6 * vmax else "k")
            fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_pct(v):
    return "–" if v is None else f"{100 * v:.1f}%"


def _comparison(result, previous):
    """Lines of a table: the points measured both now and in ``previous`` (an older pareto.json)."""
    then = previous["meta"].get("defaults", "min-max weight scale, soft prune gate, controller without the ramp")
    lines = ["### Against the previous run", "",
             f"The points measured both now and in `{previous['path']}` ({previous['meta']['date']}; the defaults "
             f"of then: {then}) whose bytes or accuracy differ. Mean over seeds; bytes / TFLM accuracy.",
             "", "| model | method | budget | then | now |", "|---|---|---|---:|---:|"]
    for arch in result["meta"]["models"]:
        new = {(m, p["label"]): p for m, ps in _points(result["rows"], arch).items() for p in ps}
        old = {(m, p["label"]): p for m, ps in _points(previous["rows"], arch).items() for p in ps}
        for key in sorted(set(new) & set(old), key=lambda k: (k[0], -new[k]["bytes"])):
            o, n = old[key], new[key]
            if (o["bytes"], o["acc"]) == (n["bytes"], n["acc"]):
                continue
            lines.append(f"| {arch} | {key[0]} | {key[1]} | {o['bytes']:,.0f} B, {100 * o['acc']:.1f}% | "
                         f"{n['bytes']:,.0f} B, {100 * n['acc']:.1f}% |")
    return lines + [""]


def markdown(result, figs, previous=None):
    meta = result["meta"]
    lines = ["# Benchmark results", "",
             "## Pareto: joint search vs uniform QAT, L1 channel pruning and tfmot (`benchmarks/pareto.py`)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; total {(meta.get('total_s', 0) + meta.get('total_s_before', 0)) / 60:.0f} min "
             "on the 2-core CI machine.  ",
             *([f"Note: {meta['note']}  "] if meta.get("note") else []),
             f"Data: {meta['dataset']} ({meta['train_samples']} training, {meta['test_samples']} test images); "
             f"seeds {meta['seeds']}; every pipeline starts from the same float model "
             f"({meta['float_epochs'] or FLOAT_EPOCHS} epochs) and gets {meta['search_epochs']} + {meta['finetune_epochs']} epochs "
             "(lr 1e-3, then 3e-4). The joint search searches for the first "
             f"{meta.get('joint_search_epochs', meta['search_epochs'])} of them, then fine-tunes the frozen model"
             + (f", with distillation from the float start (weight {meta['distill']})" if meta.get("distill") else "")
             + ".  ",
             "Accuracy: TFLM top-1 of the converted flatbuffer on the test images (mean ± std over seeds). "
             "Bytes: the flatbuffer (tfjpq's lean export; tfmot's converter file in brackets, the same file "
             "through `lean.strip` first). Budgets are named after the uniform model whose cost they equal in "
             "the pipeline's cost model (`w8-w4`: geometric midpoint).", ""]
    for arch in meta["models"]:
        pts = _points(result["rows"], arch)
        floats = [r["keras_acc"] for r in result["rows"] if r["model"] == arch and r["method"] == "float"]
        lines += [f"### {arch}", "", f"Float start: {100 * np.mean(floats):.1f}% (Keras). Target error: "
                  "\"size\" points in the search's cost model (bytes of weights), \"tflm\" points on the "
                  "converted flatbuffer.", "",
                  "| method | budget | flash bytes | TFLM accuracy | seeds | target error | wall s |",
                  "|---|---|---:|---|---:|---:|---:|"]
        order = ["uniform-w8", "uniform-w4", "uniform-w2", "joint-size", "joint-tflm", "l1-w8", "l1-w4",
                 "tfmot-w8", "tfmot-w4"]
        for m in order + sorted(set(pts) - set(order)):
            for p in pts.get(m, []):
                b = f"{p['bytes']:,.0f}" + (f" ({p['converter_bytes']:,.0f})" if p["converter_bytes"] else "")
                te = "" if p["target_error"] is None else f"{100 * p['target_error']:+.1f}%"
                lines.append(f"| {m} | {p['label']} | {b} | {100 * p['acc']:.1f} ± {100 * p['acc_std']:.1f} | "
                             f"{p['n']} | {te} | {p['wall']:.0f} |")
        fails = [r for r in result["rows"] if r["model"] == arch and r.get("failed")]
        for r in fails:
            lines.append(f"| {r['method']} | s{r.get('sparsity')} | failed | {r['failed'][:120]} | | | |")
        t = targets(result["rows"], arch)
        lines += ["", "Targets (mean of seeds; iso-accuracy = within 0.5 points):", ""]
        if "vs_w8" in t:
            v = t["vs_w8"]
            best = v["best"]
            lines.append(f"- Flash ≤ −60% vs uniform w8 at w8's accuracy ({100 * v['w8_acc']:.1f}%, "
                         f"{v['w8_bytes']:,.0f} B): " + (
                             f"smallest joint point within 0.5 pt is {best['label']} ({best['bytes']:,.0f} B, "
                             f"{100 * best['acc']:.1f}%): {_fmt_pct(-v['saving'])}; "
                             if best else "no joint point within 0.5 pt; ") + ("**met**" if v["met"] else "**missed**"))
        if "vs_w2" in t:
            v = t["vs_w2"]
            s = v["smallest_at_w2_acc"]
            lines.append(f"- w2's accuracy ({100 * v['w2_acc']:.1f}%, {v['w2_bytes']:,.0f} B) at ≤ 50% of its bytes: " + (
                f"smallest joint point within 0.5 pt is {s['label']} ({s['bytes']:,.0f} B, "
                f"{100 * s['acc']:.1f}%), {100 * v['ratio']:.0f}% of w2's bytes; " if s else "none reaches it; ")
                + ("**met**" if v["met"] else "**missed**"))
        dom = t["dominance"]
        n_dom = sum(d["dominated"] for d in dom)
        lines.append(f"- Joint front dominates the baselines: {n_dom} of {len(dom)} baseline points dominated"
                     + ("" if n_dom == len(dom) else " (not: " + "; ".join(
                         f"{d['method']} {d['label']} {d['bytes']:,.0f} B {100 * d['acc']:.1f}%"
                         for d in dom if not d["dominated"]) + ")") + ".")
        te = t["target_errors"]
        if te["n"]:
            lines.append(f"- Targets within ±3%: {te['within']} of {te['n']} runs (largest error "
                         f"{100 * te['max_abs']:.1f}%; \"size\" in the search's cost model, \"tflm\" on the "
                         "converted flatbuffer).")
        if t["tflm_flash_vs_target"]:
            e = t["tflm_flash_vs_target"]
            lines.append(f"- `tflm` cost, real flatbuffer vs target: {100 * min(e):+.1f}% to {100 * max(e):+.1f}%.")
        w = t["wall"]
        if w["ratio"] is not None:
            lines.append(f"- Wall-clock per point: joint {w['joint']:.0f} s, sequential pipelines {w['sequential']:.0f} s "
                         f"(ratio {w['ratio']:.2f}; goal ≤ 0.6).")
        lines.append("")
    if previous:
        lines += _comparison(result, previous)
    lines += ["### What was tried for the misses", "",
              "- The recipe (`benchmarks/recipe.py`, docs/search.md \"The recipe\"): searching 1 of the 4 epochs and "
              "fine-tuning the frozen model for the rest, with distillation from the float start (2026-11).",
              "- Why the search lost to L1 + 4-bit QAT (docs/search.md, \"What the defaults change\"): freezing cut "
              "channels the soft model leaned on. On the digits CNN the soft search model scored 98.9% and the frozen "
              "one 82.5%; freezing only the widths gave 97.5%, only the pruning 90.3%. Three changes, now the "
              "defaults: a straight-through prune gate (a channel whose choice is 0 bits outputs zero during the "
              "search, with the soft relaxation's gradient), an MSE-clipped weight scale (min-max leaves most 2-bit "
              "weights at zero), and a budget ramp with a faster controller (the old one did not reach tight budgets "
              "in one search epoch once the gate made pruning honest: 178 channels moved at `freeze`).",
              "- Tried and not kept: starting the logits at the budget by weight magnitude (`init=\"budget\"`: "
              "-3.8 and -6.5 points on ResNet-8 at 0.4 w8 and 0.5 w2, one seed), a proportional gain of 10 "
              "(-9.3 points at 0.5 w2), the old controller rate with the ramp (ResNet-8 at 0.5 w2 collapsed to "
              "68.9%, 270 moves).",
              "- The pull stops 10% under the budget (`budget.GAIN_UNDER` 3 -> 10) and a `tflm` budget is a "
              "ceiling (the converted file must land in [target - 3%, target], not within +-3%). Against the "
              "same 3 seeds with the old values: ResNet-8 0.4 w8 33,517 -> 32,595 B at 97.3% both times (-59.7% -> "
              "-60.8% vs w8: the first target met), the rest within noise except `tflm` w4 (97.4 -> 96.7%) and "
              "0.5 w2 (89.6 -> 87.8%), which now land 1.6-1.7% lower; DS-CNN `size` w4-w2 77.9 +- 18.8 -> "
              "92.8 +- 1.3% (no seed collapses), but `tflm` w4 94.6 -> 92.5% and w2 94.3 -> 93.3% at 2-3% fewer "
              "bytes.",
              "- Before the search measured its file, on DS-CNN with the `tflm` cost `freeze`'s projection "
              "counted 68-180 moves per run (ResNet-8: 0-42): the search ended 5-19% above the budget, and the "
              "cost model put the file 144-291 B (2-7%) under the converted one, because the lean flatbuffer "
              "writes each shape vector once and layers of equal width share theirs until pruning makes them "
              "differ. Tried then (`benchmarks/front_points.py`, rows in `results/front_points_ds_cnn.json`; not "
              "kept) at w4, w2 and 0.7 w2: a shorter ramp (`RAMP_FRACTION` 0.25) gave 93.1 / 92.8 / 31.5% "
              "against 92.5 / 93.3 / 54.3%; a faster controller (`RATE` 0.6) 91.7 / 92.3 / 68.4%.",
              "- **The search measures its file** (`budget.measure_offset`, the default with `cost=\"tflm\"`): "
              "one conversion when the budget ramp reaches the target and one after each epoch; the controller "
              "steers the modelled cost plus the measured difference, and `freeze` projects onto the budget less "
              "it, so the first check usually lands. Against the same seeds and float starts without it "
              "(`results/pareto_2026-12-01_before.json`): "
              "ResNet-8 gains 1.8-2.6 points at 0.7 and 0.5 w2; DS-CNN gains 2 points at w4 and is within its "
              "seed noise elsewhere; at 0.7 w2 it still collapses on some seeds.",
              "- Tried on top of it or just before it (rows in `results/front_points_2026-12-01.json`; not kept): "
              "`weight_bits=(0, 4, 8)` (before the offset, seeds 0 / 1): ResNet-8 0.5 w2 91.4 / 70.8% against "
              "87.2 / 89.5%, 0.7 w2 94.5 / 94.2% against 94.7 / 93.4%; DS-CNN w4 93.2 / 93.5% against 90.2 / "
              "94.5%, w2 92.9 / 94.7% against 93.0 / 94.3%, 0.7 w2 20.9 / 37.8% against 22.1 / 71.9%: no "
              "consistent gain, and a seed collapses at the tightest budget. A floor of a quarter of each "
              "group's channels (`min_channels=0.25`, seed 0): ResNet-8 0.5 w2 89.1% (87.9% with (0, 4, 8)) "
              "against 87.2%; DS-CNN 0.7 w2 25.9% (53.0% with (0, 4, 8)) against 22.1%, w4 unchanged. A "
              "straight-through search (`mode=\"hard\"`, with the offset, 3 seeds): DS-CNN w4 93.9% against "
              "94.5%, 0.7 w2 53.8% against 46.2%; ResNet-8 0.5 w2 78.9% against 90.4% (its search ends 27-32% "
              "under the budget and the projection adds 50-75 moves back). Ordering `freeze`'s moves by logit "
              "margin per byte saved (`budget.MOVE_ORDER = \"margin_per_byte\"`, 3 seeds): DS-CNN w8 95.1% "
              "against 93.6%, w4 94.6% against 94.5%; ResNet-8 0.4 w8 96.8% both, 0.5 w2 89.0% against 90.4%.",
              "- The DS-CNN collapse below about 4.4 KB is training, not export: the Keras accuracy of the frozen, "
              "fine-tuned model at 0.7 w2 (seed 0) is 22.5%, its TFLM accuracy 22.1%. The search there keeps "
              "most channels at 2 bits and the last layers at a few channels each; L1 + 4-bit keeps 13 of 32 in "
              "every layer at 4 bits (76% at 3.9 KB).",
              "- DS-CNN: the faster controller overshoots its small groups (at the w4 \"size\" budget the search ended "
              "14% under it and `freeze` moved 26 channels back), and below about 4.4 KB the flatbuffer is mostly "
              "graph (1.4 KB measured fixed part) and per-channel scales and biases: every joint point there "
              "prunes most channels and collapses.",
              "- Wall-clock: every pipeline gets the same epochs here, so the joint search cannot be 0.6x of a "
              "sequential pipeline; its extra time is the search epoch (1.0-1.2x of a QAT epoch), the teacher's "
              "forward pass in every distilled step and, for `tflm`, the flatbuffer conversions that check the "
              "target.",
              "- **The flatbuffer checks keep a margin** (`budget.ceiling_window`, 2026-12-01, session 8): `freeze` "
              "checks the file before the fine-tune, and the fine-tune moves it by a few bytes (a LUT table holds "
              "as many values per channel as its channel with the most distinct values uses); one ResNet-8 0.7 w2 "
              "file was checked at -2.83% and ended at -3.003%. The checks now accept a file only inside "
              "[target - 3%, target] less a tenth of the tolerance (at least 16 B) on each side. The `joint-tflm` "
              "rows above are with it; \"Against the previous run\" lists the points it changed (same seeds and "
              "float starts). The 42 `tflm` files now land 0.7-2.7% under their budgets; 84 of 84 runs are "
              "within the tolerance (83 before).",
              "- Tried after it (rows in `results/front_points_2026-12-01b.json`; not kept). **Searching 2 of the 4 "
              "epochs** (fine-tuning 1 + 1): ResNet-8 (3 seeds) 0.5 w2 93.0% against 90.1% (93.2 / 93.0 / 92.8 "
              "against 90.3 / 92.8 / 87.2) at 13,080 B, 48.9% of w2's bytes at 1.4 points above w2's accuracy: "
              "the second target would be met; but 0.7 w2 95.2% against 96.2%, w4 96.9% against 97.3%, the rest "
              "within 0.2. DS-CNN (seeds 0 / 1): w8 95.6% against 94.6%, w4 92.9% against 95.0%, 0.4 w8 12.0% "
              "against 17.4%, 0.7 w2 14.8% against 36.2%, the rest within 0.2: one recipe for both models loses "
              "more than it gains. **The ramp over the whole search epoch** (`RAMP_FRACTION` 1.0, ResNet-8, 3 "
              "seeds): 0.5 w2 87.8% against 90.1%, 0.7 w2 93.5% against 96.2%; the search ends 8-41% above the "
              "budget and the projection makes 13-77 moves, so the gain of the longer search is the time at "
              "the budget, not a slower descent. On DS-CNN, a faster logit optimizer (`Adam(0.05)`, 3 seeds): "
              "0.7 w2 47.0% against 44.2%, w4 93.1% against 94.5%; a strength cap (`MAX_STRENGTH` 3 / 10, seed "
              "0): 0.7 w2 34.5 / 54.0% against 21.9%, w4 95.1% (cap 3) against 95.1%; seed 1 with cap 3: 28.3% "
              "against 50.6%.",
              "- Why DS-CNN collapses at tight budgets (a trace of the search, 0.7 w2, seed 0): one search epoch "
              "is 63 steps. For the first 24 the hard cost does not move (the logits start 0.25-1.0 apart and "
              "need about 25 steps of `Adam(0.02)` to flip an argmax), while the ramp's goal falls and the "
              "controller's multiplier winds up: the strength goes from 0.05 to 43 by step 56. The argmaxes "
              "then flip in a burst (8,824 -> 4,934 B in 24 steps) under a strength where the cost swamps the "
              "task, and the soft search model ends at 11% test accuracy before `freeze`. Holding the ramp's "
              "goal at no less than 0.9x the current cost (a prototype, removed) starves the search instead: it "
              "barely moves, `freeze` makes 130-440 moves, and ResNet-8 0.5 w2 falls to 80.5% (seeds 0 / 1, "
              "against 91.6%), DS-CNN w4 to 64.5% (3 seeds, against 94.5%). Integrating the multiplier on the soft "
              "(expected) cost, scaled to the hard cost at the ramp's start (a prototype, removed; 3 seeds): "
              "ResNet-8 0.5 w2 90.2% against 90.1%, 0.7 w2 94.7% against 96.2%; DS-CNN 0.7 w2 41.2% against "
              "44.2%, w4 93.6% against 94.5%. Next leads: docs/dev_notes.md.",
              "- At 0.5 w2 the ResNet-8 search thins `block3_conv1`, the first convolution of the last residual "
              "block, to 1-4 of its 64 channels on every seed (its channels also drop `block3_conv2`'s input "
              "rows, and the block's shortcut carries the signal), and keeps 63-64 of `block3_conv2`'s channels, "
              "at 2 bits; "
              "L1 + 4-bit keeps 31 of 64 in both.",
              "- **Calibrated on a trained file, and a projection per byte with direct prunes** (2026-12-01, "
              "session 9; the `joint-tflm` rows above are with both, the `joint-size` rows' code path is unchanged, "
              "and \"Against the previous run\" lists what they changed, same seeds and float starts). "
              "In a model just wrapped every "
              "activation clip is 6.0, and the lean flatbuffer stores equal quantization records once, so the "
              "file `wrap` calibrated the `tflm` cost on was 80 B (DS-CNN) and 128 B (ResNet-8) smaller than the "
              "trained uniform w8 files: every named `tflm` budget was that much too low, and at `w8` the search "
              "had to cut 1.2% of DS-CNN's file. The calibration now spreads the clips first (ResNet-8: the "
              "modelled all-8-bit cost is the trained file's 83,168 B; DS-CNN 8,920 B, 16 B above its 8,904, "
              "where two clips get no gradient). `freeze` moved 69-184 DS-CNN channels, one precision step "
              "each, in order of logit margin: one channel moved from 8 to 4 bits saves nothing until its "
              "layer's split pays for the graph records. It now orders the moves by margin per byte and may "
              "prune a wide channel in one move (`budget.MOVE_ORDER`, `DIRECT_PRUNE`): 0-25 moves on DS-CNN, "
              "0-20 on ResNet-8. Against the rows before (3 seeds): ResNet-8 0.4 w8 97.2% against 96.8%, 0.5 w2 "
              "91.2% against 90.1%, 0.7 w2 95.3% against 96.2%, w4 96.7% against 97.3% (seed 1 at 95.7%), the "
              "rest within 0.2 points; DS-CNN w8 95.8% against 94.8%, w8-w4 95.5% against 94.7%, w2 93.4% against "
              "92.6%, w4 94.5% both, 0.7 w2 51.8% against 44.2%. DS-CNN at 0.4 w8 and 0.5 w2 still collapses "
              "(14.8% / 13.9%): the search keeps 8 bits there and prunes the later blocks to a few channels (0.4 "
              "w8, seed 0: 12 / 6 / 3 / 1 of 32 in the four blocks), where L1 keeps 13 of 32 in every layer. The "
              "same order for the `size` cost was tried and not kept (DS-CNN w4 92.3% against 94.0%, w4-w2 "
              "91.3% against 92.8%, w2 59.5% against 71.2%, 0.7 w2 53.6% against 70.6%; ResNet-8 0.7 w2 93.3% "
              "against 95.9%, the rest within 0.6): with `size` every single step saves bytes, so the `size` "
              "rows keep the margin order (`MOVE_ORDER = \"auto\"`).",
              "- Prototypes of session 9, not kept (rows in `results/front_points_2026-12-01c.json`, each with "
              "the code it ran; before the two changes above; mean of the seeds named, against the rows of "
              "then). Ordering the projection by the float model's Fisher-weighted weight distortion per byte "
              "(32 batches of squared gradients; seeds 0 / 1): DS-CNN w8 95.9% against 94.6%, w4 94.4% against "
              "95.0%, 0.7 w2 42.7% against 36.2% (still collapsed); ResNet-8 0.4 w8 97.0% against 96.8%, 0.5 w2 "
              "62.5% against 91.6% (seed 1 at 35.0%). Starting the search at the budget from an L1-ranked prune "
              "at 4 bits, below the all-4-bit cost (the channels came back during the search: it ended twice "
              "over the budget on ResNet-8 at 0.5 w2, and `freeze` made 130-200 moves): ResNet-8 0.5 w2 93.0% "
              "against 91.6%, but 0.7 w2 77.7% against 96.0% (seed 0); DS-CNN w2 66.9% against 93.0%, 0.7 w2 "
              "29.2% against 36.2%. Rewinding the weights (kernels, biases, BatchNorm) to the float start at "
              "`freeze`, so the search keeps only its choices (a trace had found the soft search model at 8% "
              "test accuracy at the search's end, ResNet-8 0.5 w2): ResNet-8 (seeds 0 / 1) 0.5 w2 92.6% against "
              "91.6%, 0.7 w2 96.0% against 96.5%, w4 97.0% against 97.2%, 0.4 w8 96.9% against 96.8%; DS-CNN "
              "(3 seeds) w2 93.4% against 92.6%, w4 93.5% against 94.5%, w8 95.6% against 94.8%: within the seed "
              "noise. After the two changes, a floor of a quarter of each group's channels on DS-CNN "
              "(seed 0): 0.7 w2 47.8% both, 0.4 w8 29.7% against 15.8%: still collapsed.",
              "- **Prune, then width, with the `tflm` cost, and group moves in the projection** (2026-12-01, session "
              "10; the `joint-tflm` rows above are with both, the `joint-size` rows' code path is unchanged, and "
              "\"Against the previous run\" lists what they changed, same seeds and float starts). In all 21 "
              "DS-CNN `tflm` runs before, every kept channel but at most one was at 8 bits: the search met its "
              "budgets by pruning alone. On the board pruning a DS-CNN channel saves its weights, bias, scale and "
              "the next layer's inputs, about 6 times what 8 -> 4 bits saves, so under one softmax the expected "
              "cost lies below every kept width's, every kept width's logit gets a gradient of the same sign, and "
              "Adam lowers them all at one speed. Now a channel's 0-bit logit alone sets its prune probability, "
              "the width logits compete among themselves and are shifted back to their logsumexp after each step "
              "(`tfjpq.search.PRUNE_THEN_WIDTH`, `\"auto\"`: where the cost prices splits), and a layer stored as "
              "one tensor gives each channel its share of the layer's saving as gradient "
              "(`tfjpq.tflm_cost.SHARED_WIDTH_GRADIENT`; the value stays exact). At w4 and below the DS-CNN "
              "searches then end 19-68% over their budgets (widths first, then pruning) and `freeze`'s projection "
              "does the rest (up to 89 moves); the ResNet-8 ones end 5-32% under them and the projection moves "
              "channels back up (10-43 moves). Downward, the projection may also move a group's channels at one "
              "width one step narrower in one move, which saves the split's operators too "
              "(`tfjpq.budget.GROUP_MOVES`; only where that does not jump below the window): without it, DS-CNN "
              "w4 was 93.5% and w2 91.7% (seed 2: 92.0% / 88.0%), with it 94.6% / 94.3%. Against the rows before "
              "(3 seeds): ResNet-8 w8 97.5% against 97.2%, w8-w4 97.4% against 97.0%, w4 97.2% against 96.7%, w2 "
              "96.4% against 96.7%, 0.7 w2 96.1% against 95.3%, 0.5 w2 92.9% against 91.2%, but 0.4 w8 96.4% "
              "against 97.2% (seeds 97.0 / 96.9 / 95.4), so the first target, met narrowly before, is missed "
              "again; DS-CNN 0.7 w2 84.9% against 51.8% (above L1 + 8-bit's 80.3% at 4,405 B), 0.4 w8 31.0% "
              "against 14.8%, w2 94.3% against 93.4%, w8 95.9% against 95.8%, w4 94.6% against 94.5%, w8-w4 "
              "95.5% both, 0.5 w2 12.6% against 13.9%. Forcing prune-then-width on for `size` too (seed 0): "
              "DS-CNN w4 93.1% against 94.0%, 0.7 w2 59.3% against 76.4%; ResNet-8 w4-w2 96.7% against 98.1%, "
              "0.5 w2 96.3% against 94.7%: `size` keeps the plain softmax.",
              "- Prototypes of session 10, not kept (rows in `results/front_points_2026-12-01d.json`, each with "
              "the code it ran; DS-CNN, `tflm`, seed 0 unless named; those after prune-then-width are against it "
              "without group moves, as they ran before them). The shared width gradient alone, with the "
              "plain softmax: the kept channels stayed at 8 bits (w4 94.4%, w2 92.8%, 0.7 w2 39.3%, 0.4 w8 "
              "16.9%). The logits' Adam with its second moment shared by a channel's options, so the steps keep "
              "the ratios of the gradients (plain softmax): still 8 bits (w4 94.8%, w2 93.7%, 0.7 w2 30.9%). "
              "Prune-then-width gradients without re-levelling the width logits: the widths went to 4 bits but "
              "the rising 4-bit logit held the prune probability down, the search stalled at 6,767 B for both "
              "0.7 w2 and 0.4 w8 (targets 4,463 / 3,568 B), and the projection made 59-88 moves (0.7 w2 70.6%, "
              "w4 92.1%, w2 80.4%). Without the shared width gradient (seeds 0 / 2): w4 94.4 / 93.9% against "
              "94.0 / 92.0%, w2 93.6 / 94.0% against 94.2 / 88.0%, 0.7 w2 74.6 / 62.4% against 84.4 / 80.1%. A "
              "barrier in the projection (a group's k-th prune of a pass scored x channels / channels left): "
              "0.4 w8 45.2% against 19.8%, 0.5 w2 18.1% against 10.7%, but 0.7 w2 73.9% against 84.4% and w4 "
              "91.6% against 94.0%. The logits' learning rate 0.05: 0.7 w2 66.3%, 0.5 w2 11.7%. A floor of a "
              "quarter of each group: 0.4 w8 34.9% against 19.8%. Searching 2 of the 4 epochs: the search now "
              "reaches the tight budgets, and collapses there (0.4 w8 10.9%, 0.5 w2 10.3%, 0.7 w2 29.7%, w4 "
              "86.0%): at DS-CNN's tightest budgets the soft search model does not survive the multiplier it "
              "takes to get there.",
              "- Prototypes of session 11, not kept (rows in `results/front_points_2026-12-02.json`, each with "
              "the code it ran; against the `joint-tflm` rows above, same seeds and float starts). **A probed "
              "projection**: `freeze` kept 256 training inputs and moved chunks of an eighth of a group's channels "
              "greedily, by the KL divergence of the outputs from the same weights at their widest choices per "
              "byte, before the margin passes. On the digits CNN stopped 4 steps into its search it kept 44-48% "
              "before the fine-tune where the margins kept 15-21%, but in the benchmark: ResNet-8 (3 seeds) 0.4 w8 "
              "96.4% both, 0.5 w2 93.2% against 92.9%; DS-CNN (seed 0) 0.7 w2 45.5% against 84.4%, w4 94.0% "
              "against 94.4%, w2 94.0% against 94.2%. What a move does before the fine-tune does not say what "
              "the fine-tune recovers: from the all-8-bit choice the same greedy left DS-CNN's four blocks at 7 / "
              "15 / 6 / 5 channels (27.4% at 0.4 w8). **The logits' Adam with its second moment shared by a "
              "group's channels**, option by option, so that a channel moves the faster the larger its net "
              "gradient (DS-CNN, seed 0): 0.4 w8 28.1% against 19.8%, 0.5 w2 24.2% against 10.7%, 0.7 w2 77.3% "
              "against 84.4%, w4 93.6% against 94.4%. **Starting at the budget** (`init=\"budget\"`, DS-CNN, seed "
              "0): 0.4 w8 40.5%, 0.5 w2 16.0%, 0.7 w2 70.8%, w4 93.3%. **`weight_bits=(0, 4, 8)`** (3 seeds): "
              "ResNet-8 0.4 w8 96.9% (97.4 / 97.1 / 96.2) against 96.4% at 32,685 B, which would meet the first "
              "target by 0.03 points, 0.5 w2 93.2% against 92.9%, 0.7 w2 96.3% against 96.1%, the rest within "
              "0.1; DS-CNN w2 93.1% against 94.3%, 0.7 w2 82.2% against 84.9%, 0.4 w8 24.3% against 31.0%, 0.5 w2 "
              "24.3% against 12.6%, the rest within 0.3: the gain is within ResNet-8's seed noise and DS-CNN "
              "loses, so the choices keep 2 bits. **A cold start** (`temperature=0.25`: the flat logits then put "
              "83% of a channel's weight on 8 bits instead of 41%, and each step of the logits moves the choice "
              "4 times as far): the searches end nearer their budgets (ResNet-8 0.4 w8 9-13% under it instead of "
              "20-25%; DS-CNN within -7% to +12% instead of up to 68% over, 1-18 projection moves). ResNet-8 "
              "(3 seeds) 0.4 w8 97.4% (97.4 / 97.7 / 97.0) against 96.4%, which meets the first target with "
              "room, but 0.5 w2 89.9% (90.4 / 85.9 / 93.5) against 92.9%, which loses the second; w4 97.1% "
              "against 97.2%. DS-CNN (seeds 0 / 1) 0.4 w8 30.0% against 21.7%, 0.7 w2 84.0% against 87.3%, w2 "
              "95.0% against 94.7%; w4 (3 seeds) 94.6% both. **L1 at the joint search's tightest "
              "DS-CNN files**: L1 + 4-bit QAT at 0.4 and 0.3 of w2's weight bytes scores 59.4% at 3,680 B and "
              "51.4% at 3,464 B (3 seeds), where the joint search scores 31.0% at 3,509 B and 12.6% at 3,146 B: "
              "below 4 KB DS-CNN keeps 9-11 of 32 channels per layer under any pipeline here and falls steeply, "
              "and the joint search falls first.",
              "- **A colder start with the `tflm` cost** (2026-12-02, session 11; the `joint-tflm` rows above are "
              "with it, the `joint-size` rows' code path is unchanged, and \"Against the previous run\" lists what "
              "it changed, same seeds and float starts). `wrap`'s initial softmax temperature is 0.5 where the "
              "cost prices layer splits (`tfjpq.search.DEFAULT_TEMPERATURE = \"auto\"`), 1.0 before. The flat "
              "logits then put 58% of a channel's weight on 8 bits instead of 41%, so the search epoch trains "
              "the weights less in a blend of narrower widths, and each step of the logits moves the choice twice "
              "as far. ResNet-8: 0.4 w8 97.5% (97.3 / 97.8 / 97.5) against 96.4%, so the first target is met "
              "(-60.5% at 0.1 point above w8's accuracy); 0.5 w2 93.6% against 92.9%; the other budgets within "
              "0.4 points (w8 97.1% against 97.5%, 0.7 w2 95.8% against 96.1%). DS-CNN: 0.7 w2 81.5% against "
              "84.9% (seeds 80.6 / 88.7 / 75.1), 0.4 w8 28.3% against 31.0%, 0.5 w2 18.9% against 12.6%, the "
              "rest within 0.4. The ResNet-8 searches still end 5-24% under their budgets and the DS-CNN ones "
              "up to 44% over.",
              "- **Less wall-clock for the same rows** (2026-12-02, session 14; every row above is measured "
              "with it): the frozen model's fine-tune no longer converts its file after "
              "every epoch (three conversions of each `joint-tflm` point here) nor traces its constant cost "
              "into the train step, and `freeze`'s projection prices only the layers a trial changes. Side by "
              "side on another machine, one float start (`front_points.py resnet8 --seeds 0`), a `joint-tflm` "
              "point's training time was 74 / 81 s (0.4 w8) and 76 s (0.7 w2) before and 60-69 s and 56 s "
              "after (0.74-0.84x), with the same accuracies and bytes (one of the old code's runs at 0.4 w8 ended "
              "elsewhere: docs/reliability.md, \"Determinism\"). The goal is 0.6x of a sequential pipeline; "
              "the rows above take 1.70x (ResNet-8) and 2.06x (DS-CNN).",
              "- **The DS-CNN rows rerun with the current code** (2026-12-02, session 15; every DS-CNN row, "
              "new float starts, on a slower 2-core machine without AVX-512, so its seconds are about twice the "
              "ResNet-8 rows' scale then; the ResNet-8 rows were rerun later, next bullet). "
              "Against the DS-CNN rows of before (other machine and float starts, code before session 14; "
              "\"Against the previous run\" lists them): `joint-tflm` w8 95.6% against 96.0%, w4 94.2% against "
              "94.8%, 0.7 w2 76.9% against 81.5%, w2 94.4% against 94.6%; uniform w4 95.4% against 96.0%, "
              "tfmot-w4 94.5% against 93.2%, so the joint front dominates 1 of 7 baseline points (2 before).",
              "- **The ResNet-8 rows rerun with the current code** (2026-12-07; every ResNet-8 row, "
              "new float starts, alone on a 2-core AMD EPYC machine with AVX2, 114 min). Against the rows of "
              "before (code before session 14, another machine; \"Against the previous run\" lists them): the "
              "baselines moved as much as the search. Uniform w2 scores 95.0% (92.7 / 96.5 / 95.7) against 91.6%, "
              "so the second target, met before at 49% of w2's bytes and 2.0 points above w2, is missed: the "
              "`tflm` search reaches 95.0% only at 0.7 of w2's file, and at 0.5 of it scores 89.4% (81.3 / 91.0 / "
              "95.9, against 93.6%). The first target stays met, now by the `tflm` w2 point (97.2% at 26,325 B, "
              "-68.3%); the 0.4 w8 point scores 97.0% (96.5 / 98.1 / 96.5) against 97.5% before, still "
              "within half a point of w8's 97.5%. The joint front dominates 5 of 7 baseline points (3 before): "
              "uniform w2 and L1 + 4-bit at w2's bytes are now below it, L1 + 4-bit at half of w2's bytes "
              "(95.0% at 14,235 B) and tfmot's pruned 8-bit model (97.6%) are not. At the w8 budget, where "
              "the search keeps almost everything at 8 bits, the joint pipeline scores 0.5-0.6 points under "
              "uniform 8-bit QAT (`tflm` 96.9%, `size` 97.0% against 97.5%).",
              "- **Without distillation on ResNet-8** (2026-12-07, after the rerun; rows in "
              "`results/front_points_2026-12-07.json`, `front_points.py resnet8 --seeds 0 1 2 "
              "joint:tflm:w8:distill=0 joint:tflm:0.4w8:distill=0`, the same float starts as the rows above; "
              "not yet a default). ResNet-8 `tflm` w8 97.8% (97.8 / 97.5 / 98.0) against 96.9% with the "
              "default distillation weight 0.5, above uniform 8-bit QAT (97.5%) and tfmot's pruned 8-bit model "
              "(97.6%) at 1.5% fewer bytes; 0.4 w8 97.4% (97.3 / 97.0 / 97.9) against 97.0% at 32,675 B; each "
              "point also trains in 103-121 s against 123-145 s (no teacher pass). The float start (97.4%) caps "
              "what distilling from it can reach. At 0.5 w2 (`joint:tflm:0.5w2:distill=0`) it is 93.3% (93.8 / "
              "92.1 / 94.0) against 89.4% (81.3 / 91.0 / 95.9) at 13,093 B: better and steadier, but still "
              "under w2's 95.0%, so the second target stays missed. Not measured yet: DS-CNN, where "
              "distillation was chosen (2026-11, `benchmarks/recipe.py`: +15 points at 0.7 w2), and the "
              "`size` cost; the default changes only after both models are rerun without it.", ""]
    lines += [f"![accuracy vs flash]({figs['pareto']})", "", f"![per-layer widths]({figs['pareto_layers']})", ""]
    return "\n".join(lines)


def write_reports(result, md_path, out_dir=RESULTS, previous=None):
    """RESULTS.md and the two PNGs (next to the json); ``previous``: an older result to compare with."""
    figs = {k: os.path.join(out_dir, f"{k}.png") for k in ("pareto", "pareto_layers")}
    plot_pareto(result, figs["pareto"])
    plot_layers(result, figs["pareto_layers"])
    text = markdown(result, {k: os.path.relpath(v, os.path.dirname(os.path.abspath(md_path))) for k, v in figs.items()},
                    previous)
    with open(md_path + ".tmp", "w") as f:
        f.write(text)
    os.replace(md_path + ".tmp", md_path)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="DS-CNN, one seed, short epochs, a few points")
    p.add_argument("--models", nargs="+", default=None, choices=["resnet8", "ds_cnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--float-epochs", type=int, default=None)
    p.add_argument("--search-epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--joint-search-epochs", type=int, default=1,
                   help="of --search-epochs, how many the joint search searches before it freezes (rest: fine-tune)")
    p.add_argument("--distill", type=float, default=DISTILL,
                   help="joint search: weight of distillation from the float start (0: none)")
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    p.add_argument("--out", default=os.path.join(RESULTS, "pareto.json"))
    p.add_argument("--md", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--points", choices=("all", "few"), default=None,
                   help="budgets per method: all (7 joint-size, 7 joint-tflm, 4 L1, 2 tfmot) "
                        "or few (one each, --quick's)")
    p.add_argument("--cache", default=os.path.join(os.path.dirname(HERE), "build", "pareto_cache"),
                   help="float weights per (model, seed), reused by later runs ('' to retrain)")
    p.add_argument("--append", action="store_true",
                   help="keep the rows already in --out that this run does not redo (other models, seeds or methods)")
    p.add_argument("--report-only", action="store_true", help="only redo RESULTS.md and the plots from --out")
    p.add_argument("--previous", default=None, help="an older pareto.json: RESULTS.md compares the common points")
    args = p.parse_args(argv)
    quick = args.quick
    args.points = args.points or ("few" if quick else "all")
    args.models = args.models or (["ds_cnn"] if quick else ["resnet8", "ds_cnn"])
    args.seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1, 2])
    args.float_epochs = args.float_epochs if args.float_epochs is not None else (3 if quick else None)
    args.search_epochs = args.search_epochs if args.search_epochs is not None else (1 if quick else 3)
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else 1
    if quick and args.train_samples is None:
        args.train_samples = 2000
    result = json.load(open(args.out)) if args.report_only else run_all(args)
    # the rows decide (an --append run, or one stopped part way, leaves other models' rows in the file)
    result["meta"]["models"] = sorted({r["model"] for r in result["rows"]}, key=["resnet8", "ds_cnn"].index)
    result["meta"]["seeds"] = sorted({r["seed"] for r in result["rows"]})
    previous = None
    if args.previous:
        previous = json.load(open(args.previous))
        previous["path"] = os.path.relpath(args.previous, os.path.dirname(os.path.abspath(args.md)))
    write_reports(result, args.md, os.path.dirname(os.path.abspath(args.out)), previous)
    return result


if __name__ == "__main__":
    main()
