"""The configurable AlexNet family and a fast, exact Local Response Normalisation.

One `AlexNet` class, built from `ModelConfig`, covers every ablation axis: activation, normalisation,
pooling, dropout, head, initialisation, per-layer conv geometry and grouping, FC widths.
Module names are stable (`conv1`..`conv5`, `fc6`, `fc7`, `classifier`) so checkpoints, freezing and
transfer learning can address layers by name.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from runtime import ConfigError

if TYPE_CHECKING:  # annotations only: config.py imports the choice lists below
    from config import ModelConfig

# ---------------------------------------------------------------------------------------------
# Local Response Normalisation (Krizhevsky et al. 2012, section 3.3)
#
#   b_c = a_c / (k + alpha * sum_{c' in window(c)} a_c'^2) ** beta
#
# The paper's alpha multiplies the *sum*. nn.LocalResponseNorm multiplies the *mean* (alpha / n), so
# the paper's (n=5, alpha=1e-4, beta=0.75, k=2) is nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2).
# Both use a window centred on c: channels c - n//2 .. c + (n-1)//2, zero beyond the edges.
#
# Speed: the built-in pads a 5-D tensor and runs avg_pool3d over it. Here the channel-window sum is a
# 1x1 convolution with a banded 0/1 matrix (one GEMM over NHWC pixels, with the constants folded into
# the weight and bias), and a hand-written backward saves only x and the denominator:
#   d = k + alpha * S(x^2),  y = x * d^-beta
#   dL/dx = g * d^-beta - 2 * alpha * beta * x * S^T(g * y / d)


def lrn_band(channels: int, size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(C, C, 1, 1) 0/1 matrix: band[c, c'] = 1 when c' lies in the LRN window of c."""
    idx = torch.arange(channels, device=device)
    offset = idx[None, :] - idx[:, None]  # c' - c
    band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    return band.to(dtype)[:, :, None, None]


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, band, alpha: float, beta: float, k: float):
        # In-place / out= ops keep the number of fresh activation-sized buffers to three.
        band = band.to(x.dtype)
        bias = torch.full((x.shape[1],), k, dtype=x.dtype, device=x.device)
        sq = x * x
        d = F.conv2d(sq, band * alpha, bias)  # (B, C, H, W): k + alpha * window sum of squares
        p = torch.pow(d, -beta, out=sq)  # d^-beta, reusing the squares' buffer
        ctx.save_for_backward(x, d, p, band)
        ctx.alpha, ctx.beta = alpha, beta
        return x * p

    @staticmethod
    def backward(ctx, g):
        x, d, p, band = ctx.saved_tensors
        t = (g * x).mul_(p).div_(d)  # g * y / d
        u = F.conv2d(t, band.transpose(0, 1))  # S^T: sum over the channels whose window contains c
        gx = (g * p).addcmul_(x, u, value=-2.0 * ctx.alpha * ctx.beta)
        return gx, None, None, None, None


