"""Datasets as uint8 tensors on the training device, and whole-batch augmentation (airbench-style).

Every dataset loads to `images` (N, H, W, 3) uint8 (NHWC, so a normalised batch permuted to NCHW is
already channels_last) and `labels` (N,) int64. Training batches are cropped, flipped, lit and
normalised on the device in a handful of batched tensor ops: no PIL, no per-image Python, no workers.
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from runtime import DataError, atomic_write, make_dir, mix_seed, remove_stale_temps

if TYPE_CHECKING:  # annotations only: config.py imports the choice lists below
    from config import DataConfig

LOADERS = ("auto", "memory", "stream")  # data.loader, decided by streaming()
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
SYNTHETIC_CLASSES = ("disk", "square", "triangle", "ring", "cross", "hstripes", "vstripes", "diagonal",
                     "checker", "diamond")
CACHE_VERSION = 1  # bump when the cache format or decoding changes


@dataclass
class ImageSet:
    images: torch.Tensor | None  # (N, H, W, 3) uint8; None when streamed from `files`
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    files: list[str] | None = None  # image paths (streaming loader)

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        if self.images is None:
            return ImageSet(None, self.labels[idx], self.classes, [self.files[i] for i in idx.tolist()])
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def to(self, device) -> "ImageSet":
        if self.images is None:
            return self
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


@dataclass
class Stats:
    """Per-channel statistics of the training split, in [0, 1] pixel units."""
    mean: torch.Tensor  # (3,)
    std: torch.Tensor  # (3,)
    eigval: torch.Tensor  # (3,) RGB covariance eigenvalues (PCA lighting)
    eigvec: torch.Tensor  # (3, 3) columns are eigenvectors

    def to(self, device) -> "Stats":
        return Stats(*(t.to(device) for t in (self.mean, self.std, self.eigval, self.eigvec)))

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "std": self.std.cpu(), "eigval": self.eigval.cpu(), "eigvec": self.eigvec.cpu()}


def image_size(cfg: DataConfig) -> int:
    return cfg.image_size or DATASETS[cfg.name][0]


# ---------------------------------------------------------------------------------------------
# Synthetic data: ten procedurally drawn classes, learnable, deterministic, offline.

def make_synthetic(n: int, size: int, num_classes: int, seed: int) -> ImageSet:
    """n images (balanced over classes) of random-coloured shapes/textures with position, scale and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in (0, 1)
    Y, X = coords[:, None], coords[None, :]  # (S, 1), (1, S)
    out = torch.empty(n, size, size, 3, dtype=torch.uint8)
    for start in range(0, n, 1024):
        lab = labels[start:start + 1024]
        b = lab.numel()
        r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
        cx, cy = (0.3 + 0.4 * r(b))[:, None, None], (0.3 + 0.4 * r(b))[:, None, None]
        rad = (0.18 + 0.14 * r(b))[:, None, None]
        u, v = (X - cx) / rad, (Y - cy) / rad  # (b, S, S) shape-centred coordinates
        freq = (10 + 10 * r(b))[:, None, None]
        phase = (2 * math.pi * r(b))[:, None, None]
        masks = [
            u ** 2 + v ** 2 < 1,  # disk
            torch.maximum(u.abs(), v.abs()) < 0.8,  # square
            (v < 0.8) & (u.abs() < (v + 0.8) * 0.55),  # triangle
            ((u ** 2 + v ** 2) < 1) & ((u ** 2 + v ** 2) > 0.4),  # ring
            ((u.abs() < 0.3) & (v.abs() < 1)) | ((v.abs() < 0.3) & (u.abs() < 1)),  # cross
            torch.sin(Y * freq + phase).expand(b, size, size) > 0,  # horizontal stripes
            torch.sin(X * freq + phase).expand(b, size, size) > 0,  # vertical stripes
            torch.sin((X + Y) * freq * 0.7 + phase) > 0,  # diagonal stripes
            torch.sin(X * freq * 0.6 + phase) * torch.sin(Y * freq * 0.6) > 0,  # checkerboard
            u.abs() + v.abs() < 1,  # diamond
        ]
        mask = torch.stack(masks, 1)[torch.arange(b), lab]  # (b, S, S)
        bg = r(b, 3)
        fg = (bg + 0.35 + 0.3 * r(b, 3)) % 1.0  # always differs from the background
        img = torch.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :])
        img = img + 0.08 * torch.randn(img.shape, generator=g)
        out[start:start + b] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(out, labels.long(), list(SYNTHETIC_CLASSES[:num_classes]))


