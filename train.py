"""Train an AlexNet-family model: `python train.py --config configs/cifar10_dropout.yaml [key=value ...]`.

Reads top to bottom: the run's pieces (runtime, model and optimiser, the checkpoint pair that saves and
restores them), logging, one epoch, validation, the end of an epoch, and `train()`, which strings those
steps together. `train(cfg, trial=None, resume=None)` is importable (sweep.py calls it) and returns the
same dict that the script prints as its last stdout line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from config import (Config, ConfigError, experiment_hparams, load_config, parse_command_line, recipe_changes,
                    save_config, to_dict)
from data import (DataBundle, batches_per_epoch, centre_crop, iterate, load_data, prepare, train_augment,
                  train_batches)
from evaluate import predict, score
from health import PROBE_IMAGES, LayerHealth, conv1_weight, filter_grid, tags
from models import AlexNet, build_model, count_params
from optim import LENGTH_DEPENDENT, Schedule, build_optimizer, build_schedule, continue_schedule, current_lr
from runtime import (CKPT_FORMAT, CheckpointError, OutputError, TrainingDiverged, autocast, cli, hardware,
                     init_distributed, load_checkpoint, make_dir, mix_seed, precision_name, process_uptime,
                     remove_stale_temps, resolve_amp, resolve_device, save_checkpoint, sync, tune_cpu_allocator,
                     write_text)

DIVERGE_FIX = "lower optim.lr or add sched.warmup_epochs"  # the advice every divergence message gives


# ---------------------------------------------------------------------------------------------
# The run's pieces

@dataclass
class Runtime:
    """Where and how this process trains."""
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None = fp32
    rank: int = 0
    world: int = 1
    startup_s: float | None = None  # process start -> first training step (set when it begins)

    @property
    def is_main(self) -> bool:  # only rank 0 logs and writes checkpoints
        return self.rank == 0

    def describe(self) -> dict:
        return {"hardware": hardware(self.device, self.world), "precision": precision_name(self.amp)}


def start_runtime(cfg: Config) -> Runtime:
    """Join torchrun's process group if there is one; pick device and precision; tune the allocator."""
    rank, world = init_distributed(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and cfg.train.malloc_tune:
        tune_cpu_allocator()
    return Runtime(device, resolve_amp(cfg.train.amp, device), rank, world)


def apply_freeze(model: AlexNet, names: list[str]) -> list[nn.Module]:
    """Freeze named layers (no grad); returns the frozen modules so the loop keeps their norms in eval."""
    frozen = [model.layer(n) for n in names]
    # A frozen conv takes its normalisation layer along (BatchNorm statistics included).
    frozen += [getattr(model.features, f"norm{n[4:]}") for n in names
               if n.startswith("conv") and hasattr(model.features, f"norm{n[4:]}")]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def init_from_checkpoint(model: AlexNet, path: str) -> list[str]:
    """Copy weights from another run's checkpoint; re-initialise only a classifier of different shape."""
    src = load_checkpoint(path)["model"]
    own = model.state_dict()
    reinit = []
    for key, value in own.items():
        if key not in src:
            raise CheckpointError(f"model.init_from: {path} has no `{key}`; the architectures differ")
        if src[key].shape != value.shape:
            if not key.startswith("head.classifier."):
                raise CheckpointError(f"model.init_from: layer `{key}` is {tuple(src[key].shape)} in {path} "
                                      f"but {tuple(value.shape)} here; only the classifier may change shape")
            reinit.append(key)
            continue
        own[key] = src[key]
    model.load_state_dict(own)
    return reinit


@dataclass
class Trainer:
    """What one run trains with."""
    model: AlexNet  # the plain model: what checkpoints save and validation runs
    step_model: nn.Module  # what training steps call: the model, or its DDP / compiled wrapper
    frozen: list[nn.Module]
    opt: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    health: LayerHealth | None = None  # per-layer diagnostics (rank 0, train.diagnostics)


def build_trainer(cfg: Config, num_classes: int, image_size: int, n_train: int, rt: Runtime,
                  transfer: bool = True) -> Trainer:
    """Model (optionally initialised from another run's weights), optimiser, schedule, scaler and loss.
    bench.py times exactly this. The model is wrapped for DDP/compile later, by `parallelise`."""
    model = build_model(cfg.model, num_classes, image_size).to(rt.device)
    if cfg.model.init_from and transfer:
        reinit = init_from_checkpoint(model, cfg.model.init_from)
        print(f"initialised from {cfg.model.init_from}; re-initialised: {', '.join(reinit) or 'nothing'}")
    frozen = apply_freeze(model, cfg.model.freeze)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    schedule = build_schedule(opt, cfg, batches_per_epoch(n_train, cfg.data.batch_size * rt.world))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16)  # a no-op unless fp16
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    return Trainer(model, model, frozen, opt, schedule, scaler, criterion)


