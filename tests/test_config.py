import os

import pytest
import yaml

from config import Config, ConfigError, flat_items, load_config, markdown_reference, save_config, to_dict


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_then_yaml_chain_then_overrides(tmp_path):
    write(tmp_path / "base.yaml", "name: base\noptim:\n  lr: 0.1\n  momentum: 0.5\nmodel:\n  dropout: 0.3\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\noptim:\n  lr: 0.2\n")
    cfg = load_config(child, ["optim.lr=0.3", "model.fc_widths=[64, 32]", "data.flip=true"])
    assert cfg.name == "child"  # child beats base
    assert cfg.optim.lr == 0.3  # override beats child
    assert cfg.optim.momentum == 0.5  # base survives where nothing overrides it
    assert cfg.model.dropout == 0.3
    assert cfg.model.fc_widths == [64, 32] and cfg.data.flip is True
    assert cfg.optim.weight_decay == Config().optim.weight_decay  # untouched default


def test_float_written_without_dot_and_int_for_float(tmp_path):
    f = write(tmp_path / "c.yaml", "optim:\n  lr: 1e-3\n  weight_decay: 0\n")
    cfg = load_config(f)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.weight_decay, float)


def test_off_unquoted_is_the_string_off(tmp_path):
    # YAML 1.1 reads a bare `off` as False; `train.amp: off` must still mean fp32, in a file or an override.
    assert load_config(write(tmp_path / "c.yaml", "train:\n  amp: off\n")).train.amp == "off"
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp.*boolean.*auto"):  # `on` is not a choice: named, not guessed
        load_config(None, ["train.amp=on"])
    with pytest.raises(ConfigError, match="name: expected a string.*quote it"):  # free text: no guessing
        load_config(write(tmp_path / "n.yaml", "name: yes\n"))
    with pytest.raises(ConfigError, match=r"model.freeze\[1\]: expected a string.*quote it"):  # inside a list too
        load_config(write(tmp_path / "f.yaml", "model:\n  freeze: [conv1, on]\n"))


@pytest.mark.parametrize("override, words", [
    (["optim.lrr=0.1"], ["optim.lrr", "optim.lr"]),
    (["modle.dropout=0.1"], ["modle", "model"]),
    (["optim.lr=fast"], ["optim.lr", "float"]),
    (["data.batch_size=1.5"], ["data.batch_size", "int"]),
    (["data.flip=3"], ["data.flip", "bool"]),
    (["model.fc_widths=5"], ["model.fc_widths", "list"]),
    (["optim.lr=-0.1"], ["optim.lr", "> 0"]),
    (["model.dropout=1.0"], ["model.dropout", "[0, 1)"]),
    (["model.activation=tanh"], ["model.activation", "relu", "gelu", "silu", "leaky_relu"]),
    (["data.name=imagenet21k"], ["data.name", "folder"]),
    (["model.conv_kernels=[3,3]"], ["model.conv_kernels", "5 entries"]),
    (["model.conv_groups=[1,3,1,1,1]"], ["conv2", "groups=3"]),
    (["model.freeze=[conv9]"], ["model.freeze", "conv9"]),
    (["sched.milestones=[30,20]"], ["sched.milestones", "increasing"]),
    (["train.amp=fp8"], ["train.amp", "bf16"]),
    (["sched.name=plateau", "sched.warmup_epochs=2"], ["warmup", "plateau"]),
    (["optim.lr"], ["key=value"]),
])
def test_rejections_name_the_key_and_fix(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "optim: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="loops"):
        load_config(write(tmp_path / "loop.yaml", "extends: loop.yaml\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/cifar10_best.yaml", ["optim.lr=0.05", "data.name=synthetic"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(cfg)


def test_every_preset_loads():
    import glob

    presets = [p for p in glob.glob("configs/*.yaml") if not os.path.basename(p).startswith("sweep")]
    assert len(presets) >= 10
    for path in presets:
        load_config(path)


def test_seed_cifar10_presets_match_the_table():
    best = load_config("configs/cifar10_best.yaml")
    assert (best.train.epochs, best.data.batch_size, best.optim.lr, best.optim.momentum) == (40, 256, 0.1, 0.9)
    assert best.sched.name == "multistep" and best.sched.milestones == [20, 30] and best.sched.gamma == 0.1
    assert best.model.norm == "lrn" and best.model.pool == "max" and best.model.dropout == 0.5
    assert best.data.crop_padding == 4 and best.data.flip
    base = load_config("configs/cifar10_baseline.yaml")
    assert base.model.dropout == 0 and not base.data.flip and base.data.crop_padding == 0
    assert base.train.epochs == 20
    assert base.model.conv_channels == [96, 128, 256, 128, 128] and base.model.fc_widths == [1024, 512]


def test_readme_config_reference_lists_every_key_with_its_default():
    readme = open("README.md").read()
    for key, _, default, _ in flat_items():
        assert f"`{key}`" in readme, f"README's config reference misses {key}; regenerate it with python config.py"
    # Every row, default and meaning included, is the generated one: a changed default cannot go stale.
    section = readme.split("| key | type | default | meaning |\n|---|---|---|---|\n", 1)[1]
    rows = section.split("\n\n", 1)[0].splitlines()
    assert rows == markdown_reference().splitlines()[2:], "README's config reference is stale; run python config.py"


def test_readme_names_every_key_a_resume_may_change():
    from config import RESUME_KEYS

    readme = open("README.md").read()
    para = readme[readme.index("A resume continues *the same* run."):]
    para = para[:para.index("\n\n")]
    named = {k for k in RESUME_KEYS if k not in ("name", "out_dir", "run_dir")}  # paths/labels, not options
    assert {k for k in named if f"`{k}`" in para} == named


def test_experiment_hparams_are_the_axes_and_a_sweeps_keys_come_first():
    from config import EXPERIMENT_KEYS, experiment_hparams

    cfg = load_config("configs/cifar10_best.yaml")
    plain = experiment_hparams(cfg)
    assert list(plain) == list(EXPERIMENT_KEYS) and len(plain) <= 29
    assert all(isinstance(v, (int, float, str, bool)) for v in plain.values())
    assert plain["sched.milestones"] == "[20, 30]"
    swept = experiment_hparams(cfg, ("data.resize", "optim", "model.dropout"))
    assert list(swept)[:2] == ["data.resize", "optim.name"] and "optim.betas" in swept  # a section: all its keys
    assert list(swept).count("model.dropout") == 1
