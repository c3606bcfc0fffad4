"""The benchmark scripts' quick paths run end to end and write what they promise (slow)."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))


@pytest.mark.slow
def test_pareto_quick_measures_every_pipeline_in_tflm(tmp_path):
    import pareto

    out = tmp_path / "pareto.json"
    md = tmp_path / "RESULTS.md"
    pareto.main(["--quick", "--train-samples", "600", "--cache", "", "--out", str(out), "--md", str(md)])
    rows = json.loads(out.read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert {"float", "uniform-w8", "uniform-w4", "uniform-w2", "joint-size", "joint-tflm", "l1-w4",
            "tfmot-w8"} <= methods
    measured = [r for r in rows if r["method"] != "float"]
    assert not [r for r in measured if r.get("failed")]
    for r in measured:
        assert 0.0 <= r["tflm_acc"] <= 1.0 and r["flash_bytes"] > 1000
    by = {r["method"]: r for r in measured}
    # uniform widths really shrink the flatbuffer, and tfmot's converter file is bigger than its lean twin
    assert by["uniform-w2"]["flash_bytes"] < by["uniform-w4"]["flash_bytes"] < by["uniform-w8"]["flash_bytes"]
    assert by["tfmot-w8"]["converter_bytes"] > by["tfmot-w8"]["flash_bytes"]
    # a tflm target is bytes of the converted flatbuffer
    tflm = [r for r in measured if r["method"] == "joint-tflm"]
    assert all(abs(r["flash_bytes"] / r["target"] - 1) <= 0.03 for r in tflm)
    text = md.read_text()
    assert "| joint-size |" in text and "Targets" in text
    assert (tmp_path / "pareto.png").stat().st_size > 10_000 and (tmp_path / "pareto_layers.png").exists()


def test_front_points_parses_points_and_restores_the_controller_constants():
    import front_points

    from tfjpq import budget

    assert front_points.parse_point("joint:tflm:w4:rate=0.6:bits=048") == (
        ["joint", "tflm", "w4"], {"rate": 0.6, "bits": (0, 4, 8)})
    assert front_points.parse_point("l1:4:w2") == (["l1", "4", "w2"], {})
    assert front_points.parse_point("joint:size:w2:floor=0.25:mode=hard") == (
        ["joint", "size", "w2"], {"floor": 0.25, "mode": "hard"})
    assert front_points.parse_point("joint:size:w2:floor=3")[1] == {"floor": 3}
    for bad, says in (("joint:tflm:w4:speed=2", "unknown override 'speed'"), ("joint:tflm", "bad point"),
                      ("uniform:4:rate=0.6", "joint points only"), ("qat:4", "bad point")):
        with pytest.raises(SystemExit, match=says):
            front_points.parse_point(bad)

    seen = {}

    class FakeBench:  # records the constants in force while the point runs
        def joint(self, cost, target, label, **kw):
            seen.update(rate=budget.RATE, ramp=budget.RAMP_FRACTION, target=target, kw=kw)
            return {"tflm_acc": 0.5}

    before = (budget.RATE, budget.RAMP_FRACTION)
    named = {"tflm": {"w4": 1234.0}, "size": {}}
    row = front_points.run_point(FakeBench(), "joint:tflm:w4:rate=0.6:ramp=0.25:bits=048", named)
    assert seen == {"rate": 0.6, "ramp": 0.25, "target": 1234.0, "kw": {"bits": (0, 4, 8)}}
    front_points.run_point(FakeBench(), "joint:tflm:w4:floor=0.25:mode=hard", named)
    assert seen["kw"] == {"min_channels": 0.25, "mode": "hard"}
    front_points.run_point(FakeBench(), "joint:tflm:w4:search=2:distill=0.8", named)
    assert seen["kw"] == {"search_epochs": 2, "distill": 0.8}

    from tfjpq import search as search_lib

    class LrBench:
        def joint(self, cost, target, label, **kw):
            seen.update(arch_lr=search_lib.DEFAULT_ARCH_LR, kw=kw)
            return {}

    front_points.run_point(LrBench(), "joint:tflm:w4:arch_lr=0.05", named)
    assert seen["arch_lr"] == 0.05 and seen["kw"] == {} and search_lib.DEFAULT_ARCH_LR == 0.02

    class OrderBench:
        def joint(self, cost, target, label, **kw):
            seen.update(order=budget.MOVE_ORDER)
            return {}

    front_points.run_point(OrderBench(), "joint:tflm:w4:order=margin", named)
    assert seen["order"] == "margin" and budget.MOVE_ORDER == "auto"

    class PruneBench:
        def joint(self, cost, target, label, **kw):
            seen.update(direct=budget.DIRECT_PRUNE)
            return {}

    front_points.run_point(PruneBench(), "joint:tflm:w4:direct_prune=0", named)
    assert seen["direct"] is False and budget.DIRECT_PRUNE is None
    assert (budget.RATE, budget.RAMP_FRACTION) == before and row["spec"].startswith("joint:tflm:w4")


def test_front_points_logs_each_projection_pass(monkeypatch, capsys):
    import front_points
    import keras

    import tfjpq
    from tfjpq import budget, datasets, zoo

    monkeypatch.setattr(budget, "project", budget.project)           # restored after the test
    monkeypatch.setattr(budget, "check_flatbuffer", budget.check_flatbuffer)
    front_points.log_projection()
    (x, y), _ = datasets.load("digits")
    model = zoo.small_cnn(input_shape=(8, 8, 1), width=8)
    search = tfjpq.wrap(model, target=0.5 * float(tfjpq.wrap(model, weight_bits=(8,), strength=0.0).hard_cost()))
    search.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tuned = tfjpq.freeze(search)
    out = capsys.readouterr().out
    assert "project to" in out and f"{tuned.projection['moves']} moves" in out
    assert "after the flatbuffer checks: 0 channels changed" in out  # "size" cost: nothing to measure


def test_pareto_comparison_lists_only_the_points_that_changed():
    import pareto

    def row(method, budget, nbytes, acc):
        return dict(model="m", seed=0, method=method, budget=budget, flash_bytes=nbytes, tflm_acc=acc, wall_s=1.0)

    now = {"meta": {"models": ["m"]},
           "rows": [row("joint-tflm", "w4", 6500, 0.95), row("uniform-w4", None, 6792, 0.96)]}
    then = {"meta": {"date": "2026-12-01", "defaults": "no file measured during the search"}, "path": "old.json",
            "rows": [row("joint-tflm", "w4", 6600, 0.92), row("uniform-w4", None, 6792, 0.96)]}
    text = "\n".join(pareto._comparison(now, then))
    assert "| m | joint-tflm | w4 | 6,600 B, 92.0% | 6,500 B, 95.0% |" in text
    assert "uniform-w4" not in text and "no file measured during the search" in text and "`old.json`" in text


def test_merge_rows_replaces_the_rows_it_redoes_and_refuses_strays(tmp_path):
    import merge_rows

    def row(method, seed, budget, acc):
        return dict(model="m", seed=seed, method=method, budget=budget, tflm_acc=acc)

    result = {"meta": {"command": "pareto.py"}, "rows": [row("joint-tflm", 0, "w4", 0.90), row("l1-w4", 0, "w2", 0.8)]}
    path, before = tmp_path / "pareto.json", tmp_path / "before.json"
    path.write_text(json.dumps(result))
    reruns = tmp_path / "r.json"
    reruns.write_text(json.dumps([dict(row("joint-tflm", 0, "w4", 0.95), spec="joint:tflm:w4")]))
    merge_rows.main([str(reruns), "--into", str(path), "--keep-before", str(before), "--before-note", "old",
                     "--command", "front_points.py m", "--set", "joint_search_epochs=2", "note=rerun"])
    merged = json.loads(path.read_text())
    assert merged["meta"]["joint_search_epochs"] == 2 and merged["meta"]["note"] == "rerun"
    assert sorted((r["method"], r["tflm_acc"]) for r in merged["rows"]) == [("joint-tflm", 0.95), ("l1-w4", 0.8)]
    assert "spec" not in merged["rows"][-1] and merged["meta"]["command"].endswith("front_points.py m")
    assert json.loads(before.read_text())["meta"]["defaults"] == "old"
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        merge_rows.main([str(reruns), "--into", str(path), "--set", "joint_search_epochs"])
    with pytest.raises(SystemExit, match="redo no row"):
        merge_rows.merge(result, [row("joint-tflm", 1, "w4", 0.9)])
    with pytest.raises(SystemExit, match="twice"):
        merge_rows.merge(result, [row("joint-tflm", 0, "w4", 0.9)] * 2)


def test_merge_rows_joins_runs_split_by_model_and_refuses_overlaps(tmp_path):
    import merge_rows

    def run(model, total_s, command, **meta):
        return {"meta": dict(command=command, models=[model], seeds=[0, 1], total_s=total_s, dataset="mnist5k",
                             search_epochs=3, **meta),
                "rows": [dict(model=model, seed=s, method="uniform-w8", tflm_acc=0.9) for s in (0, 1)]}

    a, b, into, before = (tmp_path / n for n in ("a.json", "b.json", "pareto.json", "before.json"))
    a.write_text(json.dumps(run("resnet8", 300.0, "pareto.py --models resnet8")))
    b.write_text(json.dumps(run("ds_cnn", 200.0, "pareto.py --models ds_cnn")))
    into.write_text(json.dumps({"meta": {"command": "old"}, "rows": []}))
    merge_rows.main([str(a), str(b), "--join", "--into", str(into), "--keep-before", str(before)])
    joined = json.loads(into.read_text())
    assert joined["meta"]["models"] == ["resnet8", "ds_cnn"] and joined["meta"]["total_s"] == 300.0
    assert joined["meta"]["command"] == "pareto.py --models resnet8` and, in parallel, `pareto.py --models ds_cnn"
    assert sorted({r["model"] for r in joined["rows"]}) == ["ds_cnn", "resnet8"] and len(joined["rows"]) == 4
    assert json.loads(before.read_text())["meta"]["command"] == "old"
    with pytest.raises(SystemExit, match="different models"):
        merge_rows.join([run("resnet8", 1.0, "x"), run("resnet8", 1.0, "y")])
    with pytest.raises(SystemExit, match="search_epochs"):
        merge_rows.join([run("resnet8", 1.0, "x"), dict(run("ds_cnn", 1.0, "y"), meta=dict(
            run("ds_cnn", 1.0, "y")["meta"], search_epochs=2))])
