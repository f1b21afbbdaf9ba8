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


# ---- resolving --config: a file, or a packaged recipe's name ---------------------------------------------------


def test_recipe_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
    import os

    import karpalign
    from karpalign.config import config_path, open_config, packaged_recipes

    monkeypatch.chdir(tmp_path)  # nothing named like a recipe here
    packaged = os.path.join(os.path.dirname(os.path.abspath(karpalign.__file__)), "configs")
    recipes = packaged_recipes()
    assert {"coco", "coco_caption", "demo", "flickr8k", "flickr8k_caption", "flickr30k", "flickr30k_caption",
            "scenes"} <= set(recipes)
    for name in recipes:
        assert os.path.samefile(config_path(name), os.path.join(packaged, f"{name}.yaml"))
        assert config_path(f"{name}.yaml") == config_path(name)
    with open_config("coco") as f:
        assert yaml.safe_load(f)["data"]["fold_restval"] is True
    cfg = load_config("coco", ["train.steps=3"])
    assert cfg.train.task == "align" and cfg.train.steps == 3 and cfg.data.fold_restval is True
    assert load_config("flickr8k_caption.yaml").train.optimizer == "rmsprop"


def test_an_existing_path_wins_over_a_recipe_name(tmp_path, monkeypatch):
    from karpalign.config import config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco.yaml").write_text("train:\n  steps: 7\n")  # a local file with a recipe's name
    assert config_path("coco.yaml") == "coco.yaml"
    assert load_config("coco.yaml").train.steps == 7 and load_config("coco.yaml").data.fold_restval is True
    assert load_config("coco").train.task == "align" and load_config("coco").train.steps != 7  # the recipe
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text("model:\n  embed_dim: 32\n")
    assert load_config("sub/run.yaml").model.embed_dim == 32
    assert load_config(tmp_path / "sub" / "run.yaml").model.embed_dim == 32  # os.PathLike too
    (tmp_path / "scenes").mkdir()  # a folder named like a recipe: the name still means the recipe
    assert load_config("scenes").train.optimizer == "adam"


@pytest.mark.parametrize("arg, state", [("cocoa", "not found"), ("cocoa.yaml", "not found"),
                                        ("configs/coco.yaml", "not found"), (".", "is a folder")])
def test_unknown_config_names_list_the_packaged_recipes(tmp_path, monkeypatch, arg, state):
    from karpalign.config import packaged_recipes

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"config file {arg} {state}") as e:
        load_config(arg)
    assert ", ".join(packaged_recipes()) in str(e.value) and "coco, coco_caption, demo" in str(e.value)


def test_train_cli_takes_a_recipe_name_or_a_path(tmp_path, monkeypatch, capsys):
    """karpalign-train --config NAME|PATH; the training itself is replaced by a stand-in that keeps the config."""
    import types

    from karpalign.cli.train import main
    from karpalign.training import loop

    seen = []

    def fake_train(cfg, task, progress=True):
        seen.append(cfg)
        return types.SimpleNamespace(steps=0, final_loss=None, best=None, seconds=0.0)

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    assert main(["--task", "align", "--config", "coco", "--no-progress"]) == 0
    assert seen[-1].data.fold_restval is True and seen[-1].train.optimizer == "sgd"
    (tmp_path / "mine.yaml").write_text("train:\n  optimizer: adam\n  steps: 9\n")
    assert main(["--task", "caption", "--config", str(tmp_path / "mine.yaml"), "--no-progress"]) == 0
    assert seen[-1].train.optimizer == "adam" and seen[-1].train.steps == 9 and seen[-1].train.task == "caption"
    capsys.readouterr()
    assert main(["--task", "align", "--config", "no_such_recipe"]) == 2 and len(seen) == 2
    err = capsys.readouterr().err
    assert "config file no_such_recipe not found" in err and "flickr8k, flickr8k_caption" in err