def probe_batch(cfg: Config, data: DataBundle, rt: Runtime) -> torch.Tensor:
    """The fixed images layer health is measured on: the first validation (else training) images, un-augmented."""
    ds = data.val if len(data.val.labels) else data.train
    idx = torch.arange(min(PROBE_IMAGES, len(ds.labels)))
    xb, _ = next(iter(iterate(ds, [idx], cfg.data, rt.device, False)))
    return prepare(centre_crop(xb, data.image_size), data.stats, channels_last=cfg.train.channels_last)


def parallelise(tr: Trainer, cfg: Config, rt: Runtime, start_epoch: int) -> None:
    """Wrap the model for training steps: DDP across ranks, then torch.compile if asked."""
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        tr.step_model = DistributedDataParallel(tr.model, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                                else None)
        torch.manual_seed(mix_seed(cfg.seed, 7919 * rt.rank + start_epoch))  # distinct dropout streams per rank
    if cfg.train.compile:
        tr.step_model = torch.compile(tr.step_model)


@dataclass
class Progress:
    """Where a run is: advanced every epoch, saved in every checkpoint."""
    epoch: int = 0  # last finished epoch
    step: int = 0  # optimizer steps so far
    best: float = -1.0  # best validation top-1 (training top-1 without a validation split)
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one metrics row per epoch
    replanned_at: int = 0  # the epoch after which a resume that changed train.epochs re-planned the schedule


# What a checkpoint saves and what resume restores, side by side. config, classes, stats and image_size
# are not restored here: main() builds the config from the checkpoint, train() checks the classes, and
# evaluate.py rebuilds the model and normalisation from them.
def checkpoint_state(cfg: Config, tr: Trainer, p: Progress, data: DataBundle, device: torch.device) -> dict:
    return {
        "format": CKPT_FORMAT, "model": tr.model.state_dict(), "optimizer": tr.opt.state_dict(),
        "scheduler": tr.schedule.state_dict(), "scaler": tr.scaler.state_dict(),
        "epoch": p.epoch, "step": p.step, "best_val_top1": p.best, "best_epoch": p.best_epoch, "history": p.history,
        "replanned_at": p.replanned_at,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "config": to_dict(cfg), "classes": data.train.classes, "stats": data.stats.state(),
        "image_size": data.image_size,
    }


def restore_state(tr: Trainer, ckpt: dict, path: str, cfg: Config, device: torch.device) -> Progress:
    """The inverse of checkpoint_state. A length-dependent schedule (cosine, onecycle) of a run that this
    resume extends or shortens is re-planned from the lr of its last epoch (optim.continue_schedule)."""
    try:
        tr.model.load_state_dict(ckpt["model"])
        p = Progress(ckpt["epoch"], ckpt["step"], ckpt["best_val_top1"], ckpt["best_epoch"], list(ckpt["history"]),
                     ckpt.get("replanned_at", 0))
        replan = cfg.train.epochs != ckpt["config"]["train"]["epochs"] and cfg.sched.name in LENGTH_DEPENDENT
        if p.replanned_at and not replan:  # the re-planned schedule, rebuilt to take its saved state
            tr.schedule = continue_schedule(tr.opt, cfg, p.replanned_at, None)
        tr.opt.load_state_dict(ckpt["optimizer"])
        if replan:
            p.replanned_at = p.epoch
            tr.schedule = continue_schedule(tr.opt, cfg, p.epoch, p.history[-1]["lr"])
        else:
            tr.schedule.load_state_dict(ckpt["scheduler"])
        tr.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} does not fit the model/optimizer built from its config "
                              f"({str(e).splitlines()[0][:160]}); resume without changing model.* or optim.name"
                              ) from None
    return p


