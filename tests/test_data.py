import os

import pytest
import torch
from PIL import Image

import data as D
from config import DataConfig


def write_images(folder, n, size=(40, 36), fmt="JPEG", ext=".jpg", seed=0):
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        arr = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(os.path.join(folder, f"{i:04d}{ext}"), fmt)


def test_synthetic_is_deterministic_balanced_and_distinct():
    a = D.make_synthetic(200, 32, 10, seed=3)
    b = D.make_synthetic(200, 32, 10, seed=3)
    c = D.make_synthetic(200, 32, 10, seed=4)
    assert a.images.shape == (200, 32, 32, 3) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [20] * 10
    assert D.make_synthetic(20, 64, 4, seed=0).images.shape == (20, 64, 64, 3)


def test_image_folder_loader_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_images(root / "train" / "cat", 5)
    write_images(root / "train" / "dog", 4, fmt="PNG", ext=".png")
    write_images(root / "test" / "cat", 2)
    write_images(root / "test" / "dog", 2)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    cfg = DataConfig(name="folder", root=str(root), image_size=24, cache_dir=str(tmp_path / "cache"))
    train = D.load_split(cfg, "train")
    assert train.classes == ["cat", "dog"]
    assert train.images.shape == (9, 24, 24, 3) and train.labels.tolist() == [0] * 5 + [1] * 4
    assert D.load_split(cfg, "test").images.shape == (4, 24, 24, 3)

    # Second load comes from the cache without decoding anything.
    monkeypatch.setattr(D, "_decode_all", lambda *a: pytest.fail("cache was not used"))
    assert torch.equal(D.load_split(cfg, "train").images, train.images)
    monkeypatch.undo()

    # A cache whose content disagrees with its signature (damaged in place) is rebuilt, not trusted.
    cache = next((tmp_path / "cache").glob("folder-train-*.pt"))
    blob = torch.load(cache, weights_only=True)
    torch.save({**blob, "images": blob["images"][:3]}, cache)
    assert torch.equal(D.load_split(cfg, "train").images, train.images)
    torch.save({**blob, "labels": torch.zeros(9, dtype=torch.long)}, cache)
    assert D.load_split(cfg, "train").labels.tolist() == [0] * 5 + [1] * 4

    # Changing a file invalidates the cache.
    write_images(root / "train" / "dog", 1, seed=99, fmt="PNG", ext=".png")
    changed = D.load_split(cfg, "train")
    assert not torch.equal(changed.images[5], train.images[5])
    assert torch.equal(changed.images[6:], train.images[6:])


