"""MLPerf Tiny keyword spotting: DS-CNN on Speech Commands MFCCs, searched to a flash budget, run in TFLM.

Needs Speech Commands v0.02 prepared by tensorflow-datasets (nothing is downloaded unless --download):

    pip install pydub && tfds build speech_commands --data_dir ~/tensorflow_datasets   # once, with internet
    python examples/kws_dscnn.py                            # ~/tensorflow_datasets or $TFDS_DATA_DIR
    python examples/kws_dscnn.py --data-dir /data/tfds --max-examples 10000 --epochs 5

Features: 49 x 10 MFCCs of 1 s clips (tfjpq.audio, MLPerf Tiny's front end); 12 classes, the
keywords "yes no up down left right on off stop go" plus silence and unknown word
(datasets.SPEECH_COMMANDS_LABELS). The model: zoo.ds_cnn at MLPerf Tiny's width 64 and 4
depthwise-separable blocks (its stem is 3x3 / 2 where MLPerf Tiny's is 10x4 / 2).
Without the data it stops at once with one line saying what to download and where to put it.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deploy_recipe  # noqa: E402
from tfjpq import audio, datasets, zoo  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # zoo.ds_cnn(width=64, blocks=4) holds about 20 KB of weights at all-8-bit
    deploy_recipe.add_arguments(p, target=10_000, out="build/kws_dscnn", epochs=20)
    args = p.parse_args(argv)

    fe = audio.MLPERF_TINY_KWS
    deploy_recipe.step(f"data: Speech Commands through tfds ({args.data_dir or 'default data_dir'}), "
                       f"MFCC {fe.feature_shape} ({fe.window_ms:g} ms window, {fe.stride_ms:g} ms stride)")
    (x, y), (xt, yt) = deploy_recipe.load_or_exit(datasets.load_speech_commands, args)
    print(f"train {x.shape}, test {xt.shape}, classes {', '.join(datasets.SPEECH_COMMANDS_LABELS)}")

    model = zoo.ds_cnn(input_shape=fe.feature_shape, num_classes=len(datasets.SPEECH_COMMANDS_LABELS),
                       width=64, blocks=4)
    return deploy_recipe.run(args, model, (x, y), (xt, yt))


if __name__ == "__main__":
    main()
