"""Every bad input a careful user might give train.py, evaluate.py or sweep.py: exit 2 (divergence: 3), one
line on stderr naming the key or path and the fix, never a traceback, and nothing saved is lost.

In-process (each script's main(argv)), so an exception that escapes fails the test with its traceback."""
import errno
import os
import pickle

import pytest
import torch
import yaml

import evaluate
import sweep
import train as T
from config import load_config, parse_overrides
from conftest import TINY

TABLE = []  # (id, script, setup(tmp) -> argv, words the message must contain)


def case(name, script, *words):
    def register(setup):
        TABLE.append(pytest.param(script, setup, words, id=name))
        return setup
    return register


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def folder(tmp, classes, n=3, size=8):
    from PIL import Image
    for c in classes:
        for i in range(n):
            p = tmp / "imgs" / "train" / c / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), (i * 40, 10, 99)).save(p)
    return str(tmp / "imgs")


def tiny(tmp, *extra):
    return TINY + [f"out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished tiny run: its last.pt feeds the checkpoint cases."""
    tmp = tmp_path_factory.mktemp("run")
    return T.train(load_config(None, tiny(tmp, f"run_dir={tmp / 'r'}", "train.epochs=1")))["last_checkpoint"]


# -- configs and overrides -----------------------------------------------------------------------------
case("typo-key", "train", "optim.lr")(lambda tmp, ckpt: tiny(tmp, "optim.lrr=0.1"))
case("bad-choice", "train", "model.activation", "relu")(lambda tmp, ckpt: tiny(tmp, "model.activation=rleu"))
case("lr-inf", "train", "optim.lr")(lambda tmp, ckpt: tiny(tmp, "optim.lr=.inf"))
case("lr-nan", "train", "optim.lr")(lambda tmp, ckpt: tiny(tmp, "optim.lr=.nan"))
case("override-no-equals", "train", "key=value")(lambda tmp, ckpt: tiny(tmp, "optim.lr"))
case("config-missing", "train", "not found")(lambda tmp, ckpt: ["--config", str(tmp / "nope.yaml")])
case("config-is-dir", "train", "directory")(lambda tmp, ckpt: ["--config", str(tmp)])
case("config-binary", "train", "bin.yaml")(lambda tmp, ckpt: ["--config", write(tmp / "bin.yaml", b"\xff\xfe\x00\x9c")])
case("config-not-yaml", "train", "YAML")(lambda tmp, ckpt: ["--config", write(tmp / "b.yaml", "a: [1,\n")])
case("config-a-list", "train", "mapping")(lambda tmp, ckpt: ["--config", write(tmp / "l.yaml", "- 1\n")])
case("extends-not-a-string", "train", "extends")(lambda tmp, ckpt: ["--config", write(tmp / "e.yaml", "extends: 3\n")])
case("extends-loop", "train", "loops")(lambda tmp, ckpt: ["--config", write(tmp / "x.yaml", "extends: x.yaml\n")])
case("scalar-section-plus-key", "train", "data")(
    lambda tmp, ckpt: ["--config", write(tmp / "s.yaml", "data: synthetic\n"), "data.batch_size=8"])
case("yaml-python-tag", "train", "YAML")(
    lambda tmp, ckpt: ["--config", write(tmp / "t.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n")])
case("image-size-too-small", "train", "data.image_size")(lambda tmp, ckpt: tiny(tmp, "data.image_size=4"))
case("image-size-huge", "train", "data.image_size")(lambda tmp, ckpt: tiny(tmp, "data.image_size=100000"))
case("milestones-unsorted", "train", "sched.milestones")(lambda tmp, ckpt: tiny(tmp, "sched.milestones=[5,2]"))
case("epochs-zero", "train", "train.epochs")(lambda tmp, ckpt: tiny(tmp, "train.epochs=0"))
case("fp16-on-cpu", "train", "fp16")(lambda tmp, ckpt: tiny(tmp, "train.amp=fp16"))

# -- data ------------------------------------------------------------------------------------------------
case("folder-missing", "train", "data.root")(lambda tmp, ckpt: tiny(tmp, "data.name=folder", f"data.root={tmp / 'no'}"))
case("folder-one-class", "train", "class")(
    lambda tmp, ckpt: tiny(tmp, "data.name=folder", f"data.root={folder(tmp, ['cat'])}", "data.val_fraction=0.3"))
case("subset-too-large", "train", "data.subset")(
    lambda tmp, ckpt: tiny(tmp, "data.name=folder", f"data.root={folder(tmp, ['a', 'b'])}", "data.subset=1000"))


@case("broken-image", "train", "bad.png")
def broken_image(tmp, ckpt):
    root = folder(tmp, ["a", "b"])
    write(tmp / "imgs/train/a/bad.png", b"not a png")
    return tiny(tmp, "data.name=folder", f"data.root={root}", "data.val_fraction=0.3")


case("cache-dir-is-a-file", "train", "cachefile")(
    lambda tmp, ckpt: tiny(tmp, "data.name=folder", f"data.root={folder(tmp, ['a', 'b'])}", "data.val_fraction=0.3")
    + [f"data.cache_dir={write(tmp / 'cachefile', 'x')}"])

# -- outputs ---------------------------------------------------------------------------------------------
case("out-dir-is-a-file", "train", "outfile")(lambda tmp, ckpt: tiny(tmp) + [f"out_dir={write(tmp / 'outfile', 'x')}"])
case("run-dir-is-a-file", "train", "runfile")(lambda tmp, ckpt: tiny(tmp, f"run_dir={write(tmp / 'runfile', 'x')}"))
case("run-dir-holds-a-run", "train", "run_dir", "--resume")(lambda tmp, ckpt: tiny(tmp, f"run_dir={os.path.dirname(ckpt)}"))
case("out-dir-under-proc", "train", "/proc/")(lambda tmp, ckpt: tiny(tmp) + ["out_dir=/proc/alexnet-runs"])

# -- checkpoints and resume ------------------------------------------------------------------------------
case("resume-missing", "train", "not found")(lambda tmp, ckpt: ["--resume", str(tmp / "none.pt")])
case("resume-dir", "train", "directory")(lambda tmp, ckpt: ["--resume", str(tmp)])
case("resume-with-config", "train", "--resume")(lambda tmp, ckpt: ["--resume", ckpt, "--config", "configs/quickstart.yaml"])
case("resume-changed-optimizer", "train", "optim.name")(lambda tmp, ckpt: ["--resume", ckpt, "optim.name=adam"])
case("resume-changed-lr", "train", "optim.lr")(lambda tmp, ckpt: ["--resume", ckpt, "optim.lr=0.5"])
case("resume-shorter", "train", "train.epochs")(lambda tmp, ckpt: ["--resume", ckpt, "train.epochs=0"])
case("resume-no-config", "train", "config")(
    lambda tmp, ckpt: ["--resume", save(tmp / "nocfg.pt", {k: v for k, v in torch.load(ckpt, weights_only=True).items()
                                                            if k != "config"})])
case("resume-truncated", "train", "truncated")(lambda tmp, ckpt: ["--resume", write(tmp / "t.pt", open(ckpt, "rb").read()[:999])])
case("evaluate-missing", "evaluate", "not found")(lambda tmp, ckpt: [str(tmp / "none.pt")])
case("evaluate-dir-without-best", "evaluate", "best.pt", "last.pt")(lambda tmp, ckpt: [str(tmp)])
case("evaluate-foreign", "evaluate", "not an alexnet-lab")(lambda tmp, ckpt: [save(tmp / "f.pt", {"state_dict": {}})])
case("evaluate-pickle", "evaluate", "pickle")(lambda tmp, ckpt: [write(tmp / "evil.pt", pickle.dumps(os.getcwd))])
case("evaluate-json-missing-dir", "evaluate", "nodir")(lambda tmp, ckpt: [ckpt, "--json", str(tmp / "nodir" / "e.json")])


@case("evaluate-png-blocked", "evaluate", "confusion_val.png")
def png_blocked(tmp, ckpt):  # the confusion PNG beside the checkpoint cannot be written (a folder in its place)
    write(tmp / "c" / "last.pt", open(ckpt, "rb").read())
    (tmp / "c" / "confusion_val.png").mkdir()
    return [str(tmp / "c" / "last.pt")]


case("evaluate-other-classes", "evaluate", "classes")(lambda tmp, ckpt: [ckpt, "data.synthetic_classes=5"])
case("evaluate-bad-override", "evaluate", "data.nme")(lambda tmp, ckpt: [ckpt, "data.nme=x"])

# -- sweeps ----------------------------------------------------------------------------------------------


def sweep_file(tmp, body, name="s.yaml"):
    base = write(tmp / "base.yaml", yaml.safe_dump(parse_overrides(tiny(tmp, "train.epochs=1"))))
    return ["--config", write(tmp / name, yaml.safe_dump({"base": os.path.basename(base), **body})),
            "--storage", f"journal:{tmp / 'j.journal'}"]


SPACE = {"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}}
case("sweep-low-not-a-number", "sweep", "low")(
    lambda tmp, ckpt: sweep_file(tmp, {"space": {"optim.lr": {"type": "float", "low": "abc", "high": 0.1}}}))
case("sweep-trials-word", "sweep", "trials")(lambda tmp, ckpt: sweep_file(tmp, {**SPACE, "trials": "many"}))
case("sweep-overrides-list", "sweep", "overrides")(lambda tmp, ckpt: sweep_file(tmp, {**SPACE, "overrides": ["a=1"]}))
case("sweep-int-step-zero", "sweep", "step")(
    lambda tmp, ckpt: sweep_file(tmp, {"space": {"data.batch_size": {"type": "int", "low": 8, "high": 64, "step": 0}}}))
case("sweep-unknown-key", "sweep", "optim.lrr")(
    lambda tmp, ckpt: sweep_file(tmp, {"space": {"optim.lrr": {"type": "float", "low": 0.01, "high": 0.1}}}))
case("sweep-trials-negative", "sweep", "--trials")(lambda tmp, ckpt: sweep_file(tmp, SPACE) + ["--trials", "-1"])
case("sweep-timeout-negative", "sweep", "--timeout")(lambda tmp, ckpt: sweep_file(tmp, SPACE) + ["--timeout", "-5"])
case("sweep-workers-zero", "sweep", "--workers")(lambda tmp, ckpt: sweep_file(tmp, SPACE) + ["--workers", "0"])
case("sweep-bad-storage", "sweep", "storage")(
    lambda tmp, ckpt: sweep_file(tmp, SPACE)[:2] + ["--storage", "nosuchdb://x"])
case("sweep-storage-unwritable", "sweep", "/proc/")(
    lambda tmp, ckpt: sweep_file(tmp, SPACE)[:2] + ["--storage", "journal:/proc/x/j.journal"])


def save(path, obj):
    torch.save(obj, path)
    return str(path)


MAINS = {"train": T.main, "evaluate": evaluate.main, "sweep": sweep.main}


@pytest.mark.parametrize("script,setup,words", TABLE)
def test_bad_input_exits_2_with_one_line(script, setup, words, run, tmp_path, capsys, monkeypatch):
    argv = setup(tmp_path, run)
    before = open(run, "rb").read()
    status = MAINS[script](argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, (status, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert open(run, "rb").read() == before  # nothing saved is touched


def test_disk_full_during_a_checkpoint_keeps_the_earlier_one(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    T.train(load_config(None, tiny(tmp_path, f"run_dir={run}", "train.epochs=1")))
    good = (run / "last.pt").read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith(f"last.pt.tmp{os.getpid()}"):
            real_save(obj, f, *a, **k)  # a partial file is on disk when the space runs out
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    status = T.main(["--resume", str(run / "last.pt"), "train.epochs=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "last.pt" in err[0] and "space" in err[0], err
    assert (run / "last.pt").read_bytes() == good and not list(run.glob("*.tmp*"))
    monkeypatch.setattr(torch, "save", real_save)
    assert T.main(["--resume", str(run / "last.pt"), "train.epochs=2"]) == 0  # resumable once space is back


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pt.tmp999999999").write_bytes(b"partial")  # no such pid
    (run / f"best.pt.tmp{os.getppid()}").write_bytes(b"live")  # a live process's (our parent): left alone
    T.train(load_config(None, tiny(tmp_path, f"run_dir={run}", "train.epochs=1")))
    assert not (run / "last.pt.tmp999999999").exists() and (run / f"best.pt.tmp{os.getppid()}").exists()
