import json
import os

import numpy as np
import pytest

from karpalign.data import features as F


def test_align_cli_writes_snippets_records_and_accuracy(trained_align, toy_records, tmp_path):
    from karpalign.cli.align import main

    model_dir, _ = trained_align
    out = tmp_path / "regions"
    rc = main(["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(out), "--beta", "0.5",
               "--dataset", os.path.join(toy_records, "dataset.json"), "--splits", "train,val"])
    assert rc == 0
    result = json.load(open(out / "alignment.json"))
    # The toy task is easy: most object words must land on their object's region.
    assert result["val"]["accuracy"]["word_accuracy"] > 0.6
    assert result["val"]["accuracy"]["words"] > 100
    lines = [json.loads(l) for l in open(out / "snippets-val.jsonl")]
    assert len(lines) == result["val"]["sentences"] == 80
    assert all(len(l["assignment"]) == len(l["tokens"]) for l in lines)
    assert all(sn["region"] > 0 for l in lines for sn in l["snippets"])
    manifest = F.read_manifest(str(out))
    assert manifest.num_regions == 1 and manifest.counts["val"] == result["val"]["snippets"] > 0
    # Each region example holds exactly that region's CNN features from the source records.
    import tensorflow as tf
    first = next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(F.shard_pattern(str(out), "val"))),
                                              compression_type="GZIP").batch(1)))
    region = F.parse_examples(first, manifest.feature_dim)
    image_id, s, r, _ = region["image_id"].numpy()[0].decode().split("/")
    src = {}
    for batch in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(F.shard_pattern(toy_records, "val"))),
                                         compression_type="GZIP").batch(64):
        parsed = F.parse_examples(batch, manifest.feature_dim)
        for i, iid in enumerate(parsed["image_id"].numpy()):
            src[iid.decode()] = parsed["region_features"][i].numpy()
    np.testing.assert_allclose(region["region_features"][0, 0], src[image_id][int(r[1:])])


