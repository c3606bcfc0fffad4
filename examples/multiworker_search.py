"""Joint pruning + mixed-precision search on two worker processes (tf.distribute.MultiWorkerMirroredStrategy).

Run on one machine (localhost); the script starts both workers itself:

    python examples/multiworker_search.py                        # digits, 2 workers on 127.0.0.1
    python examples/multiworker_search.py --compare              # also one device, and how far apart they end

On a cluster, start one process per machine with ``--worker`` and the same
``TF_CONFIG`` everywhere except ``task.index``::

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                "task": {"type": "worker", "index": 0}}' python examples/multiworker_search.py --worker

The launcher first trains the float model in a process of its own (Keras 3's
``fit`` of a plain model fails under this strategy, keras-team/keras#20585;
tfjpq's search models work around it) and saves it to ``<out>/float.keras``.
Every worker then runs the same program: load it, ``wrap`` with a budget,
search, ``freeze``, fine-tune, all under the strategy, each worker on its half of
every global batch; gradients (and BatchNorm moving statistics) are averaged
across workers after every step, so all workers hold the same model. Worker 0
(the chief) saves the models and converts the result for TFLM; each worker writes
``worker-<i>.json`` (its choices, so one can check they agree). ``--backup DIR``
adds ``keras.callbacks.BackupAndRestore`` (one folder per worker): kill the run
and start it again with the same arguments, and it resumes from the last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="worker processes to start on localhost")
    p.add_argument("--worker", action="store_true", help="run as one worker (reads TF_CONFIG); used by the launcher")
    p.add_argument("--one-device", action="store_true", help="run the same recipe without a strategy (--compare)")
    p.add_argument("--train-float", action="store_true", help="train and save the float model (the launcher's first step)")
    p.add_argument("--compare", action="store_true", help="also run on one device and report the differences")
    p.add_argument("--dataset", default="digits", help="digits, mnist5k, tfds:<name> or npz:<path>")
    p.add_argument("--float-epochs", type=int, default=3)
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split across the workers)")
    p.add_argument("--budget", type=float, default=0.6, help="target as a fraction of the all-8-bit weight bytes")
    p.add_argument("--backup", default=None, help="BackupAndRestore folder (resume a killed run)")
    p.add_argument("--out", default=os.path.join("build", "multiworker"))
    p.add_argument("--timeout", type=float, default=1800, help="seconds before the launcher stops the workers")
    return p.parse_args(argv)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch(args, argv):
    """Start ``args.workers`` worker processes with TF_CONFIG on 127.0.0.1 and wait for all of them."""
    os.makedirs(args.out, exist_ok=True)
    if not os.path.exists(_float_path(args)):
        code = subprocess.call([sys.executable, os.path.abspath(__file__), "--train-float", *argv],
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        if code:
            return code
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(args.workers)]
    procs = []
    t0 = time.time()
    for i in range(args.workers):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}),
                   CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        log = open(os.path.join(args.out, f"worker-{i}.log"), "w")
        procs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *argv], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    print(f"started {args.workers} workers on {', '.join(hosts)} (logs in {args.out}/worker-<i>.log)", flush=True)
    failed = None
    try:
        while any(p.poll() is None for p, _ in procs):
            if time.time() - t0 > args.timeout:
                failed = f"timed out after {args.timeout:.0f} s"
                break
            bad = [i for i, (p, _) in enumerate(procs) if p.poll() not in (None, 0)]
            if bad:  # a collective would wait for the dead worker forever: stop the others
                failed = f"worker {bad[0]} exited with status {procs[bad[0]][0].returncode}"
                break
            time.sleep(1)
        bad = [i for i, (p, _) in enumerate(procs) if p.poll() not in (None, 0)]
        if bad and not failed:
            failed = f"worker {bad[0]} exited with status {procs[bad[0]][0].returncode}"
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    if failed:
        print(f"error: {failed}; see {args.out}/worker-<i>.log", file=sys.stderr)
        return 1
    results = [json.load(open(os.path.join(args.out, f"worker-{i}.json"))) for i in range(args.workers)]
    agree = all(r["choices"] == results[0]["choices"] for r in results)
    chief = results[0]
    print(f"{args.workers} workers in {time.time() - t0:.0f} s; the workers' choices agree: {agree}")
    print(f"hard cost {chief['frozen_hard_cost']:,.0f} B for a target of {chief['target']:,.0f} B "
          f"({chief['frozen_hard_cost'] / chief['target'] - 1:+.1%}); accuracy {chief['accuracy']:.1%}; "
          f"models and TFLM files in {args.out}")
    if args.compare:
        one = os.path.join(args.out, "one-device.json")
        code = subprocess.call([sys.executable, os.path.abspath(__file__), "--one-device", *argv],
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        if code:
            return code
        single = json.load(open(one))
        differ = sum(a != b for a, b in zip(single["frozen_choices"], chief["frozen_choices"]))
        alpha = max(abs(a - b) for pa, pb in zip(single["alpha"], chief["alpha"])
                    for ra, rb in zip(pa, pb) for a, b in zip(ra, rb))
        print(f"one device: hard cost {single['frozen_hard_cost']:,.0f} B, accuracy {single['accuracy']:.1%}; "
              f"{differ} of {len(single['frozen_choices'])} frozen choices differ; "
              f"logits differ by at most {alpha:.3f}; multiplier {single['multiplier']:.4g} vs {chief['multiplier']:.4g}")
    return 0 if agree else 1


def _float_path(args):
    return os.path.join(args.out, "float.keras")


def train_float(args):
    """The trained float model the workers search (Keras 3's own ``fit`` of a plain model fails under
    MultiWorkerMirroredStrategy, keras-team/keras#20585; tfjpq's search models work around it)."""
    import keras

    from tfjpq import datasets, zoo

    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = datasets.load(args.dataset)
    model = zoo.small_cnn(input_shape=x.shape[1:], width=16)
    zoo.train(model, x, y, epochs=args.float_epochs, batch_size=args.batch_size)
    acc = float((model.predict(xt, verbose=0).argmax(1) == yt).mean())
    os.makedirs(args.out, exist_ok=True)
    model.save(_float_path(args))
    print(f"float model: {acc:.1%} after {args.float_epochs} epochs, saved to {_float_path(args)}", flush=True)
    return 0


def work(args):
    """One worker (or, with --one-device, the same recipe without a strategy)."""
    import tensorflow as tf

    if args.one_device:
        strategy, task = tf.distribute.get_strategy(), None
    else:  # created first, before any other TensorFlow op; RING: collectives over gRPC between CPU processes
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    import keras

    import tfjpq
    import tflm_export
    from tfjpq import datasets, zoo

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)  # the same start on every worker
    (x, y), (xt, yt) = datasets.load(args.dataset)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    chief = task in (None, 0)
    name = "one-device" if task is None else f"worker-{task}"

    def callbacks(phase):
        if not args.backup:
            return []
        return [keras.callbacks.BackupAndRestore(os.path.join(args.backup, phase, name))]

    fit = dict(batch_size=args.batch_size, verbose=2 if chief else 0)
    with strategy.scope():
        model = keras.models.load_model(_float_path(args))  # the teacher, mirrored on every worker
        search = tfjpq.wrap(model)
        target = args.budget * search.reference_cost  # "size": the bytes of the all-8-bit weights
        search.target = target
        search.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, teacher=model)
    search.fit(x, y, epochs=args.search_epochs, callbacks=[tfjpq.callbacks.SearchLogger(verbose=int(chief))]
               + callbacks("search"), **fit)
    with strategy.scope():
        tuned = tfjpq.freeze(search)
        tuned.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"], teacher=model)
    tuned.fit(x, y, epochs=args.finetune_epochs, callbacks=callbacks("finetune"), **fit)
    accuracy = float((tuned.predict(xt, verbose=0).argmax(1) == yt).mean())
    result = {
        "task": task, "target": target, "frozen_hard_cost": float(tuned.hard_cost()), "accuracy": accuracy,
        "multiplier": float(search._multiplier.numpy()), "strength": search.strength,
        "alpha": [c.alpha.numpy().tolist() for c in search.precision_choices()],
        "choices": [int(i) for c in search.precision_choices() for i in c.alpha.numpy().argmax(0)],
        "frozen_choices": [int(i) for c in tuned.precision_choices() for i in c.selected_index()],
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(result, f)
    if chief and task is not None:  # one writer; the others hold the same variables
        tuned.save(os.path.join(args.out, "tuned.keras"))
        deploy = tfjpq.export(tuned)
        art = tflm_export.convert(deploy, representative_data=x[:200], out_dir=os.path.join(args.out, "tflm"),
                                  overwrite=True)
        print(f"TFLM flatbuffer: {art.size:,} B in {args.out}/tflm", flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _args(argv)
    if args.train_float:
        return train_float(args)
    if args.worker or args.one_device:
        return work(args)
    passed = [a for a in argv if a != "--compare"]
    return launch(args, passed)


if __name__ == "__main__":
    sys.exit(main())