# ---------------------------------------------------------------------------------------------
# Decoding image files (image folders, Tiny ImageNet), with a tensor cache.

def _decode(path: str, size: int, crop: int = 0, offset: tuple[float, float] | None = None) -> torch.Tensor:
    """One file -> (crop, crop, 3) uint8: short side resized to `size` (antialiased), then a crop x crop window
    (crop 0 = size) at relative `offset` (fy, fx) in [0, 1], centred when None."""
    import numpy as np
    from PIL import Image

    crop = crop or size
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if min(w, h) != size:
                scale = size / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
            fy, fx = offset if offset is not None else (0.5, 0.5)
            left, top = round((im.size[0] - crop) * fx), round((im.size[1] - crop) * fy)
            if im.size != (crop, crop):
                im = im.crop((left, top, left + crop, top + crop))
            return torch.from_numpy(np.asarray(im).copy())
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from None


def _decode_all(paths: list[str], size: int) -> torch.Tensor:
    out = torch.empty(len(paths), size, size, 3, dtype=torch.uint8)
    if not paths:
        return out

    def work(i: int) -> None:
        out[i] = _decode(paths[i], size)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(paths)), chunksize=256))
    return out


def _cached(cfg: DataConfig, tag: str, files: list[tuple[str, int]], classes: list[str], size: int) -> ImageSet:
    """Decode `files` [(path, label)] once; reuse the cached tensors while paths, sizes and mtimes match."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{classes}".encode())
    for path, label in files:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    signature = h.hexdigest()
    root_id = hashlib.sha1(os.path.abspath(cfg.root).encode()).hexdigest()[:10]
    cache = os.path.join(cfg.cache_dir, f"{cfg.name}-{tag}-{size}px-{root_id}.pt")
    if os.path.isfile(cache):
        try:
            blob = torch.load(cache, weights_only=True)
            labels = [lab for _, lab in files]
            # The signature says which files; the content must also be what they decode to in shape and
            # labels (a cache overwritten or damaged in place is rebuilt rather than trusted).
            if (blob.get("signature") == signature and blob["images"].dtype == torch.uint8
                    and tuple(blob["images"].shape) == (len(files), size, size, 3)
                    and blob["labels"].tolist() == labels):
                return ImageSet(blob["images"], blob["labels"], list(blob["classes"]))
        except Exception:  # a truncated or stale cache is rebuilt, never trusted
            pass
    images = _decode_all([p for p, _ in files], size)
    labels = torch.tensor([lab for _, lab in files], dtype=torch.long)
    remove_stale_temps(make_dir(cfg.cache_dir))
    blob = {"signature": signature, "images": images, "labels": labels, "classes": classes}
    atomic_write(cache, lambda tmp: torch.save(blob, tmp))
    return ImageSet(images, labels, classes)


def _list_class_folders(split_dir: str) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    files = []
    for label, cls in enumerate(classes):
        for e in sorted(os.scandir(os.path.join(split_dir, cls)), key=lambda e: e.name):
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTS):
                files.append((e.path, label))
    return files, classes


def load_folder(cfg: DataConfig, split: str) -> ImageSet:
    """Image-folder tree: root/train/<class>/* and optionally root/test/<class>/*."""
    files, classes = folder_files(cfg, split)
    if streaming(cfg, len(files)):
        return ImageSet(None, torch.tensor([lab for _, lab in files], dtype=torch.long), classes,
                        [p for p, _ in files])
    return _cached(cfg, split, files, classes, image_size(cfg))


def streaming(cfg: DataConfig, n_images: int) -> bool:
    """Whether an image folder of n_images is streamed from disk rather than held in memory."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    return cfg.name == "folder" and n_images * image_size(cfg) ** 2 * 3 > cfg.memory_gb * 1e9


def folder_files(cfg: DataConfig, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    split_dir = os.path.join(cfg.root, split)
    if split == "test" and not os.path.isdir(split_dir):  # ImageNet-style trees call the held-out split val/
        split_dir = os.path.join(cfg.root, "val") if os.path.isdir(os.path.join(cfg.root, "val")) else split_dir
    if not os.path.isdir(split_dir):
        hint = ("point data.root at the folder that contains train/<class>/ images"
                if split == "train" else "this dataset has no test/ folder; evaluate with --split val")
        raise DataError(f"image folder {split_dir} not found: {hint}")
    files, classes = _list_class_folders(split_dir)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) under {split_dir}/<class>/; check data.root")
    return files, classes


def _tiny_root(cfg: DataConfig, download: bool) -> str:
    for cand in (cfg.root, os.path.join(cfg.root, "tiny-imagenet-200")):
        if os.path.isfile(os.path.join(cand, "wnids.txt")):
            return cand
    if not download:
        raise DataError(f"Tiny ImageNet not found under {cfg.root}")
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(TINY_URL, download_root=cfg.root)
    except Exception as e:
        raise DataError(f"Tiny ImageNet is not under data.root={cfg.root} and downloading {TINY_URL} failed "
                        f"({type(e).__name__}); download and unzip it there, or set data.root to the folder "
                        "holding wnids.txt") from None
    return os.path.join(cfg.root, "tiny-imagenet-200")


def load_tinyimagenet(cfg: DataConfig, split: str) -> ImageSet:
    """Official layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt.

    Tiny ImageNet's test labels are not public, so split="test" reads the official (labelled) val set.
    """
    root = _tiny_root(cfg, download=True)
    with open(os.path.join(root, "wnids.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    index = {w: i for i, w in enumerate(classes)}
    files = []
    if split == "train":
        for w in classes:
            img_dir = os.path.join(root, "train", w, "images")
            if not os.path.isdir(img_dir):
                raise DataError(f"Tiny ImageNet folder {img_dir} is missing; the download may be incomplete")
            files += [(e.path, index[w]) for e in sorted(os.scandir(img_dir), key=lambda e: e.name)
                      if e.name.lower().endswith(IMAGE_EXTS)]
    else:
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise DataError(f"{ann} not found; Tiny ImageNet's val labels come from it")
        with open(ann) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    files.append((os.path.join(root, "val", "images", parts[0]), index[parts[1]]))
    return _cached(cfg, split, files, classes, image_size(cfg))


def load_cifar(cfg: DataConfig, split: str) -> ImageSet:
    """CIFAR-10/100 through torchvision (downloads into data.root when missing)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(cfg.root, train=split == "train", download=True)
    except Exception as e:
        folder = "cifar-10-batches-py" if cfg.name == "cifar10" else "cifar-100-python"
        raise DataError(f"{cfg.name} is not under data.root={cfg.root} and downloading it failed "
                        f"({type(e).__name__}); set data.root to a folder containing {folder}/, or use "
                        "data.name=folder for an image-folder copy; offline, try "
                        "python train.py --config configs/quickstart.yaml (or sweep.py --config "
                        "configs/sweep_quickstart.yaml)") from None
    images = torch.from_numpy(ds.data)  # (N, 32, 32, 3) uint8
    size = image_size(cfg)
    if size != images.shape[1]:
        images = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                               antialias=True).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return ImageSet(images.contiguous(), torch.tensor(ds.targets, dtype=torch.long), list(ds.classes))


def load_synthetic(cfg: DataConfig, split: str) -> ImageSet:
    n = cfg.synthetic_size if split == "train" else max(cfg.synthetic_size // 5, cfg.synthetic_classes)
    return make_synthetic(n, image_size(cfg), cfg.synthetic_classes, seed=1234 if split == "train" else 4321)


DATASETS = {  # data.name -> (native image side, loader(cfg, split))
    "cifar10": (32, load_cifar),
    "cifar100": (32, load_cifar),
    "folder": (32, load_folder),
    "tinyimagenet": (64, load_tinyimagenet),
    "synthetic": (32, load_synthetic),
}


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """The full `train` or `test` split of the configured dataset, on the CPU."""
    assert split in ("train", "test"), split
    return DATASETS[cfg.name][1](cfg, split)


# ---------------------------------------------------------------------------------------------
# Splits and statistics

def split_indices(labels: torch.Tensor, val_fraction: float, subset: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-balanced (train_idx, val_idx); `subset` > 0 keeps that many training images."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    train, val = [], []
    per_class_subset = None
    if subset:
        per_class_subset = [subset // len(classes) + (i < subset % len(classes)) for i in range(len(classes))]
    for i, c in enumerate(classes):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        rest = idx[n_val:]
        train.append(rest[:per_class_subset[i]] if per_class_subset else rest)
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def compute_stats(images: torch.Tensor, max_images: int = 10000) -> Stats:
    """Mean/std per channel and the RGB covariance eigen-decomposition (for PCA lighting)."""
    step = max(1, len(images) // max_images)
    px = images[::step].reshape(-1, 3).double() / 255.0  # (P, 3)
    mean = px.mean(0)
    cov = torch.cov(px.T)
    eigval, eigvec = torch.linalg.eigh(cov)
    return Stats(mean.float(), px.std(0).clamp_min(1e-3).float(), eigval.clamp_min(0).float(), eigvec.float())


@dataclass
class DataBundle:
    train: ImageSet  # on the training device
    val: ImageSet  # on the training device (may be empty when val_fraction == 0)
    stats: Stats  # on the training device
    image_size: int


def carve(full: ImageSet, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx) of the training split: the one carving training and evaluate.py share."""
    if len(full.classes) < 2:
        raise DataError(f"the training data has {len(full.classes)} class ({', '.join(full.classes) or 'none'}); "
                        "a classifier needs at least 2 class folders under data.root/train/")
    if cfg.subset > len(full.labels):
        raise DataError(f"data.subset={cfg.subset} but the training split has only {len(full.labels)} images; "
                        "lower data.subset (0 = all)")
    return split_indices(full.labels, cfg.val_fraction, cfg.subset, cfg.split_seed)


def load_data(cfg: DataConfig, device: torch.device) -> DataBundle:
    """Load the training split, carve validation, compute stats and move everything to `device`."""
    full = load_split(cfg, "train")
    tr, va = carve(full, cfg)
    if len(tr) == 0:
        raise DataError("the training split is empty; lower data.val_fraction or raise data.subset")
    if full.images is None:  # streamed: statistics from a decoded sample of the training files
        sample = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))[:2000]]
        stats = compute_stats(_decode_all([full.files[i] for i in sample.tolist()], image_size(cfg)))
        return DataBundle(full.subset(tr), full.subset(va), stats.to(device), image_size(cfg))
    stats = compute_stats(full.images[tr])
    return DataBundle(full.subset(tr).to(device), full.subset(va).to(device), stats.to(device), full.images.shape[1])


# ---------------------------------------------------------------------------------------------
# Whole-batch augmentation on the device

def crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation (zero-pad then crop back) and horizontal flip of (B, H, W, C), as one gather."""
    B, H, W, _ = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (B, 1), generator=gen, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (B, 1), generator=gen, device=dev)
    cols = torch.arange(W, device=dev)[None, :].expand(B, W)
    if flip:
        flipped = torch.rand(B, 1, generator=gen, device=dev) < 0.5
        cols = torch.where(flipped, W - 1 - cols, cols)
    rows = torch.arange(H, device=dev)[None, :] + dy  # (B, H)
    cols = cols + dx  # (B, W)
    batch = torch.arange(B, device=dev)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1-s, 1+s] per image; x in [0, 1], (B, H, W, 3)."""
    B = x.shape[0]
    f = 1 + strength * (2 * torch.rand(3, B, 1, 1, 1, generator=gen, device=x.device) - 1)
    gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    x = x * f[0]
    mean = (x @ gray_w).mean((1, 2))[:, None, None, None]
    x = (x - mean) * f[1] + mean
    gray = (x @ gray_w)[..., None]
    x = (x - gray) * f[2] + gray
    return x.clamp_(0, 1)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a random size x size square (centre anywhere in the image, clipped at edges) per image."""
    B, H, W, _ = x.shape
    cy = torch.randint(0, H, (B, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, W, (B, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(H, device=x.device)[None, :, None]
    xs = torch.arange(W, device=x.device)[None, None, :]
    lo, hi = -(size // 2), size - size // 2  # size pixels, c - size//2 .. c + (size - 1)//2 (even sizes too)
    inside = ((ys - cy >= lo) & (ys - cy < hi) & (xs - cx >= lo) & (xs - cx < hi))  # (B, H, W)
    return x.masked_fill(inside[..., None], 0.0)


# TrivialAugmentWide's op list and "wide" magnitude ranges (Müller & Hutter 2021; torchvision's
# TrivialAugmentWide): each op's magnitude at m in [0, 1]; signed ops also draw a sign. data.auto_augment
# choices live here: "trivial" is this batched version (same ops and ranges; not bit-identical to
# torchvision's per-image PIL/tensor code, e.g. equalize is the textbook CDF mapping).
TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
               "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
AUTO_AUGMENTS = ("none", "trivial")


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """other + factor * (x - other), clamped to [0, 1]: factor 1 is x, 0 is `other` (PIL's ImageEnhance)."""
    return (other + factor * (x - other)).clamp(0, 1)


def _geometry(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Shear, translate and rotate as one per-image affine warp (nearest, zero fill); other ops: identity."""
    B, H, W, _ = x.shape
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    k = {name: op == TRIVIAL_OPS.index(name) for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")}
    shear, shift, angle = 0.99 * m, 32.0 * m, math.radians(135.0) * m  # wide: shear 0.99, 32 px, 135 degrees
    theta[:, 0, 1] = torch.where(k["shear_x"], shear, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(k["shear_y"], shear, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(k["translate_x"], 2 * shift / W, theta[:, 0, 2])  # grid units: 2 = the width
    theta[:, 1, 2] = torch.where(k["translate_y"], 2 * shift / H, theta[:, 1, 2])
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B, 2, 2)
    theta[:, :, :2] = torch.where(k["rotate"][:, None, None], rot, theta[:, :, :2])
    grid = F.affine_grid(theta, [B, 3, H, W], align_corners=False)
    return F.grid_sample(x.permute(0, 3, 1, 2), grid, mode="nearest", padding_mode="zeros",
                         align_corners=False).permute(0, 2, 3, 1)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, map each level through its normalised cumulative histogram; x in [0, 1]."""
    B, H, W, C = x.shape
    levels = (x * 255).round().long().permute(0, 3, 1, 2).reshape(B, C, H * W)  # (B, C, HW)
    hist = torch.zeros(B, C, 256, device=x.device).scatter_add_(2, levels, torch.ones_like(levels, dtype=torch.float))
    cdf = hist.cumsum(2)
    lo = torch.where(hist > 0, cdf, torch.full_like(cdf, float(H * W))).amin(2, keepdim=True)  # cdf at the lowest level
    lut = ((cdf - lo) / (H * W - lo).clamp(min=1)).clamp(0, 1)
    out = lut.gather(2, levels).reshape(B, C, H, W).permute(0, 2, 3, 1)
    flat = (lo == H * W).reshape(B, 1, 1, C)  # a constant channel would map to 0: keep it as it was
    return torch.where(flat, x, out)


def trivial_ops(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply op TRIVIAL_OPS[op[i]] at magnitude m[i] (signed: in [-1, 1]) to image i of (B, H, W, 3) floats in
    [0, 1]. Every op runs on the whole batch and torch.where keeps each image's own: no per-image Python
    and no host sync, at a few elementwise passes over the batch."""
    pick = lambda name, y: torch.where((op == TRIVIAL_OPS.index(name))[:, None, None, None], y, out)  # noqa: E731
    f = (1 + 0.99 * m)[:, None, None, None]  # enhance factors 0.01 .. 1.99
    gray_w = torch.tensor([0.2989, 0.587, 0.114], device=x.device, dtype=x.dtype)  # torchvision's grayscale
    gray = (x @ gray_w)[..., None]  # (B, H, W, 1)
    out = _geometry(x, op, m)
    out = pick("brightness", _blend(x, torch.zeros_like(x), f))
    out = pick("color", _blend(x, gray, f))
    out = pick("contrast", _blend(x, gray.mean((1, 2, 3), keepdim=True), f))
    # PIL's SMOOTH kernel (centre 5, neighbours 1, / 13), border pixels kept, as ImageEnhance.Sharpness.
    kernel = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
    kernel[:, :, 1, 1] = 5
    smooth = F.conv2d(x.permute(0, 3, 1, 2), kernel / 13, groups=3).permute(0, 2, 3, 1)
    degenerate = x.clone()
    degenerate[:, 1:-1, 1:-1] = smooth
    out = pick("sharpness", _blend(x, degenerate, f))
    bits = (8 - (6 * m.abs()).round()).long()  # wide: 8 .. 2 bits kept
    mask = (255 - (2 ** (8 - bits) - 1))[:, None, None, None]
    out = pick("posterize", ((x * 255).round().long() & mask).to(x.dtype) / 255)
    threshold = (1 - m.abs())[:, None, None, None]  # wide: 1 (nothing) .. 0 (everything inverted)
    out = pick("solarize", torch.where(x >= threshold, 1 - x, x))
    lo, hi = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
    out = pick("autocontrast", torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-8), x))
    return pick("equalize", _equalize(x))


def trivial_augment(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Batched TrivialAugmentWide: per image one op drawn uniformly from TRIVIAL_OPS at a magnitude drawn
    uniformly from its 31 bins, with a random sign for the signed ops; x (B, H, W, 3) floats in [0, 1]."""
    B = x.shape[0]
    op = torch.randint(0, len(TRIVIAL_OPS), (B,), generator=gen, device=x.device)
    m = torch.randint(0, 31, (B,), generator=gen, device=x.device).to(x.dtype) / 30  # bins 0, 1/30, .., 1
    sign = torch.where(torch.rand(B, generator=gen, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    signed = torch.tensor([n not in ("posterize", "solarize", "autocontrast", "equalize", "identity")
                           for n in TRIVIAL_OPS], device=x.device)
    return trivial_ops(x, op, torch.where(signed[op], m * sign, m))


@dataclass(frozen=True)
class Augment:
    """The random transforms applied to training batches on the device; the default applies none."""
    crop_padding: int = 0  # pixels of random translation
    flip: bool = False  # random horizontal flips
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    pca_lighting: float = 0.0  # std of the PCA lighting alpha
    cutout: int = 0  # side of the zeroed square
    auto_augment: str = "none"  # "trivial": TrivialAugmentWide per image (TRIVIAL_OPS)


def train_augment(cfg: DataConfig, streamed: bool) -> Augment:
    """The device's share of the training augmentation: streamed batches arrive cropped and flipped."""
    return Augment(0 if streamed else cfg.crop_padding, cfg.flip and not streamed, cfg.color_jitter,
                   cfg.pca_lighting, cfg.cutout, cfg.auto_augment)


def prepare(x: torch.Tensor, stats: Stats, aug: Augment = Augment(), gen: torch.Generator | None = None,
            channels_last: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised float (B, 3, H, W), with `aug` drawn from `gen`."""
    if aug.crop_padding or aug.flip:
        x = crop_flip(x, aug.crop_padding, aug.flip, gen)
    x = x.float().div_(255.0)
    if aug.auto_augment == "trivial":  # after crop + flip and before normalising, as torchvision's recipes
        x = trivial_augment(x, gen)
    if aug.color_jitter:
        x = color_jitter(x, aug.color_jitter, gen)
    if aug.pca_lighting:
        alpha = torch.randn(x.shape[0], 3, generator=gen, device=x.device) * aug.pca_lighting
        shift = (alpha * stats.eigval) @ stats.eigvec.T  # (B, 3): sum_i alpha_i lambda_i p_i
        x += shift[:, None, None, :]
    x = (x - stats.mean) / stats.std
    if aug.cutout:
        x = cutout(x, aug.cutout, gen)
    x = x.permute(0, 3, 1, 2)  # (B, 3, H, W) view; NHWC storage == channels_last
    return x if channels_last else x.contiguous()


class FileDataset(torch.utils.data.Dataset):
    """Streaming path: decode one file per item in a worker. Training: short side -> resize, random crop,
    random flip (the paper's 224/227 crops of 256 images); evaluation: the centre resize x resize square."""

    def __init__(self, files: list[str], labels: torch.Tensor, cfg: DataConfig, train: bool):
        self.files, self.labels, self.train = files, labels.tolist(), train
        self.crop = image_size(cfg)
        self.resize = cfg.resize or round(self.crop * 256 / 224)
        self.flip = cfg.flip
        self.seed = 0  # set per epoch; with the item index it fixes each item's crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if not self.train:
            return _decode(self.files[i], self.resize), self.labels[i]
        g = torch.Generator().manual_seed(mix_seed(self.seed, i))
        fy, fx, flip = torch.rand(3, generator=g).tolist()
        img = _decode(self.files[i], self.resize, self.crop, (fy, fx))
        return (img.flip(1) if self.flip and flip < 0.5 else img), self.labels[i]


def iterate(ds: ImageSet, batches: list[torch.Tensor], cfg: DataConfig, device: torch.device, train: bool,
            seed: int = 0):
    """Yield (uint8 (B, H, W, 3), labels) on `device` for each index batch: tensor gathers in memory,
    DataLoader workers decoding JPEGs when streaming."""
    if ds.images is not None:
        for idx in batches:
            idx = idx.to(ds.images.device)
            yield ds.images[idx], ds.labels[idx]
        return
    dataset = FileDataset(ds.files, ds.labels, cfg, train)
    dataset.seed = seed
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[b.tolist() for b in batches],
                                         num_workers=cfg.num_workers or (os.cpu_count() or 1),
                                         pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre size x size window of (B, H, W, C); a no-op for in-memory images stored at `size`."""
    off = (x.shape[1] - size) // 2
    return x[:, off:off + size, off:off + size]


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches train_batches cuts from n images (at least one)."""
    return max(1, n // batch_size)


def train_batches(n: int, batch_size: int, gen: torch.Generator, device) -> list[torch.Tensor]:
    """Index tensors for one epoch: a seeded permutation cut into full batches (the ragged tail is dropped)."""
    perm = torch.randperm(n, generator=gen, device=device)
    if n < batch_size:
        return [perm]
    return list(perm[: n - n % batch_size].split(batch_size))
