"""The ``tfjpq`` command: the search recipe, export, TFLM conversion and emulation from a terminal.

Every subcommand reads and writes files (``.keras`` models, firmware folders, JSON),
and takes data by name: ``digits`` or ``mnist5k`` (offline), ``tfds:<name>`` or
``npz:<path>`` (a ``.npz`` with x_train, y_train, x_test, y_test).

Example (the recipe of docs/search.md, then a board)::

    tfjpq search float.keras --data mnist5k --target 20000 --out search.keras
    tfjpq freeze search.keras --teacher float.keras --data mnist5k --finetune-epochs 3 --out frozen.keras
    tfjpq export frozen.keras --out deploy.keras
    tfjpq convert deploy.keras --data mnist5k --out-dir build/fw
    tfjpq emulate build/fw --board nano33ble --data mnist5k

Errors print one line, ``tfjpq <cmd>: error: ...``, and exit with status 1 (2 for a
usage error); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from absl import flags

PROG = "tfjpq"


class UsageError(Exception):
    """Bad command line (exit status 2)."""


# --------------------------------------------------------------------------- helpers

def _say(msg=""):
    print(msg, flush=True)


def _step(msg):
    _say(f"== {msg}")


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load_model(path, what="model"):
    import tfjpq

    if not path:
        raise UsageError(f"missing the {what} argument (a .keras file)")
    return tfjpq.load_model(path)


def _load_data(name, need_labels=True):
    from tfjpq import datasets

    if not name:
        raise UsageError("this step needs --data (digits, mnist5k, cifar10, speech_commands, tfds:<name> "
                         "or npz:<path>)")
    try:
        (x, y), (xt, yt) = datasets.load(name)
    except ValueError as e:
        if type(e) is ValueError:
            raise UsageError(str(e)) from None
        raise
    return (x, y), (xt, yt)


def _bits(text, what):
    try:
        return tuple(int(b) for b in str(text).split(",") if b.strip() != "")
    except ValueError:
        raise UsageError(f"--{what} takes comma-separated integers, e.g. 0,2,4,8; got {text!r}") from None


def _pair(text, what):
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"--{what} takes two numbers 'low,high', e.g. 0,1; got {text!r}") from None
    return lo, hi


def _loss(model):
    import keras

    from tfjpq.search import _outputs_probabilities

    return keras.losses.SparseCategoricalCrossentropy(from_logits=not _outputs_probabilities(model))


def _check_out(path, what="--out"):
    if not path:
        raise UsageError(f"{what} is required")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    return path


def _save(model, path):
    model.save(path)
    _say(f"wrote {path} ({os.path.getsize(path):,} bytes)")


# --------------------------------------------------------------------------- subcommands

def cmd_search(fv, args):
    """Joint pruning + mixed-precision search of a trained float model (the recipe: a short search)."""
    import keras

    import tfjpq

    model = _load_model(args[0] if args else None)
    (x, y), (xt, yt) = _load_data(fv["data"].value)
    tfjpq.check_data(x, y, what="training data")
    out = _check_out(fv["out"].value)
    if fv["target"].value is not None and fv["strength"].value is not None:
        raise UsageError("give --target (a budget) or --strength, not both")
    strength = fv["strength"].value if fv["strength"].value is not None else tfjpq.search.DEFAULT_STRENGTH
    keras.utils.set_random_seed(fv["seed"].value)
    mode = f"target {fv['target'].value:,.0f}" if fv["target"].value is not None else f"strength {strength:g}"
    _step(f"search {args[0]}: weight bits {fv['weight-bits'].value}, cost={fv['cost'].value}, {mode}, "
          f"{fv['epochs'].value} epoch(s) on {fv['data'].value} {x.shape}")
    search = tfjpq.wrap(model, weight_bits=_bits(fv["weight-bits"].value, "weight-bits"),
                        act_bits=_bits(fv["act-bits"].value, "act-bits"), cost=fv["cost"].value,
                        strength=strength, target=fv["target"].value,
                        weight_quantizer=fv["weight-quantizer"].value, prune_gate=fv["prune-gate"].value)
    loss = _loss(model)
    distill = fv["distill"].value
    search.compile(optimizer=keras.optimizers.Adam(fv["lr"].value), loss=loss, metrics=["accuracy"],
                   teacher=model if distill > 0 else None, distill=distill if distill > 0 else 0.5)
    search.fit(x, y, epochs=fv["epochs"].value, batch_size=fv["batch-size"].value, verbose=fv["keras-verbose"].value,
               callbacks=[tfjpq.callbacks.SearchLogger()])
    _say(f"hard cost {float(search.hard_cost()):,.0f} ({fv['cost'].value})")
    _save(search, out)
    _say(f"next: tfjpq freeze {out} --teacher {args[0]} --data {fv['data'].value} --finetune-epochs 3 --out frozen.keras")
    return 0


def cmd_freeze(fv, args):
    """Fix the search's choices (projected onto the budget in target mode), optionally fine-tune."""
    import keras
    import tflm_export

    import tfjpq

    search = _load_model(args[0] if args else None, "search model")
    out = _check_out(fv["out"].value)
    keras.utils.set_random_seed(fv["seed"].value)
    _step(f"freeze {args[0]}")
    tuned = tfjpq.freeze(search)
    proj = getattr(tuned, "projection", None)
    if proj:
        _say(f"projection onto the budget: {proj}")
    n = fv["finetune-epochs"].value
    if n > 0:
        (x, y), (xt, yt) = _load_data(fv["data"].value)
        tfjpq.check_data(x, y, what="training data")
        teacher = _load_model(fv["teacher"].value, "teacher") if fv["teacher"].value else None
        loss = _loss(tuned)
        lr = fv["lr"].value
        phases = [(n - 1, lr), (1, lr * 0.3)] if n >= 2 else [(1, lr)]
        for epochs, rate in phases:
            if epochs <= 0:
                continue
            _step(f"fine-tune {epochs} epoch(s) at lr {rate:g}" + (" distilled from the teacher" if teacher else ""))
            tuned.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, metrics=["accuracy"],
                          teacher=teacher, distill=fv["distill"].value)
            tuned.fit(x, y, epochs=epochs, batch_size=fv["batch-size"].value, verbose=fv["keras-verbose"].value)
        if len(xt):
            acc = tflm_export.top1_accuracy(tuned.predict(xt, verbose=0, batch_size=256), yt)
            _say(f"test accuracy {acc:.4f}")
    _save(tuned, out)
    return 0


