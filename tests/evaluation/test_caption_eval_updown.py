"""karpalign-eval captions for an updown run (captions from every region) with the grounded metric next to the
coco-caption ones, for the generator and the nearest-neighbour baseline; region-captions of an updown run."""

import json
import os

import pytest

from karpalign.cli.eval import main as eval_main
from karpalign.testing import SMALL_MODEL


@pytest.fixture(scope="module")
def updown_run(toy_records, tmp_path_factory):
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask

    out = str(tmp_path_factory.mktemp("updown_run"))
    cfg = load_config(None, SMALL_MODEL + [f"data.records_dir={toy_records}", f"runtime.output_dir={out}",
                                           "model.generator=updown", "model.gen_attention_dim=16",
                                           "train.steps=60", "train.eval_every=60", "train.optimizer=rmsprop"])
    train(cfg, CaptionTask, progress=False)
    return out


@pytest.fixture(autouse=True)
def fake_meteor(monkeypatch):
    """METEOR's JVM is slow to start; it is tested with real captions in test_captions.py."""
    monkeypatch.setattr("karpalign.evaluation.captions._meteor", lambda gts, res, timeout: (0.125, [0.125] * len(res)))


def test_captions_cli_decodes_from_every_region_and_grounds_the_captions(updown_run, toy_records, tmp_path):
    from karpalign.decoding.generate import generate_captions, load_generator
    from karpalign.evaluation.captions import read_split_images
    from karpalign.evaluation.grounding import grounded_metrics, read_scene_objects

    dataset = os.path.join(toy_records, "dataset.json")
    out = tmp_path / "eval.json"
    assert eval_main(["captions", "--model-dir", updown_run, "--records-dir", toy_records, "--split", "test",
                      "--beam-size", "3", "--max-images", "16", "--samples", "16", "--baseline", "nn",
                      "--dataset", dataset, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["image_vector"] == "every region (attention)"
    assert result["settings"]["generator"] == "UpDownDecoder"
    # The captions are the in-process decode of every region with the mask.
    generator, vocab = load_generator(updown_run)
    images = read_split_images(toy_records, "test", max_images=16, with_regions=True)
    want = [c[0][0] for c in generate_captions(generator, vocab, images["region_features"], beam_size=3,
                                               max_length=20, region_mask=images["region_mask"])]
    assert [s["generated"] for s in result["samples"]] == want
    # The grounded metric of the generator and of the baseline, next to the coco-caption ones.
    objects = read_scene_objects(dataset).objects
    ids = [s["image_id"] for s in result["samples"]]
    for got, captions in ((result["grounding"], want), (result["baseline"]["grounding"],
                                                        [s["nn"] for s in result["samples"]])):
        expected = grounded_metrics(dict(zip(ids, captions)), objects, read_scene_objects(dataset).novel_pairs())
        for key in ("object_precision", "object_recall", "count_accuracy", "mentions", "true_mentions"):
            assert got[key] == expected[key], key
    assert result["grounding"]["mentions"] > 0 and result["grounding"]["object_precision"] > 0.3
    assert "CIDEr" in result["metrics"] and "CIDEr" in result["baseline"]["metrics"]


def test_records_without_a_dataset_skip_the_metric_with_a_note(updown_run, toy_records, tmp_path):
    out = tmp_path / "eval.json"
    assert eval_main(["captions", "--model-dir", updown_run, "--records-dir", toy_records, "--split", "test",
                      "--beam-size", "1", "--max-images", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["grounding"] is None and "names no dataset file" in result["grounding_note"]


def test_a_dataset_without_objects_is_refused(updown_run, toy_records, tmp_path, capsys):
    data = json.load(open(os.path.join(toy_records, "dataset.json")))
    for img in data["images"]:
        img.pop("objects")
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(data))
    code = eval_main(["captions", "--model-dir", updown_run, "--records-dir", toy_records, "--max-images", "4",
                      "--dataset", str(path), "--out", str(tmp_path / "e.json")])
    assert code == 2 and "has no 'objects'" in capsys.readouterr().err


def test_region_captions_of_an_updown_run_caption_each_box_alone(updown_run, toy_records):
    """Region captioning hands the generator each box's vector: an updown run reads it as a one-region image."""
    import numpy as np

    from karpalign.decoding.generate import CaptionGenerator, load_generator

    generator, vocab = load_generator(updown_run)
    captioner = CaptionGenerator(generator, vocab, beam_size=2, max_length=6)
    vecs = np.random.default_rng(0).normal(size=(3, 16)).astype("f4")
    assert captioner(vecs) == captioner(vecs[:, None, :], np.ones((3, 1), "f4"))
    assert captioner.decode_fn is None and captioner.tracing_count == 1
