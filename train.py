"""Train an AlexNet-family model: `python train.py --config configs/cifar10_dropout.yaml [key=value ...]`.

Reads top to bottom in pipeline order: device and precision, data, model, optimizer and schedule,
checkpoints, the loop. `train(cfg, trial=None)` is importable (sweep.py calls it) and returns the same
dict that the script prints as its last stdout line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from config import Config, ConfigError, DataConfig, load_config, save_config, to_dict
from data import (DataBundle, DataError, ImageSet, Stats, centre_crop, device_augmentation, image_size, iterate,
                  load_data, prepare, train_batches)
from models import AlexNet, build_model, count_params

CKPT_FORMAT = "alexnet-lab/1"
DIVERGE_FIX = "lower optim.lr or add sched.warmup_epochs"  # the advice every divergence message gives


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, foreign or incompatible."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; checkpoints written before it are intact."""


# ---------------------------------------------------------------------------------------------
# Device and precision

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA GPU is visible; use device=cpu or device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps was requested but is not available; use device=cpu or device=auto")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; joins the process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), world


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16/AMX; elsewhere bf16 is emulated and far slower than fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def hardware(device: torch.device, world: int) -> str:
    """What a run trained on, kept with every epoch's metrics: speed (and, through bf16, the numbers
    themselves) depends on it, and a run resumed on another machine mixes two."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{world}"
    name = platform.processor() or platform.machine() or "unknown CPU"  # Linux has the full name below
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name}, {torch.get_num_threads()} threads{f' x{world} processes' if world > 1 else ''}, {bf16}"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on this device; None means full fp32."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp: fp16 autocast needs a CUDA device; use train.amp=bf16 or off on "
                              f"{device.type}")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The one precision context used for training, validation, evaluation and benchmarks."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (process-wide; Linux only).

    By default glibc serves every activation-sized tensor with a fresh mmap and returns it on free, so
    each training step page-faults and zero-fills ~1 GB anew; measured ~20% of a CPU step here.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule

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


def build_optimizer(model: AlexNet, cfg: Config) -> torch.optim.Optimizer:
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
    opt_cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return opt_cls(param_groups, lr=o.lr, betas=tuple(o.betas), foreach=True)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config):
    """Per-epoch LR schedule, optionally preceded by a linear warm-up from lr/10."""
    s, epochs = cfg.sched, cfg.train.epochs
    S = torch.optim.lr_scheduler
    if s.name == "plateau":  # the paper: divide by 10 when validation accuracy stops improving
        return S.ReduceLROnPlateau(opt, mode="max", factor=s.gamma, patience=s.patience, min_lr=s.min_lr)
    main = {
        "multistep": lambda: S.MultiStepLR(opt, [m - s.warmup_epochs for m in s.milestones], gamma=s.gamma),
        "step": lambda: S.StepLR(opt, s.step_size, gamma=s.gamma),
        "exponential": lambda: S.ExponentialLR(opt, gamma=s.gamma),
        "cosine": lambda: S.CosineAnnealingLR(opt, T_max=max(1, epochs - s.warmup_epochs), eta_min=s.min_lr),
        "none": lambda: S.LambdaLR(opt, lambda e: 1.0),
    }[s.name]()
    if not s.warmup_epochs:
        return main
    warm = S.LinearLR(opt, start_factor=0.1, total_iters=s.warmup_epochs)
    return S.SequentialLR(opt, [warm, main], milestones=[s.warmup_epochs])


def current_lr(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain dicts (loadable with weights_only=True), written atomically.

def save_checkpoint(state: dict, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Load and sanity-check a checkpoint; every failure is a CheckpointError with a one-line reason."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; pass RUN_DIR/last.pt or RUN_DIR/best.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({reason}); "
                              "use another checkpoint, e.g. the run's best.pt or last.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an alexnet-lab checkpoint (no '{CKPT_FORMAT}' format tag)")
    return ckpt


# ---------------------------------------------------------------------------------------------
# Evaluation (shared with evaluate.py)

@torch.no_grad()
def predict(model: nn.Module, ds: ImageSet, stats: Stats, cfg: DataConfig, device: torch.device,
            amp: torch.dtype | None, channels_last: bool, views=None) -> torch.Tensor:
    """(N, K) float32 logits for an ImageSet; `views(batch)` returns TTA views to average.

    Streamed batches arrive as the centre resize x resize square; without TTA they are centre-cropped.
    """
    model.eval()
    out = []
    size = image_size(cfg)
    for xb, _ in iterate(ds, list(torch.arange(len(ds.labels)).split(cfg.eval_batch_size)), cfg, device, False):
        logits = 0.0
        batches = views(xb) if views else [centre_crop(xb, size)]
        for v in batches:
            with autocast(device, amp):
                logits = logits + model(prepare(v, stats, channels_last=channels_last)).float()
        out.append(logits / len(batches))
    return torch.cat(out) if out else torch.empty(0)


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Cross-entropy loss, top-1 and top-5 accuracy (fractions)."""
    labels = labels.to(logits.device)
    k = min(5, logits.shape[1])
    top = logits.topk(k, 1).indices
    return {"loss": F.cross_entropy(logits, labels).item(),
            "top1": (top[:, 0] == labels).float().mean().item(),
            "top5": (top == labels[:, None]).any(1).float().mean().item()}


