"""The HTML report: built from small fake demo outputs, rendered in headless Chromium (tables present, every
picture loaded), chance levels, and clear errors for malformed inputs."""

import itertools
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from karpalign.report import ReportError, build_report
from karpalign.report import layout as L
from karpalign.report.browser import dump_dom, images_ok, screenshot
from karpalign.report.build import chance_i2t, chance_t2i
from karpalign.report.curves import read_history, read_scalars



def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            f.writelines(json.dumps(row) + "\n" for row in obj)
        else:
            json.dump(obj, f)


def _metrics(scale):
    return {"BLEU-1": 0.6 * scale, "BLEU-2": 0.4 * scale, "BLEU-3": 0.3 * scale, "BLEU-4": 0.2 * scale,
            "METEOR": 0.25 * scale, "ROUGE-L": 0.5 * scale, "CIDEr": 0.9 * scale, "SPICE": None, "n_images": 2,
            "notes": []}


def make_fake_run(run_dir):
    """A demo folder with one file of every kind the report reads (small, made up)."""
    p = L.Paths(run_dir)
    image = os.path.join(p.scenes, "images", "000001.jpg")
    os.makedirs(os.path.dirname(image))
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    _write(os.path.join(p.records, "manifest.json"),
           {"schema_version": 1, "counts": {"train": 16, "test": 2}, "cnn_spec": "efficientnet_lite0",
            "feature_dim": 1280, "num_regions": 3, "proposer": {"kind": "boxes", "k": 2}, "crop_size": 96,
            "vocab_size": 20})
    for split in ("test", "test_novel"):
        _write(p.retrieval_json(split), {
            "i2t": {"R@1": 40.0, "R@5": 80.0, "R@10": 100.0, "median_rank": 2.0, "mean_rank": 2.5},
            "t2i": {"R@1": 30.0, "R@5": 70.0, "R@10": 90.0, "median_rank": 3.0, "mean_rank": 3.5},
            "rsum": 410.0, "n_images": 20, "n_sentences": 100})
    _write(os.path.join(p.align, "history.jsonl"),
           [{"step": s, "loss": 5.0 / s, "score": s, "i2t_R@1": s, "i2t_R@5": 2 * s, "t2i_R@1": s, "t2i_R@5": s}
            for s in (10, 20, 30)])
    _write(p.alignment_json, {
        "train": {"split": "train", "images": 16, "sentences": 80, "snippets": 120, "beta": 1.0,
                  "accuracy": {"word_accuracy": 0.75, "snippet_accuracy": 0.5}},
        "test": {"split": "test", "images": 2, "sentences": 10, "snippets": 15, "beta": 1.0,
                 "accuracy": {"word_accuracy": None, "snippet_accuracy": None}},
        "pictures": {"pictures": 0},
        "beta_search": {"split": "val", "word_accuracy": {"0.5": 0.625, "2": 0.75}, "chosen": 2.0}})
    for beam, scale in ((1, 0.8), (7, 1.0)):
        r = {"metrics": _metrics(scale), "novelty": {"in_training_set": 0.9, "novel": 0.1}, "samples": []}
        if beam == 7:
            r["baseline"] = {"kind": "nn", "metrics": _metrics(0.5), "novelty": {"novel": 0.0}}
        _write(p.captions_json(p.caption, "test", beam), r)
    _write(os.path.join(p.caption, "history.jsonl"), [{"step": 5, "loss": 3.0, "perplexity": 9.0, "word_nll": 2.2}])
    _write(p.region_captions_json(p.caption_regions, "test", 7), {"metrics": _metrics(0.9)})
    _write(p.samples, {"split": "test", "samples": [{
        "image_id": "1", "path": image, "boxes": [[0, 0, 1, 1], [0.1, 0.1, 0.5, 0.5], [0.5, 0.4, 0.9, 0.9]],
        "references": ["a red circle and a <blue> square"], "tokens": ["a", "red", "circle", "and", "a", "square"],
        "assignment": [1, 1, 1, 0, 2, 2],
        "captions": {"beam 1": "a red circle", "beam 7": "a red circle and a blue square"}}]})
    _write(p.served, {"address": "127.0.0.1:1234", "model": "karpalign", "seconds": 0.5,
                      "images": [{"image_id": "1", "path": image, "captions": [["a red circle", -1.5]]}]})
    _write(p.timings, {"generate synthetic scenes": {"seconds": 1.5, "reused": False}})
    return p


