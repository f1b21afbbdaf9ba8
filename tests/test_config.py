import pytest
import yaml

from karpalign.config import ConfigError, load_config, save_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  embed_dim: 64\ntrain:\n  steps: 10\n")
    cfg = load_config(str(path), ["train.steps=20", "model.score=defrag", "train.mixed_precision=true",
                                  "train.learning_rate=1e-3"])
    assert cfg.model.embed_dim == 64 and cfg.train.steps == 20 and cfg.model.score == "defrag"
    assert cfg.train.mixed_precision is True and cfg.train.learning_rate == pytest.approx(1e-3)
    out = save_config(cfg, str(tmp_path / "run"))
    assert yaml.safe_load(open(out))["train"]["steps"] == 20


@pytest.mark.parametrize("override, msg", [
    ("train.stepz=1", "unknown config key 'train.stepz'"),
    ("train.steps=abc", "train.steps: expected an integer"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.mixed_precision=maybe", "expected true/false"),
    ("trainsteps", "expected KEY=VALUE"),
    ("train=3", "train: expected a mapping"),
])
def test_bad_overrides(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [override])


def test_bad_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {embed_dim: [1}\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(path))
    path.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown config key 'modle'"):
        load_config(str(path))


def test_yaml_boolean_key_gets_a_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  on: regions\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(str(path))
    path.write_text('train:\n  "on": regions\n')
    assert load_config(str(path)).train.on == "regions"
