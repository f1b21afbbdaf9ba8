"""The paper recipes (karpalign/configs/*.yaml, docs/recipes.md) run for two steps on tiny data in real formats.

The commands are read from the marked blocks of docs/recipes.md and run as written (in a temporary folder laid
out like the docs' ``data/``), with only sizes and speed changed: a tiny Keras CNN instead of EfficientNet-Lite0
(``--cnn keras:PATH``), one shard per split, small model sizes and two steps (``--set``). Every other value comes
from the recipe's YAML, whose paper settings are checked first.
"""

import contextlib
import io
import json
import os
import re
import shlex

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "recipes.md")
DATASETS = ("flickr8k", "flickr30k", "coco")
TINY_CROP = 32
# Sizes and steps only; optimiser, clipping, dropout, score, loss, splits and vocabulary settings stay the recipe's.
TRAIN_SETS = ["model.embed_dim=16", "model.word_dim=8", "model.brnn_hidden=16", "model.gen_hidden=16",
              "model.gen_word_dim=8", "train.steps=2", "train.batch_size=10"]
COLOURS = ["red", "green", "blue"]
SHAPES = ["circle", "square", "star"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}


def _config(name):
    """The packaged recipe ``name`` as plain YAML data."""
    from karpalign.config import open_config

    with open_config(name) as f:
        return yaml.safe_load(f)


# ---- the YAML files hold the paper's settings -------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_configs_hold_the_paper_settings(name):
    from karpalign.config import load_config

    align = load_config(name)  # the recipe-name form of --config; the default task is align
    caption = load_config(f"{name}.yaml", ["train.task=caption"])
    regions = load_config(name, ["train.task=caption", "train.on=regions"])
    assert align.train.task == "align" and caption.train.task == "caption" and caption.train.on == "images"
    assert (align.runtime.output_dir, caption.runtime.output_dir, regions.runtime.output_dir) == (
        f"runs/{name}/align", f"runs/{name}/caption", f"runs/{name}/caption_regions")
    for cfg in (align, caption, regions):
        assert cfg.train.batch_size == 100 and cfg.train.clip_value == 5.0
        assert cfg.model.embed_dim == 1000 and cfg.model.word_dim == 300
        assert 300 <= cfg.model.brnn_hidden <= 600
        assert cfg.model.dropout > 0 and cfg.model.score == "brnn" and cfg.model.loss == "ranking"
        assert cfg.model.gen_hidden == 512 and cfg.data.min_word_count == 5
        assert cfg.decode.beam_size == 7
        assert cfg.data.fold_restval == (name == "coco")
        assert cfg.extract.regions == 19 and cfg.data.dataset == f"data/{name}/dataset.json"
    assert align.train.optimizer == "sgd" and align.train.momentum == 0.9
    assert caption.train.optimizer == regions.train.optimizer == "rmsprop"
    # The runs of a recipe share records, vocabulary and model settings (the export checks the vocab).
    assert align.data == caption.data == regions.data and align.extract == caption.extract
    assert align.model == caption.model and align.decode == caption.decode


def test_scenes_config_loads_and_every_recipe_key_is_known():
    import karpalign
    from karpalign.config import config_path, load_config, packaged_recipes

    names = DATASETS + ("scenes",)
    assert sorted(packaged_recipes()) == sorted(names + ("demo",))  # demo.yaml: karpalign-demo's (tests/test_demo.py)
    for name in names:
        load_config(name)  # raises on an unknown key or a bad value
        # The same file by path (the other form of --config); the recipes live in the package, not beside it.
        path = os.path.join(os.path.dirname(os.path.abspath(karpalign.__file__)), "configs", f"{name}.yaml")
        assert os.path.samefile(config_path(name), path)
        assert load_config(path) == load_config(name)
    assert not os.path.exists(os.path.join(REPO, "configs"))  # no second copy beside the package
    scenes = load_config("scenes")
    assert scenes.train.on == "images" and scenes.decode.beam_size == 7 and scenes.train.clip_value == 5.0


# ---- reading the documented commands ----------------------------------------------------------------------------