def test_report_renders_in_chromium_with_tables_and_all_images(tmp_path):
    p = make_fake_run(tmp_path / "run")
    index = build_report(p.run)
    assert index == os.path.join(p.run, "report", "index.html")
    dom = dump_dom(index)
    assert images_ok(dom) == (True, 3)  # two training curves (align, caption) + one sample picture
    for table in ("retrieval", "alignment", "captions", "region-captions", "served", "timings", "counts"):
        assert f'<table class="{table}">' in dom, table
    # figures from the inputs, the chance baseline and escaping of the references
    assert "<td>40.0</td>" in dom and "<td>75.0</td>" in dom
    assert "β chosen on val by word accuracy (β 0.5: 62.5%, β 2: 75.0%)" in dom
    assert "<td>beta_search</td>" not in dom  # the search is a note, not a split row
    assert "random scores (chance)" in dom and "nearest-neighbour baseline" in dom
    assert "a red circle and a &lt;blue&gt; square" in dom
    # every image reference is relative and stays inside the report folder
    for src in re.findall(r'<img src="([^"]+)"', dom):
        assert not src.startswith(("/", "file:")) and not src.startswith(".."), src


def test_report_of_a_moved_folder_still_loads_its_images(tmp_path):
    p = make_fake_run(tmp_path / "run")
    build_report(p.run)
    moved = tmp_path / "elsewhere"
    shutil.copytree(p.report, moved)
    assert images_ok(dump_dom(str(moved / "index.html")))[0]


def test_broken_image_is_reported_and_screenshot_is_written(tmp_path):
    p = make_fake_run(tmp_path / "run")
    index = build_report(p.run)
    os.remove(os.path.join(p.report, "img", "sample_0.png"))
    assert images_ok(dump_dom(index)) == (False, 3)
    png = screenshot(index, str(tmp_path / "shot.png"), width=800, height=600)
    with Image.open(png) as img:
        assert img.size == (800, 600)


def test_missing_parts_are_left_out_with_a_note(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    page = open(build_report(str(run)), encoding="utf-8").read()
    assert "manifest.json not found" in page
    assert "eval-retrieval-test.json not found" in page
    assert "samples.json not found" in page


def test_malformed_input_names_the_file(tmp_path):
    p = make_fake_run(tmp_path / "run")
    with open(p.retrieval_json("test"), "w") as f:
        f.write("{not json")
    with pytest.raises(ReportError, match="eval-retrieval-test.json: not valid JSON"):
        build_report(p.run)
    _write(p.retrieval_json("test"), {"i2t": {}, "n_images": 3})
    with pytest.raises(ReportError, match=r"eval-retrieval-test.json: field 't2i' is missing"):
        build_report(p.run)


def test_sample_without_a_required_field_names_it(tmp_path):
    p = make_fake_run(tmp_path / "run")
    data = json.load(open(p.samples))
    del data["samples"][0]["boxes"]
    _write(p.samples, data)
    with pytest.raises(ReportError, match=r"samples\[0\]: field 'boxes' is missing"):
        build_report(p.run)


def test_chance_levels_match_enumeration():
    # 3 images x 2 sentences: enumerate every ordering of the 6 sentences for one image's 2 correct ones.
    n_img, n_sent = 3, 6
    ranks = [min(order.index(0), order.index(1)) + 1 for order in itertools.permutations(range(n_sent))]
    r_at, median = chance_i2t(n_img, n_sent)
    assert r_at[0] == pytest.approx(100 * np.mean(np.array(ranks) <= 1))
    assert r_at[1] == pytest.approx(100 * np.mean(np.array(ranks) <= 5))
    assert r_at[2] == 100.0
    assert median == 2.0  # P(rank 1) = 1/3 < 0.5, P(rank <= 2) = 0.6
    t2i, med = chance_t2i(100)
    assert t2i == [1.0, 5.0, 10.0] and med == 50.5
    assert chance_t2i(4)[0] == [25.0, 100.0, 100.0]


def test_curves_read_history_and_tensorboard_scalars(tmp_path):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path / "tensorboard"))
    with writer.as_default():
        for step in (5, 10, 15):
            tf.summary.scalar("train/loss", 1.0 / step, step=step)
            tf.summary.scalar("train/learning_rate", 0.1, step=step)
    writer.flush()
    assert [s for s, _ in read_scalars(str(tmp_path))] == [5, 10, 15]
    assert read_scalars(str(tmp_path))[1][1] == pytest.approx(0.1)
    assert read_history(str(tmp_path)) == []
    (tmp_path / "history.jsonl").write_text('{"step": 5, "score": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"history.jsonl line 2: expected an object"):
        read_history(str(tmp_path))
