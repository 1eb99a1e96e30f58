"""Experiment configuration: dataclasses, strict YAML loading, dotted overrides.

Merge order: dataclass defaults <- YAML chain (`extends:`) <- `key=value` overrides.
Every key, type and value is checked; mistakes raise ConfigError naming the key and the fix.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from data import AUTO_AUGMENTS, DATASETS, LOADERS
from models import ACTIVATIONS, HEADS, INITS, NORMS, POOLS
from optim import OPTIMIZERS, SCHEDULERS
from runtime import ConfigError, write_text


def choice(default: str, choices: tuple[str, ...]) -> Any:
    """A string field restricted to `choices` (checked by validate())."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    conv_channels: list[int] = field(default_factory=lambda: [96, 256, 384, 384, 256])  # output channels of conv1..conv5
    conv_kernels: list[int] = field(default_factory=lambda: [11, 5, 3, 3, 3])  # square kernel size per conv
    conv_strides: list[int] = field(default_factory=lambda: [4, 1, 1, 1, 1])  # stride per conv
    conv_paddings: list[int] = field(default_factory=lambda: [0, 2, 1, 1, 1])  # zero padding per conv (pixels)
    conv_groups: list[int] = field(default_factory=lambda: [1, 2, 1, 2, 2])  # grouped convs; the paper's two-GPU split is 2 on conv2/4/5
    pool_after: list[int] = field(default_factory=lambda: [1, 2, 5])  # 1-based convs followed by a pooling layer
    pool: str = choice("max", tuple(POOLS))  # pooling type
    pool_kernel: int = 3  # pooling window; 3 with stride 2 is the paper's overlapping pooling
    pool_stride: int = 2  # pooling stride
    norm: str = choice("lrn", tuple(NORMS))  # normalisation layer type
    norm_after: list[int] = field(default_factory=lambda: [1, 2])  # 1-based convs followed by the normalisation
    lrn_size: int = 5  # LRN window n (channels)
    lrn_alpha: float = 1e-4  # LRN alpha; what it multiplies is set by lrn_alpha_on
    lrn_alpha_on: str = choice("sum", ("sum", "mean"))  # sum: the paper's formula; mean: nn.LocalResponseNorm's (alpha/n on the sum)
    lrn_beta: float = 0.75  # LRN exponent
    lrn_k: float = 2.0  # LRN additive constant
    activation: str = choice("relu", tuple(ACTIVATIONS))  # nonlinearity everywhere
    dropout: float = 0.5  # dropout probability before each hidden FC layer; 0 disables
    head: str = choice("fc", HEADS)  # fc: fc6, fc7, classifier; gap: global average pool + one linear
    fc_widths: list[int] = field(default_factory=lambda: [4096, 4096])  # hidden FC widths (fc6, fc7, ...)
    width_mult: float = 1.0  # scales every conv and hidden FC width (rounded to a multiple of 8); for sweeps
    init: str = choice("default", INITS)  # weight initialisation scheme
    init_from: str = ""  # checkpoint whose weights start a new run (transfer learning); "" = none
    freeze: list[str] = field(default_factory=list)  # layers to freeze: conv1..conv5, fc6, fc7, features


@dataclass
class DataConfig:
    name: str = choice("cifar10", tuple(DATASETS))  # dataset
    root: str = "data"  # dataset directory (downloads go here for cifar/tinyimagenet)
    image_size: int = 0  # side length images are stored and trained at; 0 = dataset native (32 cifar, 64 tiny)
    batch_size: int = 128  # training batch size (images per optimizer step)
    eval_batch_size: int = 256  # batch size for validation / evaluation (512 raised peak RSS by 0.4 GB on CPU)
    val_fraction: float = 0.1  # fraction of the training split held out (seeded, class-balanced) for validation
    split_seed: int = 0  # seeds the train/val split; fixed across run seeds so every run sees the same split
    subset: int = 0  # train on a seeded class-balanced random N of the training images; 0 = all
    synthetic_size: int = 5000  # synthetic dataset: number of images (before the validation split)
    synthetic_classes: int = 10  # synthetic dataset: number of classes (at most 10)
    cache_dir: str = "data/cache"  # where decoded image-folder tensors are cached
    loader: str = choice("auto", LOADERS)  # memory: uint8 tensors on the device; stream: JPEG-decoding DataLoader workers; auto: stream image folders too big for memory_gb
    memory_gb: float = 8.0  # auto: largest decoded image folder (GB) kept in memory
    resize: int = 0  # stream: short side each image is resized to before cropping; 0 = image_size * 256 / 224
    num_workers: int = 0  # stream: decoding worker processes; 0 = one per CPU core
    crop_padding: int = 0  # random-crop translation: pad by this many pixels then crop back; 0 = off
    flip: bool = False  # random horizontal flip with probability 0.5
    pca_lighting: float = 0.0  # std of the paper's PCA colour lighting alpha (paper: 0.1); 0 = off
    color_jitter: float = 0.0  # strength of random brightness/contrast/saturation (e.g. 0.4); 0 = off
    cutout: int = 0  # side of a random square zeroed per image (pixels); 0 = off
    auto_augment: str = choice("none", AUTO_AUGMENTS)  # trivial: TrivialAugmentWide per image, on the batch (data.TRIVIAL_OPS)