def check_resume(ckpt: dict, cfg: Config, path: str) -> None:
    """A resume continues the same run: refuse (before anything is written) a change to what it computes."""
    refused = recipe_changes(ckpt["config"], cfg)
    if refused:
        said = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(f"--resume continues the same run and would change what it computes ({said}); "
                          f"start a new run instead, e.g. python train.py --config {os.path.dirname(path)}/config.yaml "
                          f"{' '.join(f'{k}={new}' for k, (_, new) in refused.items())} run_dir=NEW_DIR "
                          f"(add model.init_from={path} to start from its weights)")
    if cfg.train.epochs != ckpt["config"]["train"]["epochs"] and cfg.train.epochs <= ckpt["epoch"]:
        raise ConfigError(f"train.epochs={cfg.train.epochs} but the run has already trained {ckpt['epoch']} epochs; "
                          "pass a larger train.epochs to extend it")


# ---------------------------------------------------------------------------------------------
# Logging: run folder, TensorBoard, metrics.jsonl, the console

@dataclass
class RunLog:
    run_dir: str
    writer: object | None  # SummaryWriter on rank 0, None elsewhere

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)


def check_run_dir_is_free(cfg: Config) -> None:
    """A new run never writes into a folder that holds another run: its metrics would mix two runs' curves
    and its checkpoints would be overwritten."""
    held = [f for f in ("metrics.jsonl", "last.pt") if cfg.run_dir and os.path.exists(os.path.join(cfg.run_dir, f))]
    if held:
        raise ConfigError(f"run_dir {cfg.run_dir} already holds a run ({held[0]}); continue it with --resume "
                          f"{os.path.join(cfg.run_dir, 'last.pt')}, or give this run another run_dir")


def make_run_dir(cfg: Config) -> str:
    if cfg.run_dir:
        return make_dir(cfg.run_dir)
    base = os.path.join(make_dir(cfg.out_dir), f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    return make_dir(path)


# The Custom Scalars tab opens on what a comparison needs: validation curves, and train vs validation top-1
# (the generalisation gap) on one chart per run.
SCALARS_LAYOUT = {
    "validation": {"top-1": ["Multiline", ["val/top1"]], "top-5": ["Multiline", ["val/top5"]],
                   "loss": ["Multiline", ["val/loss"]]},
    "generalisation gap": {"train vs validation top-1": ["Multiline", ["train/top1", "val/top1"]],
                           "train vs validation loss": ["Multiline", ["train/loss", "val/loss"]]},
}


def open_tensorboard(run_dir: str, cfg: Config, rt: Runtime, trial, purge_step: int | None):
    """SummaryWriter in the run folder itself (so `--logdir runs` compares runs). A new run records its
    hparams (the experiment's axes) as an HParams session; no experiment summary is written, so TensorBoard
    builds one over all runs and lists first the keys whose values differ between them."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(run_dir, purge_step=purge_step)
    if purge_step is None:
        values = experiment_hparams(cfg, tuple(trial.params) if trial is not None else ())
        values["precision"] = rt.describe()["precision"]
        _, session_start, _ = hparams(values, {})
        writer.file_writer.add_summary(session_start)
        writer.add_custom_scalars(SCALARS_LAYOUT)
    return writer


def log_result(log: RunLog, p: Progress) -> None:
    """A finished run's HParams metrics and session end. A pruned, failed or interrupted run has neither, so
    the table shows its result columns blank instead of a partial value that looks like a result."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    final, e = p.history[-1], p.history[-1]["epoch"]
    if "val_top1" in final:
        for tag, value in (("best_val_top1", p.best), ("final_val_top1", final["val_top1"]),
                           ("final_val_top5", final["val_top5"]), ("final_val_loss", final["val_loss"]),
                           ("best_epoch", p.best_epoch)):
            log.writer.add_scalar(f"hparams/{tag}", value, e)
    end = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()), version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                   content=end.SerializeToString()))
    log.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                                                    metadata=meta)]), e)
    log.writer.flush()


