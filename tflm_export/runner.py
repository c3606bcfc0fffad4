"""Running a flatbuffer in the real TFLM interpreter, isolated in a child process.

The TFLM interpreter from the ``tflite-micro`` package is C++; a malformed
model or an arena that is far too small can crash it (a segmentation fault
was observed here with a 200-byte arena). It therefore runs in a short-lived
child process (:mod:`tflm_export._tflm_worker`, which imports only NumPy and
the TFLM runtime, ~0.2 s to start). A crash becomes a
:class:`~tflm_export.errors.TFLMRuntimeError` in the caller.

The tensor arena is measured with TFLM's own ``RecordingMicroAllocator``
(``print_allocations``: "Arena allocation total N bytes") after a real
invocation, then confirmed by building a second interpreter with exactly that
many bytes (rounded up to 16) and checking it gives the same outputs.

The host build is 64-bit: TFLM's bookkeeping structs hold 8-byte pointers
there, so the host figure is a few hundred bytes above what a 32-bit
Cortex-M build needs (a safe upper bound).

Example::

    from tflm_export import runner
    res = runner.run_tflm(model_bytes, [x_int8], num_outputs=1)
    res.outputs[0].shape, res.arena_bytes
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from tflm_export import modelinfo
from tflm_export.errors import InvalidArgumentError, TFLMRuntimeError

__all__ = ["MAX_ARENA_BYTES", "TFLMRun", "check_arena_size", "generous_arena", "run_tflm"]

#: The largest arena the host interpreter is asked for: 1 GiB, a thousand times the largest
#: microcontroller SRAM. A model that needs more is not a TFLM model (or its shapes are corrupted).
MAX_ARENA_BYTES = 1 << 30

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tflm_worker.py")


@dataclass
class TFLMRun:
    outputs: list            # one int array per model output, (samples, ...)
    arena_bytes: int         # minimal arena, measured (rounded to 16, confirmed by a re-run when asked)
    arena_recorded: int      # RecordingMicroAllocator total
    arena_head: int | None
    arena_tail: int | None
    allocations: str         # TFLM's own allocation report


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except Exception:
        return f"signal {-rc}"


def generous_arena(info) -> int:
    """An arena surely large enough to run the model once: every non-constant tensor, every weight
    unpacked to int8 (INT4 scratch / DECODE outputs), plus 64 KiB of bookkeeping."""
    import math

    act = sum(math.ceil(t.elements * modelinfo.TYPE_BITS.get(t.dtype, 32) / 8)
              for t in info.tensors if not t.is_constant)
    weights = sum(t.elements for t in info.tensors if t.is_constant)
    return int(act + weights + 64 * 1024)


def check_arena_size(arena_size: int, what: str = "the model") -> int:
    """Refuse arenas above MAX_ARENA_BYTES (InvalidArgumentError) before any memory is taken."""
    if arena_size > MAX_ARENA_BYTES:
        raise InvalidArgumentError(
            f"{what} needs a tensor arena of about {arena_size:,} bytes, more than the {MAX_ARENA_BYTES:,} bytes "
            "the emulator allows (microcontrollers have at most a few MiB); check the tensor shapes")
    return int(arena_size)


def run_tflm(model_bytes: bytes, inputs, num_outputs: int, arena_size: int | None = None,
             verify_minimal: bool = True, timeout: float = 600.0) -> TFLMRun:
    """Run ``inputs`` (list of typed arrays, one per model input, leading sample axis) through TFLM.

    ``arena_size`` is the arena the interpreter gets for the run (default: :func:`generous_arena`);
    the reported ``arena_bytes`` is the minimum measured, whatever was handed over.
    Raises TFLMRuntimeError (with TFLM's own messages) when loading or invoking fails or the child dies.
    """
    if arena_size is None:
        arena_size = generous_arena(modelinfo.inspect_model(model_bytes))
    check_arena_size(arena_size)
    job = tempfile.mkdtemp(prefix="tflm_job_")
    try:
        with open(os.path.join(job, "model.tflite"), "wb") as f:
            f.write(model_bytes)
        np.savez(os.path.join(job, "inputs.npz"), **{f"in{i}": np.asarray(x) for i, x in enumerate(inputs)})
        with open(os.path.join(job, "job.json"), "w") as f:
            json.dump({"arena_size": int(arena_size), "num_inputs": len(inputs), "num_outputs": int(num_outputs),
                       "verify_minimal": bool(verify_minimal)}, f)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            proc = subprocess.run([sys.executable, _WORKER, job], capture_output=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise TFLMRuntimeError(f"the TFLM interpreter did not finish within {timeout:.0f} s") from None
        log = (proc.stderr.decode("utf-8", "replace") + proc.stdout.decode("utf-8", "replace")).strip()
        try:
            with open(os.path.join(job, "result.json")) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {"stage": "start"}
        stage = res.get("stage")
        tflm_msgs = "\n".join(line for line in log.splitlines() if line.strip())[-2000:]
        if proc.returncode < 0 and stage in ("load", "invoke", "start"):
            what = {"load": "loading the model", "invoke": "running the model", "start": "starting"}[stage]
            raise TFLMRuntimeError(
                f"the TFLM interpreter crashed ({_signal_name(proc.returncode)}) while {what}; "
                f"the flatbuffer is probably corrupted or uses an unsupported feature."
                + (f"\nTFLM said:\n{tflm_msgs}" if tflm_msgs else "")
            )
        if res.get("error"):
            hint = ""
            if "allocate" in tflm_msgs.lower() or "arena" in tflm_msgs.lower():
                hint = f" (arena of {arena_size:,} bytes too small? pass a larger arena_size)"
            raise TFLMRuntimeError(
                f"TFLM failed while {'loading' if stage == 'load' else 'running'} the model: {res['error']}{hint}"
                + (f"\nTFLM said:\n{tflm_msgs}" if tflm_msgs else "")
            )
        if stage not in ("measured", "verify", "done") or not os.path.exists(os.path.join(job, "outputs.npz")):
            raise TFLMRuntimeError(f"the TFLM worker stopped at stage {stage!r} (exit code {proc.returncode}):\n{tflm_msgs}")
        data = np.load(os.path.join(job, "outputs.npz"))
        outputs = [data[f"out{i}"] for i in range(num_outputs)]
        recorded = res.get("arena_total")
        if recorded is None:
            raise TFLMRuntimeError("TFLM did not report its arena allocations (print_allocations gave no total)")
        if res.get("arena_verified"):
            arena = int(res["arena_verified"])
        else:
            # not confirmed (not asked, or the probe process died): keep a margin of alignment slack
            arena = -(-int(recorded) // 16) * 16 + (0 if not verify_minimal else 64)
        return TFLMRun(outputs, arena, int(recorded), res.get("arena_head"), res.get("arena_tail"),
                       res.get("allocations", ""))
    finally:
        shutil.rmtree(job, ignore_errors=True)
