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
    assert {"coco", "demo", "flickr8k", "flickr30k", "scenes"} <= set(recipes)
    for name in recipes:
        assert os.path.samefile(config_path(name), os.path.join(packaged, f"{name}.yaml"))
        assert config_path(f"{name}.yaml") == config_path(name)
    with open_config("coco") as f:
        assert yaml.safe_load(f)["data"]["fold_restval"] is True
    cfg = load_config("coco", ["train.steps=3"])
    assert cfg.train.task == "align" and cfg.train.steps == 3 and cfg.data.fold_restval is True
    assert load_config("flickr8k.yaml", ["train.task=caption"]).train.optimizer == "rmsprop"


def test_an_existing_path_wins_over_a_recipe_name(tmp_path, monkeypatch):
    from karpalign.config import config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco.yaml").write_text("train:\n  steps: 7\n")  # a local file with a recipe's name
    assert config_path("coco.yaml") == "coco.yaml"
    assert load_config("coco.yaml").train.steps == 7 and load_config("coco.yaml").data.fold_restval is False
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
    assert ", ".join(packaged_recipes()) in str(e.value) and "coco, demo, flickr30k" in str(e.value)


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
    assert "config file no_such_recipe not found" in err and "flickr30k, flickr8k, scenes" in err


# ---- one recipe file: shared sections + task sections ---------------------------------------------------------


RECIPE = """
data: {records_dir: r, max_words: 9}
extract: {regions: 3, splits: [train, val]}
model: {embed_dim: 8}
train: {steps: 5, batch_size: 7}
align: {train: {optimizer: sgd}, runtime: {output_dir: out/align}}
caption: {train: {optimizer: rmsprop, steps: 6}, runtime: {output_dir: out/caption}}
caption_regions: {data: {max_words: 4}, runtime: {output_dir: out/regions}}
"""


def test_task_sections_apply_to_their_task_only(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    align = load_config(str(path), ["train.task=align"])
    caption = load_config(str(path), ["train.task=caption"])
    regions = load_config(str(path), ["train.task=caption", "train.on=regions", "train.steps=8"])
    assert (align.train.optimizer, align.train.steps, align.runtime.output_dir) == ("sgd", 5, "out/align")
    assert (caption.train.optimizer, caption.train.steps, caption.runtime.output_dir) == ("rmsprop", 6, "out/caption")
    # caption_regions on top of caption, and the overrides on top of both
    assert (regions.train.optimizer, regions.train.steps, regions.data.max_words) == ("rmsprop", 8, 4)
    assert regions.runtime.output_dir == "out/regions" and caption.data.max_words == 9
    for cfg in (align, caption, regions):  # shared sections everywhere
        assert cfg.extract.regions == 3 and cfg.extract.splits == ["train", "val"] and cfg.model.embed_dim == 8
        assert cfg.train.batch_size == 7 and cfg.data.records_dir == "r"
    # a resolved config (what a run saves) loads back to the same values, with no task sections
    saved = save_config(regions, str(tmp_path / "run"))
    assert load_config(saved) == regions


@pytest.mark.parametrize("text, msg", [
    ("align: {extract: {regions: 2}}", r"task section 'align': \['extract'\] cannot differ per task"),
    ("caption: {train: {task: align}}", "task section 'caption' sets train.task"),
    ("caption: {train: {stepz: 1}}", "unknown config key 'caption.train.stepz'"),
    ("caption: 3", "task section 'caption': expected a mapping"),
    ("proposals: {}", r"unknown config key 'proposals'; known: sections \['data', 'extract'"),
    ("extract: {splits: {a: 1}}", "extract.splits: expected a list of strings"),
])
def test_recipe_errors_name_the_file_and_key(tmp_path, text, msg):
    path = tmp_path / "r.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"config file {path}: .*{msg}"):
        load_config(str(path), ["train.task=caption"])


def test_list_keys_take_a_yaml_list_or_a_comma_string():
    assert load_config(None, ["extract.splits=train, test"]).extract.splits == ["train", "test"]
    assert load_config(None, ["extract.splits=[val]"]).extract.splits == ["val"]
    assert load_config(None, ["extract.splits="]).extract.splits == []


def test_extract_cli_reads_the_recipe_then_set_then_flags(tmp_path):
    from karpalign.cli.extract import _parser, resolve_config

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    args, beam = _parser().parse_known_args(["--config", str(path), "--set", "extract.regions=5", "--regions", "6",
                                             "--set", "extract.batch_size=3", "--fold-restval", "--runner=X"])
    cfg = resolve_config(args)
    assert beam == ["--runner=X"]
    assert cfg.extract.regions == 6 and cfg.extract.batch_size == 3 and cfg.data.fold_restval is True
    assert cfg.data.records_dir == "r" and cfg.extract.splits == ["train", "val"]  # from the file
    args, _ = _parser().parse_known_args(["--dataset", "d.json", "--out", "o", "--splits", "train,val"])
    cfg = resolve_config(args)
    assert (cfg.data.dataset, cfg.data.records_dir, cfg.extract.splits) == ("d.json", "o", ["train", "val"])
    assert cfg.data.fold_restval is False and cfg.extract.overwrite is False  # switches not given: config's
    args, _ = _parser().parse_known_args(["--config", str(path), "--set", "extract.regionz=1"])
    with pytest.raises(ConfigError, match="unknown config key 'extract.regionz'"):
        resolve_config(args)


def test_the_propose_task_section_applies_to_the_propose_task_only(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 10}\npropose: {train: {steps: 7}, model: {proposer_input_size: 160}}\n")
    propose, align = load_config(str(path), ["train.task=propose"]), load_config(str(path))
    assert (propose.train.steps, propose.model.proposer_input_size) == (7, 160)
    assert (align.train.steps, align.model.proposer_input_size) == (10, 192)
