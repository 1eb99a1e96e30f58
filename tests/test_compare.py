"""compare.py's grouping of runs and report.py --comparisons, checked against values computed by hand."""
import json
import math
import os
import statistics

import yaml

import compare
import report
import sweep
from config import parse_overrides
from conftest import TINY


def test_a_one_change_grid_is_grouped_and_compared_as_by_hand(tmp_path, capsys):
    base = parse_overrides(TINY + ["train.epochs=2", "data.synthetic_size=200", f"out_dir={tmp_path / 'runs'}",
                                   f"data.cache_dir={tmp_path / 'cache'}"])
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"variant": [{}, {"model.dropout": 0.0}, {"model.activation": "gelu", "optim.lr": 0.02}], "seed": [0, 1]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "pruner": "none", "grid": grid}))
    assert sweep.main(["--config", str(tmp_path / "g.yaml"), "--storage", f"journal:{tmp_path / 'j'}"]) == 0
    sweep_dir = tmp_path / "runs" / "sweeps" / "g"

    runs = compare.find_runs([str(sweep_dir)])
    assert len(runs) == 6
    rows = compare.group(list(runs.values()))
    assert [r.change for r in rows] == [{}, {"model.activation": "gelu", "optim.lr": 0.02}, {"model.dropout": 0.0}]
    assert all(sorted(r["config"]["seed"] for r in row.runs) == [0, 1] for row in rows)
    again = dict(next(iter(runs.values())), run_dir="elsewhere")  # the same recipe and seed run twice
    assert [len(r.runs) for r in compare.group([*runs.values(), again])] == [2, 2, 2]  # counted once

    def by_hand(change):  # final val top-1 per seed, read straight from metrics.jsonl
        finals = []
        for path, rec in runs.items():
            cfg = rec["config"]
            is_row = (cfg["model"]["dropout"] == change.get("model.dropout", 0.5)
                      and cfg["model"]["activation"] == change.get("model.activation", "relu"))
            if is_row:
                finals.append(json.loads(open(os.path.join(path, "metrics.jsonl")).read().splitlines()[-1])["val_top1"])
        return finals

    b, g = by_hand({}), by_hand({"model.activation": "gelu"})
    diff, se = compare.difference(rows[1], rows[0])
    assert math.isclose(diff, statistics.mean(g) - statistics.mean(b), abs_tol=1e-12)
    assert math.isclose(se, math.sqrt(statistics.variance(g) / 2 + statistics.variance(b) / 2), abs_tol=1e-12)
    text = compare.table(rows)
    line = next(ln for ln in text.splitlines() if "gelu" in ln)
    assert f"{statistics.mean(g):.4f} ± {statistics.stdev(g):.4f}" in line and f"{diff:+.4f} ± {se:.4f}" in line
    assert line.endswith(f"| {runs[next(iter(runs))]['history'][0]['precision']} |")  # how the runs computed
    assert compare.verdict(0.05, 0.02) == "better" and compare.verdict(-0.05, 0.02) == "worse"
    assert compare.verdict(0.03, 0.02) == "" and compare.verdict(0.5, None) == ""
    assert compare.table(rows[1:]).count("no base run yet") == 2  # a grid whose base has not finished yet
    # Given the grid's recipe, a change is measured from it even when only one row has finished.
    assert [r.change for r in compare.group([r for row in rows for r in row.runs], base)] == [r.change for r in rows]
    assert [r.change for r in compare.group(rows[2].runs, base)] == [{"model.dropout": 0.0}]

    # report.py --comparisons: records (with the train-split top-1) committed once, the section regenerated.
    md, res, docs = tmp_path / "REPORT.md", tmp_path / "res", tmp_path / "docs"
    md.write_text(f"# R\n\n{report.COMPARISONS[0]}\nold\n{report.COMPARISONS[1]}\n\nkept\n")
    argv = ["--comparisons", str(sweep_dir), "--results", str(res), "--report", str(md), "--docs", str(docs)]
    assert report.main(argv) == 0
    records = sorted(os.listdir(res / "comparisons"))
    assert len(records) == 6 and records[0] == "g-trial-0000.json"
    rec = json.loads((res / "comparisons" / records[0]).read_text())
    assert 0 <= rec["train_top1"] <= 1 and rec["history"]
    out = md.read_text()
    assert "old" not in out and out.rstrip().endswith("kept") and "| `base` | 2 |" in out and "Budget: 2 epochs" in out
    assert (docs / "comparisons.png").read_bytes()[:4] == b"\x89PNG"
    assert report.main(argv) == 0 and "(0 new)" in capsys.readouterr().out
    assert compare.main([str(sweep_dir)]) == 0 and "`model.dropout=0.0`" in capsys.readouterr().out

    # A study carried to a new machine: a finished trial's run folder (and record) is gone; its record is
    # rebuilt from the study, with the same config and per-epoch curve, and no training-split top-1.
    import shutil
    lost = json.loads((res / "comparisons" / "g-trial-0001.json").read_text())
    shutil.rmtree(sweep_dir / "trial-0001")
    (res / "comparisons" / "g-trial-0001.json").unlink()
    storage = f"journal:{tmp_path / 'j'}"
    assert report.recover_from_study(storage, str(tmp_path / "g.yaml"), [], str(res / "comparisons")) == 1
    back = json.loads((res / "comparisons" / "g-trial-0001.json").read_text())
    assert back["config"] == lost["config"] and back["train_top1"] is None and back["recovered_from"] == storage
    assert [e["val_top1"] for e in back["history"]] == [e["val_top1"] for e in lost["history"]]
    assert report.recover_from_study(storage, str(tmp_path / "g.yaml"), [], str(res / "comparisons")) == 0
    row = next(r for r in compare.group([json.loads(p.read_text()) for p in (res / "comparisons").iterdir()])
               if any(r_["config"]["run_dir"].endswith("trial-0001") for r_ in r.runs))
    assert "(n=1)" in compare.table([row])  # the row's train-split column averages the one run that has it
