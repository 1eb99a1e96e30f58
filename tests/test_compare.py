"""compare.py's grouping of runs and report.py --comparisons, checked against values computed by hand."""
import json
import math
import os
import statistics

import yaml

import compare
import report
import sweep
from config import load_config, parse_overrides, to_dict
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
    begin, end = report.markers("comparisons")
    md.write_text(f"# R\n\n{begin}\nold\n{end}\n\nkept\n")
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


def record(tmp, study, n, epochs, finals, change):
    """A grid record in the committed format: a tiny synthetic-data recipe, one seed, the given curve's end."""
    seed = n % 2
    cfg = to_dict(load_config(None, TINY + [f"train.epochs={epochs}", f"seed={seed}",
                                            f"run_dir={tmp}/runs/sweeps/{study}/trial-{n:04d}", *change]))
    history = [{"epoch": e + 1, "val_top1": finals[seed] - 0.1 * (epochs - 1 - e), "epoch_s": 30.0,
                "precision": "float32"} for e in range(epochs)]
    return {"epochs": epochs, "config": cfg, "history": history, "train_top1": None}


def test_two_budgets_side_by_side_with_their_rank_correlation_as_by_hand(tmp_path, capsys):
    """report.py --comparisons on a *_full* grid sets each row beside the screening records: verdicts at
    both budgets, what the full budget says of the screen's, ranks and Spearman's rho, all worked by hand."""
    screen = {(): (0.30, 0.34), ("model.dropout=0.0",): (0.40, 0.42), ("optim.lr=0.2",): (0.20, 0.21),
              ("model.activation=gelu",): (0.31, 0.33)}
    full = {(): (0.70, 0.72), ("model.dropout=0.0",): (0.69, 0.71), ("optim.lr=0.2",): (0.60, 0.62),
            ("model.activation=gelu",): (0.80, 0.82), ("optim.momentum=0.0",): (0.50, 0.50)}
    res = tmp_path / "res"
    for section, study, epochs, rows in (("comparisons", "t", 1, screen), ("comparisons_full", "t_full", 2, full)):
        (res / section).mkdir(parents=True)
        for i, (change, finals) in enumerate(rows.items()):
            for seed in (0, 1):
                n = 2 * i + seed
                (res / section / f"{study}-trial-{n:04d}.json").write_text(
                    json.dumps(record(tmp_path, study, n, epochs, finals, list(change))))
    md, docs = tmp_path / "REPORT.md", tmp_path / "docs"
    begin, end = report.markers("comparisons_full")
    md.write_text(f"# R\n\n{begin}\n{end}\n")
    assert report.main(["--comparisons", str(tmp_path / "runs/sweeps/t_full"), "--results", str(res),
                        "--report", str(md), "--docs", str(docs)]) == 0
    out = md.read_text()
    assert (docs / "comparisons_full.png").is_file() and "docs/results/comparisons_full/" in out
    assert "Budget: 2 epochs" in out and "Screening: 1 epochs" in out

    # Spearman by hand. Mean finals (base, dropout 0, lr 0.2, gelu): screen .32 .41 .205 .32 -> ranks
    # 2.5 1 4 2.5 (base and gelu tie); full .71 .70 .61 .81 -> ranks 2 3 4 1. Deviations from the mean rank
    # 2.5: (0 -1.5 1.5 0) and (-.5 .5 1.5 -1.5): sum of products 1.5, sums of squares 4.5 and 5.
    rho = 1.5 / math.sqrt(4.5 * 5)
    assert f"over the 4 rows both have: ρ = {rho:.3f}" in out
    side = {ln.split("|")[1].strip(" `"): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in out.split("The screening budget against this one")[1].splitlines() if ln.startswith("| `")}
    # dropout 0: screen +0.09 (SE sqrt(.0002/2 + .0008/2) = .0224) better; full -0.01 (SE .0141) within noise.
    assert side["model.dropout=0.0"][1:3] == [f"+0.0900 ± {math.sqrt(0.0005):.4f}", "better"]
    assert side["model.dropout=0.0"][4:] == [f"-0.0100 ± {math.sqrt(0.0002):.4f}", "—", "1 / 3",
                                             "screen's gain not borne out"]
    assert side["optim.lr=0.2"][2] == side["optim.lr=0.2"][5] == "worse" and side["optim.lr=0.2"][-1] == "agree"
    assert side["model.activation=gelu"][2] == "—" and side["model.activation=gelu"][-2:] == ["2.5 / 1",
                                                                                             "screen missed a gain"]
    assert side["base"][-2:] == ["2.5 / 2", "—"]
    assert side["optim.momentum=0.0"][:3] == ["not run", "", ""] and side["optim.momentum=0.0"][-2:] == ["—", "—"]
    assert compare.spearman([1, 2, 3], [3, 2, 1]) == -1.0 and compare.spearman([1, 1, 1], [1, 2, 3]) is None
    assert compare.ranks([0.5, 0.7, 0.5, 0.1]) == [2.5, 1.0, 2.5, 4.0]