@dataclass
class OptimConfig:
    name: str = choice("sgd", OPTIMIZERS)  # optimizer
    lr: float = 0.01  # base learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # L2 (sgd/adam) or decoupled (adamw) weight decay; not applied to biases/norms
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    head_lr_mult: float = 1.0  # learning-rate multiplier for the classifier layer (fine-tuning knob)


@dataclass
class SchedConfig:
    name: str = choice("multistep", tuple(SCHEDULERS))  # LR schedule
    milestones: list[int] = field(default_factory=lambda: [20, 30])  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1  # decay factor (multistep, step, exponential, plateau)
    step_size: int = 10  # step: epochs between decays
    patience: int = 3  # plateau: epochs without validation improvement before decaying
    min_lr: float = 0.0  # cosine / plateau floor
    warmup_epochs: int = 0  # epochs of linear warm-up from lr/10, ramped every iteration (not with plateau/onecycle)
    onecycle_warmup: float = 0.3  # onecycle: fraction of all iterations spent rising to optim.lr


@dataclass
class TrainConfig:
    epochs: int = 20  # total training epochs
    amp: str = choice("auto", ("auto", "bf16", "fp16", "off"))  # auto: bf16 where native (CUDA, AVX512-BF16 CPUs), fp16 on older GPUs, else fp32
    channels_last: bool = True  # NHWC memory layout (faster convolutions on oneDNN and tensor cores)
    compile: bool = False  # torch.compile the model (slower start, faster steps on GPU; slower on CPU here)
    malloc_tune: bool = True  # CPU on glibc: reuse freed activation memory instead of re-faulting it every step
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    log_every: int = 50  # steps between progress-bar updates / non-finite checks (host syncs)
    progress: bool = True  # show a tqdm progress bar on stderr
    save_best: bool = True  # keep best.pt at the best validation top-1
    stop_on_collapse: bool = False  # exit 3 when every validation image gets the same logits (else warn)
    diagnostics: bool = True  # per-layer health (layers/* in TensorBoard) and the conv1 filter image
    diagnostics_every: int = 50  # steps between health measurements in epoch 1 (every epoch ends with one); 0 = epoch ends only


@dataclass
class Config:
    name: str = "alexnet"  # experiment name (run directory prefix)
    seed: int = 0  # seeds init, data order, augmentation and dropout (the val split uses data.split_seed)
    out_dir: str = "runs"  # parent of run directories (TensorBoard --logdir)
    run_dir: str = ""  # explicit run directory; "" = {out_dir}/{name}-{timestamp}
    device: str = choice("auto", ("auto", "cpu", "cuda", "mps"))  # auto = cuda if available, else cpu
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------
# YAML chain and overrides

def read_yaml_chain(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Load a YAML config, resolving `extends:` (relative to the file) depth-first."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"config {path}: `extends` loops back to itself")
    if os.path.isdir(path):
        raise ConfigError(f"config {path} is a directory; pass a YAML file, e.g. configs/quickstart.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path} (check the path; presets live in configs/)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 text file; pass a YAML config") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"config {path}: `extends` must be a file name relative to it, got {parent!r}")
    base = read_yaml_chain(os.path.join(os.path.dirname(path), parent), _seen + (path,))
    return deep_merge(base, raw)