def test_image_folder_errors(tmp_path, monkeypatch):
    cfg = DataConfig(name="folder", root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(D.DataError, match="data.root"):
        D.load_split(cfg, "train")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(D.DataError, match="no images"):
        D.load_split(DataConfig(name="folder", root=str(tmp_path / "empty")), "train")
    bad = tmp_path / "bad" / "train" / "a"
    bad.mkdir(parents=True)
    (bad / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(D.DataError, match="cannot decode"):
        D.load_split(DataConfig(name="folder", root=str(tmp_path / "bad"), cache_dir=str(tmp_path / "c")), "train")
    # A decompression bomb (more pixels than PIL's limit allows; the limit lowered so the image stays small).
    write_images(tmp_path / "bomb" / "train" / "a", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(D.DataError, match="cannot decode.*remove or replace"):
        D.load_split(DataConfig(name="folder", root=str(tmp_path / "bomb"), cache_dir=str(tmp_path / "c")), "train")


def test_tinyimagenet_official_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        write_images(root / "train" / w / "images", 3, size=(64, 64), fmt="JPEG", ext=".JPEG")
    write_images(root / "val" / "images", 4, size=(64, 64), fmt="JPEG", ext=".JPEG")
    names = sorted(os.listdir(root / "val" / "images"))
    labels = [wnids[2], wnids[0], wnids[1], wnids[2]]
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in zip(names, labels)))
    cfg = DataConfig(name="tinyimagenet", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    train = D.load_split(cfg, "train")
    assert train.classes == wnids and train.images.shape == (9, 64, 64, 3)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    val = D.load_split(cfg, "test")
    assert val.labels.tolist() == [2, 0, 1, 2]


def test_cifar_offline_error_says_how_to_fix(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(D.DataError, match="data.root"):
        D.load_split(DataConfig(name="cifar10", root=str(tmp_path)), "train")


def test_split_is_seeded_balanced_and_disjoint():
    labels = torch.arange(1000) % 10
    tr, va = D.split_indices(labels, 0.1, 0, seed=0)
    tr2, va2 = D.split_indices(labels, 0.1, 0, seed=0)
    assert torch.equal(va, va2) and len(va) == 100 and len(tr) == 900
    assert torch.bincount(labels[va]).tolist() == [10] * 10
    assert not set(tr.tolist()) & set(va.tolist())
    sub, _ = D.split_indices(labels, 0.1, 55, seed=0)
    assert len(sub) == 55 and torch.bincount(labels[sub]).max() - torch.bincount(labels[sub]).min() <= 1
    assert not torch.equal(D.split_indices(labels, 0.1, 0, seed=1)[1], va)


def stats_for(images):
    return D.compute_stats(images)


def test_augmentation_shapes_dtype_and_seeded_determinism():
    imgs = D.make_synthetic(16, 32, 10, seed=0).images
    stats = stats_for(imgs)
    aug = D.train_augment(DataConfig(crop_padding=4, flip=True, pca_lighting=0.1, color_jitter=0.4, cutout=8), False)
    a = D.prepare(imgs, stats, aug, torch.Generator().manual_seed(5))
    b = D.prepare(imgs, stats, aug, torch.Generator().manual_seed(5))
    c = D.prepare(imgs, stats, aug, torch.Generator().manual_seed(6))
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = D.prepare(imgs, stats, channels_last=False)
    assert plain.is_contiguous()
    # Normalisation uses the training statistics: the un-augmented set is ~zero-mean, unit-std.
    assert plain.mean((0, 2, 3)).abs().max() < 1e-3 and (plain.std((0, 2, 3)) - 1).abs().max() < 1e-2


def test_crop_flip_moves_pixels_exactly():
    x = torch.arange(2 * 5 * 6 * 3, dtype=torch.uint8).reshape(2, 5, 6, 3)
    g = torch.Generator().manual_seed(0)
    flipped = D.crop_flip(x, 0, True, g)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(1))
    # With padding p every output is a p-bounded translation of the input, zero-filled at the border.
    out = D.crop_flip(x, 2, False, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(out[i], padded[i, dy:dy + 5, dx:dx + 6]) for dy in range(5) for dx in range(5))
    # Flips happen about half the time.
    many = torch.arange(6, dtype=torch.uint8).reshape(1, 1, 6, 1).expand(1000, 1, 6, 1)
    share = (D.crop_flip(many, 0, True, torch.Generator().manual_seed(2))[:, 0, 0, 0] == 5).float().mean()
    assert 0.4 < share < 0.6


def test_pca_lighting_is_a_per_image_colour_shift():
    imgs = D.make_synthetic(8, 16, 10, seed=0).images
    stats = stats_for(imgs)
    base = D.prepare(imgs, stats)
    lit = D.prepare(imgs, stats, D.Augment(pca_lighting=0.1), torch.Generator().manual_seed(0))
    diff = (lit - base) * stats.std[None, :, None, None]  # back to [0, 1] pixel units
    assert diff.abs().max() > 0
    # The same RGB offset is added to every pixel of an image.
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-5)


def test_cutout_zeroes_a_square():
    x = torch.ones(64, 16, 16, 3)
    out = D.cutout(x, 6, torch.Generator().manual_seed(0))
    zeros = out == 0
    assert torch.equal(zeros, zeros[..., :1].expand_as(zeros))  # all channels of a pixel together
    for img in zeros[..., 0]:
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        # One axis-aligned rectangle, filled: a 6 x 6 square, cut only where it crosses the border.
        assert img.sum() == len(rows) * len(cols) and img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        for idx in (rows, cols):
            assert torch.equal(idx, torch.arange(idx[0], idx[-1] + 1))
            assert len(idx) == 6 or (idx[0] == 0 or idx[-1] == 15) and 3 <= len(idx) < 6, idx
    whole = [img.sum() == 36 for img in zeros[..., 0]]
    assert sum(whole) > 20  # most squares lie inside the 16 x 16 image
    # Streamed batches arrive cropped and flipped by the workers; the device only does the rest.
    cfg = DataConfig(crop_padding=4, flip=True, cutout=6)
    assert D.train_augment(cfg, streamed=True) == D.Augment(cutout=6)
    assert D.train_augment(cfg, streamed=False) == D.Augment(crop_padding=4, flip=True, cutout=6)


def _ops(x, name, m):
    B = x.shape[0]
    return D.trivial_ops(x, torch.full((B,), D.TRIVIAL_OPS.index(name)), torch.full((B,), float(m)))


def test_trivial_augment_ops_match_torchvision_by_hand():
    """Each batched TrivialAugmentWide op at a fixed magnitude against torchvision's functional op (or, for
    the warps and equalize, against what the op must do), on (B, H, W, 3) floats in [0, 1]."""
    import torchvision.transforms.v2.functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 16, 16, 3), generator=g).float() / 255
    chw = x.permute(0, 3, 1, 2)
    back = lambda y: y.permute(0, 2, 3, 1)  # noqa: E731
    m = 0.5  # enhance factor 1 + 0.99 m
    for name, ref in (("brightness", TF.adjust_brightness), ("color", TF.adjust_saturation),
                      ("contrast", TF.adjust_contrast), ("sharpness", TF.adjust_sharpness)):
        for sign in (1, -1):
            want = back(torch.stack([ref(img, 1 + 0.99 * m * sign) for img in chw]))
            assert torch.allclose(_ops(x, name, m * sign), want, atol=1e-5), name
    assert torch.equal(_ops(x, "solarize", 0.25), back(TF.solarize(chw, 0.75)))
    assert torch.allclose(_ops(x, "autocontrast", 0.7), back(TF.autocontrast(chw)), atol=1e-6)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 3, 1, 2)
    assert torch.equal((_ops(x, "posterize", 0.5) * 255).round().to(torch.uint8), back(TF.posterize(u8, 5)))
    assert torch.equal(_ops(x, "identity", 0.9), x) and torch.equal(_ops(x, "posterize", 0.0), x)
    # Warps: 1/32 of the wide range is a one-pixel shift (zero fill); 90 of 135 degrees is an exact rot90.
    shifted = _ops(x, "translate_x", 1 / 32)
    assert torch.equal(shifted[:, :, :-1], x[:, :, 1:]) and torch.equal(shifted[:, :, -1], torch.zeros_like(x[:, :, -1]))
    assert torch.equal(_ops(x, "translate_y", -1 / 32)[:, 1:], x[:, :-1])
    turned = _ops(x, "rotate", 90 / 135)
    assert any(torch.equal(turned, torch.rot90(x, k, (1, 2))) for k in (1, -1))
    assert torch.equal(_ops(x, "shear_x", 0.0), x)
    # Equalize: a flat channel stays flat; a two-level channel is stretched to the full range.
    two = torch.zeros(1, 4, 4, 3)
    two[:, :2] = 0.4
    two[..., 2] = 0.3
    eq = _ops(two, "equalize", 0.0)
    assert torch.equal(eq[..., 2], two[..., 2]) and set(eq[..., 0].unique().tolist()) == {0.0, 1.0}


