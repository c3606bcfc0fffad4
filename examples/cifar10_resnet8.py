"""MLPerf Tiny image classification: ResNet-8 on CIFAR-10, searched to a flash budget, run in TFLM.

Needs CIFAR-10 prepared by tensorflow-datasets (nothing is downloaded unless --download):

    tfds build cifar10 --data_dir ~/tensorflow_datasets      # once, on a machine with internet
    python examples/cifar10_resnet8.py                        # ~/tensorflow_datasets or $TFDS_DATA_DIR
    python examples/cifar10_resnet8.py --data-dir /data/tfds --max-examples 5000 --epochs 5

Without the data it stops at once with one line saying what to download and where to put it.
Steps: float training -> tfjpq.wrap(target=...) -> 1 search epoch -> freeze -> fine-tune with the
float model as teacher -> export -> tflm_export.convert -> tflm_export.emulate
(examples/deploy_recipe.py).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deploy_recipe  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # about 77 KB of weights at all-8-bit (78k parameters); the target is about half of that
    deploy_recipe.add_arguments(p, target=40_000, out="build/cifar10_resnet8", epochs=15)
    args = p.parse_args(argv)

    deploy_recipe.step(f"data: CIFAR-10 through tfds ({args.data_dir or 'default data_dir'})")
    (x, y), (xt, yt) = deploy_recipe.load_or_exit(datasets.load_cifar10, args)
    print(f"train {x.shape}, test {xt.shape}, classes {', '.join(datasets.CIFAR10_LABELS)}")

    model = zoo.resnet8(input_shape=(32, 32, 3), num_classes=10)
    return deploy_recipe.run(args, model, (x, y), (xt, yt))


if __name__ == "__main__":
    main()
