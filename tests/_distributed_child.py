"""Child process of tests/test_distributed.py: the same search, freeze and fine-tune on one device and on two.

    python tests/_distributed_child.py OUT.json [--sync-bn]

TensorFlow must see two logical CPU devices before it initialises, so this
runs in its own process. Both runs start from the same float model, seed and
data (no shuffling: the same global batches); the two-device run is under
``tf.distribute.MirroredStrategy`` (each replica takes half of every batch of
64). Writes what the test compares: per-step controller state, the History,
the SearchLogger records, the logits and choices, the frozen model's hard cost,
the fine-tuned weights and accuracy, and whether every replica holds the same
value of each variable.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import tfjpq  # noqa: E402
from tfjpq import datasets, zoo  # noqa: E402

TARGET = 2_600  # bytes; the all-8-bit model has 3,784
SEARCH_EPOCHS, FINETUNE_EPOCHS, BATCH = 3, 1, 64


class Controller(keras.callbacks.Callback):
    """The controller state after every training step (read outside the step, as any callback sees it)."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        m = self.model
        self.steps.append([float(m._multiplier.numpy()), float(m._strength.numpy()), float(m._hard_cost_var.numpy())])


def _replicas_agree(model):
    """Names of the variables whose per-replica copies differ (BatchNorm moving statistics are local to a replica)."""
    out = []
    for v in model.variables:
        parts = getattr(v.value, "values", None)
        if parts and not all(np.array_equal(parts[0].numpy(), p.numpy()) for p in parts[1:]):
            out.append(v.path)
    return out


def run(strategy, base, data, test):
    (x, y), (xt, yt) = data, test
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(1)
    with strategy.scope():
        search = tfjpq.wrap(base, target=TARGET)
        search.compile(optimizer="adam", loss=loss, teacher=base)
    controller, logger = Controller(), tfjpq.callbacks.SearchLogger(verbose=0)
    hist = search.fit(x, y, epochs=SEARCH_EPOCHS, batch_size=BATCH, shuffle=False, verbose=0,
                      callbacks=[tfjpq.callbacks.TemperatureDecay(rate=0.3), logger, controller])
    out = {
        "controller": controller.steps,
        "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()},
        "records": [{k: r[k] for k in ("epoch", "hard_cost", "strength", "target")} for r in logger.records],
        "alpha": [c.alpha.numpy().tolist() for c in search.precision_choices()],
        "choices": np.concatenate([np.argmax(c.alpha.numpy(), axis=0) for c in search.precision_choices()]).tolist(),
        "temperature": [float(c.temperature.numpy()) for c in search.precision_choices()],
        "search_replicas_differ": _replicas_agree(search),
    }
    with strategy.scope():
        tuned = tfjpq.freeze(search)
        tuned.compile(optimizer="adam", loss=loss, teacher=base)
    out["frozen_choices"] = np.concatenate([c.selected_index() for c in tuned.precision_choices()]).tolist()
    out["frozen_hard_cost"] = float(tuned.hard_cost())
    hist = tuned.fit(x, y, epochs=FINETUNE_EPOCHS, batch_size=BATCH, shuffle=False, verbose=0)
    out["finetune_loss"] = [float(v) for v in hist.history["loss"]]
    out["tuned_kernels"] = [layer.kernel.numpy().ravel().tolist() for layer in tuned.search_layers()]
    out["accuracy"] = float((tuned.predict(xt, verbose=0).argmax(1) == yt).mean())
    out["tuned_replicas_differ"] = _replicas_agree(tuned)
    deploy = tfjpq.export(tuned)  # exports from the cross-replica (first replica's) values
    out["export_max_abs_diff"] = float(np.max(np.abs(deploy.predict(xt, verbose=0) - tuned.predict(xt, verbose=0))))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    tf.config.experimental.enable_op_determinism()
    (x, y), (xt, yt) = datasets.load("digits")
    data, test = (x[:512], y[:512]), (xt[:200], yt[:200])
    keras.utils.set_random_seed(0)
    base = zoo.small_cnn(width=8)
    if "--sync-bn" in argv:  # BatchNormalization(synchronized=True): batch statistics over both replicas
        cfg = base.get_config()
        for layer in cfg["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["synchronized"] = True
        weights = base.get_weights()
        base = keras.Model.from_config(cfg)
        base.set_weights(weights)
    zoo.train(base, *data, epochs=2)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    result = {"devices": devices,
              "one": run(tf.distribute.get_strategy(), base, data, test),
              "two": run(tf.distribute.MirroredStrategy(devices), base, data, test)}
    with open(argv[0], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
