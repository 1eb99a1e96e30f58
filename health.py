"""Per-layer health of an AlexNet while it trains, and its first-layer filters (the paper's Figure 3).

The seed found AlexNet "very unstable" without the paper's init; our cifar10_best seeds collapsed (every
image getting the same logits) or hit NaN in epoch 1. These measurements say *where* that starts. For
each conv and FC layer, on a fixed probe batch (the same images every time, un-augmented, eval mode):

  act_mean, act_std  of the layer's output after its activation (the classifier: of the logits)
  dead_frac          fraction of units (conv channels, FC units) whose activation is <= 0 for every image
                     and position: a ReLU unit that never fires passes no gradient and stays dead
  image_spread       max over units of (max - min over images) / max |output|: ~0 when every image gets
                     the same output, the per-layer form of train.collapsed()
  weight_norm, grad_norm, update_ratio   of the weight: L2 norms, and |w_after - w_before| / |w_before|
                     for the last optimiser step (the "lr too high" signal: healthy is ~1e-3)

Measured off the hot path: after chosen steps only, under no_grad, in eval mode (no dropout draws, no
BatchNorm statistics updates), so the training trajectory is unchanged (tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PROBE_IMAGES = 64
BROKEN_DEAD = 0.99  # a layer with this many dead units passes almost no gradient
BROKEN_SPREAD = 1e-3  # the same threshold train.collapsed() applies to the logits


def layer_pairs(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """(name, conv/linear layer, the activation right after it or None) in forward order, from the model's
    Sequentials of named children (models.AlexNet: features, head), where each activation follows its layer."""
    from models import ACTIVATIONS

    act_types = tuple({type(make()) for make in ACTIVATIONS.values()})
    pairs = []
    for seq in (m for m in model.children() if isinstance(m, nn.Sequential)):
        children = list(seq.named_children())
        for (name, m), (_, after) in zip(children, children[1:] + [("", None)]):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                pairs.append((name, m, after if isinstance(after, act_types) else None))
    return pairs


def output_stats(out: torch.Tensor, activated: bool) -> dict[str, torch.Tensor]:
    """Statistics (0-d tensors, so nothing syncs with the host yet) of one layer's (B, C, H, W) or (B, F)
    output on the probe batch."""
    out = out.detach().float()
    units = out.transpose(0, 1).reshape(out.shape[1], out.shape[0], -1)  # (units, images, positions)
    per_image = units.mean(2)  # (units, images)
    scale = out.abs().max().clamp_min(1e-12)
    stats = {"act_mean": out.mean(), "act_std": out.std(),
             "image_spread": (per_image.amax(1) - per_image.amin(1)).max() / scale}
    if activated:
        stats["dead_frac"] = (units <= 0).flatten(1).all(1).float().mean()
    return stats


class LayerHealth:
    """Measures the model's layers on a fixed probe batch; keeps every measurement for the collapse message."""

    def __init__(self, model: nn.Module, probe: torch.Tensor):
        self.model, self.probe = model, probe
        self.pairs = layer_pairs(model)
        self.before: dict[str, torch.Tensor] = {}
        self.history: list[tuple[int, dict[str, dict[str, float]]]] = []  # (step, {layer: stats})

    def snapshot(self) -> None:
        """Call before an optimiser step that will be measured: the weights it starts from."""
        self.before = {name: layer.weight.detach().clone() for name, layer, _ in self.pairs}

    @torch.no_grad()
    def measure(self, step: int, grad_scale: float = 1.0) -> dict[str, dict[str, float]]:
        """{layer: stats} now (after the step that followed snapshot()); also kept in self.history."""
        found: dict[str, dict[str, float]] = {}
        hooks = []
        for name, layer, act in self.pairs:
            where = act if act is not None else layer

            def hook(_m, _inp, out, name=name, activated=act is not None):
                found[name] = output_stats(out, activated)
            hooks.append(where.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.probe)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        for name, layer, _ in self.pairs:
            w = layer.weight.detach().float()
            s = found.setdefault(name, {})
            s["weight_norm"] = w.norm()
            if layer.weight.grad is not None:
                s["grad_norm"] = layer.weight.grad.detach().float().norm() / grad_scale
            if name in self.before:
                s["update_ratio"] = (w - self.before[name].float()).norm() / self.before[name].float().norm() \
                    .clamp_min(1e-12)
        self.before = {}
        keys = [(name, k) for name, s in found.items() for k in s]
        values = torch.stack([found[name][k] for name, k in keys]).tolist()  # the one host sync
        measured: dict[str, dict[str, float]] = {name: {} for name in found}
        for (name, k), v in zip(keys, values):
            measured[name][k] = v
        self.history.append((step, measured))
        return measured

    def first_broken(self) -> str | None:
        """'conv3: 100% dead units since step 40' for the earliest measurement in which a layer broke
        (nearly all units dead, or the same output for every image); the earliest layer wins a tie."""
        for step, layers in self.history:
            for name, s in layers.items():
                if s.get("dead_frac", 0.0) >= BROKEN_DEAD:
                    return f"{name}: {s['dead_frac']:.0%} dead units since step {step}"
                if s.get("image_spread", 1.0) <= BROKEN_SPREAD:
                    return f"{name}: the same output for every image since step {step}"
        return None


