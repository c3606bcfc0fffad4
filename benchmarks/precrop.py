"""PreCrop vs the unstructured mask vs the dense model, on real MNIST-5k.

For a ResNet-8-shaped model and a depthwise-separable CNN, at global densities
0.5 / 0.2 / 0.1 and for each pruning-at-initialization method (SNIP, GraSP,
SynFlow), it trains under the same budget:

* ``dense``   -- the full model;
* ``mask``    -- the full model with the method's unstructured mask held at zero;
* ``precrop`` -- a narrower, freshly initialized model whose per-layer widths
  follow the densities read off the same mask (``tfjpq.precrop.crop``), with
  as many parameters as the masked model keeps (``--match params``: kept
  kernel weights plus every bias and BatchNorm parameter; ``--match kernels``
  matches the kernel weights alone).

and reports test accuracy, parameters, MACs, and (int8, through
``tflm_export``) the TFLM tensor arena and the estimated latency on an Arduino
Nano 33 BLE (Cortex-M4F, 64 MHz, CMSIS-NN cycle model). The mask keeps the
dense graph, so its MACs, arena and latency are the dense model's (measured
once per architecture to show it).

Usage::

    python benchmarks/precrop.py                       # the full table (~15 min on 2 cores)
    python benchmarks/precrop.py --epochs 1 --models ds_cnn --methods synflow   # a quick look

Writes benchmarks/results/precrop.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfjpq import datasets, precrop, zoo  # noqa: E402

MODELS = {
    "resnet8": lambda seed: zoo.resnet8(input_shape=(28, 28, 1), seed=seed),
    "ds_cnn": lambda seed: zoo.ds_cnn(input_shape=(28, 28, 1), seed=seed),
}
# Peak Adam learning rate per architecture, decayed to 0 over the budget (cosine) for every
# variant. Picked in a few short runs: with a constant rate the last-step test accuracy of
# these 3-epoch runs moved by several points from run to run (the DS-CNN needs 1e-2 to
# learn at all in 3 epochs: 52% / 70% / 84% dense at 1e-3 / 3e-3 / 1e-2 on 2000 images);
# the decay settles it.
LEARNING_RATES = {"resnet8": 3e-3, "ds_cnn": 1e-2}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "precrop.json")


# --------------------------------------------------------------------------- measurements


def count_macs(model) -> int:
    """MACs of one inference from the layer shapes (Conv / DepthwiseConv / Dense)."""
    total = 0
    for layer in model.layers:
        out = layer.output.shape
        pixels = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
            total += pixels * int(np.prod(layer.kernel.shape))  # k x k x C x multiplier per pixel
        elif isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)):
            total += pixels * int(np.prod(layer.kernel.shape))
    return total


def macs_of(model) -> tuple[int, str]:
    """MACs from ``tfjpq.profile`` when the plugin has it, else from :func:`count_macs`."""
    import tfjpq

    if hasattr(tfjpq, "profile"):
        try:
            return int(tfjpq.profile(model).totals["macs"]), "tfjpq.profile"
        except Exception as e:  # noqa: BLE001 - fall back, but say so
            print(f"  (tfjpq.profile failed on {model.name}: {e}; counting MACs from shapes)")
    return count_macs(model), "layer shapes"


@contextlib.contextmanager
def _quiet():
    """Silence the TFLite converter's prints (Python and C++) for one block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def tflm_figures(model, x_cal, x_test, y_test, board):
    """int8 conversion + TFLM run: arena bytes, estimated latency, flatbuffer bytes, int8 accuracy."""
    try:
        import tflm_export
    except ImportError:
        return _tflm_direct(model, x_cal)
    with _quiet():
        art = tflm_export.convert(model, representative_data=x_cal, pack="int8")
    run = tflm_export.emulate(art, board=board, inputs=x_test, check_fit=False)
    acc = float(np.mean(np.argmax(run.outputs, -1) == y_test))
    return {"arena_bytes": int(run.arena_bytes), "latency_ms": float(run.latency_ms),
            "model_bytes": int(run.model_bytes), "int8_acc": acc, "fits": bool(run.fits)}


