"""Optimisers and learning-rate schedules, each choice list next to the code that builds it.

`Schedule` is the one place that knows when the learning rate moves: after every batch (one-cycle, or any
schedule with a warm-up, which ramps per iteration), after every epoch, or on the validation metric
(plateau). The training loop calls `batch_done()` and `epoch_done(metric)` and never asks which.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from runtime import ConfigError

if TYPE_CHECKING:  # annotations only: config.py imports the choice lists below
    from config import Config

OPTIMIZERS = ("sgd", "adam", "adamw")
# name -> (scheduler, steps of `unit` optimizer steps); milestones, step_size and T_max count epochs.
SCHEDULERS = {
    "multistep": lambda opt, s, epochs, unit: torch.optim.lr_scheduler.MultiStepLR(
        opt, [(m - s.warmup_epochs) * unit for m in s.milestones], gamma=s.gamma),
    "step": lambda opt, s, epochs, unit: torch.optim.lr_scheduler.StepLR(opt, s.step_size * unit, gamma=s.gamma),
    "exponential": lambda opt, s, epochs, unit: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma ** (1 / unit)),
    "cosine": lambda opt, s, epochs, unit: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, (epochs - s.warmup_epochs) * unit), eta_min=s.min_lr),
    "none": lambda opt, s, epochs, unit: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
    # Built in build_schedule: they do not follow the epoch-or-step pattern above.
    "plateau": None,  # the paper: divide by 10 when validation accuracy stops improving
    "onecycle": None,  # OneCycleLR up to optim.lr and down again, stepped per iteration
}


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; the classifier gets lr * head_lr_mult; frozen params skipped."""
    o = cfg.optim
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1  # weights of conv/linear; not biases or norm affine parameters
        head = name.startswith("head.classifier.")
        groups.setdefault((decay, head), []).append(p)
    if not groups:
        raise ConfigError("model.freeze froze every layer; nothing is left to train")
    param_groups = [{"params": ps, "weight_decay": o.weight_decay if decay else 0.0,
                     "lr": o.lr * (o.head_lr_mult if head else 1.0)} for (decay, head), ps in groups.items()]
    if o.name == "sgd":
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               foreach=True)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
    return opt_cls(param_groups, lr=o.lr, betas=tuple(o.betas), foreach=True)


class Schedule:
    """A torch LR scheduler and when to step it: "step" (every batch), "epoch" or "metric" (plateau)."""

    def __init__(self, scheduler, every: str):
        assert every in ("step", "epoch", "metric"), every
        self.scheduler, self.every = scheduler, every

    def batch_done(self) -> None:
        if self.every == "step":
            self.scheduler.step()

    def epoch_done(self, metric: float) -> None:
        if self.every == "epoch":
            self.scheduler.step()
        elif self.every == "metric":
            self.scheduler.step(metric)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_schedule(opt: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> Schedule:
    """The run's LR schedule. Without a warm-up it steps per epoch, exactly as the seed's MultiStepLR did;
    a warm-up ramps linearly from lr/10 over every iteration of its epochs, and the schedule after it then
    steps per iteration too (milestones land on the same epochs, cosine and exponential decay smoothly)."""
    s, epochs = cfg.sched, cfg.train.epochs
    S = torch.optim.lr_scheduler
    if s.name == "plateau":
        return Schedule(S.ReduceLROnPlateau(opt, mode="max", factor=s.gamma, patience=s.patience, min_lr=s.min_lr),
                        "metric")
    if s.name == "onecycle":
        return Schedule(S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                     total_steps=epochs * steps_per_epoch, pct_start=s.onecycle_warmup), "step")
    if not s.warmup_epochs:
        return Schedule(SCHEDULERS[s.name](opt, s, epochs, 1), "epoch")
    warm_steps = s.warmup_epochs * steps_per_epoch
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=warm_steps)
    main = SCHEDULERS[s.name](opt, s, epochs, steps_per_epoch)
    return Schedule(S.SequentialLR(opt, [warm, main], milestones=[warm_steps]), "step")


# Schedules whose plan depends on train.epochs: a resume that changes the length re-plans them.
LENGTH_DEPENDENT = ("cosine", "onecycle")


def continue_schedule(opt: torch.optim.Optimizer, cfg: Config, from_epoch: int, last_lr: float | None) -> Schedule:
    """The schedule of a run whose length a resume changed after epoch `from_epoch`: a cosine, per epoch,
    from the lr its last epoch trained at down towards sched.min_lr at the new end. So the lr never rises
    and no epoch trains at min_lr (a finished cosine ends at it). `last_lr` (group 0's) re-plans from
    that lr; None rebuilds an earlier re-plan, whose state the caller then loads."""
    if last_lr is not None:
        scale = last_lr / opt.param_groups[0]["initial_lr"]  # every group keeps its ratio (head_lr_mult)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"] = g["initial_lr"] * scale
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs - from_epoch,
                                                       eta_min=cfg.sched.min_lr)
    return Schedule(sched, "epoch")


def current_lr(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]
