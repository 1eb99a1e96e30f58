"""Every CLI takes its options and key=value overrides interleaved in any order, as a new user types them
(`python train.py train.epochs=1 --config configs/quickstart.yaml`); a real unknown option still exits 2
naming it. The table runs each script's main(argv) with its body replaced by a recorder, so it checks
what the script would act on; the end-to-end tests then run train.py and evaluate.py for real."""
import json
import os

import pytest

import bench
import compare
import evaluate
import report
import sweep
import train as T
from config import load_config
from conftest import TINY
from runtime import load_checkpoint

# (script, the function main() hands its parsed args to, argv, what the body must receive)
ORDERS = [
    ("train", "run_cli", ["train.epochs=1", "--config", "configs/quickstart.yaml", "seed=3"],
     {"config": "configs/quickstart.yaml", "overrides": ["train.epochs=1", "seed=3"]}),
    ("train", "run_cli", ["optim.lr=0.5", "--resume", "r/last.pt"], {"resume": "r/last.pt", "overrides": ["optim.lr=0.5"]}),
    ("evaluate", "evaluate_main", ["w.pt", "--split", "test", "data.name=folder", "data.root=DIR"],
     {"checkpoint": "w.pt", "split": "test", "overrides": ["data.name=folder", "data.root=DIR"]}),
    ("evaluate", "evaluate_main", ["CKPT", "--tta", "flip", "data.root=DIR", "--json", "out.json"],
     {"checkpoint": "CKPT", "tta": "flip", "json": "out.json", "overrides": ["data.root=DIR"]}),
    ("evaluate", "evaluate_main", ["data.root=DIR", "--tta", "flip", "CKPT"],  # the checkpoint need not come first
     {"checkpoint": "CKPT", "overrides": ["data.root=DIR"]}),
    ("sweep", "run_sweep", ["train.epochs=2", "--config", "s.yaml", "data.root=D", "--workers", "2"],
     {"config": "s.yaml", "workers": 2, "overrides": ["train.epochs=2", "data.root=D"]}),
    ("report", "run_report", ["--only", "cifar10_best", "data.root=D", "--train", "device=cpu"],
     {"only": ["cifar10_best"], "train": True, "overrides": ["data.root=D", "device=cpu"]}),
    ("report", "run_health", ["seed=1", "--health", "default=runs/a", "paper=runs/b", "data.root=D"],
     {"health": ["default=runs/a", "paper=runs/b"], "overrides": ["seed=1", "data.root=D"]}),
    ("report", "run_comparisons", ["--comparisons", "runs/sweeps/g", "data.root=D", "--storage", "journal:j"],
     {"comparisons": "runs/sweeps/g", "storage": "journal:j", "overrides": ["data.root=D"]}),
    ("compare", "compare_main", ["runs/a", "--train-split", "runs/b"], {"folders": ["runs/a", "runs/b"], "train_split": True}),
    ("bench", "bench_main", ["data.batch_size=64", "--steps", "3", "train.amp=off", "--no-reference"],
     {"steps": 3, "no_reference": True, "overrides": ["data.batch_size=64", "train.amp=off"]}),
]
MODULES = {"train": T, "evaluate": evaluate, "sweep": sweep, "report": report, "compare": compare, "bench": bench}


@pytest.mark.parametrize("script,body,argv,expected", ORDERS,
                         ids=[f"{s}-{i}" for i, (s, *_) in enumerate(ORDERS)])
def test_options_and_overrides_in_any_order(script, body, argv, expected, monkeypatch):
    seen = []
    monkeypatch.setattr(MODULES[script], body, lambda args: seen.append(args) or 0)
    assert MODULES[script].main(argv) == 0
    assert len(seen) == 1
    for key, value in expected.items():
        assert getattr(seen[0], key) == value, (key, getattr(seen[0], key))


UNKNOWN = [("train", ["--config", "configs/quickstart.yaml", "--epohcs", "3"]),
           ("evaluate", ["CKPT", "data.root=D", "--ttaa", "flip"]),
           ("sweep", ["train.epochs=1", "--wokers", "2"]),
           ("report", ["--only", "cifar10_best", "--trian"]),
           ("compare", ["runs/a", "--train-splt"]),
           ("bench", ["--stesp", "3", "train.amp=off"])]


@pytest.mark.parametrize("script,argv", UNKNOWN, ids=[s for s, _ in UNKNOWN])
def test_an_unknown_option_still_exits_2_naming_it(script, argv, capsys):
    with pytest.raises(SystemExit) as e:
        MODULES[script].main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and next(a for a in argv if a.startswith("--") and a not in
                                                    ("--config", "--only")) in err


def test_report_only_names_a_bad_row_after_gathering_the_overrides(capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--only", "cifar10_bets", "data.root=D"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cifar10_bets" in err and "data.root" not in err and "cifar10_best" in err


def test_evaluate_needs_exactly_one_checkpoint(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["a.pt", "b.pt", "data.root=D"])
    assert e.value.code == 2 and "one checkpoint" in capsys.readouterr().err


def test_a_later_override_of_the_same_key_wins_across_options(monkeypatch):
    """Overrides keep the command line's order even when a multi-value option swallowed some of them."""
    seen = []
    monkeypatch.setattr(report, "run_report", lambda args: seen.append(args) or 0)
    assert report.main(["data.root=A", "--only", "cifar10_best", "data.root=B", "--train"]) == 0
    assert seen[0].overrides == ["data.root=A", "data.root=B"]
    assert load_config("configs/cifar10_best.yaml", seen[0].overrides).data.root == "B"


def test_train_and_evaluate_run_with_options_after_overrides(tmp_path, capsys):
    """The issue's command lines, end to end: the config file given after its overrides, then the
    checkpoint scored with --tta and --json around a data override."""
    overrides = TINY + [f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                        f"run_dir={tmp_path / 'r'}"]
    cfg_file = tmp_path / "one_epoch.yaml"
    cfg_file.write_text("name: ordered\ntrain:\n  epochs: 1\n  label_smoothing: 0.1\n")
    assert T.main(overrides[:5] + ["--config", str(cfg_file)] + overrides[5:] + ["train.epochs=1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ckpt = str(tmp_path / "r" / "last.pt")
    cfg = load_checkpoint(ckpt)["config"]  # the file's keys, under every override typed on either side of it
    assert result["epochs"] == 1 and cfg["name"] == "ordered" and cfg["train"]["label_smoothing"] == 0.1
    assert cfg["data"]["name"] == "synthetic" and cfg["run_dir"] == str(tmp_path / "r")
    out = tmp_path / "e.json"
    assert evaluate.main([ckpt, "--tta", "flip", "data.eval_batch_size=50", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["tta"] == "flip" and scores["n"] == 120 and 0 <= scores["top1"] <= 1
    assert os.path.isfile(tmp_path / "r" / "confusion_val_flip.png")
