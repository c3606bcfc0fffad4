"""``tune``: search post-training quantization configurations, each scored on TFLM.

Example::

    import tfjpq
    from tfjpq import datasets, zoo
    (x, y), (xt, yt) = datasets.load("digits")
    model = zoo.small_cnn(); zoo.train(model, x, y, epochs=5)
    result = tfjpq.quantune.tune(model, x[:256], (xt, yt), strategy="xgboost", trials=12,
                                 out="build/quantune_small_cnn.json")
    result.best_config, result.best_score, result.float_score, result.artifact.size
    result.history        # every trial: config, status, score (TFLM top-1, %), bytes, seconds
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from tfjpq.quantune import strategies
from tfjpq.quantune.prepare import Measurer, model_features
from tfjpq.quantune.space import Config, QuantuneError, Space

__all__ = ["FORMAT", "TuneResult", "tune", "simulate", "load_history", "save_history"]

FORMAT = "tfjpq.quantune/1"


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        best_config: the best measured :class:`Config` (None when no trial succeeded).
        best_score: its score (TFLM top-1 in percent by default).
        float_score: the float model's Keras top-1 on the same data (None with a user ``evaluate``).
        artifact: the best configuration's :class:`tflm_export.Artifact` (arena measured in TFLM).
        history: every trial, in order: ``{'trial', 'config', 'status', 'score', 'bytes', 'seconds', 'error'}``.
        path: where the history is saved (None without ``out``).
    """

    best_config: Config | None
    best_score: float | None
    float_score: float | None
    artifact: object
    history: list
    space: Space
    strategy: str
    path: str | None = None
    features: dict = field(default_factory=dict)

    @property
    def loss_vs_float(self):
        """Points lost to float (None when either score is unknown)."""
        if self.best_score is None or self.float_score is None:
            return None
        return self.float_score - self.best_score