def cmd_export(fv, args):
    """Turn a frozen search model into a plain Keras model: pruned channels gone, BN folded."""
    import tfjpq

    frozen = _load_model(args[0] if args else None, "frozen model")
    out = _check_out(fv["out"].value)
    _step(f"export {args[0]}")
    deploy = tfjpq.export(frozen)
    tfjpq.summary(deploy)
    _save(deploy, out)
    return 0


def cmd_convert(fv, args):
    """Convert a Keras model to an int8 TFLite flatbuffer with sub-byte weights and its firmware folder."""
    import tflm_export

    model = _load_model(args[0] if args else None)
    out_dir = fv["out-dir"].value
    if not out_dir:
        raise UsageError("--out-dir is required")
    cal = None
    if fv["data"].value:
        (x, _), _ = _load_data(fv["data"].value)
        cal = x[:fv["calibration"].value]
    else:
        _say("no --data: calibrating on random inputs (give --data for real activation ranges)")
    _step(f"convert {args[0]} -> {out_dir}/ (pack={fv['pack'].value})")
    art = tflm_export.convert(model, representative_data=cal, pack=fv["pack"].value, out_dir=out_dir,
                              overwrite=fv["overwrite"].value)
    _say(f"flatbuffer {art.size:,} B, tensor arena {art.arena_bytes:,} B")
    _say(f"wrote {out_dir}/ ({', '.join(sorted(os.listdir(out_dir)))})")
    return 0


