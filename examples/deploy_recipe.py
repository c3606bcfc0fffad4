"""The deployment recipe the MLPerf Tiny examples share: float model -> budget search -> TFLM.

train float -> ``tfjpq.wrap(target=...)`` -> search 1 epoch -> ``freeze`` -> fine-tune with the
float model as teacher -> ``export`` -> ``tflm_export.convert`` -> ``tflm_export.emulate``.
``examples/cifar10_resnet8.py`` and ``examples/kws_dscnn.py`` load their data and model, then
call :func:`run`; read it as the steps a user script takes.

Example::

    from deploy_recipe import add_arguments, run
    p = argparse.ArgumentParser(); add_arguments(p, target=40_000, out="build/mine")
    run(p.parse_args(), model, (x, y), (xt, yt))
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tfjpq  # noqa: E402
import tflm_export  # noqa: E402
from tfjpq import zoo  # noqa: E402


def step(msg):
    print(f"\n== {msg}", flush=True)


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0, batch_size=256).argmax(-1) == y).mean())


def add_arguments(parser, *, target, out, epochs, finetune_epochs=3, board="nucleo-l4r5zi"):
    """The data, recipe and deployment flags both examples take (defaults per task)."""
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory holding the prepared data set (default: $TFDS_DATA_DIR "
                             "or ~/tensorflow_datasets)")
    parser.add_argument("--download", action="store_true", help="let tfds download and prepare it (needs internet)")
    parser.add_argument("--max-examples", type=int, default=None, help="use at most this many examples a split")
    parser.add_argument("--epochs", type=int, default=epochs, help="float training epochs")
    parser.add_argument("--search-epochs", type=int, default=1, help="search epochs (the recipe: 1)")
    parser.add_argument("--finetune-epochs", type=int, default=finetune_epochs,
                        help="fine-tuning epochs of the frozen model, distilled from the float one")
    parser.add_argument("--target", type=float, default=target, help="weight budget in bytes (cost='size')")
    parser.add_argument("--board", default=board, help="board to emulate on (tflm_export.BOARDS)")
    parser.add_argument("--out", default=out, help="firmware folder written by tflm_export.convert")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args, model, train, test):
    """Run the recipe on a float ``model`` (untrained or trained) and print each step's figures."""
    (x, y), (xt, yt) = train, test
    keras.utils.set_random_seed(0)
    t0 = time.time()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    step(f"1/6 float training, {args.epochs} epochs ({model.name}, {model.count_params():,} parameters)")
    zoo.train(model, x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    float_acc = accuracy(model, xt, yt)
    print(f"float test accuracy {float_acc:.4f}")

    step(f"2/6 joint search, weight bits (0, 2, 4, 8), target {args.target:,.0f} B of weights, "
         f"{args.search_epochs} epoch(s)")
    search = tfjpq.wrap(model, weight_bits=(0, 2, 4, 8), act_bits=(8,), cost="size", target=args.target)
    search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], teacher=model)
    search.fit(x, y, epochs=args.search_epochs, batch_size=args.batch_size, verbose=2,
               callbacks=[tfjpq.callbacks.SearchLogger()])

    step(f"3/6 freeze the choices, fine-tune {args.finetune_epochs} epochs with the float model as teacher")
    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer=keras.optimizers.Adam(3e-4), loss=loss, metrics=["accuracy"], teacher=model)
    tuned.fit(x, y, epochs=args.finetune_epochs, batch_size=args.batch_size, verbose=2)

    step("4/6 export: prune for real, fold BN, group channels by precision")
    deploy = tfjpq.export(tuned)
    deploy_acc = accuracy(deploy, xt, yt)
    prof = tfjpq.summary(deploy)
    base = tfjpq.profile(model).totals["weight_bytes"]
    print(f"weights {base:,.0f} B at all-8-bit -> {prof.totals['weight_bytes']:,.0f} B "
          f"(target {args.target:,.0f}); exported accuracy {deploy_acc:.4f} (float {float_acc:.4f})")

    step("5/6 convert to an int8 TFLite flatbuffer with sub-byte weights + C sources")
    art = tflm_export.convert(deploy, representative_data=x[:200], out_dir=args.out, overwrite=True)
    print(f"wrote {args.out}/ ({', '.join(sorted(os.listdir(args.out)))}); flatbuffer {len(art.model_bytes):,} B")

    step(f"6/6 run in TFLite Micro on {args.board}")
    result = tflm_export.emulate(art, board=args.board, inputs=xt)
    print(result.summary())
    print(f"TFLM test accuracy {tflm_export.top1_accuracy(result.outputs, yt):.4f}")
    print(f"\ndone in {time.time() - t0:.0f} s")
    return result


def load_or_exit(loader, args):
    """``loader(data_dir=..., download=..., max_examples=...)``, or exit 1 with its one-line DataError."""
    from tfjpq.errors import DataError

    try:
        return loader(data_dir=args.data_dir, download=args.download, max_examples=args.max_examples)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
