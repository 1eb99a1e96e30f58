import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = [
    "data.name=synthetic", "data.synthetic_size=600", "data.batch_size=32", "data.eval_batch_size=200",
    "data.val_fraction=0.2", "model.conv_channels=[8,16,16,16,16]", "model.conv_kernels=[3,3,3,3,3]",
    "model.conv_strides=[1,1,1,1,1]", "model.conv_paddings=[1,1,1,1,1]", "model.conv_groups=[1,1,1,1,1]",
    "model.pool_kernel=2", "model.pool_stride=2", "model.fc_widths=[32,32]", "model.init=kaiming",
    "optim.lr=0.05", "sched.name=none", "train.epochs=2", "train.progress=false", "device=cpu",
]


@pytest.fixture
def tiny(tmp_path):
    """Dotted overrides for a seconds-long CPU run on the synthetic dataset, writing under tmp_path."""
    def make(*extra: str) -> list[str]:
        return TINY + [f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *extra]
    return make


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """Tests read configs/ and README.md relative to the repository root."""
    monkeypatch.chdir(ROOT)
