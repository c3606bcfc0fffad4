"""Running an exported model in the TFLM interpreter under a board's budget (see :func:`emulate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tflm_export import cycles, modelinfo, runner
from tflm_export.artifact import Artifact, check_finite, dequantize, io_details, quantize
from tflm_export.boards import Board, get_board
from tflm_export.errors import DoesNotFit, InvalidArgumentError, TFLMRuntimeError

__all__ = ["EmulationResult", "emulate", "top1_accuracy"]


@dataclass
class EmulationResult:
    """What :func:`emulate` measured and estimated.

    Attributes:
        outputs: dequantized float32 outputs, ``(samples, ...)`` (a list for multi-output models);
            ``None`` when no inputs were given.
        raw_outputs: the integer outputs as TFLM produced them (same layout).
        arena_bytes: minimal tensor arena, measured with TFLM's RecordingMicroAllocator.
        flash_bytes: ``model_bytes + runtime_code_bytes``.
        model_bytes: flatbuffer size.
        runtime_code_bytes: estimate of the TFLM runtime plus kernels used (:mod:`tflm_export.cycles`).
        latency_ms / cycles: *estimated* single-inference latency on the board's core, from the cycle
            model in :mod:`tflm_export.cycles` (calibrated against published TFLM measurements).
        latency_error: relative error band of that estimate (0.20 = +-20 %: the largest error on
            published measurements held out of the calibration), None where no held-out
            measurement exists (``kernels="reference"``).
        per_op: one dict per operator: index, op, macs, elements, cycles, ms.
        board: the :class:`~tflm_export.boards.Board`.
        fits: arena and flash within the board's budgets.
        allocations: TFLM's own allocation report.
    """

    outputs: object
    raw_outputs: object
    arena_bytes: int
    flash_bytes: int
    model_bytes: int
    runtime_code_bytes: int
    latency_ms: float
    cycles: int
    per_op: list
    board: Board
    fits: bool
    kernels: str = "cmsis-nn"
    latency_error: float | None = None
    allocations: str = ""
    ops: tuple = field(default_factory=tuple)

    @property
    def latency_range_ms(self):
        """``(low, high)`` latency in ms from the error band, or None when the band is unknown."""
        if self.latency_error is None:
            return None
        return (self.latency_ms * (1 - self.latency_error), self.latency_ms * (1 + self.latency_error))

    def latency_note(self) -> str:
        """One line saying the latency is an estimate, with its error band."""
        band = (f"+-{100 * self.latency_error:.0f} % (largest error on published TFLM measurements held out of "
                f"the calibration)" if self.latency_error is not None
                else "error band unknown (no held-out measurement for these kernels)")
        return (f"ESTIMATE from the cycle model, not measured: {band}; "
                f"see docs/tflm_export.md 'Cycle model'")

    def summary(self) -> str:
        """A printable board report."""
        b = self.board
        lines = [
            f"board {b.name} ({b.core} @ {b.clock_mhz:g} MHz, {self.kernels} kernels)",
            f"  tensor arena {self.arena_bytes:>10,} B of {b.arena_budget:>10,} B "
            f"({100.0 * self.arena_bytes / b.arena_budget:5.1f}%)",
            f"  flash        {self.flash_bytes:>10,} B of {b.flash_budget:>10,} B "
            f"({100.0 * self.flash_bytes / b.flash_budget:5.1f}%)  = model {self.model_bytes:,} + runtime code ~{self.runtime_code_bytes:,}",
            f"  latency      {self.latency_ms:10.3f} ms  ({self.cycles:,} cycles, estimated"
            + (f", {self.latency_range_ms[0]:.3f}-{self.latency_range_ms[1]:.3f} ms)" if self.latency_error is not None
               else ")"),
            f"               {self.latency_note()}",
            f"  fits         {'yes' if self.fits else 'NO'}",
        ]
        top = sorted(self.per_op, key=lambda r: -r["cycles"])[:5]
        lines.append("  slowest ops: " + ", ".join(f"#{r['index']} {r['op']} {r['ms']:.3f} ms" for r in top))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _model_bytes(artifact_or_bytes):
    if isinstance(artifact_or_bytes, Artifact):
        return artifact_or_bytes.model_bytes
    if isinstance(artifact_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(artifact_or_bytes)
    if isinstance(artifact_or_bytes, str) or hasattr(artifact_or_bytes, "__fspath__"):
        with open(artifact_or_bytes, "rb") as f:
            return f.read()
    raise TypeError(f"emulate() takes an Artifact, .tflite bytes or a path, got {type(artifact_or_bytes).__name__}")


def top1_accuracy(outputs, labels) -> float:
    """The fraction of samples whose arg-max output is the label (a fraction in [0, 1]).

    ``outputs``: one row of scores per sample (any trailing shape). ``labels``: class indices,
    shape (N,) or (N, 1), or one-hot / probability rows (N, C).

    Example::

        run = tflm_export.emulate(art, inputs=x_test)
        tflm_export.top1_accuracy(run.outputs, y_test)      # 0.934
    """
    labels = np.asarray(labels)
    out = np.asarray(outputs).reshape(len(labels), -1)
    if labels.ndim > 1 and labels.reshape(len(labels), -1).shape[1] > 1:
        labels = labels.reshape(len(labels), -1).argmax(-1)
    return float((out.argmax(-1) == labels.reshape(-1)).mean())


def emulate(artifact_or_bytes, board="nano33ble", inputs=None, kernels: str = "cmsis-nn",
            check_fit: bool = True, arena_size: int | None = None, cycle_scale: float = 1.0,
            timeout: float = 600.0) -> EmulationResult:
    """Run a flatbuffer in the TFLM interpreter and check it against a board.

    The flatbuffer is verified in Python first (CorruptModelError on a truncated or corrupted file,
    UnsupportedOpError naming any operator TFLM lacks), then run by the real TFLM interpreter in a
    child process, so a crash of the C++ code cannot take the caller down.

    Args:
        artifact_or_bytes: an :class:`Artifact` from :func:`convert`, the .tflite bytes, or a path.
        board: a board name from ``BOARDS`` or a :class:`Board`.
        inputs: float inputs ``(samples, ...)`` (quantized with the input tensor's scale / zero point)
            or already-int8 arrays; a list for multi-input models. ``None`` runs one zero input just
            to measure the arena.
        kernels: ``"cmsis-nn"`` (optimized kernels of current TFLM, default), ``"cmsis-nn-2020"`` (TFLM <= 2.4
            as in the MLPerf Tiny v0.5 reference) or ``"reference"`` (portable C) for the latency model.
        check_fit: raise DoesNotFit when arena or flash exceed the board (the exception carries the
            result as ``.result``); with False, look at ``result.fits``.
        arena_size: arena handed to the interpreter for the run (default: generous).
        cycle_scale: multiply the cycle model, to calibrate it against a measured board.
        timeout: seconds the TFLM child process may run before it is killed (TFLMRuntimeError).

    Example::

        run = tflm_export.emulate(art, board="nucleo-l4r5zi", inputs=x_test[:100])
        print(run.summary())
        top1 = run.outputs.argmax(-1)
    """
    b = get_board(board)
    data = _model_bytes(artifact_or_bytes)
    info = modelinfo.inspect_model(data)
    modelinfo.check_tflm_ops(info)
    ins = io_details(info, "inputs")
    outs = io_details(info, "outputs")
    runner.check_arena_size(arena_size if arena_size is not None else runner.generous_arena(info))

    given = inputs is not None
    if inputs is None:
        arrays = [np.full([1] + d["shape"][1:], d["zero_point"] or 0) for d in ins]
        arrays = [quantize(a.astype(np.int64), d) for a, d in zip(arrays, ins)]
    else:
        raw = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if len(ins) == 1 and len(raw) != 1:
            raw = [np.asarray(inputs)]
        if len(raw) != len(ins):
            raise InvalidArgumentError(f"the model has {len(ins)} inputs, got {len(raw)} arrays")
        arrays = []
        for a, d in zip(raw, ins):
            a = np.asarray(a)
            want = tuple(d["shape"][1:])
            if tuple(a.shape) == want:
                a = a[None]
            if tuple(a.shape[1:]) != want:
                raise InvalidArgumentError(f"input {d['name']!r} expects samples of shape {want}, got an array of shape {a.shape}")
            check_finite(a, f"input {d['name']!r}", InvalidArgumentError,
                         "int8 quantization would turn them into arbitrary numbers")
            arrays.append(quantize(a, d))
    res = runner.run_tflm(data, arrays, num_outputs=len(outs), arena_size=arena_size, timeout=timeout)

    samples = len(arrays[0]) if arrays else 1
    # (samples, ...) per output; an output without a batch axis of 1 keeps its whole shape per sample
    raw_out = []
    for r, d in zip(res.outputs, outs):
        shape = (samples,) + tuple(d["shape"][1:] if d["shape"][:1] == [1] else d["shape"])
        if r.size != int(np.prod(shape)):
            raise TFLMRuntimeError(f"TFLM returned {r.size} values for output {d['name']!r}, "
                                   f"whose shape {d['shape']} for {samples} samples needs {int(np.prod(shape))}")
        raw_out.append(r.reshape(shape))
    deq = [dequantize(r, d) for r, d in zip(raw_out, outs)]
    single = len(outs) == 1
    rows = cycles.estimate(info, b.core, b.clock_mhz, kernels, scale=cycle_scale)
    total = int(sum(r["cycles"] for r in rows))
    code = cycles.runtime_code_bytes(info.op_names)
    flash = len(data) + code
    fits = res.arena_bytes <= b.arena_budget and flash <= b.flash_budget
    result = EmulationResult(
        outputs=(deq[0] if single else deq) if given else None,
        raw_outputs=(raw_out[0] if single else raw_out) if given else None,
        arena_bytes=res.arena_bytes, flash_bytes=flash, model_bytes=len(data), runtime_code_bytes=code,
        latency_ms=total / (b.clock_mhz * 1000.0), cycles=total, per_op=rows, board=b, fits=fits,
        kernels=kernels, latency_error=cycles.error_band(kernels), allocations=res.allocations, ops=tuple(dict.fromkeys(info.op_names)),
    )
    if check_fit and not fits:
        if res.arena_bytes > b.arena_budget:
            err = DoesNotFit(b.name, "tensor arena", res.arena_bytes, b.arena_budget,
                             f"flash {flash:,} of {b.flash_budget:,} bytes")
        else:
            err = DoesNotFit(b.name, "flash", flash, b.flash_budget,
                             f"model {len(data):,} + runtime code ~{code:,} bytes")
        err.result = result
        raise err
    return result
