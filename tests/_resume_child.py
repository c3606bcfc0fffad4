"""Child process of tests/test_resume.py: a search, freeze and fine-tune that can be killed and resumed.

    python tests/_resume_child.py WORKDIR [--kill search:N | finetune:N] [--out result.npz]

Each phase runs under its own ``keras.callbacks.BackupAndRestore`` folder in
WORKDIR. The search model is saved to WORKDIR/search.keras when the search
ends; a run that finds it skips the search (what a real pipeline does).
``--kill PHASE:N`` ends the process with ``os._exit`` after N training batches
of that phase (counted across the epochs of this run), as a crash or a
preemption would: no callback, no ``finally``, nothing flushed. The run
that ends the search writes its History and both optimizers' variables to
WORKDIR/search_state.npz; ``--out`` writes, at the end, every variable of the
search and fine-tuned models, the fine-tune optimizer's, the choices, the
fine-tune History and the SearchLogger records.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SEED = 1
SEARCH_EPOCHS, FINETUNE_EPOCHS, BATCH = 3, 2, 64
KILLED = 17  # exit status of a run that was killed on purpose


class Kill:
    """A keras callback that ends the process after ``n`` training batches."""

    def __new__(cls, n):
        import keras

        class _Kill(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seen = 0

            def on_train_batch_end(self, batch, logs=None):
                self.seen += 1
                if self.seen >= n:
                    sys.stdout.flush()
                    os._exit(KILLED)

        return _Kill()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--kill", default="")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    import tfjpq
    from tfjpq import datasets, zoo

    tf.config.experimental.enable_op_determinism()
    phase, _, n = args.kill.partition(":")
    kill = {phase: [Kill(int(n))]} if args.kill else {}
    (x, y), _ = datasets.load("digits")
    x, y = x[:512], y[:512]
    keras.utils.set_random_seed(0)
    base = zoo.small_cnn(width=8)
    zoo.train(base, x, y, epochs=2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(SEED)
    search_path = os.path.join(args.workdir, "search.keras")
    records = os.path.join(args.workdir, "records.json")
    out = {}
    if not os.path.exists(search_path):
        search = tfjpq.wrap(base, target=2_600)
        search.compile(optimizer="adam", loss=loss, teacher=base)
        logger = tfjpq.callbacks.SearchLogger(verbose=0, backup_path=records)
        hist = search.fit(x, y, epochs=SEARCH_EPOCHS, batch_size=BATCH, verbose=0,
                          callbacks=[tfjpq.callbacks.TemperatureDecay(rate=0.3), logger,
                                     keras.callbacks.BackupAndRestore(os.path.join(args.workdir, "search_backup"))]
                          + kill.get("search", []))
        state = {f"history/{k}": np.asarray(v) for k, v in hist.history.items()}
        for name, opt in (("optimizer", search.optimizer), ("arch_optimizer", search.arch_optimizer)):
            for v in opt.variables:  # the optimizer's own name (adam_<n>) depends on what the process built before
                state[f"{name}/{v.path.split('/', 1)[-1]}"] = v.numpy()
        np.savez(os.path.join(args.workdir, "search_state.npz"), **state)
        tmp = search_path + ".tmp.keras"
        search.save(tmp)
        os.replace(tmp, search_path)
    search = tfjpq.load_model(search_path)
    for v in search.variables:
        out[f"search/{v.path}"] = v.numpy()
    out["records"] = np.array(json.dumps(tfjpq.callbacks.load_records(records)))
    out["choices"] = np.concatenate([np.argmax(c.alpha.numpy(), axis=0) for c in search.precision_choices()])

    tuned = tfjpq.freeze(search)
    tuned.compile(optimizer="adam", loss=loss, teacher=base)
    hist = tuned.fit(x, y, epochs=FINETUNE_EPOCHS, batch_size=BATCH, verbose=0,
                     callbacks=[keras.callbacks.BackupAndRestore(os.path.join(args.workdir, "finetune_backup"))]
                     + kill.get("finetune", []))
    out.update({f"finetune_history/{k}": np.asarray(v) for k, v in hist.history.items()})
    for v in tuned.variables:
        out[f"tuned/{v.path}"] = v.numpy()
    for v in tuned.optimizer.variables:
        out[f"tuned_optimizer/{v.path.split('/', 1)[-1]}"] = v.numpy()
    out["frozen_choices"] = np.concatenate([c.selected_index() for c in tuned.precision_choices()])
    if args.out:
        np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
