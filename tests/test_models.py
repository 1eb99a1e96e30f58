import itertools

import pytest
import torch
from torch import nn

from config import ModelConfig, load_config
from models import LRN, AlexNet, build_model, count_params, lrn_band, reference_lrn

CIFAR = dict(conv_channels=[16, 24, 32, 24, 16], conv_kernels=[5, 5, 3, 3, 3], conv_strides=[1] * 5,
             conv_paddings=[2, 2, 1, 1, 1], conv_groups=[1] * 5, pool_kernel=2, pool_stride=2, fc_widths=[64, 32])


def lrn_formula(x: torch.Tensor, n=5, alpha=1e-4, beta=0.75, k=2.0) -> torch.Tensor:
    """The paper's formula, literally: b_c = a_c / (k + alpha * sum_{window} a^2)^beta."""
    C = x.shape[1]
    out = torch.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - n // 2), min(C - 1, c + (n - 1) // 2)
        out[:, c] = x[:, c] / (k + alpha * (x[:, lo:hi + 1] ** 2).sum(1)) ** beta
    return out


@pytest.mark.parametrize("n, alpha, beta, k", [(5, 1e-4, 0.75, 2.0), (3, 0.01, 0.5, 1.0), (4, 0.002, 0.75, 2.0)])
def test_lrn_equals_formula_forward_and_backward(n, alpha, beta, k):
    torch.manual_seed(0)
    x64 = (torch.randn(3, 12, 6, 7, dtype=torch.float64) * 8).requires_grad_()
    g = torch.randn(3, 12, 6, 7, dtype=torch.float64)
    ref = lrn_formula(x64, n, alpha, beta, k)
    (ref * g).sum().backward()
    for channels_last in (False, True):
        x32 = x64.detach().float()
        if channels_last:
            x32 = x32.contiguous(memory_format=torch.channels_last)
        x32.requires_grad_()
        y = LRN(n, alpha, beta, k)(x32)
        (y * g.float()).sum().backward()
        assert rel_err(y, ref) < 1e-5
        assert rel_err(x32.grad, x64.grad) < 1e-5


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Elementwise relative error; near-zero entries (below 1% of the tensor's scale) are judged against that scale."""
    scale = ref.abs().clamp_min(0.01 * ref.abs().max())
    return ((got.double() - ref).abs() / scale).max().item()


def test_lrn_gradcheck_and_builtin_mapping():
    torch.manual_seed(1)
    x = (torch.randn(2, 7, 3, 3, dtype=torch.float64) * 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: LRN(5, 1e-2, 0.75, 2.0)(t), (x,))
    # The paper's alpha multiplies the window sum; nn.LocalResponseNorm's multiplies the mean (alpha / n).
    builtin = reference_lrn(5, 1e-4, 0.75, 2.0)
    assert builtin.alpha == pytest.approx(5e-4)
    y = torch.randn(4, 16, 5, 5, dtype=torch.float64) * 10
    torch.testing.assert_close(LRN()(y), builtin(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(LRN()(y), lrn_formula(y), rtol=1e-12, atol=1e-12)


def test_lrn_band_window():
    band = lrn_band(6, 5)[:, :, 0, 0]
    assert band[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert band[3].tolist() == [0, 1, 1, 1, 1, 1]


OPTIONS = {
    "activation": ["relu", "leaky_relu", "gelu", "silu"],
    "norm": ["lrn", "batch", "layer", "none"],
    "pool": ["max", "avg"],
    "head": ["fc", "gap"],
    "init": ["default", "kaiming", "xavier", "paper"],
}


@pytest.mark.parametrize("axis, value", [(a, v) for a, vs in OPTIONS.items() for v in vs])
def test_every_option_builds_and_shapes(axis, value):
    cfg = ModelConfig(**CIFAR, **{axis: value})
    model = AlexNet(cfg, num_classes=7, image_size=32)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    y = model(x)
    assert y.shape == (3, 7)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("pool_kernel, pool_stride, dropout, groups", itertools.product([2, 3], [2], [0.0, 0.5], [1, 2]))
def test_geometry_options(pool_kernel, pool_stride, dropout, groups):
    cfg = ModelConfig(**{**CIFAR, "pool_kernel": pool_kernel, "pool_stride": pool_stride,
                         "conv_groups": [1, groups, 1, groups, groups]}, dropout=dropout)
    model = AlexNet(cfg, 10, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.features.conv2.groups == groups
    assert any(isinstance(m, nn.Dropout) for m in model.modules()) == (dropout > 0)


def test_paper_alexnet_parameter_count_and_shape():
    cfg = load_config("configs/paper_alexnet.yaml")
    model = build_model(cfg.model, 1000, cfg.data.image_size)
    # 60,965,224: the paper's two-tower net (groups=2 on conv2/4/5), 227x227 input, 6x6x256 into fc6.
    assert count_params(model) == 60_965_224
    assert model.feature_shape == (256, 6, 6)
    assert model(torch.randn(1, 3, 227, 227)).shape == (1, 1000)


def test_seed_cifar_nets_build():
    for preset, classes in (("configs/cifar10_best.yaml", 10), ("configs/cifar100.yaml", 100)):
        cfg = load_config(preset)
        model = build_model(cfg.model, classes, 32)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, classes)
    tiny = load_config("configs/tinyimagenet.yaml")
    assert build_model(tiny.model, 200, 64)(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_paper_init_statistics():
    torch.manual_seed(0)
    cfg = load_config("configs/paper_alexnet.yaml").model
    model = build_model(cfg, 1000, 227)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "classifier"):
        layer = model.layer(name)
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.01, rel=0.03), name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == expected_bias), name


def test_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        build_model(load_config("configs/paper_alexnet.yaml").model, 10, 32)


def test_fast_model_computes_the_reference_models_function():
    """bench.py's reference net (built-in LRN, channels-first) and ours (fast LRN, channels_last) agree."""
    from bench import reference_model

    cfg = load_config("configs/cifar10_best.yaml")
    torch.manual_seed(0)
    ours = build_model(cfg.model, 10, 32).to(memory_format=torch.channels_last)
    ref = reference_model(cfg, 10, 32)
    ref.load_state_dict(ours.state_dict())
    assert any(isinstance(m, nn.LocalResponseNorm) for m in ref.modules())
    assert any(isinstance(m, LRN) for m in ours.modules())
    ours.eval(), ref.eval()
    x = torch.randn(4, 3, 32, 32)
    y_ours = ours(x.contiguous(memory_format=torch.channels_last))
    y_ref = ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-4, atol=1e-5)
    y_ours.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(ours.features.conv1.weight.grad, ref.features.conv1.weight.grad, rtol=1e-3, atol=1e-5)


def test_seed_preset_is_the_seeds_network():
    """cifar10_best = the seed's code: PyTorch's default init and nn.LocalResponseNorm(5, 1e-4, 0.75, 2)."""
    cfg = load_config("configs/cifar10_best.yaml")
    torch.manual_seed(0)
    net = build_model(cfg.model, 10, 32)
    torch.manual_seed(0)
    seed = nn.Sequential(*(nn.Conv2d(i, o, k, padding=k // 2) for i, o, k in
                           zip([3, 96, 128, 256, 128], [96, 128, 256, 128, 128], [5, 5, 3, 3, 3])))
    for i, ref in enumerate(seed, start=1):
        conv = net.layer(f"conv{i}")
        # Same generator draws in the same order: default init is bit-identical to a plain nn.Conv2d.
        torch.testing.assert_close(conv.weight, ref.weight, rtol=0, atol=0)
        bound = 1 / (ref.weight[0].numel() ** 0.5)  # kaiming_uniform(a=sqrt(5)) -> U(-b, b), std b / sqrt(3)
        assert conv.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
        assert conv.bias.abs().max().item() <= bound
    assert net.layer("conv1").weight.std().item() == pytest.approx(0.0667, abs=0.002)  # kaiming: 0.163
    # The LRN on real conv1 activations of images, against the seed's module.
    x = torch.rand(8, 3, 32, 32) * 4 - 2
    with torch.no_grad():
        a = net.features.act1(net.layer("conv1")(x)) * 30  # large activations, where LRN's alpha matters
        want = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
        got = net.features.norm1(a)
    assert (want - a).abs().max() > 1e-2  # the normalisation is not a no-op at this scale
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The paper's preset keeps the paper's alpha on the sum (5x the seed's).
    paper = build_model(load_config("configs/paper_alexnet.yaml").model, 10, 227)
    assert paper.features.norm1.alpha == pytest.approx(1e-4)
    assert net.features.norm1.alpha == pytest.approx(2e-5)