# ---------------------------------------------------------------------------------------------
# Logging helpers

def make_run_dir(cfg: Config) -> str:
    if cfg.run_dir:
        os.makedirs(cfg.run_dir, exist_ok=True)
        return cfg.run_dir
    base = os.path.join(cfg.out_dir, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    os.makedirs(path)
    return path


def flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def open_tensorboard(run_dir: str, cfg: Config, purge_step: int | None):
    """SummaryWriter with one hparams record in the run folder itself (so `--logdir runs` compares runs)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(run_dir, purge_step=purge_step)
    if purge_step is None:
        exp, ssi, sei = hparams(flat_hparams(to_dict(cfg)), {"val/top1": 0.0, "val/loss": 0.0, "train/loss": 0.0})
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
    return writer


def trim_metrics(path: str, epoch: int) -> None:
    """Drop metrics lines past `epoch` (written before a crash that the resumed run repeats)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    with open(path, "w") as f:
        f.writelines(lines)


# ---------------------------------------------------------------------------------------------
# The training loop

def train(cfg: Config, trial=None, resume: str | None = None, data: DataBundle | None = None) -> dict:
    """Train per `cfg` (continuing `resume` if given); returns the summary dict printed by the CLI.

    `trial` is an optuna.Trial: validation top-1 is reported every epoch and TrialPruned raised on request.
    `data` lets a caller (bench.py, tests) reuse an already loaded DataBundle.
    """
    t_start = time.perf_counter()
    rank, world = init_distributed(cfg.device)
    is_main = rank == 0
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    amp = resolve_amp(cfg.train.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and cfg.train.malloc_tune:
        tune_cpu_allocator()
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        cfg.run_dir = os.path.dirname(os.path.abspath(resume))
    torch.manual_seed(cfg.seed)

    data = data or load_data(cfg.data, device)
    classes = data.train.classes
    if ckpt is not None and list(ckpt["classes"]) != classes:
        raise CheckpointError(f"{resume} was trained on classes {ckpt['classes'][:5]}..., the data has "
                              f"{classes[:5]}...; point data.* at the dataset the run used")

    model = build_model(cfg.model, len(classes), data.image_size).to(device)
    if cfg.model.init_from and ckpt is None:
        reinit = init_from_checkpoint(model, cfg.model.init_from)
        print(f"initialised from {cfg.model.init_from}; re-initialised: {', '.join(reinit) or 'nothing'}")
    frozen = apply_freeze(model, cfg.model.freeze)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    start_epoch, step, best, best_epoch, history = 0, 0, -1.0, 0, []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{resume} does not fit the model/optimizer built from its config "
                                  f"({str(e).splitlines()[0][:160]}); resume without changing model.* or optim.name") from None
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        best, best_epoch, history = ckpt["best_val_top1"], ckpt["best_epoch"], list(ckpt["history"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    step_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(cfg.seed * 1_000_003 + 7919 * rank + start_epoch)  # distinct dropout streams per rank
    if cfg.train.compile:
        step_model = torch.compile(step_model)

    run_dir = make_run_dir(cfg) if is_main else ""
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    writer = None
    if is_main:  # only rank 0 logs and checkpoints
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        trim_metrics(metrics_path, start_epoch)
        writer = open_tensorboard(run_dir, cfg, purge_step=start_epoch + 1 if ckpt is not None else None)
    n_train, n_val = len(data.train.labels), len(data.val.labels)
    machine = {"hardware": hardware(device, world), "precision": str(amp or torch.float32).removeprefix("torch.")}
    streamed = data.train.images is None
    aug = device_augmentation(cfg.data, streamed)
    if is_main:
        print(f"run {run_dir}: {cfg.data.name} {n_train} train / {n_val} val images of {data.image_size}px, "
              f"{len(classes)} classes; {count_params(model, True):,} trainable of {count_params(model):,} params; "
              f"{machine['hardware']}, {machine['precision']}", flush=True)

    from tqdm import tqdm

    startup_s = None
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, tracked without syncs
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            model.train()
            for m in frozen:  # frozen layers keep their normalisation statistics too
                m.eval()
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)
            # data.batch_size is per rank: every rank draws the same global batch (same generator) and
            # trains on its slice, so N ranks see exactly what one process with N x the batch would.
            batches = train_batches(n_train, cfg.data.batch_size * world, gen, device)
            if streamed and world > 1:  # workers decode only this rank's slice
                batches = [b.tensor_split(world)[rank] for b in batches]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen = 0
            sync(device)
            t0 = time.perf_counter()
            bar = tqdm(iterate(data.train, batches, cfg.data, device, True, cfg.seed * 1_000_003 + epoch),
                       total=len(batches), desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, file=sys.stderr,
                       disable=not (cfg.train.progress and is_main), dynamic_ncols=True)
            for i, (xb, y) in enumerate(bar):
                if i == 0 and epoch == start_epoch + 1:
                    startup_s = process_uptime()  # process start -> first training step begins
                x = prepare(xb, data.stats, aug, gen, cfg.train.channels_last)
                if world > 1 and not streamed:
                    x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
                loss, logits = train_step(step_model, x, y, opt, scaler, criterion, device, amp, cfg.optim.grad_clip)
                step += 1
                bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
                loss_sum += loss * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if (i + 1) % cfg.train.log_every == 0 or i + 1 == len(batches):
                    check_finite(bad_step, epoch, opt)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.close()
            check_finite(bad_step, epoch, opt)
            if world > 1:  # epoch metrics over all ranks
                import torch.distributed as dist

                totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)])
                dist.all_reduce(totals)
                loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
            sync(device)
            train_s = time.perf_counter() - t0
            row = {"epoch": epoch, "step": step, "lr": current_lr(opt), "train_loss": loss_sum.item() / max(seen, 1),
                   "train_top1": correct.item() / max(seen, 1), "img_per_s": seen / train_s, "train_s": train_s, **machine}
            if n_val:
                logits = predict(model, data.val, data.stats, cfg.data, device, amp, cfg.train.channels_last)
                v = score(logits, data.val.labels)
                if not math.isfinite(v["loss"]):
                    raise TrainingDiverged(f"validation loss is {v['loss']} after epoch {epoch} "
                                           f"(lr={current_lr(opt):.3g}): {DIVERGE_FIX}")
                row.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"])
                if len(logits) > 1 and collapsed(logits):  # a warning, not an error: see collapsed()
                    row["collapsed"] = True
                    if is_main and not cfg.train.stop_on_collapse:
                        print(f"warning: epoch {epoch}: every validation image gets the same logits (val top-1 "
                              f"{v['top1']:.4f}); if this persists, stop and {DIVERGE_FIX}",
                              file=sys.stderr, flush=True)
            row["epoch_s"] = time.perf_counter() - t0
            metric = row.get("val_top1", row["train_top1"])
            is_best = metric > best
            if is_best:
                best, best_epoch = metric, epoch
            if cfg.sched.name == "plateau":
                sched.step(metric)
            else:
                sched.step()
            history.append(row)
            if is_main:  # a collapsed epoch is logged too: it is the run's result
                log_epoch(writer, metrics_path, row, cfg.train.epochs)
            if row.get("collapsed") and cfg.train.stop_on_collapse:  # before saving: last.pt keeps the epoch before
                raise TrainingDiverged(f"the network collapsed in epoch {epoch}: every validation image gets the "
                                       f"same logits (val top-1 {row['val_top1']:.4f}); {DIVERGE_FIX}; "
                                       "earlier checkpoints are intact")
            if not is_main:
                continue
            state = {
                "format": CKPT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                "best_val_top1": best, "best_epoch": best_epoch, "history": history, "config": to_dict(cfg),
                "classes": classes, "stats": data.stats.state(), "image_size": data.image_size,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            }
            if is_best and cfg.train.save_best:
                save_checkpoint(state, best_path)
            save_checkpoint(state, last_path)
            if trial is not None:
                trial.report(metric, epoch)
                if trial.should_prune():
                    import optuna

                    raise optuna.TrialPruned(f"pruned after epoch {epoch} at validation top-1 {metric:.4f}")
    finally:
        if writer is not None:
            writer.close()

    final = history[-1] if history else {}
    has_val = "val_top1" in final
    return {
        "run_dir": run_dir,
        "best_val_top1": best if has_val else None,
        "final_val_top1": final.get("val_top1"),
        "final_val_top5": final.get("val_top5"),
        "best_epoch": best_epoch,
        "epochs": final.get("epoch", start_epoch),
        "best_checkpoint": best_path if cfg.train.save_best and os.path.exists(best_path) else last_path,
        "last_checkpoint": last_path,
        "train_img_per_s": sum(r["img_per_s"] for r in history[-3:]) / max(1, len(history[-3:])),
        "wall_s": time.perf_counter() - t_start,
        "startup_s": startup_s,
    }


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


