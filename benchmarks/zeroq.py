"""ZeroQ on real offline data: data-free W8A8 calibration and Pareto mixed precision.

For a ResNet-8-shaped BN CNN (tfjpq.zoo.resnet8) trained on MNIST-5k (28x28) and on
sklearn digits (8x8), everything measured in the real TFLM interpreter
(tflm_export.convert + tflm_export.emulate, board nano33ble):

1. W8A8 int8 accuracy with calibration (representative_data, 64 samples each) from
   - real training images,
   - ZeroQ distilled data, the paper's settings (input term mean 0 / std 1),
   - ZeroQ distilled data told the preprocessing (pixels / 255): input_range=(0, 1), which
     also drops the (0, 1)-standardisation input term (input_stats="auto"),
   - plain Gaussian noise N(0, 1);
   each for SEEDS different draws (mean reported, every draw kept in the JSON).
2. Distillation time (64 samples, up to 500 Adam steps, early stop) on this machine.
3. Mixed precision (ZeroQ sensitivity on distilled data, DP over size bins) vs uniform
   weights at the same kernel bytes, activations int8, calibrated on distilled data: the
   data-free path end to end. Budgets: uniform 4-bit under the ideal cost (bits / 8 a
   weight), and uniform 4-bit and 3-bit under cost="tflm" (the bytes tflm_export really
   stores: int8 / INT4 / LUT).

Training is short (BN momentum 0.9 so the running statistics settle in a few epochs).
Writes benchmarks/results/zeroq.json and zeroq_frontier_<data>.png.

Run: .venv/bin/python benchmarks/zeroq.py            (about 5 minutes on 2 cores)
     .venv/bin/python benchmarks/zeroq.py --quick    (digits only, 1 seed)
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

import tflm_export  # noqa: E402
from tfjpq import datasets, zeroq, zoo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
N_CAL = 64
BITS = (2, 3, 4, 8)
CONFIGS = {
    "mnist5k": dict(load=datasets.load_mnist5k, shape=(28, 28, 1), epochs=5),
    "digits": dict(load=datasets.load_digits, shape=(8, 8, 1), epochs=15),
}


class _quiet:
    """Silence C++ / converter chatter on fds 1 and 2 (the TFLite converter prints a lot)."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in (*self.saved, self.null):
            os.close(fd)


def tflm_accuracy(model, calibration, x_test, y_test):
    """Convert with tflm_export (int8 activations, weights packed by their grid), run in TFLM."""
    with _quiet():
        art = tflm_export.convert(model, representative_data=calibration)
        run = tflm_export.emulate(art, board="nano33ble", inputs=x_test)
    acc = float(np.mean(np.argmax(run.outputs, -1) == y_test))
    return acc, art


def train(cfg):
    (x_tr, y_tr), (x_te, y_te) = cfg["load"]()
    model = zoo.resnet8(input_shape=cfg["shape"])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    t0 = time.perf_counter()
    zoo.train(model, x_tr, y_tr, epochs=cfg["epochs"], batch_size=32)
    train_s = time.perf_counter() - t0
    return model, (x_tr, y_tr), (x_te, y_te), train_s