def _tflite_path(path):
    if not path:
        raise UsageError("missing the firmware folder or .tflite file argument")
    if os.path.isdir(path):
        cand = os.path.join(path, "model.tflite")
        if not os.path.exists(cand):
            raise FileNotFoundError(f"{path!r} has no model.tflite (write it with tfjpq convert)")
        return cand
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such firmware folder or .tflite file: {path!r}")
    return path


def cmd_emulate(fv, args):
    """Run a flatbuffer in the real TFLM interpreter under a board's memory budget."""
    import tflm_export

    board = tflm_export.get_board(fv["board"].value)   # an unknown board fails before any work
    path = _tflite_path(args[0] if args else None)
    inputs = labels = None
    if fv["data"].value:
        _, (xt, yt) = _load_data(fv["data"].value)
        n = fv["samples"].value
        inputs, labels = (xt[:n], yt[:n]) if n else (xt, yt)
    _step(f"emulate {path} on {board.name}" + (f", {len(inputs)} test inputs" if inputs is not None else ""))
    run = tflm_export.emulate(path, board=board, inputs=inputs, kernels=fv["kernels"].value,
                              check_fit=not fv["no-check-fit"].value)
    _say(run.summary())
    if labels is not None and run.outputs is not None and not isinstance(run.outputs, list):
        _say(f"TFLM top-1 {tflm_export.top1_accuracy(run.outputs, labels):.4f} on {len(labels)} test inputs")
    if not run.fits:
        _say(f"does NOT fit {board.name}")
        return 3
    return 0


def cmd_zeroq(fv, args):
    """Data-free int8 deployment: ZeroQ distils calibration inputs from BatchNorm statistics."""
    import numpy as np

    import tfjpq
    import tflm_export

    model = _load_model(args[0] if args else None)
    out_dir = fv["out-dir"].value
    if not out_dir:
        raise UsageError("--out-dir is required")
    _step(f"distil {fv['samples'].value} inputs from {args[0]}'s BatchNorm statistics")
    x_syn = tfjpq.zeroq.distill(model, num_samples=fv["samples"].value, iterations=fv["iterations"].value,
                                input_range=_pair(fv["input-range"].value, "input-range"),
                                verbose=2 if fv["keras-verbose"].value else 0)
    deploy = model
    if fv["budget"].value:
        bits = _bits(fv["bits"].value, "bits")
        _step(f"sensitivity at bits {bits}, mixed precision for {fv['budget'].value:,} B")
        sens = tfjpq.zeroq.sensitivity(model, x_syn, bits=bits)
        plan = tfjpq.zeroq.pareto(model, sens, budget_bytes=fv["budget"].value, cost="tflm")
        _say(str(plan))
        deploy = plan.apply(model)
    _step(f"convert -> {out_dir}/")
    art = tflm_export.convert(deploy, representative_data=x_syn, out_dir=out_dir, overwrite=fv["overwrite"].value)
    np.save(os.path.join(out_dir, "distilled.npy"), x_syn)
    _say(f"flatbuffer {art.size:,} B, tensor arena {art.arena_bytes:,} B")
    _say(f"wrote {out_dir}/ ({', '.join(sorted(os.listdir(out_dir)))})")
    return 0


def cmd_precrop(fv, args):
    """PreCropping: a narrower, freshly initialised model with a PaI method's per-layer densities."""
    import keras

    from tfjpq import precrop

    model = _load_model(args[0] if args else None)
    out = _check_out(fv["out"].value)
    density = fv["density"].value
    if not 0.0 < density <= 1.0:
        raise UsageError(f"--density must be in (0, 1], got {density:g}")
    data = None
    (x, y) = (None, None)
    if fv["data"].value:
        (x, y), _ = _load_data(fv["data"].value)
        data = (x[:512], y[:512])
    keras.utils.set_random_seed(fv["seed"].value)
    _step(f"precrop {args[0]}: {fv['method'].value} densities at {density:g}")
    dens = precrop.densities(model, method=fv["method"].value, density=density, data=data)
    small = precrop.crop(model, dens, seed=fv["seed"].value)
    for name, d in dens.items():
        _say(f"  {name:<24} density {d:.3f}")
    _say(f"params {model.count_params():,} -> {small.count_params():,}")
    if fv["epochs"].value:
        if x is None:
            raise UsageError("--epochs needs --data")
        from tfjpq import zoo

        zoo.train(small, x, y, epochs=fv["epochs"].value, verbose=fv["keras-verbose"].value)
    _save(small, out)
    return 0


