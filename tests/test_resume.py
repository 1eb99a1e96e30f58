"""What --resume may change: it continues the same run, so it refuses changes to what the run computes,
applies the ones that don't (recording them), and re-plans a length-dependent schedule when extended."""
import json
import os

import optuna
import pytest
import torch

import train as T
from config import load_config

def rows(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def resume_cfg(run, *overrides):
    return load_config(base=T.load_checkpoint(os.path.join(run, "last.pt"))["config"], overrides=list(overrides))


@pytest.fixture
def finished(tiny, tmp_path):
    """A 2-epoch tiny run; returns its folder."""
    run = str(tmp_path / "r")
    T.train(load_config(None, tiny(f"run_dir={run}")))
    return run


def test_resume_refuses_a_change_of_recipe_and_touches_nothing(finished, capsys):
    files = {f: open(os.path.join(finished, f), "rb").read() for f in ("config.yaml", "last.pt", "metrics.jsonl")}
    for change, named, fix in ((["optim.lr=0.5", "train.epochs=3"], "optim.lr", "init_from"),
                               (["model.dropout=0.1"], "model.dropout", "init_from"),
                               (["train.epochs=1"], "train.epochs", "larger"),
                               (["sched.name=cosine"], "sched.name", "init_from")):
        status = T.main(["--resume", os.path.join(finished, "last.pt"), *change])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and named in err[0] and fix in err[0], err
    for f, before in files.items():
        assert open(os.path.join(finished, f), "rb").read() == before, f"{f} changed by a refused resume"


def test_resume_applies_and_records_keys_that_keep_the_run(finished):
    cfg = resume_cfg(finished, "train.epochs=3", "data.eval_batch_size=64", "train.log_every=7")
    result = T.train(cfg, resume=os.path.join(finished, "last.pt"))
    saved = load_config(os.path.join(finished, "config.yaml"))
    assert result["epochs"] == 3 and saved.train.epochs == 3
    assert saved.data.eval_batch_size == 64 and saved.train.log_every == 7


class StopAfter:
    """An Optuna-trial stand-in that prunes (stops the run cleanly, after its checkpoint) at one epoch."""

    def __init__(self, epoch):
        self.epoch, self.now = epoch, 0

    def report(self, value, epoch):
        self.now = epoch

    def should_prune(self):
        return self.now == self.epoch


def test_extending_a_cosine_run_replans_its_schedule_and_resumes_exactly(tiny, tmp_path):
    args = tiny("sched.name=cosine", "train.epochs=3", "optim.lr=0.05")
    first = str(tmp_path / "a")
    T.train(load_config(None, args + [f"run_dir={first}"]))
    lr3 = rows(first)[-1]["lr"]
    assert lr3 > 0
    # Extend 3 -> 5 in one go ...
    T.train(resume_cfg(first, "train.epochs=5"), resume=os.path.join(first, "last.pt"))
    lrs = [r["lr"] for r in rows(first)]
    assert [r["epoch"] for r in rows(first)] == [1, 2, 3, 4, 5]
    assert lrs[3] == pytest.approx(lr3) and 0 < lrs[4] < lrs[3]  # never 0, never rising
    straight = torch.load(os.path.join(first, "last.pt"), weights_only=True)
    # ... and again, stopped after epoch 4 and resumed without changes: the re-plan survives a resume.
    second = str(tmp_path / "b")
    T.train(load_config(None, args + [f"run_dir={second}"]))
    with pytest.raises(optuna.TrialPruned):
        T.train(resume_cfg(second, "train.epochs=5"), trial=StopAfter(4), resume=os.path.join(second, "last.pt"))
    assert T.load_checkpoint(os.path.join(second, "last.pt"))["replanned_at"] == 3
    T.train(resume_cfg(second), resume=os.path.join(second, "last.pt"))
    resumed = torch.load(os.path.join(second, "last.pt"), weights_only=True)
    assert [r["lr"] for r in rows(second)] == lrs
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_extending_a_step_schedule_keeps_its_plan(tiny, tmp_path):
    run = str(tmp_path / "m")
    T.train(load_config(None, tiny("sched.name=multistep", "sched.milestones=[3]", f"run_dir={run}")))
    T.train(resume_cfg(run, "train.epochs=4"), resume=os.path.join(run, "last.pt"))
    assert [r["lr"] for r in rows(run)] == pytest.approx([0.05, 0.05, 0.05, 0.005])  # milestone 3: after 3 epochs
