"""PreCrop -> train -> joint pruning + mixed-precision search -> export -> TFLite Micro.

PreCropping (structured pruning at initialization) picks per-layer widths
before any training, from data-free SynFlow scores, so the network is small
from the first step. The joint search then prunes further and picks a
bit-width for every remaining output channel. Runs offline on MNIST-5k by
default:

    python examples/precrop_then_search.py                     # MNIST-5k, ResNet-8 shape
    python examples/precrop_then_search.py --dataset digits    # sklearn 8x8 digits, faster
    python examples/precrop_then_search.py --method snip --density 0.2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tfjpq  # noqa: E402
from tfjpq import datasets, precrop, zoo  # noqa: E402


def step(msg):
    print(f"\n== {msg}", flush=True)


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=256).argmax(-1) == y).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", help="mnist5k | digits | tfds:<name> (default: mnist5k)")
    p.add_argument("--method", default="synflow", choices=precrop.METHODS)
    p.add_argument("--density", type=float, default=0.3, help="global density for PreCrop (default 0.3)")
    p.add_argument("--epochs", type=int, default=4, help="float training epochs of the cropped model")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--strength", type=float, default=0.1, help="weight of the cost relative to the all-8-bit model")
    p.add_argument("--board", default="nano33ble")
    p.add_argument("--out", default="build/precrop_then_search", help="where the TFLite/C artifacts go")
    p.add_argument("--no-deploy", action="store_true", help="stop after tfjpq.export (skip TFLM)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    t0 = time.time()

    step(f"data: {args.dataset}")
    (x, y), (xt, yt) = datasets.load(args.dataset)
    print(f"train {x.shape}, test {xt.shape}")

    step(f"1/5 PreCrop a fresh ResNet-8 shape: {args.method} densities at global density {args.density}")
    full = zoo.resnet8(input_shape=x.shape[1:], num_classes=int(y.max()) + 1)
    data = None if args.method == "synflow" else (x[:512], y[:512])
    dens = precrop.densities(full, args.method, args.density, data=data)
    plan = precrop.crop_plan(full, dens)
    for name, (old, new) in plan.widths.items():
        print(f"  {name:<14} density {dens[name]:.2f}  channels {old:>3} -> {new:>3}")
    print(f"  joined by Adds (equal widths): {plan.groups}")
    model = precrop.build(full, plan, seed=0)
    print(f"parameters {full.count_params():,} -> {model.count_params():,}; "
          f"MACs {tfjpq.profile(full).totals['macs']:,} -> {tfjpq.profile(model).totals['macs']:,}")

    step("2/5 train the cropped model (float)")
    zoo.train(model, x, y, epochs=args.epochs, verbose=2)
    float_acc = accuracy(model, xt, yt)
    print(f"cropped float test accuracy {float_acc:.4f}")

    step(f"3/5 joint search on the cropped model: weight bits (0, 2, 4, 8), strength {args.strength:g}")
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost="size", strength=args.strength)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Adam(0.02) for the precision logits: the paper's SGD(1e-2) needs far more epochs (docs/search.md).
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"],
                   arch_optimizer=keras.optimizers.Adam(0.02))
    search.fit(x, y, epochs=args.search_epochs, batch_size=64, verbose=2,
               callbacks=[tfjpq.callbacks.StrengthWarmup(epochs=1), tfjpq.callbacks.TemperatureDecay()])

    step("4/5 freeze, fine-tune, export")
    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=loss, metrics=["accuracy"])
    tuned.fit(x, y, epochs=args.finetune_epochs, batch_size=64, verbose=2)
    deploy = tfjpq.export(tuned)
    deploy_acc = accuracy(deploy, xt, yt)
    prof = tfjpq.summary(deploy)
    base = tfjpq.profile(full).totals
    print(f"\ncropped float acc {float_acc:.4f} | exported acc {deploy_acc:.4f}")
    print(f"weights: {base['weight_bytes']:,.0f} B (full model, all 8-bit) -> {prof.totals['weight_bytes']:,.0f} B; "
          f"MACs {base['macs']:,} -> {prof.totals['macs']:,}")

    if args.no_deploy:
        print(f"\ndone in {time.time() - t0:.0f} s")
        return
    import tflm_export

    step(f"5/5 int8 TFLite flatbuffer with sub-byte weights, run in TFLite Micro on {args.board}")
    art = tflm_export.convert(deploy, representative_data=x[:200], out_dir=args.out, overwrite=True)
    print(f"wrote {args.out}/ ({', '.join(sorted(os.listdir(args.out)))})")
    run = tflm_export.emulate(art, board=args.board, inputs=xt)
    tflm_acc = tflm_export.top1_accuracy(run.outputs, yt)
    print(run.summary())
    print(f"TFLM test accuracy {tflm_acc:.4f}")
    print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
