"""Layer health and the conv1 filter grid (health.py), and that measuring them leaves training unchanged."""
import math
import os

import torch

import evaluate as E
import health
import train as T
from config import load_config
from models import build_model


def net(**overrides):
    cfg = load_config("configs/quickstart.yaml", [f"model.{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    return build_model(cfg.model, 10, 32)


def test_dead_fraction_is_one_for_a_zeroed_layer_and_below_one_for_a_fresh_net():
    model = net()
    probe = torch.rand(16, 3, 32, 32) * 2 - 1
    fresh = health.LayerHealth(model, probe).measure(0)
    assert all(0 <= s["dead_frac"] < 1 for name, s in fresh.items() if name != "classifier")
    assert "dead_frac" not in fresh["classifier"]  # no activation after it: logits, not units
    with torch.no_grad():
        model.features.conv3.weight.zero_()
        model.features.conv3.bias.zero_()
    h = health.LayerHealth(model, probe)
    broken = h.measure(7)
    assert broken["conv3"]["dead_frac"] == 1.0 and broken["conv3"]["act_std"] == 0.0
    assert broken["conv2"]["dead_frac"] < 1
    assert h.first_broken() == "conv3: 100% dead units since step 7"


def test_update_ratio_and_grad_norm_describe_the_last_step():
    model = net()
    probe = torch.rand(8, 3, 32, 32)
    h = health.LayerHealth(model, probe)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h.snapshot()
    before = model.head.fc6.weight.detach().clone()
    model(probe).logsumexp(1).mean().backward()
    grad = model.head.fc6.weight.grad.norm().item()
    opt.step()
    s = h.measure(1)["fc6"]
    assert math.isclose(s["grad_norm"], grad, rel_tol=1e-5)
    expected = (model.head.fc6.weight - before).norm() / before.norm()  # = lr * |grad| / |w| for plain SGD
    assert math.isclose(s["update_ratio"], expected.item(), rel_tol=1e-5) and s["update_ratio"] > 0
    assert math.isclose(s["weight_norm"], model.head.fc6.weight.norm().item(), rel_tol=1e-6)


def test_filter_grid_has_one_tile_per_conv1_filter():
    w = torch.randn(10, 3, 5, 5)
    grid = health.filter_grid(w)
    assert grid.shape == (3, 3 * 6 + 1, 4 * 6 + 1)  # 10 filters: 4 columns x 3 rows of 5x5 tiles, 1-px gaps
    tiles = [grid[:, 1 + r * 6:6 + r * 6, 1 + c * 6:6 + c * 6] for r in range(3) for c in range(4)]
    for i in range(10):  # each filter min-max scaled on its own
        f = w[i]
        assert torch.allclose(tiles[i], (f - f.min()) / (f.max() - f.min()), atol=1e-6)
        assert tiles[i].min() == 0 and tiles[i].max() == 1
    assert all(bool((t == 1).all()) for t in tiles[10:])  # the two spare slots stay blank
    assert health.filter_grid(w, scale=4).shape == (3, 3 * 21 + 1, 4 * 21 + 1)


def test_diagnostics_do_not_change_training_and_are_logged(tiny, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["data.crop_padding=2", "data.flip=true", "model.dropout=0.5", "model.norm=batch",
            "train.diagnostics_every=3"]
    on = T.train(load_config(None, tiny(f"run_dir={tmp_path / 'on'}", *args)))
    off = T.train(load_config(None, tiny(f"run_dir={tmp_path / 'off'}", *args, "train.diagnostics=false")))
    a = torch.load(on["last_checkpoint"], weights_only=True)["model"]
    b = torch.load(off["last_checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and BatchNorm statistics alike

    acc = EventAccumulator(on["run_dir"])
    acc.Reload()
    layer_tags = [t for t in acc.Tags()["scalars"] if t.startswith("layers/")]
    assert len(layer_tags) >= 5 and "layers/conv2/dead_frac" in layer_tags and "layers/fc6/update_ratio" in layer_tags
    assert [s.step for s in acc.Scalars("layers/conv1/act_std")] == [1, 2]  # per epoch, like every other curve
    assert any("conv1" in t for t in acc.Tags()["images"])
    first = EventAccumulator(os.path.join(on["run_dir"], "first_epoch"))
    first.Reload()
    assert [s.step for s in first.Scalars("layers/conv1/dead_frac")] == [3, 6, 9, 12, 15]  # 15 steps in epoch 1
    assert not [f for f in os.listdir(off["run_dir"]) if f == "first_epoch"]

    import report
    assert report.main(["--health", f"on={on['run_dir']}", "--docs", str(tmp_path / "docs")]) == 0
    assert (tmp_path / "docs" / "layer_health.png").read_bytes()[:4] == b"\x89PNG"
    assert report.main(["--health", off["run_dir"], "--docs", str(tmp_path / "docs")]) == 2  # nothing recorded

    assert E.main([on["last_checkpoint"], "--filters"]) == 0
    png = os.path.join(on["run_dir"], "conv1_filters.png")
    assert open(png, "rb").read(4) == b"\x89PNG" and png in capsys.readouterr().out