def run_dataset(name, cfg, seeds):
    print(f"\n=== {name}: resnet8{cfg['shape']} ===", flush=True)
    model, (x_tr, y_tr), (x_te, y_te), train_s = train(cfg)
    float_acc = float(np.mean(np.argmax(model.predict(x_te, verbose=0), -1) == y_te))
    print(f"trained {cfg['epochs']} epochs in {train_s:.0f} s; float test accuracy {100 * float_acc:.2f}%", flush=True)
    out = {"model": f"resnet8 input {cfg['shape']}", "params": int(model.count_params()),
           "train_epochs": cfg["epochs"], "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
           "float_accuracy": float_acc, "calibration_samples": N_CAL}

    # 1 + 2: W8A8 calibration sources
    draws = {k: [] for k in ("real", "zeroq_paper", "zeroq_range01", "noise")}
    distill_runs = []
    x_syn_main = None
    for seed in seeds:
        rng = np.random.default_rng(seed)
        sets = {"real": x_tr[rng.permutation(len(x_tr))[:N_CAL]],
                "noise": rng.standard_normal((N_CAL,) + cfg["shape"]).astype(np.float32)}
        for key, kw in (("zeroq_paper", {}), ("zeroq_range01", {"input_range": (0.0, 1.0)})):
            c0, t0 = time.process_time(), time.perf_counter()
            x, info = zeroq.distill(model, num_samples=N_CAL, iterations=500, seed=seed, verbose=0,
                                    return_info=True, **kw)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            distill_runs.append({"variant": key, "seed": seed, "wall_s": wall, "cpu_s": cpu,
                                 "steps": info["steps"][0], "initial_loss": info["initial_loss"][0],
                                 "final_loss": info["final_loss"][0]})
            print(f"distill {key:<14} seed {seed}: {wall:5.1f} s wall, {cpu:5.1f} s CPU, "
                  f"{info['steps'][0]} steps, loss {info['initial_loss'][0]:.3g} -> {info['final_loss'][0]:.3g}",
                  flush=True)
            sets[key] = x
        if x_syn_main is None:
            x_syn_main = sets["zeroq_range01"]
        for key, x in sets.items():
            acc, _ = tflm_accuracy(model, x, x_te, y_te)
            draws[key].append({"seed": seed, "accuracy": acc,
                               "bn_loss": zeroq.bn_loss(model, x, input_stats=None)})
            print(f"  W8A8 calibrated on {key:<14}: {100 * acc:6.2f}%  (BN-statistics loss "
                  f"{draws[key][-1]['bn_loss']:.3g})", flush=True)
    out["w8a8"] = {k: {"mean_accuracy": float(np.mean([d["accuracy"] for d in v])), "draws": v}
                   for k, v in draws.items()}
    out["distill"] = {"runs": distill_runs,
                      "max_wall_s": max(r["wall_s"] for r in distill_runs),
                      "mean_wall_s": float(np.mean([r["wall_s"] for r in distill_runs])),
                      "mean_cpu_s": float(np.mean([r["cpu_s"] for r in distill_runs]))}

    # 3: mixed precision vs uniform at the same bytes, data-free (distilled data everywhere)
    t0 = time.perf_counter()
    sens = zeroq.sensitivity(model, x_syn_main, bits=BITS)
    sens_s = time.perf_counter() - t0
    print(f"sensitivity on distilled data in {sens_s:.1f} s:\n{sens}", flush=True)
    t0 = time.perf_counter()
    front = zeroq.pareto(model, sens, cost="tflm")
    dp_s = time.perf_counter() - t0
    png = os.path.join(RESULTS, f"zeroq_frontier_{name}.png")
    front.plot(png)
    out["sensitivity"] = {"seconds": sens_s, **sens.to_dict()}
    out["frontier"] = {"points": len(front), "bin_bytes": front.bin_bytes, "dp_seconds": dp_s, "plot": os.path.relpath(png, HERE)}
    mp = []
    for cost, ub in (("ideal", 4), ("tflm", 4), ("tflm", 3)):
        uni = zeroq.uniform_plan(sens, ub, cost=cost)
        plan = zeroq.pareto(model, sens, budget_bytes=uni.bytes, cost=cost)
        row = {"cost": cost, "uniform_bits": ub, "budget_bytes": uni.bytes}
        for key, p in (("uniform", uni), ("mixed", plan)):
            acc, art = tflm_accuracy(p.apply(model), x_syn_main, x_te, y_te)
            grid = {r["layer"]: r["grid_bits"] for r in art.report["tensors"]}
            row[key] = {"bits": p.bits, "bytes": p.bytes, "sensitivity": p.sensitivity, "accuracy": acc,
                        "tflm_file_bytes": art.size, "detected_grid_bits": grid}
            print(f"  {key:<8} @ {ub}-bit {cost:<5} budget {uni.bytes:>6} B: {p.bytes:>6} B, sensitivity "
                  f"{p.sensitivity:.3e}, TFLM accuracy {100 * acc:6.2f}%, flatbuffer {art.size} B", flush=True)
        print(f"    mixed bits: {plan.bits}", flush=True)
        # The flatbuffer also holds per-tensor bookkeeping the storage rules leave out (a LUT
        # tensor's DECODE op and its decoded tensor's per-channel quantization records), so
        # also compare at equal *file* bytes: shrink the budget until the mixed file is no bigger.
        budget, tries = uni.bytes, 0
        while row["mixed"]["tflm_file_bytes"] > row["uniform"]["tflm_file_bytes"] and tries < 6:
            budget -= 512
            tries += 1
            p = zeroq.pareto(model, sens, budget_bytes=budget, cost=cost)
            acc, art = tflm_accuracy(p.apply(model), x_syn_main, x_te, y_te)
            row["mixed_file_matched"] = {"bits": p.bits, "bytes": p.bytes, "budget_bytes": budget,
                                         "sensitivity": p.sensitivity, "accuracy": acc, "tflm_file_bytes": art.size}
            if art.size <= row["uniform"]["tflm_file_bytes"]:
                print(f"  mixed at equal file bytes (budget {budget} B): {p.bytes:>6} B, TFLM accuracy "
                      f"{100 * acc:6.2f}%, flatbuffer {art.size} B", flush=True)
                break
        mp.append(row)
    out["mixed_vs_uniform"] = mp
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only, one seed")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    names = ["digits"] if args.quick else ["mnist5k", "digits"]
    seeds = list(range(1 if args.quick else args.seeds))
    t0 = time.perf_counter()
    results = {"machine": f"{os.cpu_count()} CPU cores (shared)", "board": "nano33ble (TFLM interpreter)",
               "seeds": seeds, "data": {}}
    for name in names:
        results["data"][name] = run_dataset(name, CONFIGS[name], seeds)
    results["total_seconds"] = time.perf_counter() - t0

    print("\n=== summary ===")
    for name, r in results["data"].items():
        w = r["w8a8"]
        print(f"{name}: float {100 * r['float_accuracy']:.2f}% | W8A8 real {100 * w['real']['mean_accuracy']:.2f}% "
              f"| ZeroQ (paper) {100 * w['zeroq_paper']['mean_accuracy']:.2f}% "
              f"| ZeroQ range(0,1) {100 * w['zeroq_range01']['mean_accuracy']:.2f}% "
              f"| noise {100 * w['noise']['mean_accuracy']:.2f}% | distill max {r['distill']['max_wall_s']:.1f} s")
        for row in r["mixed_vs_uniform"]:
            print(f"   {row['uniform_bits']}-bit {row['cost']} budget {row['budget_bytes']} B: uniform "
                  f"{100 * row['uniform']['accuracy']:.2f}% ({row['uniform']['tflm_file_bytes']} B file) vs mixed "
                  f"{100 * row['mixed']['accuracy']:.2f}% ({row['mixed']['tflm_file_bytes']} B file)"
                  + (f"; at equal file bytes {100 * row['mixed_file_matched']['accuracy']:.2f}% "
                     f"({row['mixed_file_matched']['tflm_file_bytes']} B file)" if "mixed_file_matched" in row else ""))
    path = os.path.join(RESULTS, "zeroq.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
