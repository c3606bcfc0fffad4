"""Fuzzing the flatbuffer readers: corrupted .tflite files end in a clean error, never a crash or a hang.

Seeds are valid flatbuffers of a tiny conv / depthwise / dense model, converted by
``tflm_export.convert`` four ways (int8, INT4, LUT with TFLM_DECODE operators, and
``strip=False``). Every case mutates one seed, either in its bytes (bit flips,
truncation, overwritten offsets, zeroed or inserted ranges, header damage) or in
its structure through the flatbuffer schema's object API (huge or negative shapes,
wrong buffer sizes and indices, wrong operator-code indices and operator codes,
wrong tensor indices in operators and subgraph inputs / outputs, tensor types,
quantization vectors, operator options, dropped records), and feeds the result
to every reader ``convert`` and ``emulate`` use:

* ``inspect``:   ``modelinfo.inspect_model`` + ``check_tflm_ops`` + ``cycles.estimate``
* ``strip``:     ``lean.strip`` (and the stripped bytes must inspect again)
* ``breakdown``: ``lean.breakdown`` (the parts must sum to the size)
* ``pack``:      ``packing.analyze`` + ``plan`` + ``apply`` (INT4 and LUT rewriting)
* ``repair``:    ``repair.fix_bias_scales``
* ``emulate``:   ``tflm_export.emulate`` (the real TFLM interpreter, in its child process)

Outcome of each reader on each case: ``ok`` (it ran, and its result is consistent),
``rejected:<Error>`` (a ``tflm_export.TFLMExportError``: clean), ``unclean:<Type>``
(any other exception: a bug), ``hang`` (past the per-case time limit: a bug) and,
for the whole case, ``crash`` (the process running it died: a bug). ``--isolate``
(the default here) runs the cases in child processes so a crash is counted, not fatal.

Run: .venv/bin/python benchmarks/fuzz.py --cases 5000        (writes benchmarks/results/fuzz.json)
     .venv/bin/python benchmarks/fuzz.py --cases 300 --seed 1 --no-emulate
The suite runs a bounded version: tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "fuzz.json")
READERS = ("inspect", "strip", "breakdown", "pack", "repair", "emulate")
CASE_TIMEOUT_S = 30.0          # per reader and case; the TFLM child gets the same limit

# -- seeds -------------------------------------------------------------------


def tiny_model():
    """Conv (4-bit grid) -> depthwise (4-bit) -> global pooling -> dense (2-bit), 6x6x1 input."""
    import keras
    from keras import layers

    from tfjpq import quantizers

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3, name="fc")(x)
    model = keras.Model(inp, out, name="fuzz_seed")
    for name, bits in (("c", 4), ("dw", 4), ("fc", 2)):
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0] = quantizers.quantize_weights_np(w[0], bits, channel_axis=-2 if name == "dw" else -1)
        w[1] = np.random.default_rng(1).normal(0, 0.1, w[1].shape).astype(np.float32)
        layer.set_weights(w)
    return model


def make_seeds() -> dict:
    """``{name: valid flatbuffer bytes}``: int8, INT4, LUT (lean) and the converter's own int8 (not stripped)."""
    import tflm_export

    model = tiny_model()
    x = np.random.default_rng(0).uniform(0, 1, (16, 6, 6, 1)).astype(np.float32)
    seeds = {}
    for pack in ("int8", "int4", "lut"):
        art = tflm_export.convert(model, x, pack=pack, check_tflm=False)
        seeds[pack] = art.model_bytes
    seeds["converter"] = art.int8_model_bytes
    seeds["int4_full"] = tflm_export.convert(model, x, pack="int4", check_tflm=False, strip=False).model_bytes
    return seeds


def seeds_cached(path=None) -> dict:
    """The seeds, cached in a .npz next to the results (the converter is the slow part)."""
    path = path or os.path.join(tempfile.gettempdir(), "tfjpq_fuzz_seeds.npz")
    if os.path.exists(path):
        with contextlib.suppress(Exception):
            data = np.load(path)
            return {k: data[k].tobytes() for k in data.files}
    seeds = make_seeds()
    tmp = path + f".{os.getpid()}.npz"
    np.savez(tmp, **{k: np.frombuffer(v, np.uint8) for k, v in seeds.items()})
    os.replace(tmp, path)
    return seeds


# -- mutations ----------------------------------------------------------------