def trim_metrics(path: str, epoch: int) -> None:
    """Keep the metrics lines of epochs up to `epoch`: later ones (written before a crash, which the resumed
    run repeats) and a line torn by the crash go."""
    if not os.path.isfile(path):
        return

    def kept(line: str) -> bool:
        try:
            return json.loads(line)["epoch"] <= epoch
        except (ValueError, KeyError, TypeError):
            return False

    with open(path) as f:
        lines = [ln if ln.endswith("\n") else ln + "\n" for ln in f if kept(ln)]
    write_text(path, "".join(lines))


def open_run(cfg: Config, rt: Runtime, trial, resumed_epoch: int | None) -> RunLog:
    """Rank 0: the run folder with its config.yaml, metrics.jsonl cut back to a resumed epoch, TensorBoard."""
    if not rt.is_main:
        return RunLog("", None)
    run_dir = make_run_dir(cfg)
    remove_stale_temps(run_dir)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    if resumed_epoch is not None:
        trim_metrics(os.path.join(run_dir, "metrics.jsonl"), resumed_epoch)
    purge = resumed_epoch + 1 if resumed_epoch is not None else None
    return RunLog(run_dir, open_tensorboard(run_dir, cfg, rt, trial, purge_step=purge))


def log_health(log: RunLog, tr: Trainer, epoch: int) -> None:
    """layers/* as measured after the epoch's last step (x = epoch, like every other curve) and the conv1
    filters; for epoch 1 also every measurement against its step, in RUN/first_epoch/ (its own event file:
    a resume's purge of the run's later epochs never reaches it, and no resume re-runs epoch 1)."""
    from torch.utils.tensorboard import SummaryWriter

    for tag, v in tags(tr.health.history[-1][1]).items():
        log.writer.add_scalar(tag, v, epoch)
    log.writer.add_image("filters/conv1", filter_grid(conv1_weight(tr.model), scale=4), epoch)
    if epoch == 1:
        with SummaryWriter(log.path("first_epoch")) as w:
            for step, layers in tr.health.history:
                for tag, v in tags(layers).items():
                    w.add_scalar(tag, v, step)


