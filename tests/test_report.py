"""report.py: trains the table's rows once, resumes unfinished ones, refuses changed recipes, and writes
the table and figures from what the run directories hold."""
import json
import os

import pytest
import torch

import report


def metrics(run: str) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_table_rows_resume_and_recipe_guard(tmp_path, tiny, capsys):
    runs, md, docs = tmp_path / "table", tmp_path / "REPORT.md", tmp_path / "docs"
    md.write_text(f"# Report\n\nintro kept\n\n{report.BEGIN}\nold table\n{report.END}\n\ndiscussion kept\n")
    args = ["--runs", str(runs), "--report", str(md), "--docs", str(docs), "--results", str(tmp_path / "res"),
            *tiny()]
    assert report.main(["--train", "--only", "cifar10_baseline", "cifar10_best", *args]) == 0

    text = md.read_text()
    assert text.startswith("# Report\n\nintro kept") and text.rstrip().endswith("discussion kept")
    assert "old table" not in text
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    base = metrics(runs / "cifar10_baseline-s0")
    assert [r["epoch"] for r in base] == [1, 2]
    best_val = max(r["val_top1"] for r in base)
    assert f"| 74% | {best_val:.4f} | {base[-1]['val_top1']:.4f} | 2 |" in lines["no augmentation, no dropout"]
    # The machine train.py ran on is recorded with every epoch and shown in the table.
    machine = f"{base[0]['hardware']}, {base[0]['precision']}"
    assert "threads" in machine and f"| {machine} | `python train.py" in lines["no augmentation, no dropout"]
    bests = [max(r["val_top1"] for r in metrics(runs / f"cifar10_best-s{s}")) for s in (0, 1)]
    spread = f"{sum(bests) / 2:.4f} ± {(max(bests) - min(bests)) / 2:.4f} (n=2)"
    assert spread in lines["best: LRN + MultiStepLR [20, 30], aug + dropout"]
    assert "not run" in lines["augmentation (crop + flip)"]
    assert "configs/cifar10_augment.yaml data.name=folder data.val_fraction=0.1" in lines["augmentation (crop + flip)"]
    for png in ("learning_curves.png", "confusion_best.png"):
        assert (docs / png).read_bytes()[:4] == b"\x89PNG"

    # A second --train trains nothing.
    last = runs / "cifar10_baseline-s0" / "last.pt"
    stamp = os.stat(last).st_mtime_ns
    assert report.main(["--train", "--only", "cifar10_baseline", *args]) == 0
    assert "already finished" in capsys.readouterr().out
    assert os.stat(last).st_mtime_ns == stamp

    # An interrupted run (checkpoint at epoch 1) resumes: epoch 2 is trained again, metrics stay one row per epoch.
    ckpt = torch.load(last, weights_only=True)
    ckpt["epoch"] = 1
    torch.save(ckpt, last)
    assert report.main(["--train", "--only", "cifar10_baseline", *args]) == 0
    assert "resumed from epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics(runs / "cifar10_baseline-s0")] == [1, 2]
    assert os.stat(last).st_mtime_ns != stamp

    # A changed recipe is refused rather than silently mixed into the old run; nothing is overwritten.
    stamp = os.stat(last).st_mtime_ns
    assert report.main(["--train", "--only", "cifar10_baseline", *args, "model.dropout=0.1"]) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "model.dropout: 0.0 -> 0.1" in err
    assert os.stat(last).st_mtime_ns == stamp


def test_report_needs_markers(tmp_path):
    md = tmp_path / "REPORT.md"
    md.write_text("# hand-written, no markers\n")
    assert report.main(["--runs", str(tmp_path / "none"), "--report", str(md), "--docs", str(tmp_path / "d"),
                        "--results", str(tmp_path / "res")]) == 2
    assert md.read_text() == "# hand-written, no markers\n"


def test_new_report_lists_every_row_as_not_run(tmp_path):
    md = tmp_path / "REPORT.md"
    assert report.main(["--runs", str(tmp_path / "none"), "--report", str(md), "--docs", str(tmp_path / "d"),
                        "--results", str(tmp_path / "res")]) == 0
    rows = [ln for ln in md.read_text().splitlines() if ln.startswith("| ") and "not run" in ln]
    assert len(rows) == len(report.ROWS)
    assert not (tmp_path / "d").exists()


def test_run_cost_ignores_one_contended_epoch(tmp_path):
    # Epoch 2 shared the cores with a CI run: the run's cost is read from the median epoch, not the sum.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 4\n")
    # It was also resumed on other machines: every one is named, in order, one that was not recorded too.
    rows = [{"epoch": e, "val_top1": v, "epoch_s": s, "img_per_s": ips, "hardware": hw, "precision": p}
            for e, v, s, ips, hw, p in [(1, 0.2, 480, 95, "A", "float32"), (2, 0.3, 700, 66, "A", "float32"),
                                        (3, 0.4, 490, 94, "B", "bfloat16"), (4, 0.35, 500, 93, "B", "bfloat16")]]
    del rows[0]["hardware"], rows[0]["precision"]  # as train.py wrote epochs before it recorded the machine
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = report.summarise(report.read_run(str(run)))
    assert r["done"] and r["best"] == 0.4 and r["final"] == 0.35
    assert r["minutes"] == pytest.approx(4 * 495 / 60)
    assert r["img_per_s"] == pytest.approx(93.5)
    assert r["machine"] == "not recorded + A, float32 + B, bfloat16"