class LRN(nn.Module):
    """Paper-convention LRN (alpha multiplies the window sum); exact, and much faster than the built-in."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band = lrn_band(x.shape[1], self.size, x.dtype, x.device)
        return _LRNFunction.apply(x, band, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} (on the sum), beta={self.beta}, k={self.k}"


def reference_lrn(size: int, alpha: float, beta: float, k: float) -> nn.LocalResponseNorm:
    """The built-in module that computes the same function as LRN(size, alpha, beta, k)."""
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


def lrn_sum_alpha(cfg: ModelConfig) -> float:
    """The config's LRN alpha in the paper's convention (multiplying the window sum) that LRN takes.

    The seed's nn.LocalResponseNorm(5, alpha=1e-4) is lrn_alpha=1e-4 with lrn_alpha_on=mean: 2e-5 on the
    sum, a fifth of the paper's 1e-4. Both conventions are common, so configs say which one they mean.
    """
    return cfg.lrn_alpha / cfg.lrn_size if cfg.lrn_alpha_on == "mean" else cfg.lrn_alpha


# ---------------------------------------------------------------------------------------------
# AlexNet

ACTIVATIONS = {  # model.activation
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
}
NORMS = {  # model.norm: (config, channels) -> layer
    "lrn": lambda cfg, c: LRN(cfg.lrn_size, lrn_sum_alpha(cfg), cfg.lrn_beta, cfg.lrn_k),
    "batch": lambda cfg, c: nn.BatchNorm2d(c),
    "layer": lambda cfg, c: nn.GroupNorm(1, c),  # LayerNorm over (C, H, W) with a per-channel affine
    "none": None,
}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}  # model.pool
HEADS = ("fc", "gap")  # model.head: fc6, fc7, classifier / global average pool + one linear
INITS = ("default", "kaiming", "xavier", "paper")  # model.init, implemented by AlexNet.reset_parameters


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a conv/pool (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class AlexNet(nn.Module):
    """AlexNet-family classifier: (B, 3, S, S) images -> (B, num_classes) logits."""

    def __init__(self, cfg: ModelConfig, num_classes: int, image_size: int):
        super().__init__()
        self.cfg = cfg
        act = ACTIVATIONS[cfg.activation]
        scale = (lambda c: c) if cfg.width_mult == 1 else (lambda c: max(8, round(c * cfg.width_mult / 8) * 8))
        layers: list[tuple[str, nn.Module]] = []
        cin, side = 3, image_size
        for i, cout in enumerate(map(scale, cfg.conv_channels), start=1):
            k, s, p, g = (cfg.conv_kernels[i - 1], cfg.conv_strides[i - 1], cfg.conv_paddings[i - 1],
                          cfg.conv_groups[i - 1])
            layers.append((f"conv{i}", nn.Conv2d(cin, cout, k, s, p, groups=g)))
            layers.append((f"act{i}", act()))
            side = conv_out(side, k, s, p)
            if i in cfg.norm_after and cfg.norm != "none":
                layers.append((f"norm{i}", NORMS[cfg.norm](cfg, cout)))
            if i in cfg.pool_after:
                layers.append((f"pool{i}", POOLS[cfg.pool](cfg.pool_kernel, cfg.pool_stride)))
                side = conv_out(side, cfg.pool_kernel, cfg.pool_stride, 0)
            if side < 1:
                raise ConfigError(f"data.image_size={image_size} is too small for this net: the feature map vanishes "
                                 f"after conv{i}; use larger images or smaller strides/fewer pools")
            cin = cout
        self.features = nn.Sequential(OrderedDict(layers))
        self.feature_shape = (cin, side, side)  # (C, H, W) after the last conv block

        head: list[tuple[str, nn.Module]] = []
        if cfg.head == "gap":
            head += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
            width = cin
        else:
            head.append(("flatten", nn.Flatten()))
            width = cin * side * side
            for j, w in enumerate(map(scale, cfg.fc_widths), start=6):
                if cfg.dropout > 0:
                    head.append((f"drop{j}", nn.Dropout(cfg.dropout)))
                head += [(f"fc{j}", nn.Linear(width, w)), (f"fact{j}", act())]
                width = w
        head.append(("classifier", nn.Linear(width, num_classes)))
        self.head = nn.Sequential(OrderedDict(head))
        self.reset_parameters(cfg.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)

    def layer(self, name: str) -> nn.Module:
        """A layer by its paper name: conv1..conv5, fc6, fc7, classifier, or features."""
        if name == "features":
            return self.features
        return getattr(self.features, name, None) or getattr(self.head, name)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        """Initialise weights: default (PyTorch), kaiming, xavier or paper (N(0, 0.01), some biases 1)."""
        if init == "default":
            return
        n_conv = len(self.cfg.conv_channels)
        # Paper: biases 1 in conv2, conv4, conv5 and the hidden FC layers (kick-starts ReLUs), 0 elsewhere.
        ones = {f"conv{i}" for i in (2, 4, 5) if i <= n_conv} | {f"fc{j}" for j in range(6, 6 + len(self.cfg.fc_widths))}
        for name, m in list(self.features.named_children()) + list(self.head.named_children()):
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if init == "paper":
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)
            elif init == "kaiming":
                nonlin = "leaky_relu" if self.cfg.activation == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(m.weight, a=0.1 if nonlin == "leaky_relu" else 0, nonlinearity=nonlin)
                nn.init.zeros_(m.bias)
            elif init == "xavier":
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            else:
                raise AssertionError(init)


def build_model(cfg: ModelConfig, num_classes: int, image_size: int) -> AlexNet:
    """The one constructor used by train.py, evaluate.py and bench.py."""
    return AlexNet(cfg, num_classes, image_size)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