def _block(name):
    """The code block right after ``<!-- recipe: name -->`` in docs/recipes.md."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"{DOC}: no block marked 'recipe: {name}'"
    return match.group(1)


def _commands(name):
    """Shell block -> list of argv lists (comments dropped, backslash continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", _block(name))
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_documented_commands_read_the_recipe_instead_of_repeating_it():
    """Every documented step takes the dataset's one recipe; extraction repeats none of its settings as flags,
    and the folders the later steps name are the recipe's."""
    for name in DATASETS + ("scenes",):
        cfg = _config(name)["data"]
        commands = _commands(name)
        assert [c for c in commands if c[0] == "karpalign-extract"] == [["karpalign-extract", "--config", name]]
        trains = [c for c in commands if c[0] == "karpalign-train"]
        assert trains and {c[c.index("--config") + 1] for c in trains} == {name}, name
        for c in commands:
            if "--records-dir" in c:
                assert c[c.index("--records-dir") + 1] == cfg["records_dir"], (name, c)


# ---- tiny data in the downloaded formats ------------------------------------------------------------------------


def _jpeg(path, colour, shape, seed):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 48), tuple(int(c) for c in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(0, 30)), int(rng.integers(0, 16))
    box = [x, y, x + 30, y + 30]
    {"circle": draw.ellipse, "square": draw.rectangle,
     "star": lambda b, fill: draw.polygon([(b[0], b[3]), ((b[0] + b[2]) // 2, b[1]), (b[2], b[3])], fill=fill)}[
        shape](box, fill=RGB[colour])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format="JPEG", quality=90)


def _sentences(colour, shape, imgid):
    texts = [f"A {colour} {shape}.", f"a {colour} {shape} on a plain background", f"the {shape} is {colour}",
             f"One {colour} {shape} in the picture", f"a picture of a {shape} that is {colour}"]
    return [{"raw": t, "tokens": re.sub(r"[^a-z0-9 ]", "", t.lower()).split(), "imgid": imgid,
             "sentid": imgid * 5 + k} for k, t in enumerate(texts)]


def _write_dataset(root, name, splits, coco):
    """Karpathy dataset.json + JPEGs; COCO style (filepath, cocoid) when ``coco``."""
    images = []
    for split, count in splits:
        for _ in range(count):
            i = len(images)
            colour, shape = COLOURS[i % 3], SHAPES[(i // 3) % 3]
            entry = {"imgid": i, "split": split, "sentids": list(range(5 * i, 5 * i + 5)),
                     "sentences": _sentences(colour, shape, i)}
            if coco:
                folder = "val2014" if split in ("val", "test") else "train2014"
                entry.update(filepath=folder, filename=f"COCO_{folder}_{100000 + i:012d}.jpg", cocoid=100000 + i)
                _jpeg(os.path.join(root, folder, entry["filename"]), colour, shape, i)
            else:
                entry["filename"] = f"{1000 + i}_flickr.jpg"
                _jpeg(os.path.join(root, "images", entry["filename"]), colour, shape, i)
            images.append(entry)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset": name, "images": images}, f)
    return images


# Val needs >= 64 sentences: the generator's validation batches 64 sentences with drop_remainder.
FLICKR_SPLITS = [("train", 16), ("val", 14), ("test", 6)]
COCO_SPLITS = [("train", 8), ("restval", 8), ("val", 14), ("test", 6)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out like the docs (data/...), made the working directory for the module's tests."""
    import keras
    import scipy.io

    root = tmp_path_factory.mktemp("recipes")
    for name in ("flickr8k", "flickr30k"):
        _write_dataset(str(root / "data" / name), name, FLICKR_SPLITS, coco=False)
    _write_dataset(str(root / "data" / "coco"), "coco", COCO_SPLITS, coco=True)
    n_flickr8k = sum(n for _, n in FLICKR_SPLITS)
    feats = np.random.default_rng(0).normal(size=(4096, n_flickr8k)).astype(np.float32)  # (D, N), column imgid
    scipy.io.savemat(str(root / "data" / "flickr8k" / "vgg_feats.mat"), {"feats": feats})

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    cnn = str(root / "tiny_cnn.keras")
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(cnn)

    previous = os.getcwd()
    os.chdir(root)
    try:
        yield {"root": str(root), "cnn": f"keras:{cnn}|size={TINY_CROP},{TINY_CROP}"}
    finally:
        os.chdir(previous)


def _main(program):
    from karpalign.cli import align, eval as eval_cli, export, extract, make_scenes, train

    return {"karpalign-extract": extract.main, "karpalign-train": train.main, "karpalign-eval": eval_cli.main,
            "karpalign-align": align.main, "karpalign-export": export.main,
            "karpalign-make-scenes": make_scenes.main}[program]


def _test_arguments(argv, workdir):
    """What the test adds to a documented command: sizes, steps and speed only (argparse: the last value wins)."""
    program = argv[0]
    if program == "karpalign-extract":
        return ["--cnn", workdir["cnn"], "--shards-per-split", "1", "--quiet", "--progress-every", "0"]
    if program == "karpalign-train":
        return ["--no-progress"] + [arg for s in TRAIN_SETS for arg in ("--set", s)]
    if program == "karpalign-make-scenes":
        return ["--num-images", "20", "--image-size", "64", "--workers", "1", "--quiet",
                "--split-fractions", "train=0.6,val=0.2,test=0.1,test_novel=0.1"]
    return []


def _run_recipe(name, workdir, capsys, first=None):
    """Runs the recipe block's commands (all, or the ``first`` N); returns {program: [stdout of each run]}."""
    outputs = {}
    for argv in _commands(name)[:first]:  # as written: --config NAME is the packaged recipe
        main = _main(argv[0])
        protocol = argv[argv.index("--protocol") + 1] if "--protocol" in argv else "full"
        if protocol != "full":
            # COCO's 1K/5K protocols need 1000/5000 test images: on tiny data the command must refuse clearly.
            assert main(argv[1:]) == 2
            assert f"protocol '{protocol}' needs at least" in capsys.readouterr().err
            argv = argv + ["--protocol", "full"]
        code = main(argv[1:] + _test_arguments(argv, workdir))
        captured = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)} exited {code}:\n{captured.err[-3000:]}"
        outputs.setdefault(argv[0], []).append(captured.out)
    return outputs


def _manifest(path):
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def _saved_config(run_dir):
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _assert_recipe_values_used(run_dir, config_name, task="align", on="images"):
    """The run's resolved config is the recipe's (for its task) except for the test's sizes/steps."""
    import dataclasses

    from karpalign.config import load_config

    saved = _saved_config(run_dir)
    recipe = dataclasses.asdict(load_config(config_name, [f"train.task={task}", f"train.on={on}"]))
    changed = {s.split("=")[0] for s in TRAIN_SETS}
    assert saved["train"]["task"] == task and saved["runtime"]["output_dir"] == recipe["runtime"]["output_dir"]
    for section, values in recipe.items():
        for key, value in values.items():
            if f"{section}.{key}" not in changed:
                assert saved[section][key] == value, (config_name, section, key)


# ---- the recipes ---------------------------------------------------------------------------------------------


def test_flickr8k_recipe_end_to_end(workdir, capsys):
    out = _run_recipe("flickr8k", workdir, capsys)
    records = _manifest("runs/flickr8k/records")
    assert records["num_regions"] == 20 and records["proposer"]["kind"] == "grid" and records["min_word_count"] == 5
    assert records["counts"] == {"test": 6, "train": 16, "val": 14} and records["failed"] == 0
    _assert_recipe_values_used("runs/flickr8k/align", "flickr8k")
    _assert_recipe_values_used("runs/flickr8k/caption", "flickr8k", "caption")
    _assert_recipe_values_used("runs/flickr8k/caption_regions", "flickr8k", "caption", "regions")
    assert _saved_config("runs/flickr8k/caption_regions")["train"]["on"] == "regions"
    with open("runs/flickr8k/records/extract.yaml", encoding="utf-8") as f:
        extracted = yaml.safe_load(f)
    assert set(extracted) == {"data", "extract"} and extracted["extract"]["proposer"] == "grid"
    assert extracted["extract"]["cnn"] == workdir["cnn"] and extracted["data"]["image_root"] == "data/flickr8k/images"
    retrieval = json.loads(out["karpalign-eval"][0])
    assert retrieval["split"] == "test" and set(retrieval) >= {"i2t", "t2i"}
    assert os.path.isfile("runs/flickr8k/regions/manifest.json")
    assert os.path.isfile("models/flickr8k/1/saved_model.pb")

    # The caption-evaluation script of the docs, on the exported model.
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(_block("caption-eval"), f"{DOC}:caption-eval", "exec"), {})
    result = json.loads(stdout.getvalue())
    assert result["n_images"] == 6
    assert {"BLEU-1", "BLEU-4", "METEOR", "CIDEr", "novelty"} <= set(result)
    assert 0.0 <= result["novelty"] <= 1.0


# The other recipes repeat the Flickr8K chain with their own data and configs; to keep the suite fast they run
# their extraction and alignment training (the steps that differ), and the Flickr8K test covers the rest.


def test_flickr30k_recipe(workdir, capsys):
    _run_recipe("flickr30k", workdir, capsys, first=2)
    assert _manifest("runs/flickr30k/records")["counts"] == {"test": 6, "train": 16, "val": 14}
    _assert_recipe_values_used("runs/flickr30k/align", "flickr30k")
    assert _saved_config("runs/flickr30k/align")["model"]["brnn_hidden"] == 16  # the test's size override


def test_coco_recipe_folds_restval_into_train(workdir, capsys):
    _run_recipe("coco", workdir, capsys, first=3)  # extract, align, and the 5K protocol's refusal
    records = _manifest("runs/coco/records")
    assert records["fold_restval"] is True
    assert records["counts"] == {"test": 6, "train": 16, "val": 14}  # 8 train + 8 restval
    _assert_recipe_values_used("runs/coco/align", "coco")


def test_neuraltalk_route(workdir, capsys):
    _run_recipe("neuraltalk", workdir, capsys, first=2)
    records = _manifest("runs/flickr8k-vgg/records")
    assert records["feature_dim"] == 4096 and records["num_regions"] == 1 and records["cnn"] == "vgg16-neuraltalk"
    assert records["min_word_count"] == 5
    saved = _saved_config("runs/flickr8k-vgg/align")
    assert saved["data"]["records_dir"] == "runs/flickr8k-vgg/records" and saved["train"]["optimizer"] == "sgd"


def test_scenes_recipe(workdir, capsys):
    _run_recipe("scenes", workdir, capsys, first=3)
    records = _manifest("runs/scenes/records")
    assert records["proposer"]["kind"] == "boxes" and records["num_regions"] == 5 and records["failed"] == 0
    _assert_recipe_values_used("runs/scenes/align", "scenes")
