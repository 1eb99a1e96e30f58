import pytest
import torch

import train as T
from config import load_config


def weights(path):
    return T.load_checkpoint(path)["model"]


def test_finetune_new_head_with_frozen_features(tiny, tmp_path):
    src = T.train(load_config(None, tiny("data.synthetic_classes=5", f"run_dir={tmp_path / 'src'}",
                                         "model.norm=batch")))
    cfg = load_config(None, tiny(f"model.init_from={src['last_checkpoint']}", "model.freeze=[features]",
                                 "optim.head_lr_mult=10", f"run_dir={tmp_path / 'dst'}", "model.norm=batch"))
    out = T.train(cfg)
    before, after = weights(src["last_checkpoint"]), weights(out["last_checkpoint"])
    assert after["head.classifier.weight"].shape == (10, 32) and before["head.classifier.weight"].shape == (5, 32)
    for k, v in before.items():
        if k.startswith("features."):  # frozen convs and their BatchNorm statistics are bit-identical
            assert torch.equal(v, after[k]), k
    for k in ("head.fc6.weight", "head.fc7.weight"):  # trainable layers moved
        assert not torch.equal(before[k], after[k]), k
    groups = T.load_checkpoint(out["last_checkpoint"])["optimizer"]["param_groups"]
    assert sorted(g["lr"] for g in groups) == pytest.approx([0.05, 0.05, 0.5, 0.5])


def test_unfrozen_finetune_moves_every_layer(tiny, tmp_path):
    src = T.train(load_config(None, tiny("data.synthetic_classes=5", f"run_dir={tmp_path / 'src'}")))
    out = T.train(load_config(None, tiny(f"model.init_from={src['last_checkpoint']}", f"run_dir={tmp_path / 'b'}")))
    before, after = weights(src["last_checkpoint"]), weights(out["last_checkpoint"])
    assert not torch.equal(before["features.conv1.weight"], after["features.conv1.weight"])


def test_mismatched_body_layer_is_a_clear_error(tiny, tmp_path):
    src = T.train(load_config(None, tiny(f"run_dir={tmp_path / 'src'}")))
    cfg = load_config(None, tiny(f"model.init_from={src['last_checkpoint']}", "model.conv_channels=[8,16,24,16,16]"))
    with pytest.raises(T.CheckpointError, match=r"features.conv3.weight.*\(16, 16, 3, 3\).*\(24, 16, 3, 3\)"):
        T.train(cfg)
