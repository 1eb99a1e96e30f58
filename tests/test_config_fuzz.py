"""Fuzz the config loader: random YAML documents and override strings either build a valid Config or raise
ConfigError (a one-line user error), never anything else."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import Config, ConfigError, flatten, load_config, to_dict

KEYS = sorted(flatten(to_dict(Config())))  # every real dotted key, so many documents get past the key check
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["relu", "lrn", "cosine", "inf", ".nan", "1e-3", "on"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
key = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=12))


def loads_or_config_error(**kw):
    try:
        cfg = load_config(**kw)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return
    assert isinstance(cfg, Config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(key, values, max_size=5))
def test_random_yaml_documents(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    except yaml.YAMLError:
        return
    loads_or_config_error(path=str(path))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(key, st.text(max_size=12)), max_size=4))
def test_random_override_strings(pairs):
    loads_or_config_error(overrides=[f"{k}={v}" for k, v in pairs])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_random_text_as_a_config_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "t.yaml"
    path.write_text(text)
    loads_or_config_error(path=str(path))