_INTERESTING_U32 = (0, 1, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE)
_BIG_DIMS = (0, -1, -7, 2 ** 16, 2 ** 20, 2 ** 28, 2 ** 28 + 1, 2 ** 31 - 1, -(2 ** 31))


def _fb():
    from tflm_export import schema

    return schema.fb()


def _pack(model) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(4096)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _u32(rng, n):
    v = int(rng.choice(_INTERESTING_U32)) if rng.random() < 0.6 else int(rng.integers(0, max(n * 2, 16)))
    return v.to_bytes(4, "little")


def byte_mutation(data: bytes, rng) -> tuple:
    b = bytearray(data)
    n = len(b)
    kind = rng.choice(["flip", "truncate", "offset", "zero", "insert", "delete", "header", "flip_many"])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "flip_many":
        for _ in range(int(rng.integers(4, 64))):
            b[int(rng.integers(0, n))] = int(rng.integers(0, 256))
    elif kind == "truncate":
        cut = int(rng.choice([rng.integers(0, 16), rng.integers(0, n), n - int(rng.integers(1, 16))]))
        b = b[:max(0, cut)]
    elif kind == "offset":
        # overwrite an aligned 32-bit word of the graph part (offsets, lengths, vtable entries)
        i = int(rng.integers(0, max(1, n // 4))) * 4
        b[i:i + 4] = _u32(rng, n)
    elif kind == "zero":
        i = int(rng.integers(0, n))
        b[i:i + int(rng.integers(1, 64))] = bytes(min(n - i, 64))[: len(b[i:i + 64])]
    elif kind == "insert":
        i = int(rng.integers(0, n))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        i = int(rng.integers(0, n))
        del b[i:i + int(rng.integers(1, 32))]
    elif kind == "header":
        i = int(rng.integers(0, 8))
        b[i] = int(rng.integers(0, 256))
    return "bytes:" + str(kind), bytes(b)


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def structured_mutation(data: bytes, rng) -> tuple:
    fb = _fb()
    try:
        m = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
        sg = m.subgraphs[0]
    except Exception:   # already broken (a stacked mutation): mutate its bytes instead
        return byte_mutation(data, rng)
    tensors, ops, buffers = sg.tensors, sg.operators, m.buffers
    kinds = ["shape", "buffer_size", "buffer_index", "buffer_offset", "opcode_index", "builtin_code", "op_tensor",
             "op_arity", "tensor_type", "quantization", "io", "options", "drop", "version", "custom_code",
             "subgraphs", "shape_rank"]
    kind = _pick(rng, kinds)
    if kind == "shape":
        t = _pick(rng, tensors)
        shape = [int(s) for s in (t.shape if t.shape is not None else [1])] or [1]
        shape[int(rng.integers(0, len(shape)))] = int(_pick(rng, _BIG_DIMS))
        if rng.random() < 0.3:   # many large-but-legal dims: a product past 2**31
            shape = [2 ** 12] * int(rng.integers(3, 6))
        t.shape = np.array(shape, np.int64).clip(-(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    elif kind == "shape_rank":
        t = _pick(rng, tensors)
        t.shape = None if rng.random() < 0.3 else np.ones(int(rng.integers(0, 9)), np.int32)
    elif kind == "buffer_size":
        withdata = [x for x in buffers if x.data is not None and len(x.data)]
        buf = _pick(rng, withdata)
        k = int(rng.integers(0, 3))
        buf.data = (buf.data[: int(rng.integers(0, len(buf.data)))] if k == 0
                    else np.concatenate([buf.data, np.zeros(int(rng.integers(1, 4096)), np.uint8)]) if k == 1
                    else np.zeros(int(rng.integers(0, 3)), np.uint8))
    elif kind == "buffer_offset":
        buf = _pick(rng, buffers)
        buf.offset = int(_pick(rng, (2, 8, len(data) - 4, len(data), 2 ** 31, 2 ** 63 - 1)))
        buf.size = int(_pick(rng, (0, 1, 16, 2 ** 20, 2 ** 40)))
    elif kind == "buffer_index":
        t = _pick(rng, tensors)
        t.buffer = int(_pick(rng, (len(buffers), len(buffers) + 5, 2 ** 31 - 1, int(rng.integers(0, len(buffers))))))
    elif kind == "opcode_index":
        op = _pick(rng, ops)
        op.opcodeIndex = int(_pick(rng, (len(m.operatorCodes), 2 ** 31 - 1, int(rng.integers(0, len(m.operatorCodes))))))
    elif kind == "builtin_code":
        c = _pick(rng, m.operatorCodes)
        code = int(rng.integers(0, 210)) if rng.random() < 0.7 else int(_pick(rng, (3, 4, 9, 17, 22, 32, 40, 127)))
        c.builtinCode = code
        c.deprecatedBuiltinCode = min(code, 127)
    elif kind == "op_tensor":
        op = _pick(rng, ops)
        vec = op.inputs if (rng.random() < 0.7 or op.outputs is None) else op.outputs
        if vec is not None and len(vec):
            vec = np.array(vec, np.int64)
            vec[int(rng.integers(0, len(vec)))] = int(_pick(rng, (-1, -2, len(tensors), 2 ** 31 - 1,
                                                                  int(rng.integers(0, len(tensors))))))
            vec = vec.clip(-(2 ** 31), 2 ** 31 - 1).astype(np.int32)
            if op.inputs is not None and len(op.inputs) == len(vec) and vec is not op.outputs:
                op.inputs = vec
            else:
                op.outputs = vec
    elif kind == "op_arity":
        op = _pick(rng, ops)
        ins = list(op.inputs if op.inputs is not None else [])
        if ins and rng.random() < 0.5:
            ins = ins[: int(rng.integers(0, len(ins)))]
        else:
            ins = ins + [int(rng.integers(-1, len(tensors)))] * int(rng.integers(1, 4))
        op.inputs = np.array(ins, np.int32)
        if rng.random() < 0.3:
            op.outputs = np.array([], np.int32) if rng.random() < 0.5 else np.array(
                list(op.outputs) + [int(rng.integers(0, len(tensors)))], np.int32)
    elif kind == "tensor_type":
        t = _pick(rng, tensors)
        t.type = int(rng.integers(0, 20)) if rng.random() < 0.8 else int(rng.integers(20, 127))
    elif kind == "quantization":
        quantized = [x for x in tensors if x.quantization is not None] or tensors
        t = _pick(rng, quantized)
        q = t.quantization or fb.QuantizationParametersT()
        k = int(rng.integers(0, 5))
        if k == 0:
            q.scale = np.ones(int(rng.integers(0, 9)), np.float32) * 0.01
        elif k == 1:
            q.quantizedDimension = int(rng.integers(-3, 8))
        elif k == 2:
            q.zeroPoint = np.array([int(_pick(rng, (-129, 128, 2 ** 40, -1)))] * int(rng.integers(0, 5)), np.int64)
        elif k == 3:
            q.scale = np.array([float(_pick(rng, (0.0, -1.0, np.nan, np.inf, 1e-45, 1e38)))], np.float32)
        else:
            t.quantization = None
            q = None
        if q is not None:
            t.quantization = q
    elif kind == "io":
        which = "inputs" if rng.random() < 0.5 else "outputs"
        vec = getattr(sg, which)
        choices = ([], [int(rng.integers(0, len(tensors)))], [len(tensors)], [-1], [0, 0],
                   list(vec if vec is not None else []) + [int(rng.integers(0, len(tensors)))])
        setattr(sg, which, np.array(_pick(rng, choices), np.int32))
    elif kind == "options":
        with_opts = [o for o in ops if o.builtinOptions is not None] or ops
        op = _pick(rng, with_opts)
        opts = op.builtinOptions
        if opts is not None and rng.random() < 0.7:
            fields = [f for f, v in vars(opts).items() if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
            if fields:
                setattr(opts, _pick(rng, fields), int(_pick(rng, (0, -1, 2, 7, 255, 2 ** 31 - 1))))
        else:
            op.builtinOptionsType = int(rng.integers(0, 130))
    elif kind == "drop":
        k = int(rng.integers(0, 6))
        if k == 0:
            sg.tensors = tensors[: int(rng.integers(0, len(tensors)))]
        elif k == 1:
            sg.operators = ops[: int(rng.integers(0, len(ops)))] if rng.random() < 0.5 else ops[1:]
        elif k == 2:
            m.buffers = buffers[: int(rng.integers(0, len(buffers)))]
        elif k == 3:
            m.operatorCodes = m.operatorCodes[: int(rng.integers(0, len(m.operatorCodes)))]
        elif k == 4:
            m.subgraphs = []
        else:
            sg.operators = list(reversed(ops))   # producers after their consumers
    elif kind == "version":
        m.version = int(_pick(rng, (0, 2, 4, 2 ** 31 - 1)))
    elif kind == "custom_code":
        c = _pick(rng, m.operatorCodes)
        c.builtinCode = c.deprecatedBuiltinCode = 32   # CUSTOM
        c.customCode = _pick(rng, (b"TFLM_DECODE", b"NO_SUCH_OP", b"", b"\xff\xfe"))
    elif kind == "subgraphs":
        # a second subgraph (IF / WHILE bodies): the same one again, or an empty one
        m.subgraphs = m.subgraphs + [_pick(rng, (sg, fb.SubGraphT()))]
    try:
        return "struct:" + kind, _pack(m)
    except Exception as e:   # the object API refused to write it: fall back to a byte mutation
        kind2, out = byte_mutation(data, rng)
        return f"{kind2}(pack failed: {type(e).__name__})", out


def mutate(data: bytes, rng) -> tuple:
    """One random mutation of ``data``: ``(kind, bytes)``; half are byte-level, half structural."""
    if rng.random() < 0.5:
        return byte_mutation(data, rng)
    try:
        return structured_mutation(data, rng)
    except Exception:   # a stacked mutation on a model with empty lists: nothing to pick from
        return byte_mutation(data, rng)


def cases(seeds: dict, count: int, seed: int = 0):
    """``count`` mutated flatbuffers, reproducible from ``seed``: ``(index, seed name, kind, bytes)``."""
    names = sorted(seeds)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        name = names[int(rng.integers(0, len(names)))]
        data = seeds[name]
        kind, data = mutate(data, rng)
        if rng.random() < 0.15:           # stack a second mutation now and then
            kind2, data = mutate(data, rng) if len(data) > 64 else (None, data)
            kind = f"{kind}+{kind2}" if kind2 else kind
        yield i, name, kind, data


# -- running the readers --------------------------------------------------------


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    if seconds is None or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _reader_fns(emulate: bool):
    import tflm_export
    from tflm_export import cycles, lean, modelinfo, packing, repair

    def inspect(data):
        info = modelinfo.inspect_model(data)
        modelinfo.check_tflm_ops(info)
        cycles.estimate(info, "cortex-m4", 64.0)

    def valid_output(out, what):
        """What a reader writes from an accepted model must be valid itself (else: a finding, not a rejection)."""
        try:
            modelinfo.inspect_model(out)
        except tflm_export.CorruptModelError as e:
            raise AssertionError(f"{what} wrote an invalid flatbuffer from one it accepted: {e}") from None

    def strip(data):
        valid_output(lean.strip(data), "lean.strip")

    def breakdown(data):
        b = lean.breakdown(data)
        if sum(b["parts"].values()) != b["total"] or b["total"] != len(data):
            raise AssertionError(f"breakdown parts sum to {sum(b['parts'].values())}, file is {len(data)}")

    def pack(data):
        weights = packing.analyze(data, ["c", "dw", "fc"])
        plans = packing.plan(weights, "auto")
        out, _ = packing.apply(data, weights, plans)
        valid_output(out, "packing.apply")

    def fix(data):
        out, _ = repair.fix_bias_scales(data)
        valid_output(out, "repair.fix_bias_scales")

    def run(data):
        res = tflm_export.emulate(data, check_fit=False, inputs=np.zeros((2, 6, 6, 1), np.float32),
                                  timeout=CASE_TIMEOUT_S)
        outs = res.raw_outputs if isinstance(res.raw_outputs, list) else [res.raw_outputs]
        if not outs or any(o is None or len(o) != 2 for o in outs):
            raise AssertionError("emulate did not return one output row per sample")

    fns = {"inspect": inspect, "strip": strip, "breakdown": breakdown, "pack": pack, "repair": fix}
    if emulate:
        fns["emulate"] = run
    return fns


def classify(fn, data, timeout=CASE_TIMEOUT_S) -> str:
    """Run one reader on one case: 'ok', 'rejected:<Error>', 'unclean:<Type>: message' or 'hang'."""
    from tflm_export.errors import TFLMExportError

    try:
        with _time_limit(timeout):
            fn(data)
        return "ok"
    except _Hang:
        return "hang"
    except TFLMExportError as e:
        # a crash of the TFLM child is caught (clean for the caller) but counted apart: validation could catch it
        crashed = "interpreter crashed" in str(e) or "did not finish" in str(e)
        return f"rejected:{type(e).__name__}" + (" (TFLM child died)" if crashed else "")
    except Exception as e:   # noqa: BLE001 - anything else is a finding
        return f"unclean:{type(e).__name__}: {str(e)[:200]}"


def run_cases(seeds, count, seed=0, emulate=True, start=0, on_case=None, timeout=CASE_TIMEOUT_S):
    """Run cases ``start .. count-1`` in this process; returns one record per case.

    ``on_case(record, done)`` is called before (``done=False``) and after each case.
    """
    fns = _reader_fns(emulate)
    records = []
    for i, name, kind, data in cases(seeds, count, seed):
        if i < start:
            continue
        rec = {"case": i, "seed": name, "kind": kind, "bytes": len(data)}
        if on_case:
            on_case(dict(rec), False)
        for reader, fn in fns.items():
            rec[reader] = classify(fn, data, timeout)
        records.append(rec)
        if on_case:
            on_case(rec, True)
    return records


def bug(outcome: str) -> bool:
    return outcome.startswith(("unclean", "hang", "crash"))


def summarize(records) -> dict:
    by_reader = {}
    for reader in READERS:
        got = [r[reader] for r in records if reader in r]
        if got:
            by_reader[reader] = dict(collections.Counter(o.split(":", 2)[0] if not o.startswith("rejected") else o
                                                         for o in got).most_common())
    by_kind = collections.Counter(r["kind"].split("(")[0].split("+")[0] for r in records)
    emulated = [r for r in records if r.get("emulate") == "ok"]
    return {
        "cases": len(records),
        "by_reader": by_reader,
        "bugs": [r for r in records if any(bug(r.get(k, "")) for k in READERS + ("outcome",))],
        "accepted_by_tflm": len(emulated),
        "mutations": dict(sorted(by_kind.items())),
    }


# -- isolation: cases in child processes, so a crash is counted -------------------


def _child(args):
    """Child mode: run cases from --start, writing one JSON line per case (and a 'start' line before it)."""
    seeds = seeds_cached(args.seed_cache)
    out = open(args.log, "a", buffering=1)

    def on_case(rec, done):
        out.write(json.dumps(rec if done else {"start": rec}) + "\n")

    run_cases(seeds, args.cases, args.seed, emulate=not args.no_emulate, start=args.start, on_case=on_case)
    return 0


def run_isolated(count, seed=0, emulate=True, seed_cache=None, log=None, verbose=True):
    """Run all cases in child processes; a child that dies marks its case in flight as 'crash' and a new
    child continues after it."""
    seeds_cached(seed_cache)    # build once, before the children start
    log = log or tempfile.mktemp(prefix="tfjpq_fuzz_", suffix=".jsonl")
    records, start, t0 = {}, 0, time.time()
    while start < count:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--cases", str(count), "--seed", str(seed),
               "--start", str(start), "--log", log] + (["--seed-cache", seed_cache] if seed_cache else []) \
            + (["--no-emulate"] if not emulate else [])
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        in_flight = None
        with open(log) as f:
            for line in f:
                rec = json.loads(line)
                if "start" in rec:
                    in_flight = rec["start"]
                else:
                    records[rec["case"]] = rec
                    in_flight = None if in_flight and in_flight["case"] == rec["case"] else in_flight
        if in_flight is not None and in_flight["case"] not in records:
            records[in_flight["case"]] = dict(in_flight, outcome=f"crash (exit {proc.returncode})",
                                              stderr=proc.stderr.decode("utf-8", "replace")[-500:])
            start = in_flight["case"] + 1
        elif proc.returncode != 0:
            raise RuntimeError(f"fuzz child failed outside a case:\n{proc.stderr.decode()[-2000:]}")
        else:
            start = count
        if verbose:
            print(f"  {len(records)}/{count} cases, {time.time() - t0:.0f} s", flush=True)
    return [records[i] for i in sorted(records)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-emulate", action="store_true", help="skip the TFLM interpreter (Python readers only)")
    p.add_argument("--in-process", action="store_true", help="no child processes (a crash ends the run)")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--seed-cache", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--log", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    t0 = time.time()
    if args.in_process:
        records = run_cases(seeds_cached(args.seed_cache), args.cases, args.seed, emulate=not args.no_emulate)
    else:
        records = run_isolated(args.cases, args.seed, emulate=not args.no_emulate, seed_cache=args.seed_cache)
    summary = summarize(records)
    summary.update(seconds=round(time.time() - t0, 1), seed=args.seed, emulate=not args.no_emulate,
                   command="benchmarks/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps({k: v for k, v in summary.items() if k != "bugs"}, indent=1))
    print(f"bugs: {len(summary['bugs'])}")
    for r in summary["bugs"][:20]:
        print("  ", r)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    return 1 if summary["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