def test_trivial_augment_is_per_image_seeded_and_on_the_batch_path():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 12, 12, 3), generator=g, dtype=torch.uint8)
    stats = D.Stats(torch.full((3,), 0.5), torch.full((3,), 0.25), torch.ones(3), torch.eye(3))
    aug = D.Augment(auto_augment="trivial")
    a = D.prepare(x, stats, aug, torch.Generator().manual_seed(3))
    b = D.prepare(x, stats, aug, torch.Generator().manual_seed(3))
    plain = D.prepare(x, stats)
    assert a.shape == plain.shape == (64, 3, 12, 12) and a.dtype == torch.float32 and torch.equal(a, b)
    changed = (a != plain).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1.0  # identity, zero magnitudes and the like leave some images alone
    assert not torch.equal(a, D.prepare(x, stats, aug, torch.Generator().manual_seed(4)))
    assert ((a * 0.25 + 0.5) >= -1e-6).all() and ((a * 0.25 + 0.5) <= 1 + 1e-6).all()  # still images in [0, 1]
    assert D.train_augment(DataConfig(auto_augment="trivial"), streamed=True).auto_augment == "trivial"


def test_tinyimagenet_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as U

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(U, "download_and_extract_archive", offline)
    with pytest.raises(D.DataError, match="wnids.txt"):
        D.load_split(DataConfig(name="tinyimagenet", root=str(tmp_path)), "train")


def test_streaming_folder_loader_trains_and_evaluates(tmp_path, tiny):
    """ImageNet-style path: real JPEG files decoded by DataLoader workers, random crops of resized images."""
    import train as T
    from config import load_config
    from evaluate import evaluate

    root = tmp_path / "imnet"
    for c, cls in enumerate(("n01", "n02", "n03")):
        write_images(root / "train" / cls, 12, size=(48 + 4 * c, 40), seed=c)
        write_images(root / "val" / cls, 2, size=(40, 44), seed=10 + c)
    cfg = DataConfig(name="folder", root=str(root), image_size=24, resize=28, loader="stream", num_workers=2,
                     flip=True)
    full = D.load_split(cfg, "train")
    assert full.images is None and len(full.files) == 36
    ds = D.FileDataset(full.files, full.labels, cfg, train=True)
    ds.seed = 3
    a, b = ds[5][0], ds[5][0]
    assert a.shape == (24, 24, 3) and a.dtype == torch.uint8 and torch.equal(a, b)  # seeded per epoch and item
    assert D.FileDataset(full.files, full.labels, cfg, train=False)[5][0].shape == (28, 28, 3)
    assert D.streaming(DataConfig(name="folder", memory_gb=1e-6), 10)  # auto streams what does not fit
    assert not D.streaming(DataConfig(name="folder"), 10)

    run = T.train(load_config(None, tiny("data.name=folder", f"data.root={root}", "data.loader=stream",
                                         "data.image_size=24", "data.resize=28", "data.num_workers=2",
                                         "data.batch_size=8", "data.val_fraction=0.25", "data.pca_lighting=0.1",
                                         "data.flip=true")))
    assert run["epochs"] == 2 and 0 <= run["final_val_top1"] <= 1
    r = evaluate(run["last_checkpoint"], "val", "none")
    assert r["n"] == 9 and r["top1"] == pytest.approx(run["final_val_top1"], abs=1e-6)
    assert evaluate(run["last_checkpoint"], "val", "ten_crop")["n"] == 9
    assert evaluate(run["last_checkpoint"], "test", "ten_crop")["n"] == 6  # ImageNet-style val/ folder
