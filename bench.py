"""Throughput benchmark: our training pipeline against the seed's reference pipeline, side by side.

    python bench.py [--config F] [--steps N] [--json FILE] [key=value ...]

Default: configs/cifar10_best.yaml on the synthetic dataset at CIFAR-10 shape (offline). Ours is exactly
what train.py runs (train.train_step on device-resident data with whole-batch augmentation and the fast
LRN). The reference is the seed's way: per-image PIL transforms through a DataLoader with one worker per
core, nn.LocalResponseNorm, channels-first, autocast, SGD with momentum.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch
from torch import nn

from config import load_config, parse_command_line
from data import load_data, prepare, train_augment, train_batches
from evaluate import predict
from models import LRN, build_model, reference_lrn
from runtime import ConfigError, autocast, cli, cpu_has_native_bf16, hardware, process_uptime, sync
from health import LayerHealth
from train import build_trainer, probe_batch, start_runtime, train_step


EPOCH_IMAGES = 45_000  # a CIFAR-10 training epoch here (50,000 minus the 10% validation split)


def timed_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step after `warmup` untimed steps (device-synchronised)."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return (time.perf_counter() - t0) / steps


def peak_matmul_flops(device: torch.device, n: int = 4096) -> dict:
    """Best measured FLOP/s of an n x n matmul in fp32 and bf16 on this device."""
    out = {}
    dtypes = [torch.float32]
    if device.type == "cuda" or cpu_has_native_bf16():
        dtypes.append(torch.bfloat16)  # emulated bf16 (CPUs without AVX512-BF16) is no peak worth minutes
    for dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[str(dtype).split(".")[-1]] = 2 * n ** 3 / best
    return out


def reference_model(cfg, num_classes: int, image_size: int) -> nn.Module:
    """The same net with the built-in nn.LocalResponseNorm (paper constants mapped), channels-first."""
    model = build_model(cfg.model, num_classes, image_size)
    for name, m in list(model.features.named_children()):
        if isinstance(m, LRN):
            setattr(model.features, name, reference_lrn(m.size, m.alpha, m.beta, m.k))
    return model


def flops_per_image(model: nn.Module, image_size: int, device: torch.device) -> float:
    """Forward + backward FLOPs per image (torch.utils.flop_counter; LRN and pointwise ops count as free)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(8, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


class PILDataset(torch.utils.data.Dataset):
    """The seed's input pipeline: uint8 arrays -> PIL -> per-image torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.numpy(), labels.numpy(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_throughput(cfg, data, device: torch.device, amp_name: str, warmup: int, steps: int) -> float:
    from torchvision import transforms

    size = data.image_size
    tf = transforms.Compose([transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(),
                             transforms.Normalize(data.stats.mean.tolist(), data.stats.std.tolist())])
    ds = PILDataset(data.train.images.cpu(), data.train.labels.cpu(), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                                         num_workers=os.cpu_count() or 1, pin_memory=device.type == "cuda",
                                         persistent_workers=True)
    model = reference_model(cfg, len(data.train.classes), size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp_name]
    crit = nn.CrossEntropyLoss()
    it = iter(loader)

    def step(i: int) -> None:
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = timed_steps(step, warmup, steps, device)
    return cfg.data.batch_size / sec


def bench(cfg, steps: int, warmup: int, reference_amp: str, skip_reference: bool = False) -> dict:
    rt = start_runtime(cfg)
    device, amp = rt.device, rt.amp
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, device)
    if data.train.images is None:
        raise ConfigError("bench.py measures the in-memory pipeline; set data.loader=memory")
    n_classes, size, bs = len(data.train.classes), data.image_size, cfg.data.batch_size
    tr = build_trainer(cfg, n_classes, size, len(data.train.labels), rt, transfer=False)
    model = tr.model
    step_model = torch.compile(model) if cfg.train.compile else model
    aug = train_augment(cfg.data, streamed=False)
    gen = torch.Generator(device=device).manual_seed(0)
    batches: list = []
    startup = {}

    def ours(i: int) -> None:
        if i == 0:
            startup["s"] = process_uptime()  # process start -> first training step begins
        if not batches:
            batches.extend(train_batches(len(data.train.labels), bs, gen, device))
        idx = batches.pop()
        x = prepare(data.train.images[idx], data.stats, aug, gen, cfg.train.channels_last)
        train_step(step_model, x, data.train.labels[idx], tr.opt, tr.scaler, tr.criterion, device, amp,
                   cfg.optim.grad_clip)

    sec = timed_steps(ours, warmup, steps, device)
    # Layer health (train.diagnostics): one measurement = weight snapshot + probe forward with hooks + norms.
    # train.py takes one after every epoch's last step, and every diagnostics_every steps of epoch 1.
    health = LayerHealth(model, probe_batch(cfg, data, rt))
    health_s = timed_steps(lambda i: (health.snapshot(), health.measure(i)), 1, 3, device)
    n_steps = EPOCH_IMAGES // bs
    every = cfg.train.diagnostics_every
    per_epoch1 = 1 + (n_steps // every if every else 0)
    eval_set = data.val if len(data.val.labels) else data.train.subset(torch.arange(2048))
    sync(device)
    t0 = time.perf_counter()
    predict(model, eval_set, data.stats, cfg.data, device, amp, cfg.train.channels_last)
    sync(device)
    eval_img_per_s = len(eval_set.labels) / (time.perf_counter() - t0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the reference runs

    ref = reference_model(cfg, n_classes, size).to(device)
    fpi = flops_per_image(ref, size, device)
    del ref
    peaks = peak_matmul_flops(device)
    peak = max(peaks.values())
    ref_amp = reference_amp if reference_amp != "same" else {torch.bfloat16: "bf16", torch.float16: "fp16",
                                                             None: "off"}[amp]
    ref_ips = None if skip_reference else reference_throughput(cfg, data, device, ref_amp, max(1, warmup // 2),
                                                               max(2, steps // 2))
    img_per_s = bs / sec
    result = {
        "device": hardware(device, 1),  # the same machine line train.py records with every epoch
        "config": cfg.name, "batch_size": bs, "amp": str(amp).replace("torch.", "") if amp else "off",
        "img_per_s": img_per_s, "eval_img_per_s": eval_img_per_s,
        "reference_img_per_s": ref_ips, "reference_amp": ref_amp,
        "speedup": img_per_s / ref_ips if ref_ips else None,
        "flops_per_img": fpi, "peak_flops": peak, "peak_flops_by_dtype": peaks,
        "peak_fraction": img_per_s * fpi / peak,
        "peak_rss_mb": peak_rss_mb, "startup_s": startup.get("s"),
        "diag_s": health_s,
        # Fractions of a CIFAR-10 epoch (45,000 images) at the measured step time.
        "diag_overhead_epoch1": per_epoch1 * health_s / (n_steps * sec),
        "diag_overhead": health_s / (n_steps * sec),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark our training pipeline against the seed's reference.")
    ap.add_argument("--config", default="configs/cifar10_best.yaml")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (reference: half as many)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps")
    ap.add_argument("--reference-amp", choices=["same", "bf16", "fp16", "off"], default="same",
                    help="reference precision; 'same' = what train.amp resolves to here (the seed used bf16, "
                         "which is emulated and ~20x slower on CPUs without AVX512-BF16)")
    ap.add_argument("--no-reference", action="store_true", help="measure our pipeline only")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    args = parse_command_line(ap, argv)
    return cli(lambda: bench_main(args))


def bench_main(args) -> int:
    cfg = load_config(args.config, ["data.name=synthetic", "data.synthetic_size=10000", *args.overrides])
    r = bench(cfg, args.steps, args.warmup, args.reference_amp, args.no_reference)
    for k, v in r.items():
        print(f"{k:>22}  {v:,.3g}" if isinstance(v, float) else f"{k:>22}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