def test_records_outlive_run_directories(tmp_path, tiny, capsys):
    """The table is rebuilt from the committed records even after runs/ is gone; a retrain in progress
    does not replace a finished record; a summary-only record (history lost) is shown and marked."""
    runs, res, md, docs = tmp_path / "runs", tmp_path / "res", tmp_path / "REPORT.md", tmp_path / "docs"
    args = ["--runs", str(runs), "--report", str(md), "--docs", str(docs), "--results", str(res), *tiny()]
    res.mkdir()
    (res / "cifar10_modern-s0.json").write_text(json.dumps(
        {"epochs": 40, "history": [], "note": "machine lost", "hardware": "old VM, float32",
         "summary": {"best": 0.871, "final": 0.8696, "minutes": 265, "img_per_s": 116}}))
    assert report.main(["--train", "--only", "cifar10_baseline", *args]) == 0
    first = md.read_text().split(report.END)[0].rsplit("_Generated", 1)[0]
    record = json.loads((res / "cifar10_baseline-s0.json").read_text())
    assert record["history"] == metrics(runs / "cifar10_baseline-s0") and record["config"]["train"]["epochs"] == 2
    modern = next(ln for ln in first.splitlines() if ln.startswith("| modern"))
    assert "| 0.8710 | 0.8696 | 40 † | 265 | 116 | old VM, float32 |" in modern and "† Only the summary" in first
    # The best record has no checkpoint here, so the confusion matrix is left alone.
    assert "confusion matrix not redrawn" in capsys.readouterr().out and not (docs / "confusion_best.png").exists()

    finished = runs.rename(tmp_path / "moved")
    assert report.main(args) == 0
    assert md.read_text().split(report.END)[0].rsplit("_Generated", 1)[0] == first

    # A record trained before its preset changed: the command says what reproduces the record, not the preset.
    changed = json.loads(json.dumps(record))
    changed["config"]["model"]["dropout"], changed["config"]["sched"]["milestones"] = 0.3, [1, 2]
    (res / "cifar10_baseline-s0.json").write_text(json.dumps(changed))
    assert report.main(args) == 0
    base = next(ln for ln in md.read_text().splitlines() if ln.startswith("| no augmentation"))
    assert base.endswith(' model.dropout=0.3 "sched.milestones=[1,2]"` |'), base
    (res / "cifar10_baseline-s0.json").write_text(json.dumps(record, indent=1) + "\n")

    # A retrain of the same row that has done one epoch of two leaves the finished record as it was.
    (runs / "cifar10_baseline-s0").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        lines = (finished / "cifar10_baseline-s0" / name).read_text().splitlines(keepends=True)
        (runs / "cifar10_baseline-s0" / name).write_text("".join(lines[:1] if name == "metrics.jsonl" else lines))
    assert report.main(args) == 0
    assert "keeping the finished record" in capsys.readouterr().out
    assert json.loads((res / "cifar10_baseline-s0.json").read_text()) == record


def test_collapsed_seed_is_footnoted_and_not_retrained(tmp_path, tiny, capsys):
    runs, res, md, docs = tmp_path / "runs", tmp_path / "res", tmp_path / "REPORT.md", tmp_path / "docs"
    args = ["--runs", str(runs), "--report", str(md), "--docs", str(docs), "--results", str(res), *tiny()]
    dead = runs / "cifar10_best-s1"
    dead.mkdir(parents=True)
    (dead / "config.yaml").write_text("train:\n  epochs: 2\n")
    (dead / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "val_top1": 0.1, "epoch_s": 60, "img_per_s": 100, "collapsed": True}) + "\n")
    assert report.main(["--train", "--only", "cifar10_best", *args]) == 0
    assert "cifar10_best seed 1: collapsed in epoch 1, not retrained" in capsys.readouterr().out
    assert not (dead / "last.pt").exists()
    final = metrics(runs / "cifar10_best-s0")[-1]["val_top1"]  # the row's figures are seed 0's: seed 1 is left out
    line = next(ln for ln in md.read_text().splitlines() if ln.startswith("| best:"))
    assert f"| {final:.4f} | 2 ‡ |" in line
    assert "‡ cifar10_best seed 1 collapsed in epoch 1" in md.read_text() and "0.1000" in md.read_text()
    assert json.loads((res / "cifar10_best-s1.json").read_text())["history"][0]["collapsed"] is True