def cmd_quantune(fv, args):
    """Search post-training quantization configurations, each scored by its TFLM top-1 accuracy."""
    import tfjpq

    model = _load_model(args[0] if args else None)
    (x, y), (xt, yt) = _load_data(fv["data"].value)
    out = _check_out(fv["out"].value)
    n_val = fv["val-samples"].value
    _step(f"quantune {args[0]}: {fv['strategy'].value}, {fv['trials'].value} trials, "
          f"{min(n_val, len(xt)) if n_val else len(xt)} validation inputs")
    result = tfjpq.quantune.tune(model, x[:fv["calibration"].value], (xt[:n_val], yt[:n_val]) if n_val else (xt, yt),
                                 strategy=fv["strategy"].value, trials=fv["trials"].value,
                                 budget_bytes=fv["budget"].value, seed=fv["seed"].value, out=out,
                                 history=fv["history"].value or None, input_range=_pair(fv["input-range"].value,
                                                                                        "input-range"))
    _say(f"best {result.best_config} at {result.best_score} (float {result.float_score})")
    _say(f"wrote {out}")
    if fv["out-dir"].value and result.artifact is not None:
        result.artifact.save(fv["out-dir"].value, overwrite=fv["overwrite"].value)
        _say(f"wrote {fv['out-dir'].value}/ (the best configuration's firmware files)")
    return 0


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _model_report(path, out_dir):
    import tfjpq

    model = _load_model(path)
    prof = tfjpq.profile(model)
    rows = [(r["name"], r["kind"], f"{r['channels_kept']}/{r['channels']}",
             " ".join(f"{b}:{n}" for b, n in sorted(r["bits_histogram"].items())), r["act_bits"] or "-",
             f"{r['weight_bytes']:,.0f}", f"{r['macs']:,}") for r in prof.rows]
    t = prof.totals
    rows.append(("**total**", "", f"{t['channels_kept']}/{t['channels']}",
                 " ".join(f"{b}:{n}" for b, n in sorted(t["bits_histogram"].items())), "",
                 f"{t['weight_bytes']:,.0f}", f"{t['macs']:,}"))
    text = "\n".join([f"# {os.path.basename(path)}", "",
                      _md_table(["layer", "kind", "channels", "bits (count)", "act bits", "weight B", "MACs"], rows), "",
                      f"Params kept {t['params']:,}; weight bytes {t['weight_bytes']:,.0f} (all-8-bit "
                      f"{t['weight_bytes_int8']:,.0f}, {t['size_ratio']:.1%}); TFLM-packed {t['packed_bytes']:,} B; "
                      f"bias bytes {t['bias_bytes']:,}; MACs {t['macs']:,}.", ""])
    return text, []


