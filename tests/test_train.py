import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train as T
from config import load_config
from data import load_data, prepare
from evaluate import evaluate, predict, tta_views

PY = sys.executable


def run_cli(args, timeout=300):
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout)


def test_quickstart_config_learns_far_above_chance(tiny):
    # The real quickstart preset, shortened so the suite stays fast; validation top-1 chance is 0.10.
    cfg = load_config("configs/quickstart.yaml", tiny()[-3:] + ["train.epochs=4", "train.progress=false"])
    result = T.train(cfg)
    assert result["best_val_top1"] > 0.5, result
    for key in ("run_dir", "best_val_top1", "final_val_top1", "epochs", "best_checkpoint", "last_checkpoint"):
        assert key in result
    assert result["epochs"] == 4 and os.path.isfile(result["best_checkpoint"])


def test_cli_prints_json_last_and_writes_run_artifacts(tiny, tmp_path):
    p = run_cli(["train.py", *tiny("name=cli")])
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    run = result["run_dir"]
    assert 0 <= result["final_val_top1"] <= 1 and 0 <= result["best_val_top1"] <= 1
    assert set(os.listdir(run)) >= {"best.pt", "config.yaml", "last.pt", "metrics.jsonl"}
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    # The written config re-creates the run's config exactly.
    assert load_config(os.path.join(run, "config.yaml")) == load_config(None, tiny("name=cli"))
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "best_val_top1", "config",
                         "classes", "stats", "rng"}
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])


def test_tensorboard_records_scalars_and_hparams(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = T.train(load_config(None, tiny()))
    acc = EventAccumulator(result["run_dir"])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "val/top1", "val/top5", "val/loss", "lr", "perf/img_per_s", "perf/epoch_s"):
        assert tag in tags
    assert len(acc.Scalars("val/top1")) == 2
    assert "_hparams_/experiment" in acc.summary_metadata


def test_user_errors_exit_2_with_one_line(tiny, tmp_path):
    p = run_cli(["train.py", *tiny("optim.lrr=0.1")])
    assert p.returncode == 2 and "optim.lr" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run_cli(["train.py", "--resume", str(tmp_path / "missing.pt")])
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr


def final_weights(run_dir):
    return torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["model"]


def test_resume_after_kill_is_bit_identical(tiny, tmp_path):
    args = tiny("data.synthetic_size=2400", "train.epochs=5", "data.crop_padding=2", "data.flip=true",
                "data.pca_lighting=0.1", "model.dropout=0.5", "sched.name=multistep", "sched.milestones=[3]")
    straight = tmp_path / "straight"
    assert run_cli(["train.py", *args, f"run_dir={straight}"]).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([PY, "train.py", *args, f"run_dir={killed}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics, last = killed / "metrics.jsonl", killed / "last.pt"

    def saved_epoch():  # last.pt is replaced atomically, so whatever is there loads whole
        try:
            return torch.load(last, weights_only=True)["epoch"]
        except (FileNotFoundError, EOFError, RuntimeError):
            return 0

    deadline = time.time() + 240
    while time.time() < deadline and saved_epoch() < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # epoch 2 is saved: the run is now past it, inside epoch 3
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert saved_epoch() == 2
    p = run_cli(["train.py", "--resume", str(killed / "last.pt")])
    assert p.returncode == 0, p.stderr
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line)["epoch"] for line in open(metrics)]
    assert rows == [1, 2, 3, 4, 5]


def test_resume_can_extend_epochs(tiny, tmp_path):
    run = tmp_path / "r"
    T.train(load_config(None, tiny(f"run_dir={run}", "train.epochs=1")))
    cfg = load_config(base=T.load_checkpoint(str(run / "last.pt"))["config"], overrides=["train.epochs=2"])
    result = T.train(cfg, resume=str(run / "last.pt"))
    assert result["epochs"] == 2 and T.load_checkpoint(result["last_checkpoint"])["epoch"] == 2


