import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    from tfjpq import datasets

    return datasets.load_digits()


@pytest.fixture(scope="session")
def trained_small_cnn(digits):
    """A small BN CNN trained 3 epochs on sklearn digits (read-only: clone before changing it)."""
    from tfjpq import zoo

    (x, y), _ = digits
    model = zoo.small_cnn()
    zoo.train(model, x, y, epochs=3)
    return model


def random_choices(search, seed=0):
    """Give every precision choice random logits, so freeze picks a mix of widths and pruned channels."""
    rng = np.random.default_rng(seed)
    for choice in search.precision_choices():
        choice.alpha.assign(rng.normal(size=choice.alpha.shape).astype("float32"))
    for act in search.activation_choices():
        act.beta.assign(rng.normal(size=act.beta.shape).astype("float32"))