def test_align_cli_tunes_beta_on_val(trained_align, toy_records, tmp_path, capsys):
    from karpalign.cli.align import main

    model_dir, _ = trained_align
    dataset = os.path.join(toy_records, "dataset.json")
    out = tmp_path / "tuned"
    assert main(["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(out), "--dataset", dataset,
                 "--tune-beta", "0,0.5,50", "--splits", "val"]) == 0
    result = json.load(open(out / "alignment.json"))
    search = result["beta_search"]
    assert search["split"] == "val" and sorted(search["word_accuracy"]) == ["0", "0.5", "50"]
    best = max(search["word_accuracy"].values())
    assert search["word_accuracy"][f"{search['chosen']:g}"] == best
    # The chosen beta is the one every split is then aligned with, giving the same val accuracy.
    assert result["val"]["beta"] == search["chosen"]
    assert result["val"]["accuracy"]["word_accuracy"] == pytest.approx(best)
    assert F.read_manifest(str(out)).extra["beta"] == search["chosen"]
    assert f"beta {search['chosen']:g} aligns best on val" in capsys.readouterr().err
    for bad, message in ((["--tune-beta", "0,x"], "comma-separated numbers"),
                         (["--tune-beta", "1"], "needs at least one value and --dataset")):
        args = ["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(tmp_path / "bad"), *bad]
        if "x" not in bad[1]:
            assert main(args) == 2
        else:
            assert main(args + ["--dataset", dataset]) == 2
        assert message in capsys.readouterr().err


def test_align_cli_errors(tmp_path, capsys):
    from karpalign.cli.align import main

    assert main(["--model-dir", str(tmp_path), "--records-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "alignment.keras not found" in capsys.readouterr().err


def test_eval_retrieval_cli(trained_align, toy_records, tmp_path):
    from karpalign.cli.eval import main

    model_dir, _ = trained_align
    out = tmp_path / "r.json"
    assert main(["retrieval", "--model-dir", model_dir, "--records-dir", toy_records, "--split", "test",
                 "--out", str(out)]) == 0
    r = json.load(open(out))
    assert r["n_images"] == 40 and r["i2t"]["R@10"] >= r["i2t"]["R@1"] > 20
    assert main(["retrieval", "--model-dir", model_dir, "--records-dir", toy_records, "--split", "nope",
                 "--out", str(out)]) == 2


# --- alignment pictures (karpalign-align --pictures) ---------------------------------------------------------

SCENE_SIZE = 96  # px; pictures are enlarged by ceil(400 / 96) = 5 so their labels stay legible


@pytest.fixture(scope="module")
def scenes_alignment(tmp_path_factory):
    """12 scene images (6 train, 3 val, 3 test) extracted with a tiny Keras CNN, and an alignment model briefly
    trained on them. Returns (records dir, model dir)."""
    import keras

    from karpalign.beam.job import extract_config, run_extract
    from karpalign.config import load_config
    from karpalign.datasets.generate import generate_scenes
    from karpalign.testing import SMALL_MODEL
    from karpalign.training.loop import train
    from karpalign.training.tasks import AlignTask

    root = tmp_path_factory.mktemp("align_pictures")
    scenes = generate_scenes(str(root / "scenes"), 12, seed=1, image_size=SCENE_SIZE, workers=1,
                             split_fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)  # (N, 8)
    cnn = str(root / "tiny_cnn.keras")
    keras.Model(inputs, x).save(cnn)
    records = str(root / "records")
    run_extract(extract_config(scenes["dataset_json"], records, cnn=f"keras:{cnn}|size=24,24",
                              proposer="boxes", regions=4, min_word_count=1, shards_per_split=1, batch_size=8,
                              progress_every=0), ["--runner=DirectRunner"])
    model_dir = str(root / "align")
    cfg = load_config(None, SMALL_MODEL + [f"data.records_dir={records}", f"runtime.output_dir={model_dir}",
                                           "train.batch_size=10", "train.steps=20", "train.eval_every=20"])
    train(cfg, AlignTask, progress=False)
    return records, model_dir


def _picture_paths(records_dir, split):
    """image id -> image/path of a split's records, in file order."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(F.shard_pattern(records_dir, split)))
    paths = {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64):
        parsed = F.parse_examples(batch, F.read_manifest(records_dir).feature_dim)
        for iid, path in zip(parsed["image_id"].numpy(), parsed["path"].numpy()):
            paths[iid.decode()] = path.decode()
    return paths


def test_align_cli_draws_pictures_and_page(scenes_alignment, tmp_path, capsys):
    from PIL import Image

    from karpalign.alignment.pictures import region_colours
    from karpalign.cli.align import main

    records, model_dir = scenes_alignment
    out = tmp_path / "regions"
    assert main(["--model-dir", model_dir, "--records-dir", records, "--out", str(out), "--splits", "test",
                 "--pictures", "10", "--pictures-split", "test"]) == 0
    result = json.load(open(out / "alignment.json"))
    assert result["test"]["images"] == 3  # the usual outputs are still written
    pictures = result["pictures"]
    assert (pictures["requested"], pictures["images"], pictures["pictures"], pictures["missing_images"]) == \
        (10, 3, 3, 0)
    pngs = sorted(os.listdir(out / "pictures"))
    assert len([p for p in pngs if p.endswith(".png")]) == 3 and "index.html" in pngs
    page = open(out / "pictures" / "index.html", encoding="utf-8").read()
    firsts = [l for l in map(json.loads, open(out / "snippets-test.jsonl")) if l["sentence"] == 0]
    assert len(firsts) == 3
    for n, line in enumerate(firsts):
        png = next(p for p in pngs if p.startswith(f"{n:04d}_{line['image_id']}_"))
        assert f'src="{png}"' in page
        for word in line["tokens"]:
            assert f">{word}</span>" in page
        picture = np.asarray(Image.open(out / "pictures" / png).convert("RGB"))
        assert picture.shape[1] == 5 * SCENE_SIZE and picture.shape[0] > 5 * SCENE_SIZE
        # The words' regions are outlined in their colours (the same assignment as the snippets file).
        for colour in region_colours(line["assignment"]).values():
            assert np.all(picture[:5 * SCENE_SIZE] == colour, axis=-1).sum() > 20

    # An image file that has gone missing is skipped and counted, the others are still drawn.
    gone = _picture_paths(records, "test")[firsts[1]["image_id"]]
    os.rename(gone, gone + ".away")
    try:
        capsys.readouterr()
        out2 = tmp_path / "regions2"
        assert main(["--model-dir", model_dir, "--records-dir", records, "--out", str(out2), "--splits", "",
                     "--pictures", "2"]) == 0
    finally:
        os.rename(gone + ".away", gone)
    pictures = json.load(open(out2 / "alignment.json"))["pictures"]
    assert (pictures["images"], pictures["pictures"], pictures["missing_images"]) == (2, 1, 1)
    assert gone in pictures["skipped_examples"][0]
    assert "skipped 1 (image file missing)" in capsys.readouterr().err
    assert sorted(os.listdir(out2 / "pictures")) == [f"0000_{firsts[0]['image_id']}_s0.png", "index.html"]


def test_align_cli_pictures_without_image_files(trained_align, toy_records, tmp_path, capsys):
    from karpalign.cli.align import main

    model_dir, _ = trained_align
    out = tmp_path / "regions"
    assert main(["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(out), "--splits", "val",
                 "--pictures", "4", "--pictures-split", "val"]) == 0
    pictures = json.load(open(out / "alignment.json"))["pictures"]
    assert (pictures["images"], pictures["pictures"], pictures["missing_images"], pictures["html"]) == \
        (4, 0, 4, None)
    assert os.listdir(out / "pictures") == []
    err = capsys.readouterr().err
    assert "0 alignment pictures of 4 val images" in err and "skipped 4 (image file missing)" in err
    assert "/toy/" in err


def test_align_cli_pictures_errors(trained_align, toy_records, tmp_path, capsys):
    from karpalign.cli.align import main

    model_dir, _ = trained_align
    base = ["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(tmp_path / "o"), "--splits", ""]
    assert main(base + ["--pictures", "-1"]) == 2
    assert "--pictures must be >= 0, got -1" in capsys.readouterr().err
    assert main(base + ["--pictures", "2", "--pictures-split", "nope"]) == 2
    assert "--pictures-split nope: no TFRecord shards match" in capsys.readouterr().err
