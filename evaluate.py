"""Score a checkpoint: `python evaluate.py CKPT|RUN_DIR [--split val|train|test] [--tta none|flip|ten_crop] [--json FILE]`
(a run folder scores its best.pt).

`python evaluate.py CKPT --filters` draws the learned conv1 filters (the paper's Figure 3) as conv1_filters.png.
`python evaluate.py CKPT --release OUT.pt` writes the half-precision release of a checkpoint instead:
the weights in fp16 plus what scoring needs (config, classes, normalisation stats), no optimiser state.

Model and data are rebuilt from the checkpoint alone (dotted overrides such as data.root=... allowed).
Prints top-1, top-5, loss and a per-class table, and writes a confusion-matrix PNG beside the checkpoint,
named by split and TTA (confusion_val.png, confusion_val_flip.png).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from torch import nn

from config import DataConfig, is_override, load_config, parse_command_line
from data import ImageSet, Stats, carve, centre_crop, image_size, iterate, load_split, prepare
from models import build_model
from runtime import (CKPT_FORMAT, CheckpointError, DataError, autocast, cli, load_checkpoint, save_figure,
                     resolve_amp, resolve_device, save_checkpoint, write_text)


@torch.no_grad()
def predict(model: nn.Module, ds: ImageSet, stats: Stats, cfg: DataConfig, device: torch.device,
            amp: torch.dtype | None, channels_last: bool, views=None) -> torch.Tensor:
    """(N, K) float32 logits for an ImageSet (training's validation uses it too); `views(batch)` returns
    TTA views to average. Streamed batches arrive as the centre resize x resize square; without TTA they
    are centre-cropped."""
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


def tta_views(mode: str, padding: int, size: int):
    """Batch (B, H, W, 3) uint8 -> list of `size` x `size` views whose logits are averaged; None = centre view."""
    if mode == "none":
        return None

    if mode == "flip":
        return lambda x: [centre_crop(x, size), centre_crop(x, size).flip(2)]

    def ten_crop(x: torch.Tensor) -> list[torch.Tensor]:
        # The paper's four corners + centre, each also flipped. Streamed images arrive larger than the
        # model's input (e.g. 256 for 227) and are cropped directly; in-memory images are stored at the
        # input size, so the crops come from the zero-padded image the model saw in training.
        H, W = size, size
        if x.shape[1] > size:
            xp, p = x, (x.shape[1] - size) // 2
        else:
            p = padding or max(1, H // 8)
            xp = F.pad(x, (0, 0, p, p, p, p))
        crops = [xp[:, dy:dy + H, dx:dx + W] for dy, dx in ((0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p))]
        return crops + [c.flip(2) for c in crops]

    return ten_crop


def evaluation_set(cfg, split: str) -> ImageSet:
    """The validation or training split carved exactly as training carved it, or the dataset's test split."""
    if split == "test":
        return load_split(cfg.data, "test")
    full = load_split(cfg.data, "train")
    tr, va = carve(full, cfg.data)
    if split == "train":  # un-augmented, in eval mode: the other side of the generalisation gap
        return full.subset(tr)
    if len(va) == 0:
        raise DataError("the run has no validation split (data.val_fraction=0); use --split test")
    return full.subset(va)


def evaluate(ckpt_path: str, split: str = "val", tta: str = "none", overrides: list[str] | None = None) -> dict:
    """top1, top5, loss, n, per_class {class: accuracy}, confusion [[count]] for a checkpoint."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = load_config(base=ckpt["config"], overrides=overrides)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.train.amp, device)
    data = evaluation_set(cfg, split)
    classes = list(ckpt["classes"])
    if data.classes != classes:
        raise DataError(f"the {split} data has classes {data.classes[:5]}... but the checkpoint was trained on "
                        f"{classes[:5]}...; point data.root/data.name at the dataset the model was trained on")
    if data.images is not None and data.images.shape[1] != ckpt["image_size"]:
        raise DataError(f"images are {data.images.shape[1]}px but the model was trained on {ckpt['image_size']}px; "
                        f"set data.image_size={ckpt['image_size']}")
    model = build_model(cfg.model, len(classes), ckpt["image_size"]).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path}: weights do not fit the model its config builds "
                              f"({str(e).splitlines()[0][:160]}); do not override model.* when evaluating") from None
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = Stats(**{k: v for k, v in ckpt["stats"].items()}).to(device)
    logits = predict(model, data, stats, cfg.data, device, amp, cfg.train.channels_last,
                     tta_views(tta, cfg.data.crop_padding, ckpt["image_size"])).cpu()
    result = score(logits, data.labels)
    k = len(classes)
    confusion = torch.bincount(data.labels * k + logits.argmax(1), minlength=k * k).reshape(k, k)  # rows: true
    per_class = (confusion.diag().float() / confusion.sum(1).clamp_min(1)).tolist()
    result.update(n=len(data.labels), split=split, tta=tta, per_class=dict(zip(classes, per_class)),
                  confusion=confusion.tolist(), classes=classes)
    return result


RELEASE_KEYS = ("config", "classes", "stats", "image_size", "epoch", "best_val_top1", "best_epoch")


def release(ckpt_path: str, out_path: str) -> dict:
    """Write `ckpt_path`'s model in fp16 with only what evaluation needs; returns the written dict."""
    ckpt = load_checkpoint(ckpt_path)
    # Floating tensors (weights, BatchNorm statistics) halve; integer counters stay as they are.
    model = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out = {"format": CKPT_FORMAT, "model": model, **{k: ckpt[k] for k in RELEASE_KEYS if k in ckpt}}
    save_checkpoint(out, out_path)
    return out


def plot_confusion(result: dict, path: str, title: str = "") -> None:
    """Row-normalised confusion matrix as a small PNG (title prefixed to the split and top-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = torch.tensor(result["confusion"], dtype=torch.float)
    cm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    k = len(result["classes"])
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * min(k, 30), 1.2 + 0.45 * min(k, 30)), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), result["classes"], rotation=90, fontsize=8)
        ax.set_yticks(range(k), result["classes"], fontsize=8)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]:.2f}"[1:] if cm[i, j] < 1 else "1", ha="center", va="center", fontsize=6,
                        color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    tta = "" if result.get("tta", "none") == "none" else f", TTA {result['tta']}"
    ax.set_title(f"{title}{result['split']}{tta} top-1 {result['top1']:.4f} (n={result['n']})", fontsize=10)
    save_figure(fig, path)


def checkpoint_path(path: str) -> str:
    """A checkpoint file as given, or a run folder's best.pt (the epoch a run selects on validation)."""
    if not os.path.isdir(path):
        return path
    best = os.path.join(path, "best.pt")
    if not os.path.isfile(best):
        raise CheckpointError(f"{path} is a folder without best.pt (a run without validation saves only last.pt); "
                              f"pass the checkpoint file, e.g. {os.path.join(path, 'last.pt')}")
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate an alexnet-lab checkpoint.",
                                 usage="%(prog)s CHECKPOINT [key=value ...] [options, in any order]")
    ap.add_argument("overrides", nargs="+", metavar="CHECKPOINT key=value",
                    help="a checkpoint file, or a run folder (scores its best.pt), and dotted overrides in any order")
    ap.add_argument("--split", choices=["val", "train", "test"], default="val",
                    help="val: the run's held-out split (default); train: the images it trained on, "
                         "un-augmented; test: the dataset's test split")
    ap.add_argument("--tta", choices=["none", "flip", "ten_crop"], default="none")
    ap.add_argument("--json", metavar="FILE", help="write the metrics as JSON here")
    ap.add_argument("--release", metavar="OUT", help="write an fp16 copy for release (no optimiser state) and exit")
    ap.add_argument("--filters", action="store_true",
                    help="write the conv1 filters (the paper's Figure 3) as conv1_filters.png beside the checkpoint "
                         "and exit")
    args = parse_command_line(ap, argv)
    paths = [t for t in args.overrides if not is_override(t)]
    if len(paths) != 1:
        ap.error(f"give one checkpoint (a .pt file or a run folder) besides key=value overrides; got "
                 f"{len(paths)}: {' '.join(paths) or 'none'}")
    args.checkpoint = paths[0]
    args.overrides = [t for t in args.overrides if is_override(t)]
    return cli(lambda: release_main(args) if args.release else filters_main(args) if args.filters
               else evaluate_main(args))


