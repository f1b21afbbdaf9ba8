"""Region captions: scoring ground-truth boxes against their phrases (paper Table 3), and
karpalign-caption-regions on a real image with a tiny Keras CNN."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from karpalign.cli.caption_regions import main as regions_main
from karpalign.cli.eval import main as eval_main
from karpalign.data import features as F
from karpalign.data.text import Vocabulary
from karpalign.decoding.generate import generate_captions, load_generator
from karpalign.evaluation.region_captions import evaluate_region_captions, ground_truth_regions, parse_boxes
from karpalign.testing import SMALL_MODEL

TINY_CROP = 32


@pytest.fixture(autouse=True)
def fake_meteor(monkeypatch):
    """METEOR's Java start-up takes 20-50 s on a busy machine; it is tested in test_captions.py."""
    monkeypatch.setattr("karpalign.evaluation.captions._meteor",
                        lambda gts, res, timeout: (0.25, [0.25] * len(res)))


def _dataset(records_dir):
    with open(os.path.join(records_dir, "dataset.json")) as f:
        return json.load(f)


def _write_snippet_records(records_dir, out_dir):
    """What karpalign-align writes for a perfect alignment: one example per (ground-truth box, phrase)."""
    images = {str(img["imgid"]): img for img in _dataset(records_dir)["images"]}
    counts = {}
    for split in ("train", "val"):
        examples = []
        for path in sorted(tf.io.gfile.glob(F.shard_pattern(records_dir, split))):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                ex = tf.train.Example.FromString(raw.numpy()).features.feature
                image_id = ex[F.K_ID].bytes_list.value[0].decode()
                feats = np.array(ex[F.K_FEATS].float_list.value, "f4").reshape(-1, 16)  # (R, 16)
                for sentence in images[image_id]["sentences"]:
                    for p in sentence["phrases"]:
                        r = p["boxes"][0] + 1
                        tokens = sentence["tokens"][p["start"]:p["end"]]
                        examples.append(F.encode_example(f"{image_id}/r{r}", split, "", feats[r:r + 1],
                                                         np.array([[0, 0, 1, 1]], "f4"), [(" ".join(tokens), tokens)]))
        counts[split] = F.write_shards(examples, out_dir, split)
    shutil.copy(os.path.join(records_dir, F.VOCAB), os.path.join(out_dir, F.VOCAB))
    F.write_manifest(out_dir, {"feature_dim": 16, "num_regions": 1, "counts": counts, "proposer": "boxes",
                               "source_records": records_dir})
    return out_dir


@pytest.fixture(scope="module")
def region_run(toy_records, tmp_path_factory):
    """A generator trained on region snippets (train.on=regions) for 60 steps."""
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask

    snippets = _write_snippet_records(toy_records, str(tmp_path_factory.mktemp("snippets")))
    out = str(tmp_path_factory.mktemp("region_run"))
    cfg = load_config(None, SMALL_MODEL + [f"data.region_records_dir={snippets}", "train.on=regions",
                                           f"runtime.output_dir={out}", "train.steps=60", "train.eval_every=60",
                                           "train.optimizer=rmsprop"])
    train(cfg, CaptionTask, progress=False)
    return out, snippets


def test_each_ground_truth_box_is_scored_against_exactly_its_phrases(toy_records):
    regions = ground_truth_regions(toy_records, os.path.join(toy_records, "dataset.json"), "test")
    test_images = [img for img in _dataset(toy_records)["images"] if img["split"] == "test"]
    assert regions["images"] == len(test_images)
    assert regions["boxes_total"] == sum(len(img["boxes"]) for img in test_images) == len(regions["keys"])
    assert regions["features"].shape == (len(regions["keys"]), 16)
    for img in test_images[:10]:
        for b, box in enumerate(img["boxes"]):
            key = f"{img['imgid']}/box{b}"
            want = [" ".join(s["tokens"][p["start"]:p["end"]]) for s in img["sentences"] for p in s["phrases"]
                    if p["boxes"] == [b]]
            assert regions["references"][key] == want
            np.testing.assert_allclose(regions["boxes"][key], box, atol=1e-6)


