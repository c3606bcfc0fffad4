"""How Quantune picks the next configurations to measure: "xgboost", "random", "grid", "genetic".

Every strategy is a deterministic function of (space, seed, the trials so far,
the transfer data): an interrupted search resumes exactly where it stopped, and
the worker count never changes what is proposed.

* ``grid``: the space's own order.
* ``random``: a permutation of the space drawn from ``seed``.
* ``genetic``: steady-state: until 8 trials are measured, the random order;
  then each child takes every axis from one of two parents (tournaments of 3
  among the measured trials), mutates each axis with probability 1/5, and is
  re-drawn until untried.
* ``xgboost``: Quantune's cost model. An XGBoost regressor (squared error,
  eta 0.15, gamma 3, 100 trees of depth 6) fits the score *drop from float*
  in points (or the raw score when the float score is unknown) on one-hot
  configuration features plus the model features
  (:data:`~tfjpq.quantune.prepare.FEATURES`) of the transfer trials and this
  model's trials, then proposes the untried configurations with the best
  predictions (ties in the seed's random order). Failed and infeasible trials
  enter the fit 5 points below the worst measured. With no data yet, it
  starts in the random order.

Example::

    from tfjpq.quantune import strategies
    strategies.propose("random", space, tried=[], n=3, seed=0)
"""

from __future__ import annotations

import numpy as np

from tfjpq.quantune.prepare import FEATURES
from tfjpq.quantune.space import AXES, Config, QuantuneError

__all__ = ["STRATEGIES", "XGB_PARAMS", "propose", "encode"]

STRATEGIES = ("xgboost", "random", "grid", "genetic")
#: The paper's settings (objective, eta, gamma) and tree settings chosen here.
XGB_PARAMS = dict(objective="reg:squarederror", learning_rate=0.15, gamma=3.0, n_estimators=100, max_depth=6,
                  n_jobs=1, tree_method="exact")
POPULATION = 8
FAIL_PENALTY = 5.0


def _order(space, seed):
    return [space[i] for i in np.random.default_rng(seed).permutation(len(space))]


def _untried(seq, tried_set, n):
    out = []
    for c in seq:
        if c not in tried_set and c not in out:
            out.append(c)
            if len(out) == n:
                break
    return out


def _target(row, float_score):
    return row["score"] - float_score if float_score is not None else row["score"]


def encode(configs, features, vocab) -> np.ndarray:
    """One-hot configuration features (``vocab``: ``{axis: [values]}``) followed by the model features."""
    rows = []
    for c, f in zip(configs, features):
        d = c.to_dict() if isinstance(c, Config) else c
        onehot = [1.0 if str(d[a]) == str(v) else 0.0 for a in AXES for v in vocab[a]]
        rows.append(onehot + [float(f.get(k, 0.0)) for k in FEATURES])
    return np.asarray(rows, np.float32)


def _training_rows(records):
    """(configs, features, targets) from ``[{'features', 'float_score', 'trials'}]``, penalising failures."""
    configs, feats, targets = [], [], []
    for rec in records:
        ok = [t for t in rec["trials"] if t.get("status") == "ok" and t.get("score") is not None]
        if not ok:
            continue
        fs = rec.get("float_score")
        worst = min(_target(t, fs) for t in ok)
        for t in rec["trials"]:
            if t.get("status") == "ok" and t.get("score") is not None:
                y = _target(t, fs)
            else:
                y = worst - FAIL_PENALTY
            configs.append(t["config"])
            feats.append(rec["features"])
            targets.append(y)
    return configs, feats, np.asarray(targets, np.float32)


def _xgboost(space, tried, n, seed, features, float_score, prior):
    import xgboost

    records = list(prior) + [{"features": features, "float_score": float_score, "trials": tried}]
    configs, feats, y = _training_rows(records)
    tried_set = {Config.from_dict(t["config"]) for t in tried}
    order = _order(space, seed)
    if len(y) < 2:
        return _untried(order, tried_set, n)
    vocab = {a: sorted({str(v) for v in space.axes[a]} | {str(c[a]) for c in configs}) for a in AXES}
    model = xgboost.XGBRegressor(random_state=int(seed), **XGB_PARAMS)
    model.fit(encode(configs, feats, vocab), y)
    cand = [c for c in order if c not in tried_set]
    if not cand:
        return []
    pred = model.predict(encode(cand, [features] * len(cand), vocab))
    best = np.argsort(-pred, kind="stable")[:n]
    return [cand[i] for i in best]


def _genetic(space, tried, n, seed, features, float_score, prior):
    tried_set = {Config.from_dict(t["config"]) for t in tried}
    measured = [t for t in tried if t.get("status") == "ok" and t.get("score") is not None]
    if len(measured) < POPULATION:
        return _untried(_order(space, seed), tried_set, n)
    rng = np.random.default_rng([int(seed), len(tried), 7])
    scores = np.array([t["score"] for t in measured])
    out = []
    for _ in range(n):
        child = None
        for _attempt in range(50):
            parents = []
            for _p in range(2):
                pick = rng.choice(len(measured), size=min(3, len(measured)), replace=False)
                parents.append(measured[int(pick[np.argmax(scores[pick])])]["config"])
            genes = {a: parents[int(rng.integers(2))][a] for a in AXES}
            for a in AXES:
                if rng.random() < 1.0 / len(AXES):
                    vals = space.axes[a]
                    genes[a] = vals[int(rng.integers(len(vals)))]
            c = Config.from_dict(genes)
            if c in space and c not in tried_set and c not in out:
                child = c
                break
        if child is None:
            rest = _untried(_order(space, seed), tried_set | set(out), 1)
            if not rest:
                break
            child = rest[0]
        out.append(child)
    return out


def propose(strategy, space, tried, n, seed=0, features=None, float_score=None, prior=()):
    """The next ``n`` untried configurations of ``space``.

    ``tried``: trial dicts so far (``config`` as a dict, ``status``, ``score``);
    ``prior``: transfer records ``{'features', 'float_score', 'trials'}`` (xgboost only).
    """
    tried_set = {Config.from_dict(t["config"]) for t in tried}
    if strategy == "grid":
        return _untried(space, tried_set, n)
    if strategy == "random":
        return _untried(_order(space, seed), tried_set, n)
    if strategy == "genetic":
        return _genetic(space, tried, n, seed, features or {}, float_score, prior)
    if strategy == "xgboost":
        return _xgboost(space, tried, n, seed, features or {}, float_score, prior)
    raise QuantuneError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