def filters_main(args) -> int:
    from health import save_filter_png

    args.checkpoint = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(args.checkpoint)
    weight = ckpt["model"].get("features.conv1.weight")
    if weight is None or weight.dim() != 4 or weight.shape[1] != 3:
        raise CheckpointError(f"{args.checkpoint} has no RGB features.conv1 layer to draw")
    png = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "conv1_filters.png")
    save_filter_png(weight, png, f"{os.path.basename(args.checkpoint)} (epoch {ckpt.get('epoch', '?')}): conv1, "
                                 f"{weight.shape[0]} filters of {weight.shape[2]}x{weight.shape[3]}")
    print(f"conv1 filters: {png}")
    return 0


def release_main(args) -> int:
    args.checkpoint = checkpoint_path(args.checkpoint)
    release(args.checkpoint, args.release)
    print(f"{args.release}: fp16 release of {args.checkpoint} ({os.path.getsize(args.release) / 2**20:.1f} MB)")
    return 0


def evaluate_main(args) -> int:
    args.checkpoint = checkpoint_path(args.checkpoint)
    r = evaluate(args.checkpoint, args.split, args.tta, args.overrides)
    print(f"{args.checkpoint} on {r['split']} (n={r['n']}, tta={r['tta']}): "
          f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
    width = max(len(c) for c in r["classes"])
    for c, acc in r["per_class"].items():
        print(f"  {c:<{width}}  {acc:.4f}")
    if args.json:  # written before the PNG: the scores are the result, the picture is a by-product
        keys = ("top1", "top5", "loss", "n", "split", "tta", "per_class", "confusion")
        write_text(args.json, json.dumps({k: r[k] for k in keys}, indent=1))
    # One file per split and TTA, so `--tta flip` never overwrites the plain view's picture.
    name = f"confusion_{r['split']}" + ("" if r["tta"] == "none" else f"_{r['tta']}")
    png = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"{name}.png")
    plot_confusion(r, png, f"{os.path.basename(args.checkpoint)}: ")
    print(f"confusion matrix: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