def test_divergence_stops_with_exit_3_and_keeps_checkpoints(tiny, tmp_path):
    run = tmp_path / "r"
    assert run_cli(["train.py", *tiny(f"run_dir={run}", "train.epochs=1")]).returncode == 0
    before = (run / "last.pt").read_bytes()
    p = run_cli(["train.py", *tiny(f"run_dir={run}", "optim.lr=1e12", "model.init=paper", "train.log_every=2")])
    assert p.returncode == 3, p.stderr
    assert "step" in p.stderr and "lr=1e+12" in p.stderr and "optim.lr" in p.stderr
    assert (run / "last.pt").read_bytes() == before


def test_collapsed_network_is_flagged_and_warned_about(tiny, tmp_path, monkeypatch, capsys):
    real = T.build_model

    def dead(*args):  # fc7's ReLUs all output 0: every image gets the classifier's bias as logits
        model = real(*args)
        with torch.no_grad():
            model.head.fc7.weight.zero_()
            model.head.fc7.bias.fill_(-1.0)
        return model

    monkeypatch.setattr(T, "build_model", dead)
    run = tmp_path / "r"
    T.train(load_config(None, tiny(f"run_dir={run}", "train.epochs=2")))
    assert capsys.readouterr().err.count("every validation image gets the same logits") == 2
    assert [(r["epoch"], r.get("collapsed")) for r in map(json.loads, open(run / "metrics.jsonl"))] == [
        (1, True), (2, True)]
    monkeypatch.undo()  # the same config with the real model is not flagged
    T.train(load_config(None, tiny(f"run_dir={tmp_path / 'ok'}", "train.epochs=1")))
    assert "collapsed" not in (tmp_path / "ok" / "metrics.jsonl").read_text()
    assert "same logits" not in capsys.readouterr().err
    # With train.stop_on_collapse the run stops after logging the epoch, before writing any checkpoint.
    monkeypatch.setattr(T, "build_model", dead)
    stopped = tmp_path / "stopped"
    with pytest.raises(T.TrainingDiverged, match="collapsed in epoch 1.*sched.warmup_epochs"):
        T.train(load_config(None, tiny(f"run_dir={stopped}", "train.stop_on_collapse=true")))
    assert [json.loads(line)["epoch"] for line in open(stopped / "metrics.jsonl")] == [1]
    assert not (stopped / "last.pt").exists()
    # Rounding noise between batch sizes does not hide a collapse; logits that depend on the image are not one.
    same = torch.tensor([[0.1, -0.2, 0.3]]).repeat(6, 1)
    step = torch.linspace(0, 1, 6)[:, None]
    assert T.collapsed(same) and T.collapsed(same + step * 3e-6)
    assert not T.collapsed(same + step * torch.tensor([0.05, -0.05, 0.02]))