def test_region_model_describes_boxes_and_the_cli_writes_the_result(region_run, toy_records, tmp_path, capsys):
    run_dir, _ = region_run
    dataset = os.path.join(toy_records, "dataset.json")
    out = tmp_path / "regions.json"
    code = eval_main(["region-captions", "--model-dir", run_dir, "--records-dir", toy_records, "--dataset", dataset,
                      "--split", "test", "--beam-size", "3", "--max-images", "20", "--samples", "5",
                      "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    metrics = result["metrics"]
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert isinstance(metrics[key], float), key
    assert metrics["METEOR"] == 0.25 and metrics["SPICE"] is None
    assert result["counts"]["images"] == 20 and result["counts"]["boxes_evaluated"] == metrics["n_images"]
    assert result["counts"]["empty_captions"] == 0
    assert len(result["samples"]) == 5
    # Snippets are three words ("a red circle"): the region model learns them in 60 steps.
    assert metrics["BLEU-1"] > 0.6

    # An untrained generator of the same shape scores clearly lower on the same boxes.
    generator, vocab = load_generator(run_dir)
    fresh = type(generator).from_config(generator.get_config())
    fresh({"image": tf.zeros([1, 16]), "tokens": tf.zeros([1, 2], tf.int32)})
    untrained = evaluate_region_captions(fresh, vocab, toy_records, dataset, "test", beam_size=3, max_images=20)
    assert untrained["metrics"]["BLEU-1"] < metrics["BLEU-1"] - 0.3


def test_records_from_another_proposer_or_dataset_are_refused(region_run, toy_records, tmp_path, capsys):
    run_dir, snippets = region_run
    dataset = os.path.join(toy_records, "dataset.json")
    grid = str(tmp_path / "grid")
    shutil.copytree(toy_records, grid)
    manifest = F.read_manifest(grid)
    manifest.proposer = F.ProposerInfo(kind="grid", k=manifest.proposer.k)
    F.write_manifest(grid, manifest)
    code = eval_main(["region-captions", "--model-dir", run_dir, "--records-dir", grid, "--dataset", dataset,
                      "--out", str(tmp_path / "x.json")])
    assert code == 2 and "--proposer boxes" in capsys.readouterr().err

    data = _dataset(toy_records)
    moved = next(img for img in data["images"] if img["split"] == "test")
    moved["boxes"][0] = [0.5, 0.5, 0.9, 0.9]
    with open(tmp_path / "moved.json", "w") as f:
        json.dump(data, f)
    generator, vocab = load_generator(run_dir)
    with pytest.raises(ValueError, match=rf"image '{moved['imgid']}': region 1 .* box 0 in .*moved.json"):
        evaluate_region_captions(generator, vocab, toy_records, str(tmp_path / "moved.json"), "test")
    data["images"] = [img for img in data["images"] if img is not moved]
    with open(tmp_path / "fewer.json", "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=rf"image '{moved['imgid']}' .* is not in"):
        evaluate_region_captions(generator, vocab, toy_records, str(tmp_path / "fewer.json"), "test")
    code = eval_main(["region-captions", "--model-dir", run_dir, "--records-dir", toy_records, "--dataset",
                      str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.json")])
    assert code == 2 and "nope.json" in capsys.readouterr().err


# ---- karpalign-caption-regions ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_setup(tmp_path_factory):
    """A real JPEG, a tiny saved Keras CNN, extraction records' manifest naming it, and an untrained generator."""
    import keras
    from PIL import Image, ImageDraw

    from karpalign.models.mrnn_decoder import MRNNDecoder

    root = tmp_path_factory.mktemp("caption_regions")
    picture = Image.new("RGB", (128, 96), (235, 230, 220))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((10, 10, 50, 50), fill=(200, 30, 30))
    draw.rectangle((70, 40, 120, 90), fill=(30, 60, 200))
    image_path = str(root / "shapes.jpg")
    picture.save(image_path, quality=92)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    cnn_path = str(root / "tiny.keras")
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(cnn_path)  # 12-d features
    cnn_spec = f"keras:{cnn_path}|size={TINY_CROP},{TINY_CROP}"

    records = str(root / "records")
    os.makedirs(records)
    F.write_manifest(records, {"feature_dim": 12, "num_regions": 4, "counts": {}, "cnn": f"keras:{cnn_path}",
                               "cnn_spec": cnn_spec, "crop_size": TINY_CROP, "proposer": "grid"})
    vocab = Vocabulary.build([["a", "red", "circle", "blue", "square", "and"]], min_count=1)
    generator = MRNNDecoder(len(vocab), 12, hidden_dim=16, word_dim=8)
    generator({"image": tf.zeros([1, 12]), "tokens": tf.zeros([1, 2], tf.int32)})
    generator.output_proj.kernel.assign(generator.output_proj.kernel.numpy() * 5.0)  # distinct captions per region
    model_dir = str(root / "gen")
    os.makedirs(model_dir)
    generator.save(os.path.join(model_dir, "generator.keras"))
    vocab.save(os.path.join(model_dir, "vocab.txt"))
    return {"image": image_path, "cnn_spec": cnn_spec, "records": records, "model_dir": model_dir}


def test_caption_regions_cli_uses_the_extraction_features_of_each_box(image_setup, capsys):
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import region_features

    boxes = "0.05,0.05,0.55,0.4; 0.4,0.5,0.95,0.95;0,0,1,1"
    code = regions_main(["--model-dir", image_setup["model_dir"], "--records-dir", image_setup["records"],
                         image_setup["image"], "--boxes", boxes, "--beam-size", "3", "--top-k", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cnn_spec"] == image_setup["cnn_spec"] and result["crop_size"] == TINY_CROP
    np.testing.assert_allclose([r["box"] for r in result["regions"]], parse_boxes(boxes), atol=1e-6)

    # The same features the extraction job computes (region_features), decoded by the same beam search.
    image = decode_image(open(image_setup["image"], "rb").read())
    feats = region_features(get_backbone(image_setup["cnn_spec"]), image, parse_boxes(boxes), TINY_CROP)
    generator, vocab = load_generator(image_setup["model_dir"])
    want = generate_captions(generator, vocab, feats, beam_size=3, max_length=20, top_k=2)
    for region, expected in zip(result["regions"], want):
        assert [c["text"] for c in region["captions"]] == [t for t, _ in expected]
        np.testing.assert_allclose([c["score"] for c in region["captions"]], [s for _, s in expected], atol=1e-4)
    assert len({r["captions"][0]["text"] for r in result["regions"]}) > 1  # the boxes are told apart


def test_caption_regions_cli_grid_proposer_prints_one_line_per_box(image_setup, capsys):
    code = regions_main(["--model-dir", image_setup["model_dir"], "--records-dir", image_setup["records"],
                         image_setup["image"], "--proposer", "grid", "--regions", "3", "--beam-size", "2"])
    assert code == 0
    lines = capsys.readouterr().out.strip("\n").split("\n")
    assert len(lines) == 4  # the full image + 3 grid boxes
    assert lines[0].split("\t")[0] == "0.0000,0.0000,1.0000,1.0000"
    assert all(len(line.split("\t")) == 3 for line in lines)


def test_caption_regions_cli_bad_input_exits_2(image_setup, tmp_path, capsys):
    def run(*args, records=None):
        code = regions_main(["--model-dir", image_setup["model_dir"], "--records-dir",
                             records or image_setup["records"], *args])
        return code, capsys.readouterr().err

    code, err = run(image_setup["image"], "--boxes", "0.1,0.2,0.05,0.9")
    assert code == 2 and "box 0" in err and "ymin < ymax" in err
    code, err = run(image_setup["image"], "--boxes", "0.1,0.2,0.5")
    assert code == 2 and "four comma-separated numbers" in err
    code, err = run(str(tmp_path / "none.jpg"), "--boxes", "0,0,1,1")
    assert code == 2 and "none.jpg" in err
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    code, err = run(str(tmp_path / "junk.jpg"), "--boxes", "0,0,1,1")
    assert code == 2 and "junk.jpg" in err
    snippets = str(tmp_path / "snippets")
    os.makedirs(snippets)
    F.write_manifest(snippets, {"feature_dim": 12, "num_regions": 1, "counts": {}, "source_records": "/r/records"})
    code, err = run(image_setup["image"], "--boxes", "0,0,1,1", records=snippets)
    assert code == 2 and "cnn_spec" in err and "/r/records" in err