def save_history(path, record: dict) -> None:
    """Write a history record as JSON atomically (a temporary sibling file, then a rename)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_record(rec, where):
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("trials"), list):
        raise QuantuneError(f"{where} is not a Quantune history (a JSON object with format {FORMAT!r} "
                            "and a 'trials' list, as tune(out=...) writes)")
    for t in rec["trials"]:
        Config.from_dict(t.get("config"))
    rec.setdefault("features", {})
    return rec


def load_history(history) -> list:
    """Transfer records from a path, a history dict, a :class:`TuneResult`, or a list of those.

    Example::

        prior = load_history(["runs/resnet8.json", "runs/ds_cnn.json"])
        tune(model, x_cal, val, history=prior)
    """
    if history is None:
        return []
    if isinstance(history, (str, os.PathLike, dict, TuneResult)):
        history = [history]
    out = []
    for h in history:
        if isinstance(h, TuneResult):
            out.append({"format": FORMAT, "features": h.features, "float_score": h.float_score, "trials": h.history})
        elif isinstance(h, dict):
            out.append(_check_record(dict(h), "a history dict"))
        elif isinstance(h, (str, os.PathLike)):
            try:
                with open(h) as f:
                    rec = json.load(f)
            except FileNotFoundError:
                raise QuantuneError(f"history file {os.fspath(h)!r} does not exist") from None
            except ValueError as e:
                raise QuantuneError(f"history file {os.fspath(h)!r} is not valid JSON: {e}") from None
            out.append(_check_record(rec, f"history file {os.fspath(h)!r}"))
        else:
            raise QuantuneError(f"history must be a path, a dict, a TuneResult or a list of them; got {type(h).__name__}")
    return out


def _fmt(score):
    return "failed" if score is None else f"{score:.2f}"


def _search(space, strategy, trials, seed, measure_many, tried, features, float_score, prior, batch, on_trial,
            stop=None):
    """The loop every strategy shares: propose ``batch`` untried configs, measure them, repeat."""
    limit = min(int(trials), len(space))
    while len(tried) < limit and not (stop is not None and tried and stop(tried)):
        n = min(batch, limit - len(tried))
        configs = strategies.propose(strategy, space, tried, n, seed, features, float_score, prior)
        if not configs:
            break
        for c, row in zip(configs, measure_many(configs)):
            row = {"trial": len(tried) + 1, "config": c.to_dict(), **row}
            tried.append(row)
            on_trial(row)
    return tried


def _best(tried):
    ok = [t for t in tried if t.get("status") == "ok" and t.get("score") is not None]
    if not ok:
        return None
    return max(ok, key=lambda t: (t["score"], -t["trial"]))


# -- process pool ---------------------------------------------------------------------------
_WORKER = None


def _worker_init(model_path, data_path, evaluate, budget_bytes, input_range, seed):
    global _WORKER
    import keras

    data = np.load(data_path, allow_pickle=False)
    model = keras.models.load_model(model_path, compile=False)
    val = (data["x_val"], data["y_val"]) if "x_val" in data else None
    distilled = data["distilled"] if "distilled" in data else (str(data["distill_error"]) if "distill_error" in data else None)
    _WORKER = Measurer(model, data["x_cal"], val, evaluate=evaluate, budget_bytes=budget_bytes,
                       input_range=input_range, distilled=distilled, seed=seed)


def _worker_measure(config_dict):
    return _WORKER.measure(Config.from_dict(config_dict))


def tune(model, calibration_data, validation_data=None, space=None, strategy: str = "xgboost", trials: int = 20,
         budget_bytes=None, history=None, seed: int = 0, workers: int = 1, evaluate=None, out=None,
         batch=None, input_range=None, verbose: int = 1) -> TuneResult:
    """Search post-training quantization configurations of ``model``; each trial is converted and scored.

    Args:
        model: a trained Keras 3 functional (or Sequential) model of kinds the
            :mod:`tfjpq.graph` registry marks ``tunable``.
        calibration_data: real calibration inputs ``(N, ...)``; ``real-<n>`` configs use the first ``n``.
        validation_data: ``(x, y)`` labels as integers or one-hot; the score is the TFLM top-1 accuracy
            (percent) of the converted flatbuffer, run in the real TFLM interpreter.
        space: a :class:`Space` (default ``Space()``, 96 points).
        strategy: ``"xgboost"`` (Quantune's cost model), ``"random"``, ``"grid"`` or ``"genetic"``.
        trials: how many configurations to measure (at most the space's size).
        budget_bytes: flatbuffer size limit; a configuration over it is recorded ``infeasible``.
        history: transfer data for ``"xgboost"``: other models' histories (paths, dicts,
            :class:`TuneResult` or a list), see :func:`load_history`.
        seed: random order, tie breaks and genetic draws; the same seed gives the same trials.
        workers: measure in a process pool of this size (``evaluate`` must then be picklable).
            The trials do not depend on it: ``random`` / ``grid`` propose ``workers`` configurations
            at a time (their order ignores scores); ``xgboost`` / ``genetic`` propose ``batch``.
        evaluate: ``f(artifact) -> float`` (higher is better) instead of TFLM top-1.
        out: JSON path of the history, rewritten atomically after every trial. If it exists (same
            space, strategy and seed), the search resumes from it.
        batch: configurations proposed per round for ``xgboost`` / ``genetic`` (default 1: refit
            after every trial, as in the paper).
        input_range: ``(low, high)`` of the model inputs, given to ZeroQ distillation (e.g. ``(0, 1)``).
        verbose: 1 prints one line per trial.

    Returns:
        A :class:`TuneResult`.

    Raises:
        QuantuneError: a bad argument (unknown strategy, ``trials < 1``, a history from another run).
        UnsupportedModelError: a model Quantune cannot read.

    Example::

        result = tfjpq.quantune.tune(model, x_train[:256], (x_val, y_val), trials=16,
                                     history=["runs/resnet8.json"], out="runs/ds_cnn.json")
        print(result.best_config, result.best_score, result.loss_vs_float)
        result.artifact.save("build/ds_cnn")
    """
    from tfjpq.graph import check_model

    if strategy not in strategies.STRATEGIES:
        raise QuantuneError(f"unknown strategy {strategy!r}; choose one of {strategies.STRATEGIES}")
    if int(trials) < 1:
        raise QuantuneError(f"trials must be at least 1, got {trials}")
    if int(workers) < 1:
        raise QuantuneError(f"workers must be at least 1, got {workers}")
    space = Space() if space is None else space
    if not isinstance(space, Space):
        raise QuantuneError(f"space must be a tfjpq.quantune.Space, got {type(space).__name__}")
    if evaluate is None:
        if validation_data is None:
            raise QuantuneError("tune needs validation_data=(x, y) to score on TFLM, or an evaluate(artifact) function")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise QuantuneError("validation_data must be a pair (x, y) of inputs and labels")
        if len(validation_data[0]) != len(validation_data[1]):
            raise QuantuneError(f"validation_data has {len(validation_data[0])} inputs but "
                                f"{len(validation_data[1])} labels")
    elif not callable(evaluate):
        raise QuantuneError(f"evaluate must be a function artifact -> float, got {type(evaluate).__name__}")
    model = check_model(model, "tunable", "quantune.tune")
    x_cal = np.asarray(calibration_data, np.float32)
    if x_cal.ndim < 2 or tuple(x_cal.shape[1:]) != tuple(model.inputs[0].shape[1:]):
        raise QuantuneError(f"calibration_data has shape {x_cal.shape}; the model takes (N,) + "
                            f"{tuple(model.inputs[0].shape[1:])}")
    prior = load_history(history)
    measurer = Measurer(model, x_cal, validation_data, evaluate=evaluate, budget_bytes=budget_bytes,
                        input_range=input_range, seed=seed)
    features = model_features(model)
    float_score = measurer.float_score()

    record = {"format": FORMAT, "model": model.name, "features": features, "float_score": float_score,
              "space": space.to_dict(), "strategy": strategy, "seed": int(seed),
              "budget_bytes": budget_bytes, "trials": []}
    tried = []
    if out is not None and os.path.exists(out):
        old = load_history(out)[0]
        for key in ("space", "strategy", "seed", "budget_bytes"):
            if old.get(key) != record[key]:
                raise QuantuneError(
                    f"{os.fspath(out)!r} holds a history with {key}={old.get(key)!r}, this run has {record[key]!r}; "
                    "pass another out path to start a new search, or the same arguments to resume")
        tried = list(old["trials"])
        if verbose and tried:
            print(f"quantune: resuming {os.fspath(out)} after {len(tried)} trials", flush=True)

    best_seen = [_best(tried)]
    limit = min(int(trials), len(space))

    def on_trial(row):
        record["trials"] = tried
        if out is not None:
            save_history(out, record)
        b = _best(tried)
        if verbose:
            extra = f" ({row['error'][:80]})" if row.get("error") else ""
            size = f"{row['bytes']:,} B" if row.get("bytes") else "-"
            print(f"quantune {strategy} [{row['trial']}/{limit}] {Config.from_dict(row['config']).key}: "
                  f"{row['status']} {_fmt(row['score'])} | best {_fmt(b['score'] if b else None)} | {size} | "
                  f"{row['seconds']:.1f} s{extra}", flush=True)
        best_seen[0] = b

    pool = None
    if int(workers) > 1:
        pool = _make_pool(model, measurer, x_cal, validation_data, evaluate, budget_bytes, input_range, seed,
                          space, int(workers))

        def measure_many(configs):
            return list(pool.map(_worker_measure, [c.to_dict() for c in configs]))
    else:
        def measure_many(configs):
            return [measurer.measure(c) for c in configs]

    if strategy in ("random", "grid"):
        per_round = int(workers)
    else:
        per_round = 1 if batch is None else int(batch)
    t0 = time.perf_counter()
    try:
        _search(space, strategy, limit, seed, measure_many, tried, features, float_score, prior, per_round, on_trial)
    finally:
        if pool is not None:
            pool.shutdown()
    record["trials"] = tried
    if out is not None:
        save_history(out, record)
    b = _best(tried)
    best_cfg = Config.from_dict(b["config"]) if b else None
    art = measurer.artifact(best_cfg, check_tflm=True) if best_cfg is not None else None
    if verbose:
        loss = "" if (b is None or float_score is None) else f", {float_score - b['score']:.2f} points below float"
        print(f"quantune: {len(tried)} trials in {time.perf_counter() - t0:.0f} s; best {best_cfg} "
              f"{_fmt(b['score'] if b else None)}{loss}", flush=True)
    return TuneResult(best_cfg, b["score"] if b else None, float_score, art, tried, space, strategy,
                      os.fspath(out) if out is not None else None, features)


def _make_pool(model, measurer, x_cal, validation_data, evaluate, budget_bytes, input_range, seed, space, workers):
    import concurrent.futures
    import multiprocessing

    tmp = tempfile.mkdtemp(prefix="quantune_pool_")
    model_path = os.path.join(tmp, "model.keras")
    model.save(model_path)
    arrays = {"x_cal": x_cal}
    if validation_data is not None:
        arrays["x_val"] = np.asarray(validation_data[0], np.float32)
        arrays["y_val"] = np.asarray(validation_data[1])
    if "zeroq" in space.axes["calibration"]:   # distilled once here: every worker calibrates on the same data
        try:
            arrays["distilled"] = measurer.distilled()
        except QuantuneError as e:
            arrays["distill_error"] = np.array(str(e))
    data_path = os.path.join(tmp, "data.npz")
    np.savez(data_path, **arrays)
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
        initargs=(model_path, data_path, evaluate, budget_bytes, input_range, seed))


def simulate(table, strategy, space, trials=None, seed=0, features=None, float_score=None, history=None,
             batch=1, until=None) -> list:
    """Run a strategy against measurements taken beforehand (``{config key: trial row}``), without converting.

    Each strategy still sees only the measurements it asked for, so the trial sequence is the one
    :func:`tune` would produce on the same measurements. The benchmark measures a model's whole
    space once and simulates every strategy and seed on that table. ``until``: stop after the
    first trial scoring at least this.

    Example::

        rows = simulate(table, "xgboost", space, seed=3, features=f, float_score=98.9, history=others)
        [r["score"] for r in rows]
    """
    prior = load_history(history)
    tried = []

    def measure_many(configs):
        out = []
        for c in configs:
            row = dict(table[c.key])
            for k in ("trial", "config"):
                row.pop(k, None)
            out.append(row)
        return out

    _search(space, strategy, len(space) if trials is None else trials, seed, measure_many, tried,
            features or {}, float_score, prior, batch, lambda row: None,
            stop=None if until is None else (lambda rows: rows[-1].get("score") is not None
                                             and rows[-1]["score"] >= until))
    return tried