def log_epoch(log: RunLog, row: dict, epochs: int) -> None:
    e, writer = row["epoch"], log.writer
    writer.add_scalar("train/loss", row["train_loss"], e)
    writer.add_scalar("train/top1", row["train_top1"], e)
    writer.add_scalar("lr", row["lr"], e)
    writer.add_scalar("perf/img_per_s", row["img_per_s"], e)
    writer.add_scalar("perf/epoch_s", row["epoch_s"], e)
    for k in ("loss", "top1", "top5"):
        if f"val_{k}" in row:
            writer.add_scalar(f"val/{k}", row[f"val_{k}"], e)
    writer.flush()
    try:
        with open(log.path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise OutputError(f"cannot append to {log.path('metrics.jsonl')}: {e.strerror}; free some space and resume "
                          "with train.py --resume RUN_DIR/last.pt (earlier checkpoints are intact)") from None
    val = (f"val loss {row['val_loss']:.3f} top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f}"
           if "val_top1" in row else "no validation split")
    print(f"epoch {e}/{epochs}  train loss {row['train_loss']:.3f} top1 {row['train_top1']:.4f} | {val} | "
          f"lr {row['lr']:.3g} | {row['img_per_s']:.0f} img/s, {row['epoch_s']:.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# One epoch of training

def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, criterion: nn.Module, device: torch.device, amp: torch.dtype | None,
               grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (forward and loss under autocast); returns the detached loss and logits. No host sync."""
    with autocast(device, amp):
        logits = model(x)  # (B, num_classes)
        loss = criterion(logits, y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)  # clip the true gradients, not the fp16-scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss.detach(), logits.detach()


def check_finite(bad_step: torch.Tensor, epoch: int, opt: torch.optim.Optimizer) -> None:
    """Raise TrainingDiverged if any step so far produced a non-finite loss (one host sync)."""
    s = int(bad_step.item())
    if s >= 0:
        raise TrainingDiverged(f"loss became NaN/inf at step {s} (epoch {epoch}, lr={current_lr(opt):.3g}); "
                               "lower optim.lr, try model.init=paper or kaiming, or add sched.warmup_epochs; "
                               "checkpoints from earlier epochs are intact")


def epoch_batches(cfg: Config, data: DataBundle, rt: Runtime, gen: torch.Generator, epoch: int):
    """One epoch's (uint8 images, labels) batches on the device, and how many there are.

    data.batch_size is per rank: every rank draws the same global batch (same generator), augments all of
    it and trains on its slice (see train_one_epoch), so N ranks see exactly what one process with N x the
    batch would. Streaming workers decode only this rank's slice."""
    batches = train_batches(len(data.train.labels), cfg.data.batch_size * rt.world, gen, rt.device)
    if data.train.images is None and rt.world > 1:
        batches = [b.tensor_split(rt.world)[rt.rank] for b in batches]
    return iterate(data.train, batches, cfg.data, rt.device, True, mix_seed(cfg.seed, epoch)), len(batches)


def health_due(cfg: Config, epoch: int, i: int, n_batches: int) -> bool:
    """Measure layer health after the last step of every epoch, and every train.diagnostics_every steps of
    epoch 1, where AlexNet's collapses happen."""
    every = cfg.train.diagnostics_every
    return i + 1 == n_batches or (epoch == 1 and every > 0 and (i + 1) % every == 0)


def train_one_epoch(cfg: Config, tr: Trainer, data: DataBundle, rt: Runtime, p: Progress, epoch: int) -> dict:
    """Train one epoch; returns its metrics row (training half). Syncs with the host every train.log_every steps."""
    tr.model.train()
    for m in tr.frozen:  # frozen layers keep their normalisation statistics too
        m.eval()
    gen = torch.Generator(device=rt.device).manual_seed(mix_seed(cfg.seed, epoch))
    streamed = data.train.images is None
    aug = train_augment(cfg.data, streamed)
    batches, n_batches = epoch_batches(cfg, data, rt, gen, epoch)
    loss_sum, correct, seen = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device), 0
    bad_step = torch.full((), -1, dtype=torch.long, device=rt.device)  # first non-finite step, without syncs
    sync(rt.device)
    t0 = time.perf_counter()
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, file=sys.stderr,
               disable=not (cfg.train.progress and rt.is_main), dynamic_ncols=True)
    for i, (xb, y) in enumerate(bar):
        if rt.startup_s is None:
            rt.startup_s = process_uptime()
        x = prepare(xb, data.stats, aug, gen, cfg.train.channels_last)
        if rt.world > 1 and not streamed:  # augmented as one global batch, so the random draws match
            x, y = x.tensor_split(rt.world)[rt.rank], y.tensor_split(rt.world)[rt.rank]
        measured = tr.health is not None and health_due(cfg, epoch, i, n_batches)
        if measured:
            tr.health.snapshot()
            grad_scale = tr.scaler.get_scale() if tr.scaler.is_enabled() and not cfg.optim.grad_clip else 1.0
        loss, logits = train_step(tr.step_model, x, y, tr.opt, tr.scaler, tr.criterion, rt.device, rt.amp,
                                  cfg.optim.grad_clip)
        tr.schedule.batch_done()
        p.step += 1
        if measured:
            tr.health.measure(p.step, grad_scale)
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), p.step, bad_step)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if (i + 1) % cfg.train.log_every == 0 or i + 1 == n_batches:
            check_finite(bad_step, epoch, tr.opt)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    check_finite(bad_step, epoch, tr.opt)
    if rt.world > 1:  # epoch metrics over all ranks
        totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=rt.device)])
        dist.all_reduce(totals)
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
    sync(rt.device)
    train_s = time.perf_counter() - t0
    return {"epoch": epoch, "step": p.step, "lr": current_lr(tr.opt), "train_loss": loss_sum.item() / max(seen, 1),
            "train_top1": correct.item() / max(seen, 1), "img_per_s": seen / train_s, "train_s": train_s,
            **rt.describe()}


