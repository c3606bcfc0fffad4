"""Put rows rerun by ``front_points.py`` into a ``pareto.py`` result, in place of the rows they redo.

After a change that touches only some pipelines (for example the ``tflm`` cost: only the
``joint-tflm`` rows), rerun those points with ``front_points.py`` and merge them instead of
rerunning the whole benchmark. A row replaces the row of the same model, seed, method and budget;
every rerun row must replace one (nothing is only added), and the file is written atomically.

    python benchmarks/merge_rows.py --into benchmarks/results/pareto.json \\
        --keep-before benchmarks/results/pareto_before.json --before-note "no file measured" \\
        --command "front_points.py resnet8 ... and ds_cnn ..." --set joint_search_epochs=2 \\
        build/tflm_r8.json build/tflm_ds.json
    python benchmarks/pareto.py --report-only --previous benchmarks/results/pareto_before.json
"""

from __future__ import annotations

import argparse
import json
import os


def key(row):
    return row["model"], row["seed"], row["method"], row.get("budget")


def merge(result, reruns):
    """``result`` (a pareto.json dict) with ``reruns`` (rows) in place of the rows they redo."""
    new = [{k: v for k, v in r.items() if k != "spec"} for r in reruns]
    keys = [key(r) for r in new]
    if len(set(keys)) != len(keys):
        raise SystemExit("merge_rows: the reruns hold the same point twice: "
                         f"{sorted(k for k in set(keys) if keys.count(k) > 1)[:3]}")
    old = {key(r) for r in result["rows"]}
    missing = [k for k in keys if k not in old]
    if missing:
        raise SystemExit(f"merge_rows: {len(missing)} rerun rows redo no row of the result, e.g. {missing[0]}")
    replaced = set(keys)
    return dict(result, rows=[r for r in result["rows"] if key(r) not in replaced] + new)


def write(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reruns", nargs="+", help="front_points.py output files (JSON lists of rows)")
    p.add_argument("--into", required=True, help="the pareto.json to update")
    p.add_argument("--keep-before", help="first save the result as it was here (for --previous)")
    p.add_argument("--before-note", default="", help="what differed then (the comparison's 'defaults of then')")
    p.add_argument("--command", default="", help="how the reruns were made, added to meta.command")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="meta fields the reruns changed (a JSON value, else a string), e.g. joint_search_epochs=2")
    args = p.parse_args(argv)
    updates = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"merge_rows: --set takes KEY=VALUE, got {item!r}")
        try:
            updates[name] = json.loads(value)
        except json.JSONDecodeError:
            updates[name] = value
    result = json.load(open(args.into))
    if args.keep_before:
        before = json.loads(json.dumps(result))
        if args.before_note:
            before["meta"]["defaults"] = args.before_note
        write(before, args.keep_before)
    rows = [r for path in args.reruns for r in json.load(open(path))]
    merged = merge(result, rows)
    if args.command:
        merged["meta"] = dict(merged["meta"], command=merged["meta"]["command"] + "`; then rerun: `" + args.command)
    merged["meta"] = dict(merged["meta"], **updates)
    write(merged, args.into)
    print(f"merge_rows: {len(rows)} rows replaced in {args.into}")


if __name__ == "__main__":
    main()