def deep_merge(base: dict, over: dict) -> dict:
    """Return base updated recursively by over (nested dicts merge, everything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and out.get(k) is not None and not isinstance(out[k], dict):
            raise ConfigError(f"`{k}` is set to {out[k]!r}, not a section of keys, so {k}.* cannot be set on it; "
                              f"write {k}: as a mapping")
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest(key: str, value: Any) -> dict:
    """"optim.lr", 0.1 -> {"optim": {"lr": 0.1}} (a section key such as "data" takes a mapping value)."""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def parse_overrides(items: list[str]) -> dict:
    """Turn ["optim.lr=0.1", "model.fc_widths=[512,256]"] into a nested dict (values as YAML scalars)."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = out
        for p in key.strip().split(".")[:-1]:  # an earlier override of a whole section cannot take a key
            node = node.get(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {p}")
        out = deep_merge(out, nest(key, value))
    return out



def is_override(token: str) -> bool:
    """True for a `key=value` override of this config (`optim.lr=0.1`, `seed=1`), not an option value
    that merely holds '=' (a report.py --health LABEL=RUN_DIR whose label is no config section)."""
    key, sep, _ = token.partition("=")
    return bool(sep) and key.split(".")[0] in {f.name for f in dataclasses.fields(Config)}


def parse_command_line(ap: argparse.ArgumentParser, argv: list[str] | None, gather: tuple[str, ...] = ()):
    """Parse options and key=value overrides given in any order (`train.py train.epochs=1 --config F`).
    A multi-value option (`--only A B`) takes every word up to the next option, overrides too, so the
    options named in `gather` hand theirs back; `args.overrides` keeps the command line's order (a later
    value of the same key wins, as typed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_intermixed_args(argv)
    if not hasattr(args, "overrides"):  # compare.py: paths and options only
        return args
    moved = set(args.overrides)
    for name in gather:
        values = getattr(args, name)
        if values is None:
            continue
        moved |= {v for v in values if is_override(v)}
        kept = [v for v in values if not is_override(v)]
        if not kept:
            ap.error(f"argument --{name.replace('_', '-')}: expected at least one value besides key=value overrides")
        setattr(args, name, kept)
    args.overrides = [t for t in argv if t in moved]
    return args

# ---------------------------------------------------------------------------------------------
# Building dataclasses strictly from plain dicts

def _closest(name: str, options: list[str], prefix: str = "") -> str:
    hit = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean `{prefix}{hit[0]}`?" if hit else f"; valid keys: {', '.join(prefix + o for o in options)}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases (int->float, '1e-3'->float)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads bare on/off/yes/no as booleans, also inside lists
            raise ConfigError(f"{key}: expected a string, got {value!r}, which is how YAML reads a "
                              f"bare on/off/yes/no; quote it")
    else:  # pragma: no cover - only the annotations above are used
        raise AssertionError(f"unsupported annotation {tp} for {key}")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")


def build(cls: type, raw: dict, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            shown = f"{prefix}{key}" if str(key).isprintable() else repr(f"{prefix}{key}")
            raise ConfigError(f"unknown config key `{shown}`{_closest(str(key), list(fields), prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, f"{prefix}{key}.")
        else:
            choices = fields[key].metadata.get("choices")
            read_as_bool = bool(choices) and tp is str and isinstance(value, bool)
            if read_as_bool:
                value = "on" if value else "off"  # `train.amp: off` means the choice "off", not False
            kwargs[key] = _coerce(value, tp, prefix + key)
            if choices and kwargs[key] not in choices:
                why = " (YAML reads a bare on/off/yes/no as a boolean)" if read_as_bool else ""
                raise ConfigError(f"{prefix}{key}: {kwargs[key]!r}{why} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> Config:
    """Reject impossible values; returns cfg for chaining."""
    m, d, o, s, t = cfg.model, cfg.data, cfg.optim, cfg.sched, cfg.train
    n = len(m.conv_channels)
    _check(n >= 1, "model.conv_channels", "needs at least one conv layer")
    for k in ("conv_kernels", "conv_strides", "conv_paddings", "conv_groups"):
        _check(len(getattr(m, k)) == n, f"model.{k}", f"needs {n} entries, one per conv (like model.conv_channels)")
    _check(all(c > 0 for c in m.conv_channels), "model.conv_channels", "must be positive")
    _check(all(k > 0 for k in m.conv_kernels), "model.conv_kernels", "must be positive")
    _check(all(k > 0 for k in m.conv_strides), "model.conv_strides", "must be positive")
    _check(all(k >= 0 for k in m.conv_paddings), "model.conv_paddings", "must be >= 0")
    cin = [3] + m.conv_channels[:-1]
    for i, g in enumerate(m.conv_groups):
        _check(g >= 1 and cin[i] % g == 0 and m.conv_channels[i] % g == 0, "model.conv_groups",
               f"conv{i + 1} groups={g} must divide its input ({cin[i]}) and output ({m.conv_channels[i]}) channels")
    for k in ("pool_after", "norm_after"):
        _check(all(1 <= i <= n for i in getattr(m, k)), f"model.{k}", f"entries must be conv numbers 1..{n}")
    _check(m.pool_kernel >= 1 and m.pool_stride >= 1, "model.pool_kernel", "pool kernel and stride must be >= 1")
    _check(m.lrn_size >= 1 and m.lrn_k >= 0 and m.lrn_alpha >= 0 and m.lrn_beta >= 0, "model.lrn_size",
           "LRN needs size >= 1 and non-negative k, alpha, beta")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check(all(w > 0 for w in m.fc_widths), "model.fc_widths", "must be positive")
    _check(m.width_mult > 0, "model.width_mult", "must be > 0")
    _check(m.width_mult == 1 or all(8 % g == 0 for g in m.conv_groups), "model.width_mult",
           "scaled widths are multiples of 8, so conv_groups must divide 8")
    layers = [f"conv{i + 1}" for i in range(n)] + [f"fc{i + 6}" for i in range(len(m.fc_widths))] + ["features"]
    for name in m.freeze:
        _check(name in layers, "model.freeze", f"unknown layer `{name}`{_closest(name, layers)}")
    _check(0 <= d.image_size <= 1024, "data.image_size", "must be in [0, 1024] (0 = native size)")
    _check(d.resize <= 1024, "data.resize", "must be <= 1024")
    _check(d.batch_size >= 1 and d.eval_batch_size >= 1, "data.batch_size", "must be >= 1")
    _check(d.loader != "stream" or d.name == "folder", "data.loader", "stream reads image folders; use data.name=folder")
    _check(d.resize >= 0 and d.num_workers >= 0 and d.memory_gb > 0, "data.resize", "resize, num_workers >= 0, memory_gb > 0")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
    _check(d.subset >= 0, "data.subset", "must be >= 0 (0 = all images)")
    _check(d.synthetic_size >= 2 and 2 <= d.synthetic_classes <= 10, "data.synthetic_classes",
           "synthetic data needs 2..10 classes and at least 2 images")
    for k in ("crop_padding", "cutout"):
        _check(getattr(d, k) >= 0, f"data.{k}", "must be >= 0 (0 = off)")
    for k in ("pca_lighting", "color_jitter"):
        _check(getattr(d, k) >= 0, f"data.{k}", "must be >= 0 (0 = off)")
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "needs two values in [0, 1)")
    _check(o.grad_clip >= 0 and o.head_lr_mult > 0, "optim.grad_clip", "grad_clip >= 0 and head_lr_mult > 0")
    _check(0 < s.gamma <= 1, "sched.gamma", f"must be in (0, 1], got {s.gamma}")
    _check(s.step_size >= 1 and s.patience >= 0, "sched.step_size", "step_size >= 1 and patience >= 0")
    _check(list(s.milestones) == sorted(s.milestones) and all(x > 0 for x in s.milestones), "sched.milestones",
           "must be increasing positive epoch numbers")
    _check(s.min_lr >= 0 and s.warmup_epochs >= 0, "sched.min_lr", "min_lr and warmup_epochs must be >= 0")
    _check(not (s.warmup_epochs and s.name in ("plateau", "onecycle")), "sched.warmup_epochs",
           f"warm-up is not supported with sched.name={s.name}; set it to 0 (onecycle has its own: "
           "sched.onecycle_warmup) or pick another schedule")
    _check(0 < s.onecycle_warmup < 1, "sched.onecycle_warmup", f"must be in (0, 1), got {s.onecycle_warmup}")
    _check(s.warmup_epochs < max(t.epochs, 1) or s.warmup_epochs == 0, "sched.warmup_epochs",
           "must be shorter than train.epochs")
    _check(t.epochs >= 1, "train.epochs", "must be >= 1")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(t.diagnostics_every >= 0, "train.diagnostics_every", "must be >= 0 (0 = at epoch ends only)")
    return cfg


def load_config(path: str | None = None, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Defaults <- `base` dict (e.g. a checkpoint's config) <- YAML file chain <- dotted overrides."""
    raw = dict(base or {})
    if path:
        raw = deep_merge(raw, read_yaml_chain(path))
    raw = deep_merge(raw, parse_overrides(overrides or []))
    return validate(build(Config, raw))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of primitives (for YAML, checkpoints and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# What a resume may change: where and how the same run goes on, never what it computes. train.epochs
# extends (or shortens) the run; a schedule planned for the old length is re-planned (optim.py).
RESUME_KEYS = ("train.epochs", "device", "data.root", "data.cache_dir", "data.loader", "data.memory_gb",
               "data.num_workers", "data.eval_batch_size", "train.progress", "train.log_every", "train.save_best",
               "train.stop_on_collapse", "train.diagnostics", "train.diagnostics_every", "train.compile",
               "train.malloc_tune", "train.channels_last", "name", "out_dir", "run_dir")


# What TensorBoard's HParams table shows for a run: the keys that define what was trained (the seed's
# comparison axes and the recipe around them), never paths, logging or speed switches. Kept short enough
# to read; a sweep adds the keys it varies. train.py adds the precision the run resolved to.
EXPERIMENT_KEYS = ("name", "seed", "data.name", "data.subset", "data.batch_size", "data.crop_padding", "data.flip",
                   "data.pca_lighting", "data.color_jitter", "data.cutout", "data.auto_augment",
                   "model.conv_channels", "model.fc_widths",
                   "model.width_mult", "model.activation", "model.pool", "model.norm", "model.dropout", "model.head",
                   "model.init", "optim.name", "optim.lr", "optim.momentum", "optim.weight_decay",
                   "sched.name", "sched.milestones", "sched.warmup_epochs", "train.epochs", "train.label_smoothing")


def experiment_hparams(cfg: Config, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """{dotted key: value} of `extra` (a sweep's varied keys, first) then EXPERIMENT_KEYS; lists as strings."""
    flat = flatten(to_dict(cfg))
    # A grid over a whole section (`optim:` with mappings as values) varies every key under it.
    swept = [k for e in extra for k in flat if k == e or k.startswith(e + ".")]
    keys = list(dict.fromkeys([*swept, *EXPERIMENT_KEYS]))
    return {k: flat[k] if isinstance(flat[k], (int, float, str, bool)) else str(flat[k]) for k in keys}


def recipe_changes(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (run's value, new value)} for each key outside RESUME_KEYS that `cfg` changes in a run's
    saved config (fields added to Config since the run was saved count at their defaults, i.e. unchanged)."""
    before, after = flatten(to_dict(load_config(base=saved))), flatten(to_dict(cfg))
    return {k: (before.get(k), v) for k, v in after.items() if k not in RESUME_KEYS and before.get(k) != v}


def save_config(cfg: Config, path: str) -> None:
    """Write the fully resolved config so `train.py --config path` re-runs it."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flat_items(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, comment) for every leaf field; feeds the README's config reference."""
    import inspect
    import re

    src = inspect.getsource(cls)
    comments = dict(re.findall(r"^\s+(\w+):.*?#\s*(.*)$", src, re.M))
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += flat_items(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tname = getattr(tp, "__name__", str(tp)) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")
        choices = f.metadata.get("choices")
        note = comments.get(f.name, "")
        if choices:
            note = f"{note} (one of: {', '.join(choices)})"
        rows.append((prefix + f.name, tname, default, note))
    return rows


def markdown_reference() -> str:
    """The README's config table, generated from the dataclasses so it cannot drift."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tname, default, note in flat_items():
        lines.append(f"| `{key}` | {tname} | `{default!r}` | {note.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_reference())