# ---------------------------------------------------------------------------------------------
# Validation and the end of an epoch

def collapsed(logits: torch.Tensor) -> bool:
    """True when every image gets the same logits up to float rounding (batches of different sizes take
    different GEMM paths): the run is at chance. cifar10_best seed 1 (lr 0.1, no BatchNorm) got there in
    epoch 1 (3e-5 of the logits' size) and was still there at epoch 2; a healthy network's logits vary
    across images by about their size (8.1 on 5.6 for seed 2 after one epoch). Only a warning, because
    paper init starts close to here (1e-4 at initialisation), so an early flag alone does not prove a run
    is stuck."""
    spread = (logits.amax(0) - logits.amin(0)).max()
    return bool(spread <= 1e-3 * logits.abs().max())


def collapse_cause(tr: Trainer, cfg: Config) -> str:
    """'; first to break: conv3: 100% dead units since step 40 (lr 0.1, init kaiming)', or '' unmeasured."""
    why = tr.health.first_broken() if tr.health is not None else None
    return f"; first to break: {why} (lr {cfg.optim.lr:g}, init {cfg.model.init})" if why else ""


def validate(cfg: Config, tr: Trainer, data: DataBundle, rt: Runtime, epoch: int) -> dict:
    """The validation half of the epoch's row (empty without a validation split)."""
    if not len(data.val.labels):
        return {}
    logits = predict(tr.model, data.val, data.stats, cfg.data, rt.device, rt.amp, cfg.train.channels_last)
    v = score(logits, data.val.labels)
    if not math.isfinite(v["loss"]):
        raise TrainingDiverged(f"validation loss is {v['loss']} after epoch {epoch} "
                               f"(lr={current_lr(tr.opt):.3g}): {DIVERGE_FIX}")
    row = {"val_loss": v["loss"], "val_top1": v["top1"], "val_top5": v["top5"]}
    if len(logits) > 1 and collapsed(logits):  # a warning, not an error: see collapsed()
        row["collapsed"] = True
        if rt.is_main and not cfg.train.stop_on_collapse:
            print(f"warning: epoch {epoch}: every validation image gets the same logits (val top-1 "
                  f"{v['top1']:.4f}){collapse_cause(tr, cfg)}; if this persists, stop and {DIVERGE_FIX}",
                  file=sys.stderr, flush=True)
    return row


def end_epoch(cfg: Config, tr: Trainer, p: Progress, row: dict, data: DataBundle, rt: Runtime, log: RunLog,
              trial=None) -> None:
    """Record the epoch, step the schedule, save last.pt (and best.pt), and let Optuna prune."""
    metric = row.get("val_top1", row["train_top1"])
    is_best = metric > p.best
    if is_best:
        p.best, p.best_epoch = metric, row["epoch"]
    tr.schedule.epoch_done(metric)
    p.epoch = row["epoch"]
    p.history.append(row)
    if rt.is_main:  # a collapsed epoch is logged too: it is the run's result
        if tr.health is not None:
            log_health(log, tr, row["epoch"])
        log_epoch(log, row, cfg.train.epochs)
    if row.get("collapsed") and cfg.train.stop_on_collapse:  # before saving: last.pt keeps the epoch before
        raise TrainingDiverged(f"the network collapsed in epoch {p.epoch}: every validation image gets the "
                               f"same logits (val top-1 {row['val_top1']:.4f}){collapse_cause(tr, cfg)}; "
                               f"{DIVERGE_FIX}; earlier checkpoints are intact")
    if rt.is_main:
        state = checkpoint_state(cfg, tr, p, data, rt.device)
        if is_best and cfg.train.save_best:
            save_checkpoint(state, log.path("best.pt"))
        save_checkpoint(state, log.path("last.pt"))
    if trial is not None:
        trial.report(metric, p.epoch)
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {p.epoch} at validation top-1 {metric:.4f}")


