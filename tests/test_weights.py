"""The released checkpoints under weights/: what REPORT.md promises about each file holds for the file in git."""
import glob
import hashlib
import os
import shutil

import pytest
import torch
from PIL import Image

import evaluate as E
from train import load_checkpoint

RELEASED = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "*.pt")))


def test_the_two_released_recipes_are_there():
    names = [os.path.basename(p) for p in RELEASED]
    assert any("cifar10_best" in n for n in names) and any("cifar10_modern" in n for n in names), names


@pytest.mark.parametrize("path", RELEASED, ids=os.path.basename)
def test_released_file_is_small_fp16_and_listed_in_the_report(path):
    assert os.path.getsize(path) < 8 * 2**20
    ckpt = load_checkpoint(path)
    assert "optimizer" not in ckpt and "rng" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["config"]["name"] in os.path.basename(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open("REPORT.md") as f:
        report = f.read()
    assert f"`weights/{os.path.basename(path)}`" in report and digest in report


@pytest.mark.parametrize("path", RELEASED, ids=os.path.basename)
def test_evaluate_scores_a_released_file_on_an_image_folder(path, tmp_path, capsys):
    """What a user does after a fresh clone: `python evaluate.py weights/<file>.pt data.root=<their images>`."""
    classes = load_checkpoint(path)["classes"]
    g = torch.Generator().manual_seed(0)
    for c in classes:  # ten 32px JPEGs per class in the class-folder layout train/<class>/*.jpg
        os.makedirs(tmp_path / "images" / "train" / c)
        for i in range(10):
            arr = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / "images" / "train" / c / f"{i:04d}.jpg", "JPEG")
    ckpt = shutil.copy(path, tmp_path)  # evaluate.py writes its confusion PNG beside the checkpoint
    assert E.main([ckpt, f"data.root={tmp_path / 'images'}", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    out = capsys.readouterr().out
    assert "on val (n=10, tta=none): top-1" in out and all(c in out for c in classes)
    assert os.path.isfile(tmp_path / "confusion_val.png")