def tags(layers: dict[str, dict[str, float]], prefix: str = "layers") -> dict[str, float]:
    """TensorBoard scalars: layers/<layer>/<stat>."""
    return {f"{prefix}/{name}/{k}": v for name, s in layers.items() for k, v in s.items() if math.isfinite(v)}


# ---------------------------------------------------------------------------------------------
# conv1 filters

def filter_grid(weight: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """(3, H, W) float image in [0, 1]: one tile per first-layer filter, each min-max scaled to RGB on its
    own (as in the paper's Figure 3), 1-px gaps, `scale` x nearest-neighbour upsampling."""
    assert weight.dim() == 4 and weight.shape[1] == 3, "conv1 filters are (out, 3, k, k)"
    w = weight.detach().float().cpu()
    lo = w.flatten(1).amin(1)[:, None, None, None]
    hi = w.flatten(1).amax(1)[:, None, None, None]
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    if scale > 1:
        w = F.interpolate(w, scale_factor=scale, mode="nearest")
    n, _, k, _ = w.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * (k + 1) + 1, cols * (k + 1) + 1)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, 1 + r * (k + 1):1 + r * (k + 1) + k, 1 + c * (k + 1):1 + c * (k + 1) + k] = w[i]
    return grid


def conv1_weight(model: nn.Module) -> torch.Tensor:
    name, layer, _ = layer_pairs(model)[0]
    assert isinstance(layer, nn.Conv2d), f"the first layer is {name}, not a conv"
    return layer.weight


def save_filter_png(weight: torch.Tensor, path: str, title: str = "") -> None:
    """The filter grid as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime import save_figure

    grid = filter_grid(weight)
    fig, ax = plt.subplots(figsize=(max(3.0, grid.shape[2] / 12), max(3.0, grid.shape[1] / 12) + 0.4), dpi=120)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"conv1: {weight.shape[0]} filters of {weight.shape[2]}x{weight.shape[3]}", fontsize=9)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The first epoch of runs side by side (REPORT.md's instability figure)

PLOTTED = ("dead_frac", "image_spread", "update_ratio", "act_std")


def first_epoch_curves(run_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{stat: {layer: [(step, value)]}} from RUN/first_epoch/'s events."""
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "first_epoch"), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for tag in acc.Tags()["scalars"]:
        _, layer, stat = tag.split("/")
        out.setdefault(stat, {})[layer] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


def plot_runs(runs: dict[str, str], path: str) -> None:
    """One column per run: its first-epoch layer curves (PLOTTED), then its conv1 filters from last.pt."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime import load_checkpoint, save_figure

    fig, axes = plt.subplots(len(PLOTTED) + 1, len(runs), figsize=(5.2 * len(runs), 2.3 * (len(PLOTTED) + 1) + 0.5),
                             dpi=100, squeeze=False)
    for col, (title, run_dir) in enumerate(runs.items()):
        curves = first_epoch_curves(run_dir)
        for row, stat in enumerate(PLOTTED):
            ax = axes[row][col]
            for layer, points in curves.get(stat, {}).items():
                ax.plot(*zip(*points), label=layer, lw=1.2)
            ax.set_title(f"{title}: {stat}", fontsize=9)
            if stat in ("image_spread", "update_ratio"):
                ax.set_yscale("log")
            ax.tick_params(labelsize=7)
            if row == len(PLOTTED) - 1:
                ax.set_xlabel("step (epoch 1)", fontsize=8)
        axes[PLOTTED.index("update_ratio")][col].legend(fontsize=6, ncol=4)  # every layer has one
        ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"))
        ax = axes[-1][col]
        ax.imshow(filter_grid(ckpt["model"]["features.conv1.weight"]).permute(1, 2, 0).numpy(),
                  interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{title}: conv1 filters after epoch {ckpt['epoch']}", fontsize=9)
    save_figure(fig, path)
