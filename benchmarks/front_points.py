"""Single points of the Pareto benchmark, with the search controller's constants overridden.

For trying a change to the search on a few budgets before a full ``pareto.py`` run: the same
pipelines (``pareto.Bench``), the same float start (``build/pareto_cache``, shared with
``pareto.py``), so an unchanged point gives the full run's row exactly.

    python benchmarks/front_points.py ds_cnn --seeds 0 1 2 --out build/ds_rate.json \\
        joint:tflm:w4 joint:tflm:w4:rate=0.6 joint:tflm:0.7w2:ramp=0.25 uniform:4 l1:4:w2

Points: ``uniform:<bits>``, ``l1:<bits>:<budget>``, ``joint:<size|tflm>:<budget>[:key=value...]``.
Budgets as in ``pareto.budgets`` (``w8``, ``w8-w4``, ``w4``, ``0.4w8``, ``w4-w2``, ``w2``, ``0.7w2``,
``0.5w2``). Overrides for a joint point: ``rate``, ``gain``, ``gain_under``, ``ramp``, ``max_strength``
(the ``tfjpq.budget`` constants ``RATE``, ``GAIN``, ``GAIN_UNDER``, ``RAMP_FRACTION``, ``MAX_STRENGTH``), ``bits``
(``048`` is ``weight_bits=(0, 4, 8)``), ``floor`` (``min_channels`` of ``tfjpq.wrap``: an int,
or a fraction of each group's channels such as ``0.25``), ``mode`` (``tfjpq.wrap``'s ``mode``, e.g.
``hard``), ``order`` (``tfjpq.budget.MOVE_ORDER`` of the projection, e.g. ``margin``),
``direct_prune`` (``tfjpq.budget.DIRECT_PRUNE``: ``0`` or ``1``), ``group`` (``tfjpq.budget.GROUP_MOVES``),
``cond`` (``tfjpq.search.PRUNE_THEN_WIDTH``: ``0``, ``1`` or ``auto``), ``shared``
(``tfjpq.tflm_cost.SHARED_WIDTH_GRADIENT``),
``search`` (search epochs, of the same total; the fine-tune gets the rest), ``distill`` (its weight),
``init`` (``tfjpq.wrap``'s ``init``: ``flat``, ``magnitude`` or ``budget``), ``temperature`` (``tfjpq.wrap``'s
initial softmax temperature),
``arch_lr`` (``tfjpq.search.DEFAULT_ARCH_LR``: the logits' Adam learning rate).
Each point's row is appended to ``--out`` as it ends, and the mean over seeds of every point is
printed at the end. ``--log-projection`` prints every projection pass of ``freeze`` and every
flatbuffer check after it (cost before and after, moves, channels whose choice changed, the
measured file against the modelled one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pareto  # noqa: E402

# overrides that set a module constant while the point runs: key -> (module, name)
CONSTANTS = {"rate": ("tfjpq.budget", "RATE"), "gain": ("tfjpq.budget", "GAIN"),
             "gain_under": ("tfjpq.budget", "GAIN_UNDER"), "ramp": ("tfjpq.budget", "RAMP_FRACTION"),
             "max_strength": ("tfjpq.budget", "MAX_STRENGTH"), "order": ("tfjpq.budget", "MOVE_ORDER"),
             "arch_lr": ("tfjpq.search", "DEFAULT_ARCH_LR"), "direct_prune": ("tfjpq.budget", "DIRECT_PRUNE"),
             "shared": ("tfjpq.tflm_cost", "SHARED_WIDTH_GRADIENT"),
             "cond": ("tfjpq.search", "PRUNE_THEN_WIDTH"),
             "group": ("tfjpq.budget", "GROUP_MOVES")}


def _init(value):
    from tfjpq import search_init

    if value not in search_init.INITS:
        raise SystemExit(f"front_points: init must be one of {', '.join(search_init.INITS)}, got {value!r}")
    return value


# overrides that are keyword arguments of pareto.Bench.joint: key -> argument
JOINT_KWARGS = {"bits": "bits", "floor": "min_channels", "mode": "mode", "search": "search_epochs",
                "distill": "distill", "init": "init", "temperature": "temperature"}
PARSERS = {"bits": lambda v: tuple(int(ch) for ch in v), "mode": str, "order": str, "search": int, "init": _init,
           "direct_prune": lambda v: v.lower() in ("1", "true", "yes"),
           "shared": lambda v: v.lower() in ("1", "true", "yes"),
           "group": lambda v: v.lower() in ("1", "true", "yes"),
           "cond": lambda v: v if v == "auto" else v.lower() in ("1", "true", "yes"),
           "floor": lambda v: float(v) if "." in v else int(v)}  # every other override is a float


def parse_point(spec):
    """``"joint:tflm:w4:rate=0.6"`` -> (["joint", "tflm", "w4"], {"rate": 0.6})."""
    parts, overrides = [], {}
    for part in spec.split(":"):
        if "=" in part:
            key, value = part.split("=", 1)
            if key not in CONSTANTS and key not in JOINT_KWARGS:
                raise SystemExit(f"front_points: unknown override {key!r} in {spec!r} "
                                 f"(known: {', '.join(sorted({*CONSTANTS, *JOINT_KWARGS}))})")
            overrides[key] = PARSERS.get(key, float)(value)
        else:
            parts.append(part)
    if not parts or parts[0] not in ("uniform", "l1", "joint") or \
            len(parts) != {"uniform": 2, "l1": 3, "joint": 3}[parts[0]]:
        raise SystemExit(f"front_points: bad point {spec!r} (uniform:<bits>, l1:<bits>:<budget>, "
                         "joint:<cost>:<budget>[:key=value...])")
    if overrides and parts[0] != "joint":
        raise SystemExit(f"front_points: overrides apply to joint points only: {spec!r}")
    return parts, overrides


def run_point(bench, spec, named):
    """One point's row, with the overrides in force only while it runs."""
    parts, overrides = parse_point(spec)
    modules = {key: importlib.import_module(module) for key, (module, _) in CONSTANTS.items()}
    saved = {key: getattr(modules[key], name) for key, (_, name) in CONSTANTS.items()}
    try:
        for key, value in overrides.items():
            if key in CONSTANTS:
                setattr(modules[key], CONSTANTS[key][1], value)
        if parts[0] == "uniform":
            row = bench.uniform(int(parts[1]))
        elif parts[0] == "l1":
            row = bench.l1(int(parts[1]), named["size"][parts[2]], parts[2])
        else:
            kwargs = {JOINT_KWARGS[key]: value for key, value in overrides.items() if key in JOINT_KWARGS}
            row = bench.joint(parts[1], named[parts[1]][parts[2]], parts[2], **kwargs)
    finally:
        for key, value in saved.items():
            setattr(modules[key], CONSTANTS[key][1], value)
    row["spec"] = spec
    return row


