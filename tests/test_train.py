import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate as E
import train as T
from config import load_config
from data import load_data, prepare
from evaluate import evaluate, predict, tta_views

PY = sys.executable


def run_cli(args, timeout=300):
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout)


def test_quickstart_config_learns_far_above_chance(tiny):
    # The real quickstart preset, shortened so the suite stays fast; validation top-1 chance is 0.10.
    # (8 epochs on 4,000 images reach ~0.92; 4 on 1,600 reach ~0.39, four times chance.)
    cfg = load_config("configs/quickstart.yaml", tiny()[-3:] + ["train.epochs=4", "data.synthetic_size=1600",
                                                                 "train.progress=false"])
    result = T.train(cfg)
    assert result["best_val_top1"] > 0.3, result
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


def tensorboard_experiment(logdir):
    """The HParams table TensorBoard's own backend builds for `logdir`: (hparam names in display order with
    whether they differ between runs, metric tags)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(logdir),
                                                            multiplexer=mux))
    ctx = context.RequestContext()
    exp = backend.experiment_from_metadata(ctx, "", True, backend.hparams_metadata(ctx, ""),
                                           backend.hparams_from_data_provider(ctx, "", limit=None))
    return [(h.name, h.differs) for h in exp.hparam_infos], [m.name.tag for m in exp.metric_infos]


def test_tensorboard_compares_runs_by_what_varied(tiny, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    T.train(load_config(None, tiny(f"run_dir={logdir / 'a'}", "optim.lr=0.05", "model.activation=relu")))
    result = T.train(load_config(None, tiny(f"run_dir={logdir / 'b'}", "optim.lr=0.01", "model.activation=gelu")))
    acc = EventAccumulator(result["run_dir"])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/top1", "val/top1", "val/top5", "val/loss", "lr", "perf/img_per_s",
                "perf/epoch_s", "hparams/best_val_top1", "hparams/final_val_top1", "hparams/best_epoch"):
        assert tag in tags
    assert len(acc.Scalars("val/top1")) == 2
    assert acc.Scalars("hparams/best_val_top1")[-1].value == pytest.approx(result["best_val_top1"])
    assert "custom_scalars__config__" in acc.summary_metadata  # the Custom Scalars layout

    hparams, metrics = tensorboard_experiment(logdir)
    names = [n for n, _ in hparams]
    assert len(names) <= 30 and {"optim.lr", "model.activation", "seed", "precision"} <= set(names)
    assert sorted(n for n, differs in hparams if differs) == ["model.activation", "optim.lr"] == sorted(names[:2])
    assert not [n for n in names if n in ("out_dir", "run_dir", "data.root", "data.cache_dir", "train.progress",
                                          "train.log_every", "device", "model.init_from", "train.compile")]
    assert "hparams/best_val_top1" in metrics and "hparams/final_val_top5" in metrics
    assert all(m.startswith("hparams/") for m in metrics[:5])  # the results sort before the curves

    # A run that stops early (pruned, diverged, interrupted) has no result: its row shows blanks, not a result.
    real = T.train_one_epoch
    monkeypatch.setattr(T, "train_one_epoch", lambda cfg, tr, data, rt, p, epoch: real(cfg, tr, data, rt, p, epoch)
                        if epoch == 1 else (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        T.train(load_config(None, tiny(f"run_dir={logdir / 'c'}")))
    acc = EventAccumulator(str(logdir / "c"))
    acc.Reload()
    assert "val/top1" in acc.Tags()["scalars"] and not [t for t in acc.Tags()["scalars"] if t.startswith("hparams/")]
    assert "_hparams_/session_end_info" not in acc.summary_metadata


def test_user_errors_exit_2_with_one_line(tiny, tmp_path):
    p = run_cli(["train.py", *tiny("optim.lrr=0.1")])
    assert p.returncode == 2 and "optim.lr" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1  # the CLI glue; every other bad input: test_bad_inputs.py


def final_weights(run_dir):
    return torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["model"]


def test_resume_after_kill_is_bit_identical(tiny, tmp_path):
    args = tiny("data.synthetic_size=1200", "train.epochs=5", "data.crop_padding=2", "data.flip=true",
                "data.pca_lighting=0.1", "model.dropout=0.5", "sched.name=multistep", "sched.milestones=[3]")
    straight = tmp_path / "straight"
    T.train(load_config(None, [*args, f"run_dir={straight}"]))  # in-process; the killed run is the CLI's

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
    with open(metrics, "a") as f:  # as if the kill had torn a line being written
        f.write('{"epoch": 3, "train_lo')
    assert T.main(["--resume", str(killed / "last.pt")]) == 0
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


def test_divergence_stops_with_exit_3_and_keeps_checkpoints(tiny, tmp_path, capsys, monkeypatch):
    run, saved = tmp_path / "r", {}
    real_end_epoch = T.end_epoch

    def end_epoch_then_blow_up(cfg, tr, *rest):  # epoch 1 trains and saves; epoch 2 runs at lr 1e12
        real_end_epoch(cfg, tr, *rest)
        saved.setdefault("last", (run / "last.pt").read_bytes())
        for group in tr.opt.param_groups:
            group["lr"] = 1e12

    monkeypatch.setattr(T, "end_epoch", end_epoch_then_blow_up)
    assert T.main(tiny(f"run_dir={run}", "model.init=paper", "train.log_every=2")) == 3
    err = capsys.readouterr().err
    assert "step" in err and "lr=1e+12" in err and "optim.lr" in err and "Traceback" not in err
    assert (run / "last.pt").read_bytes() == saved["last"]


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
    err = capsys.readouterr().err
    assert err.count("every validation image gets the same logits") == 2
    # The warning names the layer whose health broke first (layer health is measured after each epoch's last step).
    assert "first to break: fc7: 100% dead units since step 15 (lr 0.05, init kaiming)" in err
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


def test_evaluate_json_matches_training_validation(tiny, tmp_path, capsys):
    result = T.train(load_config(None, tiny()))
    out = tmp_path / "e.json"
    assert E.main([result["last_checkpoint"], "--json", str(out)]) == 0
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
    # A run folder scores its best.pt; each TTA gets its own picture, named after it.
    capsys.readouterr()
    assert E.main([result["run_dir"], "--tta", "flip"]) == 0
    printed = capsys.readouterr().out
    assert "best.pt on val" in printed and "tta=flip" in printed and "confusion_val_flip.png" in printed
    assert os.path.isfile(os.path.join(result["run_dir"], "confusion_val_flip.png"))


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


def test_evaluate_rejects_bad_checkpoints_and_other_classes(tiny, tmp_path, capsys):
    result = T.train(load_config(None, tiny("train.epochs=1")))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(result["last_checkpoint"], "rb").read()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    for path, words in ((tmp_path / "nope.pt", "not found"), (trunc, "truncated"), (foreign, "not an alexnet-lab")):
        assert E.main([str(path)]) == 2
        assert words in capsys.readouterr().err
    assert E.main([result["last_checkpoint"], "data.synthetic_classes=5"]) == 2
    assert "classes" in capsys.readouterr().err


def test_release_is_fp16_and_scores_like_the_checkpoint(tiny, tmp_path):
    result = T.train(load_config(None, tiny("train.epochs=1")))
    out = tmp_path / "release.pt"
    assert E.main([result["last_checkpoint"], "--release", str(out)]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert "optimizer" not in ckpt and "rng" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert os.path.getsize(out) < 0.6 * os.path.getsize(result["last_checkpoint"])
    full, half = evaluate(result["last_checkpoint"]), evaluate(str(out))
    assert half["n"] == full["n"] and abs(half["top1"] - full["top1"]) <= 2 / full["n"]


def test_ctrl_c_names_the_checkpoint_to_continue_from(tiny, tmp_path, monkeypatch, capsys):
    real, run = T.train_one_epoch, tmp_path / "r"

    def interrupted_in_epoch_2(cfg, tr, data, rt, p, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(cfg, tr, data, rt, p, epoch)

    monkeypatch.setattr(T, "train_one_epoch", interrupted_in_epoch_2)
    assert T.main(tiny(f"run_dir={run}", "train.epochs=3")) == 130
    assert f"python train.py --resume {run / 'last.pt'}" in capsys.readouterr().err
    assert T.load_checkpoint(str(run / "last.pt"))["epoch"] == 1
    monkeypatch.setattr(T, "train_one_epoch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert T.main(tiny(f"run_dir={tmp_path / 'r2'}")) == 130
    assert "nothing to resume" in capsys.readouterr().err