def _benchmark_module(json_path, name):
    """benchmarks/<name>.py next to the result's folder, or in the source tree; None if it cannot be imported."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(json_path))
    for cand in (os.path.join(os.path.dirname(here), f"{name}.py"),
                 os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")):
        if os.path.exists(cand):
            try:
                spec = importlib.util.spec_from_file_location(f"_tfjpq_bench_{name}", cand)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                return mod
            except Exception:   # matplotlib missing, or a benchmark that changed: fall back
                return None
    return None


def _json_report(path, out_dir):
    with open(path) as f:
        try:
            result = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not valid JSON ({e})") from None
    title = f"# {os.path.basename(path)}"
    # a Pareto benchmark result: benchmarks/pareto.py's own tables and plots
    if isinstance(result, dict) and isinstance(result.get("meta"), dict) and "models" in result["meta"] \
            and isinstance(result.get("rows"), list):
        mod = _benchmark_module(path, "pareto")
        if mod is not None:
            figs = {k: os.path.join(out_dir, f"{k}.png") for k in ("pareto", "pareto_layers")}
            made = []
            for key, fn in (("pareto", mod.plot_pareto), ("pareto_layers", mod.plot_layers)):
                try:
                    fn(result, figs[key])
                    made.append(figs[key])
                except Exception as e:   # one figure failing still leaves the tables
                    _say(f"(no {key}.png: {type(e).__name__}: {e})")
            try:
                return mod.markdown(result, {k: os.path.basename(v) for k, v in figs.items()}), made
            except Exception as e:
                _say(f"(benchmarks/pareto.py could not write its tables: {type(e).__name__}: {e}; generic table)")
    # a Quantune history
    if isinstance(result, dict) and isinstance(result.get("trials"), list):
        rows = []
        for t in result["trials"]:
            cfg = t.get("config") or {}
            rows.append((t.get("trial", ""), "|".join(str(v) for v in cfg.values()).replace("|", " / "),
                         t.get("status", ""), "" if t.get("score") is None else f"{t['score']:.2f}",
                         "" if t.get("bytes") is None else f"{t['bytes']:,}",
                         "" if t.get("seconds") is None else f"{t['seconds']:.1f}"))
        return "\n".join([title, "", f"Quantune history: strategy {result.get('strategy')}, "
                          f"{len(rows)} trials.", "",
                          _md_table(["trial", "config", "status", "score", "bytes", "s"], rows), ""]), []
    # anything with a list of flat rows
    rows = result.get("rows") if isinstance(result, dict) else result
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        keys = []
        for r in rows:
            keys += [k for k, v in r.items() if k not in keys and (v is None or isinstance(v, (int, float, str, bool)))]

        def cell(v):
            return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

        return "\n".join([title, "", _md_table(keys, [[cell(r.get(k)) for k in keys] for r in rows]), ""]), []
    raise ValueError(f"{path!r} is not a result tfjpq report knows (a benchmark result with 'rows', "
                     "or a Quantune history with 'trials')")


def cmd_report(fv, args):
    """Write a markdown report (summary table, and the Pareto figures for benchmarks/results/pareto.json)."""
    path = args[0] if args else None
    if not path:
        raise UsageError("missing the .keras model or result .json argument")
    out_dir = fv["out-dir"].value
    if not out_dir:
        raise UsageError("--out-dir is required")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    os.makedirs(out_dir, exist_ok=True)
    if path.endswith(".json"):
        text, figs = _json_report(path, out_dir)
    else:
        text, figs = _model_report(path, out_dir)
    md = os.path.join(out_dir, "report.md")
    with open(md, "w") as f:
        f.write(text)
    _say(text)
    _say(f"wrote {md}" + "".join(f", {p}" for p in figs))
    return 0


# --------------------------------------------------------------------------- flags per subcommand

def _common(fv):
    flags.DEFINE_bool("verbose", False, "print the traceback of an error", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed", flag_values=fv)


def _data(fv, required_text="data set"):
    flags.DEFINE_string("data", None, f"{required_text}: digits, mnist5k, cifar10, speech_commands "
                        "(from $TFDS_DATA_DIR), tfds:<name> or npz:<path>", flag_values=fv)


def _training(fv, epochs_default=None):
    flags.DEFINE_integer("batch-size", 64, "training batch size", flag_values=fv)
    flags.DEFINE_float("lr", 1e-3, "learning rate of the weights", flag_values=fv)
    flags.DEFINE_integer("keras-verbose", 2, "Keras fit verbosity: 0 silent, 1 progress bar, 2 a line per epoch",
                         flag_values=fv)


def _def_search(fv):
    _data(fv, "training data")
    flags.DEFINE_float("target", None, "budget in the cost's unit (bytes for size / tflm); the strength adapts",
                       flag_values=fv)
    flags.DEFINE_float("strength", None, "fixed weight of the normalised cost (default 0.05) when no --target",
                       flag_values=fv)
    flags.DEFINE_string("cost", "size", "size | tflm | bitops | mpic", flag_values=fv)
    flags.DEFINE_string("weight-bits", "0,2,4,8", "per-channel weight bit choices; 0 = pruned", flag_values=fv)
    flags.DEFINE_string("act-bits", "8", "activation bit choices", flag_values=fv)
    flags.DEFINE_enum("weight-quantizer", "mse", ["mse", "minmax"], "per-channel weight scale rule (docs/search.md)",
                      flag_values=fv)
    flags.DEFINE_enum("prune-gate", "ste", ["ste", "soft"], "how a pruned channel masks its output during the search",
                      flag_values=fv)
    flags.DEFINE_integer("epochs", 1, "search epochs (the recipe: 1, then fine-tune the frozen model)", flag_values=fv)
    flags.DEFINE_float("distill", 0.5, "weight of distillation from the input (float) model; 0 = off", flag_values=fv)
    flags.DEFINE_string("out", "search.keras", "where the search model goes", flag_values=fv)
    _training(fv)


def _def_freeze(fv):
    flags.DEFINE_string("out", "frozen.keras", "where the frozen model goes", flag_values=fv)
    flags.DEFINE_integer("finetune-epochs", 0, "fine-tune epochs after freezing (the last at 0.3x lr); needs --data",
                         flag_values=fv)
    _data(fv, "fine-tuning data")
    flags.DEFINE_string("teacher", None, "the float model (.keras) to distil from while fine-tuning", flag_values=fv)
    flags.DEFINE_float("distill", 0.5, "distillation weight with --teacher", flag_values=fv)
    _training(fv)


def _def_export(fv):
    flags.DEFINE_string("out", "deploy.keras", "where the deployable plain Keras model goes", flag_values=fv)


def _def_convert(fv):
    _data(fv, "calibration data (the training split's first --calibration inputs)")
    flags.DEFINE_integer("calibration", 200, "calibration inputs", flag_values=fv)
    flags.DEFINE_string("out-dir", None, "firmware folder to write (model.tflite, C sources, report.json)",
                        flag_values=fv)
    flags.DEFINE_enum("pack", "auto", ["auto", "int8", "int4", "lut"], "weight storage", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out-dir", flag_values=fv)


def _def_emulate(fv):
    flags.DEFINE_string("board", "nano33ble", "board name (nano33ble, nucleo-f746zg, nucleo-l4r5zi, "
                        "nucleo-f411re, stm32h743)", flag_values=fv)
    _data(fv, "test inputs and labels (the test split)")
    flags.DEFINE_integer("samples", 0, "test inputs to run (0 = all)", flag_values=fv)
    flags.DEFINE_enum("kernels", "cmsis-nn", ["cmsis-nn", "cmsis-nn-2020", "reference"], "kernels of the latency model",
                      flag_values=fv)
    flags.DEFINE_bool("no-check-fit", False, "report instead of failing when the model does not fit", flag_values=fv)


def _def_zeroq(fv):
    flags.DEFINE_string("out-dir", None, "firmware folder to write (plus distilled.npy)", flag_values=fv)
    flags.DEFINE_integer("samples", 64, "distilled inputs", flag_values=fv)
    flags.DEFINE_integer("iterations", 500, "distillation steps per batch", flag_values=fv)
    flags.DEFINE_string("input-range", "0,1", "the inputs' value range 'low,high'", flag_values=fv)
    flags.DEFINE_integer("budget", None, "flash budget in bytes for data-free mixed precision (ZeroQ Pareto)",
                         flag_values=fv)
    flags.DEFINE_string("bits", "2,4,8", "weight widths of the mixed-precision plan", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out-dir", flag_values=fv)
    flags.DEFINE_integer("keras-verbose", 1, "distillation progress: 0 silent, else a line every 100 steps",
                         flag_values=fv)


def _def_precrop(fv):
    flags.DEFINE_float("density", 0.5, "global kept share of the weights", flag_values=fv)
    flags.DEFINE_string("method", "synflow", "synflow (data-free) | snip | grasp (need --data)", flag_values=fv)
    _data(fv, "data for snip / grasp scores and --epochs")
    flags.DEFINE_integer("epochs", 0, "train the cropped model this many epochs (needs --data)", flag_values=fv)
    flags.DEFINE_string("out", "cropped.keras", "where the cropped model goes", flag_values=fv)
    flags.DEFINE_integer("keras-verbose", 2, "Keras fit verbosity", flag_values=fv)


def _def_quantune(fv):
    _data(fv, "calibration (training split) and validation (test split) data")
    flags.DEFINE_integer("trials", 16, "configurations to measure", flag_values=fv)
    flags.DEFINE_enum("strategy", "xgboost", ["xgboost", "random", "grid", "genetic"], "search strategy",
                      flag_values=fv)
    flags.DEFINE_integer("calibration", 256, "calibration inputs", flag_values=fv)
    flags.DEFINE_integer("val-samples", 500, "validation inputs (0 = the whole test split)", flag_values=fv)
    flags.DEFINE_integer("budget", None, "flatbuffer byte limit; larger configurations are infeasible", flag_values=fv)
    flags.DEFINE_list("history", [], "other runs' history files for XGBoost transfer", flag_values=fv)
    flags.DEFINE_string("input-range", "0,1", "the inputs' value range for ZeroQ calibration", flag_values=fv)
    flags.DEFINE_string("out", "history.json", "history JSON (rewritten after every trial; a re-run resumes)",
                        flag_values=fv)
    flags.DEFINE_string("out-dir", None, "also write the best configuration's firmware folder", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace an existing --out-dir", flag_values=fv)


def _def_report(fv):
    flags.DEFINE_string("out-dir", None, "folder for report.md (and the PNGs of a Pareto result)", flag_values=fv)


COMMANDS = {
    "search": (cmd_search, _def_search, "MODEL.keras --data D (--target BYTES | --strength S) [--out search.keras]",
               "tfjpq search float.keras --data mnist5k --target 20000 --cost size --epochs 1 --out search.keras"),
    "freeze": (cmd_freeze, _def_freeze, "SEARCH.keras [--finetune-epochs N --data D --teacher FLOAT.keras] --out F",
               "tfjpq freeze search.keras --finetune-epochs 3 --data mnist5k --teacher float.keras --out frozen.keras"),
    "export": (cmd_export, _def_export, "FROZEN.keras --out deploy.keras",
               "tfjpq export frozen.keras --out deploy.keras"),
    "convert": (cmd_convert, _def_convert, "MODEL.keras --data D --out-dir DIR",
                "tfjpq convert deploy.keras --data mnist5k --out-dir build/fw"),
    "emulate": (cmd_emulate, _def_emulate, "DIR|MODEL.tflite --board B [--data D]",
                "tfjpq emulate build/fw --board nano33ble --data mnist5k"),
    "zeroq": (cmd_zeroq, _def_zeroq, "MODEL.keras --out-dir DIR [--budget BYTES]",
              "tfjpq zeroq float.keras --out-dir build/zeroq --samples 64"),
    "precrop": (cmd_precrop, _def_precrop, "MODEL.keras --density 0.5 --out cropped.keras",
                "tfjpq precrop float.keras --density 0.5 --data mnist5k --epochs 3 --out cropped.keras"),
    "quantune": (cmd_quantune, _def_quantune, "MODEL.keras --data D --trials N --out history.json",
                 "tfjpq quantune float.keras --data mnist5k --trials 16 --out runs/history.json"),
    "report": (cmd_report, _def_report, "MODEL.keras|RESULT.json --out-dir DIR",
               "tfjpq report benchmarks/results/pareto.json --out-dir build/report"),
}


def _flag_values(cmd):
    fv = flags.FlagValues()
    _common(fv)
    COMMANDS[cmd][1](fv)
    return fv


def command_help(cmd) -> str:
    fn, _, usage, example = COMMANDS[cmd]
    fv = _flag_values(cmd)
    lines = [f"usage: {PROG} {cmd} {usage}", "", fn.__doc__.strip(), "", f"example:\n  {example}", "", "flags:"]
    for name in sorted(fv):
        fl = fv[name]
        if fl.name != name:
            continue
        head = f"  --{name}" if not isinstance(fl, flags.BooleanFlag) else f"  --[no]{name}"
        lines.append(f"{head}: {fl.help}" + (f" (default: {fl.default!r})" if fl.default not in (None, False) else ""))
    return "\n".join(lines)


def main_help() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"usage: {PROG} <command> [args] [--flags]   ({PROG} <command> --help for one command)", "",
             "tfjpq: joint pruning + mixed-precision search for Keras 3, export to TFLite Micro.", "", "commands:"]
    lines += [f"  {c:<{width}}  {COMMANDS[c][0].__doc__.strip().splitlines()[0]}" for c in COMMANDS]
    lines += ["", "Data by name: digits, mnist5k (offline), tfds:<name>, npz:<path>.", "",
              "example (the recipe of docs/search.md, then a board):",
              "  tfjpq search float.keras --data mnist5k --target 20000 --out search.keras",
              "  tfjpq freeze search.keras --teacher float.keras --data mnist5k --finetune-epochs 3 --out frozen.keras",
              "  tfjpq export frozen.keras --out deploy.keras",
              "  tfjpq convert deploy.keras --data mnist5k --out-dir build/fw",
              "  tfjpq emulate build/fw --board nano33ble --data mnist5k",
              "  tfjpq report deploy.keras --out-dir build/report"]
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    msg = " ".join(msg.split())   # one line
    return msg if isinstance(e, (UsageError,)) else f"{msg} ({type(e).__name__})"


def main(argv=None) -> int:
    """Run one command; ``argv`` as ``sys.argv`` (``argv[0]`` the program). Returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        _say(main_help())
        return 0 if args else 2
    if args[0] in ("--version", "version"):
        from tfjpq import __version__

        _say(f"{PROG} {__version__}")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"{PROG}: error: unknown command {cmd!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
        _say(command_help(cmd))
        return 0
    fv = _flag_values(cmd)
    try:
        positional = fv([f"{PROG} {cmd}"] + rest)[1:]
    except flags.Error as e:
        print(f"{PROG} {cmd}: error: {' '.join(str(e).split())} (see {PROG} {cmd} --help)", file=sys.stderr)
        return 2
    verbose = fv["verbose"].value
    if len(positional) > 1:
        print(f"{PROG} {cmd}: error: one positional argument expected, got {positional} "
              f"(see {PROG} {cmd} --help)", file=sys.stderr)
        return 2
    _quiet_tf()
    t0 = time.time()
    try:
        status = COMMANDS[cmd][0](fv, positional)
    except UsageError as e:
        if verbose:
            traceback.print_exc()
        print(f"{PROG} {cmd}: error: {_one_line(e)} (see {PROG} {cmd} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:   # noqa: BLE001 - the CLI's one-line error contract
        if verbose:
            traceback.print_exc()
        print(f"{PROG} {cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    _say(f"{cmd} done in {time.time() - t0:.0f} s")
    return status


def run():
    """Console-script entry point (``tfjpq``), on absl's app runner."""
    from absl import app

    def parse(argv):   # each subcommand parses its own FlagValues in main()
        flags.FLAGS.mark_as_parsed()
        return list(argv)

    app.run(main, argv=sys.argv, flags_parser=parse)


if __name__ == "__main__":
    run()
