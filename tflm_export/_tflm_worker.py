"""Child process that runs the TFLM interpreter (see tflm_export.runner).

Kept free of TensorFlow and of the tflm_export package so it starts in a
fraction of a second. A crash of the C++ interpreter kills only this process.

Usage: python _tflm_worker.py JOB_DIR
  JOB_DIR/model.tflite   the flatbuffer
  JOB_DIR/job.json       {"arena_size": int, "num_inputs": int, "verify_minimal": bool}
  JOB_DIR/inputs.npz     arrays in0, in1, ... each (samples, *input_shape), already int8/typed
Writes JOB_DIR/outputs.npz (out0, out1, ...) and JOB_DIR/result.json.
"""

import json
import os
import re
import sys
import tempfile

import numpy as np


def _capture_fd2(fn):
    """Run fn() with the C-level stderr redirected to a file; return what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode("utf-8", "replace")


def _run(interp, inputs, n_out):
    samples = inputs[0].shape[0] if inputs else 1
    outs = [[] for _ in range(n_out)]
    for s in range(samples):
        for i, x in enumerate(inputs):
            interp.set_input(x[s : s + 1], i)
        interp.invoke()
        for o in range(n_out):
            outs[o].append(np.array(interp.get_output(o)))
    return [np.concatenate(o, axis=0) for o in outs]


def main(job_dir):
    from tflite_micro.python.tflite_micro import runtime

    with open(os.path.join(job_dir, "model.tflite"), "rb") as f:
        model = f.read()
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    data = np.load(os.path.join(job_dir, "inputs.npz"))
    inputs = [data[f"in{i}"] for i in range(job["num_inputs"])]
    result = {"stage": "load"}

    def save():
        with open(os.path.join(job_dir, "result.json"), "w") as f:
            json.dump(result, f)

    save()
    try:
        interp = runtime.Interpreter.from_bytes(model, arena_size=int(job["arena_size"]))
    except Exception as e:  # TFLM reports the cause on stderr, which the parent keeps
        result.update(stage="load", error=f"{type(e).__name__}: {e}")
        save()
        return 3
    result["stage"] = "invoke"
    save()
    try:
        outs = _run(interp, inputs, job["num_outputs"])
    except Exception as e:
        result.update(stage="invoke", error=f"{type(e).__name__}: {e}")
        save()
        return 4
    np.savez(os.path.join(job_dir, "outputs.npz"), **{f"out{i}": o for i, o in enumerate(outs)})
    text = _capture_fd2(interp.print_allocations)
    m = re.search(r"Arena allocation total (\d+) bytes", text)
    result.update(stage="measured", allocations=text, arena_total=int(m.group(1)) if m else None)
    for key, pat in (("arena_head", r"allocation head (\d+)"), ("arena_tail", r"allocation tail (\d+)")):
        mm = re.search(pat, text)
        result[key] = int(mm.group(1)) if mm else None
    save()
    del interp

    if job.get("verify_minimal") and result["arena_total"]:
        # Confirm the recorded figure is enough by running at it (rounded to 16 bytes); grow on failure.
        size = -(-result["arena_total"] // 16) * 16
        first = [x[:1] for x in inputs]
        for _ in range(8):
            result.update(stage="verify", verify_size=size)
            save()
            try:
                probe = runtime.Interpreter.from_bytes(model, arena_size=size)
                again = _run(probe, first, job["num_outputs"])
                same = all(np.array_equal(a, b[:1]) for a, b in zip(again, outs))
                result.update(arena_verified=size, verify_same_outputs=bool(same))
                break
            except Exception:
                size += 16
        result["stage"] = "done"
        save()
    else:
        result["stage"] = "done"
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