def _tflm_direct(model, x_cal):
    """Fallback without tflm_export: smallest arena the TFLM interpreter accepts (no latency model)."""
    import tensorflow as tf
    from tflite_micro.python.tflite_micro import runtime

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x_cal[i : i + 1]] for i in range(len(x_cal)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    with _quiet():
        b = conv.convert()
    lo, hi = 1024, 1 << 22
    while hi - lo > 256:
        mid = (lo + hi) // 2
        try:
            runtime.Interpreter.from_bytes(b, arena_size=mid)
            hi = mid
        except RuntimeError:
            lo = mid
    return {"arena_bytes": hi, "latency_ms": None, "model_bytes": len(b), "int8_acc": None, "fits": None}


def kernel_params(model, nonzero=False):
    ks = [l.kernel.numpy() for l in precrop.scored_layers(model)]
    return int(sum(np.count_nonzero(k) if nonzero else k.size for k in ks))


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def short_budget_bn(model, momentum=0.9):
    """BatchNorm momentum 0.9 (Keras' default 0.99 leaves the moving statistics near their
    initial values after the few hundred steps of this budget). Applied to every variant alike."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    return model


def train(model, x, y, args, arch):
    short_budget_bn(model)
    steps = args.epochs * int(np.ceil(len(x) / args.batch_size))
    lr = keras.optimizers.schedules.CosineDecay(args.lr or LEARNING_RATES[arch], decay_steps=steps)
    t = time.time()
    zoo.train(model, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=lr)
    return time.time() - t


# --------------------------------------------------------------------------- the run


def run(args):
    tf.get_logger().setLevel("ERROR")  # predict() on many models retraces by design
    (x, y), (xt, yt) = datasets.load_mnist5k()
    x, y = x[: args.train_samples], y[: args.train_samples]
    x_cal, x_tflm, y_tflm = x[:100], xt[: args.tflm_samples], yt[: args.tflm_samples]
    score_data = (x[: args.score_samples], y[: args.score_samples])
    rows = []

    def record(**row):
        rows.append(row)
        lat = row.get("latency_ms")
        print(f"  {row['model']:<8} {row['method']:<8} {row['density']:>5} {row['variant']:<8} "
              f"params {row['params']:>7,}  kernel density {row['kernel_density']:.3f}  "
              f"MACs {row['macs']:>10,}  arena {row['arena_bytes'] or 0:>7,} B  "
              f"latency {lat if lat is not None else float('nan'):8.2f} ms  acc {row['acc']:.4f}  "
              f"({row['train_s']:.0f} s train)", flush=True)

    for arch in args.models:
        make = MODELS[arch]
        dense = make(args.seed)
        k_dense = kernel_params(dense)
        train_s = train(dense, x, y, args, arch)
        macs, macs_source = macs_of(dense)
        dense_macs = count_macs(dense)
        if dense_macs != macs:
            print(f"  (note: {macs_source} counts {macs:,} MACs for the dense {arch}, the layer shapes {dense_macs:,})")
        dense_tflm = tflm_figures(dense, x_cal, x_tflm, y_tflm, args.board)
        record(model=arch, method="-", density=1.0, variant="dense", params=dense.count_params(),
               kernel_density=1.0, macs=macs, macs_source=macs_source, acc=accuracy(dense, xt, yt),
               train_s=train_s, tflm_measured=True, **dense_tflm)
        mask_tflm_checked = False
        for method in args.methods:
            for density in args.densities:
                base = make(args.seed)  # the same initialization the mask is computed on
                t = time.time()
                masks = precrop.masks(base, method, density, data=score_data)
                score_s = time.time() - t
                dens = precrop.densities_from_masks(masks)

                kept = sum(int(m.sum()) for m in masks.values())
                mask_params = base.count_params() - (k_dense - kept)  # what the masked model keeps
                if args.match == "params":  # exactly the masked model's nonzero parameter count
                    small = precrop.crop(base, dens, target_params=mask_params, seed=args.seed)
                else:  # the same kernel weights (BatchNorm and biases then shrink with the channels)
                    small = precrop.crop(base, dens, seed=args.seed)
                train_s = train(small, x, y, args, arch)
                macs, macs_source = macs_of(small)
                record(model=arch, method=method, density=density, variant="precrop", params=small.count_params(),
                       kernel_density=kernel_params(small) / k_dense, macs=macs, macs_source=macs_source,
                       acc=accuracy(small, xt, yt), train_s=train_s, score_s=score_s, tflm_measured=True,
                       layer_densities=dens,
                       widths={l.name: int(l.output.shape[-1]) for l in precrop.scored_layers(small)},
                       **tflm_figures(small, x_cal, x_tflm, y_tflm, args.board))

                precrop.apply_masks(base, masks)
                train_s = train(base, x, y, args, arch)
                if not mask_tflm_checked:  # the mask keeps the dense graph: check once that TFLM agrees
                    mask_tflm = tflm_figures(base, x_cal, x_tflm, y_tflm, args.board)
                    same = (mask_tflm["arena_bytes"] == dense_tflm["arena_bytes"]
                            and mask_tflm["latency_ms"] == dense_tflm["latency_ms"])
                    print(f"  (mask model in TFLM: arena {mask_tflm['arena_bytes']} B, latency "
                          f"{mask_tflm['latency_ms']} ms: {'the same as' if same else 'DIFFERENT from'} dense)")
                    mask_tflm_checked, measured = True, True
                else:
                    mask_tflm, measured = {**dense_tflm, "int8_acc": None}, False
                record(model=arch, method=method, density=density, variant="mask",
                       params=precrop.nonzero_params(base), kernel_density=kernel_params(base, nonzero=True) / k_dense,
                       macs=dense_macs, macs_source="dense graph (the mask saves no MACs)", acc=accuracy(base, xt, yt), train_s=train_s,
                       score_s=score_s, tflm_measured=measured, **mask_tflm)
    return rows


def table(rows):
    head = (f"| {'model':<7} | {'method':<7} | {'density':>7} | {'variant':<7} | {'params':>7} | {'MACs':>10} | "
            f"{'arena B':>7} | {'latency ms':>10} | {'acc':>6} | {'PreCrop - mask':>14} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    by_key = {(r["model"], r["method"], r["density"], r["variant"]): r for r in rows}
    for r in rows:
        diff = ""
        if r["variant"] == "precrop":
            m = by_key.get((r["model"], r["method"], r["density"], "mask"))
            if m:
                diff = f"{100 * (r['acc'] - m['acc']):+.1f} pt"
        lat = f"{r['latency_ms']:.1f}" if r.get("latency_ms") is not None else "n/a"
        lines.append(f"| {r['model']:<7} | {r['method']:<7} | {r['density']:>7} | {r['variant']:<7} | "
                     f"{r['params']:>7,} | {r['macs']:>10,} | {r['arena_bytes'] or 0:>7,} | {lat:>10} | "
                     f"{100 * r['acc']:>5.1f}% | {diff:>14} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="training epochs for every model (default 3)")
    p.add_argument("--train-samples", type=int, default=4000, help="training images used (of 4000)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak Adam learning rate, cosine-decayed to 0 (default per model: {LEARNING_RATES})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.2, 0.1])
    p.add_argument("--methods", nargs="+", default=list(precrop.METHODS), choices=precrop.METHODS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--score-samples", type=int, default=512, help="labelled images for SNIP / GraSP")
    p.add_argument("--tflm-samples", type=int, default=200, help="test images run through TFLM (int8 accuracy)")
    p.add_argument("--board", default="nano33ble")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--match", choices=("params", "kernels"), default="params",
                   help="PreCrop's budget: the masked model's nonzero parameter count (default) or its kernel count")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    t0 = time.time()
    rows = run(args)
    elapsed = time.time() - t0
    print()
    print(table(rows))
    print(f"\n{elapsed / 60:.1f} min; accuracy on the {len(datasets.load_mnist5k()[1][1])} MNIST-5k test images, "
          f"{args.epochs} epochs on {min(args.train_samples, 4000)} training images, batch {args.batch_size}, "
          f"Adam lr {args.lr or LEARNING_RATES} cosine-decayed to 0, PreCrop budget: --match {args.match}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"config": vars(args), "elapsed_s": elapsed, "platform": platform.platform(),
                   "keras": keras.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