def log_projection():
    """Make ``budget.project`` and ``budget.check_flatbuffer`` print what each pass does (for this process)."""
    from tfjpq import budget

    project, check = budget.project, budget.check_flatbuffer

    def selection(model):
        return {c.name: c.selected_index().copy() for c in model.precision_choices()}

    def changed(a, b):
        return sum(int((a[k] != b[k]).sum()) for k in a)

    def logged_project(model, target, tolerance=budget.DEFAULT_TOLERANCE, **kw):
        before = selection(model)
        report = project(model, target, tolerance, **kw)
        print(f"    project to {target:,.0f} B (tolerance {tolerance:.3f}): modelled {report['before']:,.0f} -> "
              f"{report['after']:,.0f} B, {report['moves']} moves, {changed(before, selection(model))} channels "
              "changed", flush=True)
        return report

    def logged_check(model, report, checks=budget.FLATBUFFER_CHECKS):
        before, cost_model = selection(model), model.cost_model
        measure = cost_model.measure

        def logged_measure(m):
            value = measure(m)
            if value is not None:
                print(f"    flatbuffer {value:,} B, modelled {float(m.hard_cost()):,.0f} B", flush=True)
            return value

        cost_model.measure = logged_measure
        try:
            return check(model, report, checks)
        finally:
            cost_model.measure = measure
            print(f"    after the flatbuffer checks: {changed(before, selection(model))} channels changed", flush=True)

    budget.project, budget.check_flatbuffer = logged_project, logged_check


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["resnet8", "ds_cnn"])
    p.add_argument("points", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", required=True, help="rows are appended to this JSON list")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--cache", default=os.path.join(os.path.dirname(pareto.HERE), "build", "pareto_cache"))
    p.add_argument("--log-projection", action="store_true", help="print every projection pass and flatbuffer check")
    args = p.parse_args(argv)
    if args.log_projection:
        log_projection()
    for spec in args.points:
        parse_point(spec)  # every spec checked before any training
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)  # not only after the first point
    from tfjpq import datasets

    data = datasets.load(args.dataset)
    ns = argparse.Namespace(float_epochs=None, cache=args.cache, search_epochs=3, finetune_epochs=1,
                            joint_search_epochs=1, distill=pareto.DISTILL)
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    for seed in args.seeds:
        bench = pareto.Bench(args.model, seed, data, ns)
        costs = {c: {w: bench.uniform_cost(w, c) for w in (8, 4, 2)} for c in ("size", "tflm")}
        named = {c: pareto.budgets(v[8], v[4], v[2]) for c, v in costs.items()}
        print(f"seed {seed}: float {bench.float_acc:.3f}", flush=True)
        for spec in args.points:
            row = run_point(bench, spec, named)
            rows.append(row)
            with open(args.out + ".tmp", "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(args.out + ".tmp", args.out)
            print(f"  {spec:<34} acc {row['tflm_acc']:.3f}  flash {row['flash_bytes']:>7,} B  "
                  f"moves {row.get('moves', '-')}  search end {row.get('search_end_cost', '-')}", flush=True)
    print("\nmean over seeds:")
    for spec in args.points:
        mine = [r for r in rows if r.get("spec") == spec and r["model"] == args.model and r["seed"] in args.seeds]
        accs = [100 * r["tflm_acc"] for r in mine]
        print(f"  {spec:<34} {statistics.mean(accs):5.1f} %  {statistics.mean(r['flash_bytes'] for r in mine):>9,.0f} B"
              f"  ({len(mine)} seeds)")


if __name__ == "__main__":
    main()