def summary(cfg: Config, p: Progress, log: RunLog, rt: Runtime, wall_s: float) -> dict:
    """What train() returns and the CLI prints."""
    final = p.history[-1] if p.history else {}
    best_path, last_path = log.path("best.pt"), log.path("last.pt")
    return {
        "run_dir": log.run_dir,
        "best_val_top1": p.best if "val_top1" in final else None,
        "final_val_top1": final.get("val_top1"),
        "final_val_top5": final.get("val_top5"),
        "best_epoch": p.best_epoch,
        "epochs": final.get("epoch", p.epoch),
        "best_checkpoint": best_path if cfg.train.save_best and os.path.exists(best_path) else last_path,
        "last_checkpoint": last_path,
        "train_img_per_s": sum(r["img_per_s"] for r in p.history[-3:]) / max(1, len(p.history[-3:])),
        "wall_s": wall_s,
        "startup_s": rt.startup_s,
    }


# ---------------------------------------------------------------------------------------------
# The run

def train(cfg: Config, trial=None, resume: str | None = None) -> dict:
    """Train per `cfg` (continuing `resume` if given); returns the summary dict printed by the CLI.

    `trial` is an optuna.Trial: validation top-1 is reported every epoch and TrialPruned raised on request.
    """
    t_start = time.perf_counter()
    rt = start_runtime(cfg)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        cfg.run_dir = os.path.dirname(os.path.abspath(resume))
        check_resume(ckpt, cfg, resume)
    else:
        check_run_dir_is_free(cfg)
    torch.manual_seed(cfg.seed)

    data = load_data(cfg.data, rt.device)
    classes = data.train.classes
    if ckpt is not None and list(ckpt["classes"]) != classes:
        raise CheckpointError(f"{resume} was trained on classes {ckpt['classes'][:5]}..., the data has "
                              f"{classes[:5]}...; point data.* at the dataset the run used")
    tr = build_trainer(cfg, len(classes), data.image_size, len(data.train.labels), rt, transfer=ckpt is None)
    p = restore_state(tr, ckpt, resume, cfg, rt.device) if ckpt is not None else Progress()
    parallelise(tr, cfg, rt, p.epoch)
    if rt.is_main and cfg.train.diagnostics:
        tr.health = LayerHealth(tr.model, probe_batch(cfg, data, rt))
    log = open_run(cfg, rt, trial, p.epoch if ckpt is not None else None)
    if rt.is_main:
        m = rt.describe()
        print(f"run {log.run_dir}: {cfg.data.name} {len(data.train.labels)} train / {len(data.val.labels)} val "
              f"images of {data.image_size}px, {len(classes)} classes; {count_params(tr.model, True):,} trainable "
              f"of {count_params(tr.model):,} params; {m['hardware']}, {m['precision']}", flush=True)

    try:
        for epoch in range(p.epoch + 1, cfg.train.epochs + 1):
            row = train_one_epoch(cfg, tr, data, rt, p, epoch)
            t_val = time.perf_counter()
            row.update(validate(cfg, tr, data, rt, epoch))
            row["epoch_s"] = row["train_s"] + time.perf_counter() - t_val
            end_epoch(cfg, tr, p, row, data, rt, log, trial)
        if log.writer is not None and p.history:
            log_result(log, p)
    except KeyboardInterrupt:  # carries the checkpoint to continue from, for main()'s message
        raise KeyboardInterrupt(log.path("last.pt")) from None
    finally:
        if log.writer is not None:
            log.writer.close()
    return summary(cfg, p, log, rt, time.perf_counter() - t_start)


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train an AlexNet-family model.")
    ap.add_argument("--config", help="YAML experiment config (see configs/)")
    ap.add_argument("--resume", metavar="CKPT", help="continue the run that wrote this last.pt")
    ap.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="dotted overrides, e.g. optim.lr=0.01")
    args = parse_command_line(ap, argv)
    try:
        return cli(lambda: run_cli(args))
    except KeyboardInterrupt as e:
        last = e.args[0] if e.args else None
        print(f"interrupted; continue with: python train.py --resume {last}" if last and os.path.isfile(last)
              else "interrupted before the first epoch was saved; there is nothing to resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run_cli(args) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--resume takes the config from the checkpoint; pass changes as key=value")
        cfg = load_config(base=load_checkpoint(args.resume)["config"], overrides=args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