def process_uptime() -> float | None:
    """Seconds since this process started (read from /proc; None where there is no /proc)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def check_finite(bad_step: torch.Tensor, epoch: int, opt: torch.optim.Optimizer) -> None:
    """Raise TrainingDiverged if any step so far produced a non-finite loss (one host sync)."""
    s = int(bad_step.item())
    if s >= 0:
        raise TrainingDiverged(f"loss became NaN/inf at step {s} (epoch {epoch}, lr={current_lr(opt):.3g}); "
                               "lower optim.lr, try model.init=paper or kaiming, or add sched.warmup_epochs; "
                               "checkpoints from earlier epochs are intact")


def collapsed(logits: torch.Tensor) -> bool:
    """True when every image gets the same logits up to float rounding (batches of different sizes take
    different GEMM paths): the run is at chance. cifar10_best seed 1 (lr 0.1, no BatchNorm) got there in
    epoch 1 (3e-5 of the logits' size) and was still there at epoch 2; a healthy network's logits vary
    across images by about their size (8.1 on 5.6 for seed 2 after one epoch). Only a warning, because
    paper init starts close to here (1e-4 at initialisation), so an early flag alone does not prove a run
    is stuck."""
    spread = (logits.amax(0) - logits.amin(0)).max()
    return bool(spread <= 1e-3 * logits.abs().max())


def log_epoch(writer, metrics_path: str, row: dict, epochs: int) -> None:
    e = row["epoch"]
    writer.add_scalar("train/loss", row["train_loss"], e)
    writer.add_scalar("train/top1", row["train_top1"], e)
    writer.add_scalar("lr", row["lr"], e)
    writer.add_scalar("perf/img_per_s", row["img_per_s"], e)
    writer.add_scalar("perf/epoch_s", row["epoch_s"], e)
    for k in ("loss", "top1", "top5"):
        if f"val_{k}" in row:
            writer.add_scalar(f"val/{k}", row[f"val_{k}"], e)
    writer.flush()
    with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    val = (f"val loss {row['val_loss']:.3f} top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f}"
           if "val_top1" in row else "no validation split")
    print(f"epoch {e}/{epochs}  train loss {row['train_loss']:.3f} top1 {row['train_top1']:.4f} | {val} | "
          f"lr {row['lr']:.3g} | {row['img_per_s']:.0f} img/s, {row['epoch_s']:.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train an AlexNet-family model.")
    ap.add_argument("--config", help="YAML experiment config (see configs/)")
    ap.add_argument("--resume", metavar="CKPT", help="continue the run that wrote this last.pt")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.01")
    args = ap.parse_args(argv)
    try:
        if args.resume:
            if args.config:
                raise ConfigError("--resume takes the config from the checkpoint; pass changes as key=value")
            cfg = load_config(base=load_checkpoint(args.resume)["config"], overrides=args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        result = train(cfg, resume=args.resume)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; continue with: python train.py --resume RUN_DIR/last.pt", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
