"""Optimisers, LR schedules and the training step: what optim.py builds and train.train_step does."""
import json
import math
import os

import pytest
import torch
from torch import nn

import optim as O
import train as T
from config import ConfigError, load_config


def lr_trace(cfg, steps_per_epoch, metrics=None):
    """The lr in effect at every step, one list per epoch, driving Schedule exactly as train_one_epoch does."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = O.build_optimizer(model, cfg)
    schedule = O.build_schedule(opt, cfg, steps_per_epoch)
    trace = []
    for epoch in range(cfg.train.epochs):
        lrs = []
        for _ in range(steps_per_epoch):
            lrs.append(O.current_lr(opt))
            opt.step()
            schedule.batch_done()
        trace.append(lrs)
        schedule.epoch_done(metrics[epoch] if metrics else 0.0)
    return trace, schedule


def cfg_of(tiny, *overrides):
    return load_config(None, tiny("optim.lr=0.1", *overrides))


def test_step_and_exponential_decay_once_per_epoch(tiny):
    trace, schedule = lr_trace(cfg_of(tiny, "sched.name=step", "sched.step_size=2", "sched.gamma=0.5",
                                      "train.epochs=5"), 3)
    assert schedule.every == "epoch" and all(len(set(lrs)) == 1 for lrs in trace)
    assert [lrs[0] for lrs in trace] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    trace, _ = lr_trace(cfg_of(tiny, "sched.name=exponential", "sched.gamma=0.5", "train.epochs=4"), 3)
    assert [lrs[0] for lrs in trace] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_multistep_without_warmup_matches_the_seeds_per_epoch_schedule(tiny):
    trace, schedule = lr_trace(cfg_of(tiny, "sched.name=multistep", "sched.milestones=[2,3]", "sched.gamma=0.1",
                                      "train.epochs=4"), 5)
    assert schedule.every == "epoch"
    assert [lrs[0] for lrs in trace] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_plateau_divides_after_patience_epochs_without_improvement(tiny):
    cfg = cfg_of(tiny, "sched.name=plateau", "sched.patience=1", "sched.gamma=0.1", "train.epochs=6")
    val_top1 = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3]
    trace, schedule = lr_trace(cfg, 2, val_top1)
    assert schedule.every == "metric"
    # Best 0.2 at epoch 2; epochs 3 and 4 don't beat it, so after epoch 4 (> patience 1 bad epochs) lr drops.
    assert [lrs[0] for lrs in trace] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_ramps_every_iteration_and_milestones_stay_on_their_epochs(tiny):
    cfg = cfg_of(tiny, "sched.name=multistep", "sched.milestones=[3]", "sched.gamma=0.1",
                 "sched.warmup_epochs=1", "train.epochs=4")
    trace, schedule = lr_trace(cfg, 4)
    assert schedule.every == "step"
    assert trace[0] == pytest.approx([0.01, 0.0325, 0.055, 0.0775])  # lr/10 -> lr, linearly per iteration
    assert trace[1] == pytest.approx([0.1] * 4) and trace[2] == pytest.approx([0.1] * 4)
    assert trace[3] == pytest.approx([0.01] * 4)  # milestone 3 counts epochs from the run's start


def test_cosine_after_warmup_decays_per_iteration_to_min_lr(tiny):
    cfg = cfg_of(tiny, "sched.name=cosine", "sched.warmup_epochs=1", "sched.min_lr=0.001", "train.epochs=3")
    trace, _ = lr_trace(cfg, 5)
    after = trace[1] + trace[2]
    assert after[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly falling: stepped per iteration
    assert after[-1] == pytest.approx(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * 9 / 10)) / 2)


def test_onecycle_peaks_at_optim_lr_and_steps_per_iteration(tiny):
    cfg = cfg_of(tiny, "sched.name=onecycle", "sched.onecycle_warmup=0.25", "train.epochs=4")
    trace, schedule = lr_trace(cfg, 5)
    flat = sum(trace, [])
    assert schedule.every == "step" and len(flat) == 20
    assert max(flat) == pytest.approx(0.1) and flat.index(max(flat)) == round(0.25 * 20) - 1
    assert flat[0] == pytest.approx(0.1 / 25) and flat[-1] < 1e-3


def test_warmup_is_rejected_where_the_schedule_cannot_take_it(tiny):
    for name in ("plateau", "onecycle"):
        with pytest.raises(ConfigError, match="warmup"):
            cfg_of(tiny, f"sched.name={name}", "sched.warmup_epochs=1")
    with pytest.raises(ConfigError, match="onecycle_warmup"):
        cfg_of(tiny, "sched.name=onecycle", "sched.onecycle_warmup=1.5")


def test_onecycle_quickstart_trains(tiny):
    # The quickstart preset with sched.name=onecycle (on fewer images, to stay quick): the run completes,
    # learns, and the lr it logs after each epoch is the one-cycle curve's (peak optim.lr, near 0 at the end).
    cfg = load_config("configs/quickstart.yaml", tiny()[-3:] + ["sched.name=onecycle", "train.epochs=2",
                                                                "data.synthetic_size=1200", "train.progress=false"])
    result = T.train(cfg)
    rows = [json.loads(line) for line in open(os.path.join(result["run_dir"], "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] < rows[0]["train_loss"]
    steps = rows[0]["step"]  # 960 training images / batch 64 = 15 per epoch
    trace, _ = lr_trace(cfg, steps)
    assert rows[0]["lr"] == pytest.approx(trace[1][0]) and rows[1]["lr"] < 1e-2 * cfg.optim.lr


def test_adamw_decays_only_weights_decoupled_from_the_gradient(tiny):
    cfg = cfg_of(tiny, "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.5")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = O.build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: AdamW's step is the decay alone (Adam's would be 0)
    opt.step()
    w, b, gamma, beta = (p.detach() for p in model.parameters())
    assert torch.allclose(w, before[0] * (1 - 0.01 * 0.5))
    assert torch.equal(b, before[1]) and torch.equal(gamma, before[2]) and torch.equal(beta, before[3])


def test_train_step_lowers_the_loss(tiny):
    cfg = load_config(None, tiny("model.dropout=0"))
    torch.manual_seed(0)
    model = T.build_model(cfg.model, 10, 32)
    opt = O.build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    first, _ = T.train_step(model, x, y, opt, scaler, nn.CrossEntropyLoss(), torch.device("cpu"), None)
    second, logits = T.train_step(model, x, y, opt, scaler, nn.CrossEntropyLoss(), torch.device("cpu"), None)
    assert second < first and logits.shape == (64, 10) and not logits.requires_grad


def test_grad_clip_clips_the_unscaled_gradient(tiny):
    # With an fp16-style loss scale of 2**16, clipping the *scaled* gradient to norm 1 would move the
    # weights by 1/65536 of the clip; train_step unscales first, so SGD(lr=1) moves them by exactly 1.
    cfg = cfg_of(tiny, "optim.lr=1.0", "optim.momentum=0", "optim.weight_decay=0")
    model = nn.Linear(4, 2, bias=False)
    nn.init.zeros_(model.weight)  # logits 0: the true gradient's norm is 50 * sqrt(8), far above the clip
    opt = O.build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    x, y = torch.full((8, 4), 100.0), torch.zeros(8, dtype=torch.long)
    before = model.weight.detach().clone()
    T.train_step(model, x, y, opt, scaler, nn.CrossEntropyLoss(), torch.device("cpu"), None, grad_clip=1.0)
    assert (model.weight.detach() - before).norm().item() == pytest.approx(1.0, rel=1e-4)


def test_label_smoothing_reaches_the_loss(tiny):
    cfg = load_config(None, tiny("train.label_smoothing=0.2"))
    rt = T.Runtime(torch.device("cpu"), None)
    tr = T.build_trainer(cfg, 10, 32, 100, rt)
    logits, y = torch.tensor([[8.0] + [0.0] * 9]), torch.tensor([0])
    logp = logits.log_softmax(1)[0]
    smoothed = -(0.8 * logp[0] + 0.2 * logp.mean())  # (1 - eps) on the label, eps spread over all classes
    assert tr.criterion(logits, y).item() == pytest.approx(smoothed.item())
    assert smoothed > nn.functional.cross_entropy(logits, y)  # a confident right answer still costs something