def test_bf16_autocast_path_trains(tiny):
    # bf16 autocast is the one AMP path on CPU; forward and loss run inside it, one optimizer step per batch.
    cfg = load_config(None, tiny("train.amp=bf16", "train.epochs=1", "data.synthetic_size=200"))
    steps, conv_dtypes = [], set()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, a, k: steps.append(1))

    def record(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():
            conv_dtypes.add(out.dtype)

    fwd = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = T.train(cfg)
    finally:
        handle.remove()
        fwd.remove()
    assert len(steps) == 160 // 32 and result["final_val_top1"] is not None
    assert conv_dtypes == {torch.bfloat16}
    assert T.resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(T.ConfigError, match="fp16"):
        T.resolve_amp("fp16", torch.device("cpu"))


def test_evaluate_json_matches_training_validation(tiny, tmp_path):
    result = T.train(load_config(None, tiny()))
    out = tmp_path / "e.json"
    p = run_cli(["evaluate.py", result["last_checkpoint"], "--json", str(out)])
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert set(r) >= {"top1", "top5", "loss", "n", "per_class", "confusion"}
    assert r["n"] == 120 and sum(map(sum, r["confusion"])) == 120 and len(r["per_class"]) == 10
    assert r["top1"] == pytest.approx(result["final_val_top1"], abs=1e-6)
    assert os.path.isfile(os.path.join(result["run_dir"], "confusion_val.png"))
    for tta in ("flip", "ten_crop"):
        r = evaluate(result["last_checkpoint"], "val", tta)
        assert r["tta"] == tta and r["n"] == 120 and sum(map(sum, r["confusion"])) == 120
    seen = evaluate(result["last_checkpoint"], "train")  # the images it trained on: 48 per class, un-augmented
    assert seen["n"] == 480 and [sum(row) for row in seen["confusion"]] == [48] * 10


def test_tta_views_are_the_flips_and_crops_they_claim():
    x = torch.arange(2 * 6 * 6 * 3, dtype=torch.int32).reshape(2, 6, 6, 3)  # stored at the input size, 6
    plain, flipped = tta_views("flip", 0, 6)(x)
    assert torch.equal(plain, x) and torch.equal(flipped, x.flip(2))
    crops = tta_views("ten_crop", 1, 6)(x)  # from the image zero-padded by crop_padding=1, as in training
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    corners = [padded[:, :6, :6], padded[:, :6, 2:], padded[:, 2:, :6], padded[:, 2:, 2:]]
    assert all(torch.equal(c, want) for c, want in zip(crops, corners)) and torch.equal(crops[4], x)
    assert all(torch.equal(crops[5 + i], crops[i].flip(2)) for i in range(5))
    big = torch.arange(8 * 8 * 3, dtype=torch.int32).reshape(1, 8, 8, 3)  # streamed at the resize, 8 for 6
    crops = tta_views("ten_crop", 4, 6)(big)
    assert torch.equal(crops[0], big[:, :6, :6]) and torch.equal(crops[3], big[:, 2:, 2:])
    assert torch.equal(crops[4], big[:, 1:7, 1:7])


def test_predict_averages_the_logits_of_its_views(tiny):
    cfg = load_config(None, tiny())
    data = load_data(cfg.data, torch.device("cpu"))
    model = T.build_model(cfg.model, 10, 32).eval()
    val = data.val.subset(torch.arange(5))
    got = predict(model, val, data.stats, cfg.data, torch.device("cpu"), None, False, tta_views("flip", 0, 32))
    with torch.no_grad():
        x = val.images
        want = (model(prepare(x, data.stats, channels_last=False))
                + model(prepare(x.flip(2), data.stats, channels_last=False))) / 2
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, predict(model, val, data.stats, cfg.data, torch.device("cpu"), None, False))


def test_evaluate_rejects_bad_checkpoints_and_other_classes(tiny, tmp_path):
    result = T.train(load_config(None, tiny("train.epochs=1")))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(result["last_checkpoint"], "rb").read()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, words in ((tmp_path / "nope.pt", "not found"), (trunc, "truncated"), (foreign, "not an alexnet-lab")):
        p = run_cli(["evaluate.py", str(path)])
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr
    p = run_cli(["evaluate.py", result["last_checkpoint"], "data.synthetic_classes=5"])
    assert p.returncode == 2 and "classes" in p.stderr


def test_release_is_fp16_and_scores_like_the_checkpoint(tiny, tmp_path):
    result = T.train(load_config(None, tiny("train.epochs=1")))
    out = tmp_path / "release.pt"
    p = run_cli(["evaluate.py", result["last_checkpoint"], "--release", str(out)])
    assert p.returncode == 0, p.stderr
    ckpt = torch.load(out, weights_only=True)
    assert "optimizer" not in ckpt and "rng" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert os.path.getsize(out) < 0.6 * os.path.getsize(result["last_checkpoint"])
    full, half = evaluate(result["last_checkpoint"]), evaluate(str(out))
    assert half["n"] == full["n"] and abs(half["top1"] - full["top1"]) <= 2 / full["n"]
