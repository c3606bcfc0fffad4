"""Put rows rerun by ``front_points.py`` into a ``pareto.py`` result, in place of the rows they redo.

After a change that touches only some pipelines (for example the ``tflm`` cost: only the
``joint-tflm`` rows), rerun those points with ``front_points.py`` and merge them instead of
rerunning the whole benchmark. A row replaces the row of the same model, seed, method and budget;
every rerun row must replace one (nothing is only added), and the file is written atomically.
The files come before the options, since ``--set`` takes every word after it.

    python benchmarks/merge_rows.py build/tflm_r8.json build/tflm_ds.json \\
        --into benchmarks/results/pareto.json \\
        --keep-before benchmarks/results/pareto_before.json --before-note "no file measured" \\
        --command "front_points.py resnet8 ... and ds_cnn ..." --set joint_search_epochs=2
    python benchmarks/pareto.py --report-only --previous benchmarks/results/pareto_before.json

A full run split by model over parallel processes (``pareto.py --models resnet8 --out a.json`` beside
``--models ds_cnn --out b.json``) is joined into one result with ``--join``: the files must hold
different models, and the joined meta names both commands and the longer run's time (``--command``
is not used there; ``--set`` and ``--keep-before`` are).

    python benchmarks/merge_rows.py --join build/bench/pareto_resnet8.json build/bench/pareto_ds_cnn.json \\
        --into benchmarks/results/pareto.json --keep-before benchmarks/results/pareto_before.json
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


def join(results):
    """One pareto.json dict from ``results`` run in parallel on different models (meta of the first)."""
    models = [m for res in results for m in res["meta"]["models"]]
    if len(set(models)) != len(models):
        raise SystemExit(f"merge_rows: --join takes runs of different models, got {models}")
    mismatched = [k for k in ("dataset", "search_epochs", "finetune_epochs", "joint_search_epochs", "distill",
                              "train_samples", "test_samples")
                  if len({json.dumps(res["meta"].get(k)) for res in results}) > 1]
    if mismatched:
        raise SystemExit(f"merge_rows: --join: the runs differ in {mismatched}")
    meta = dict(results[0]["meta"], models=models,
                command="` and, in parallel, `".join(res["meta"]["command"] for res in results),
                seeds=sorted({s for res in results for s in res["meta"]["seeds"]}),
                total_s=max(res["meta"].get("total_s", 0) for res in results))
    return {"meta": meta, "rows": [r for res in results for r in res["rows"]]}


def write(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reruns", nargs="+", help="front_points.py output files (JSON lists of rows); with --join, "
                                             "pareto.py results of different models")
    p.add_argument("--join", action="store_true", help="write --into as the join of whole pareto.py runs")
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
    if args.keep_before and os.path.exists(args.into):
        before = json.load(open(args.into))
        if args.before_note:
            before["meta"]["defaults"] = args.before_note
        write(before, args.keep_before)
    if args.join:
        joined = join([json.load(open(path)) for path in args.reruns])
        write(dict(joined, meta=dict(joined["meta"], **updates)), args.into)
        print(f"merge_rows: {len(joined['rows'])} rows of {joined['meta']['models']} written to {args.into}")
        return
    result = json.load(open(args.into))
    rows = [r for path in args.reruns for r in json.load(open(path))]
    merged = merge(result, rows)
    if args.command:
        merged["meta"] = dict(merged["meta"], command=merged["meta"]["command"] + "`; then rerun: `" + args.command)
    merged["meta"] = dict(merged["meta"], **updates)
    write(merged, args.into)
    print(f"merge_rows: {len(rows)} rows replaced in {args.into}")


if __name__ == "__main__":
    main()
