"""Attention maps of an updown caption run: each generated word's weights over the regions (the decoding steps
replayed), and the report section that shows them (cached in the run); an mRNN run gets a note instead."""

import os

import numpy as np
import pytest
import tensorflow as tf

from karpalign.data.text import END_ID, START_ID
from karpalign.report import build_report
from karpalign.report import layout as L
from karpalign.report.attention import attention_maps
from karpalign.testing import make_toy_records, untrained_runs


@pytest.fixture(scope="module")
def updown_demo(tmp_path_factory):
    """A demo-layout folder: records/ and untrained align/ and caption/ (updown) runs."""
    import keras

    p = L.Paths(str(tmp_path_factory.mktemp("attention") / "run"))
    make_toy_records(p.records, num_train=16, num_val=4, num_test=6, shards=1)
    keras.utils.set_random_seed(2)
    untrained_runs(p.run, p.records, 16, 8, generator="updown")
    return p


def test_attention_maps_replay_the_decoding_steps(updown_demo):
    from karpalign.decoding.generate import CaptionGenerator
    from karpalign.evaluation.captions import read_split_images
    from karpalign.training.run_dir import RunDir

    generator, vocab = RunDir(updown_demo.caption, "caption").load_generator()
    maps = attention_maps(generator, vocab, updown_demo.records, "test", n=4, max_length=6)
    images = read_split_images(updown_demo.records, "test", max_images=4, with_regions=True)
    captioner = CaptionGenerator(generator, vocab, beam_size=1, max_length=6)
    result = captioner.decode_ids(images["region_features"], images["region_mask"])
    assert [m["image_id"] for m in maps] == images["image_ids"]
    for n, m in enumerate(maps):
        ids = result.ids[n, 0, :result.lengths[n, 0]].tolist()  # the greedy caption, END included if it ended
        assert [vocab.words[t] for t in ids if t != END_ID] == m["words"] and m["words"]
        valid = int(images["region_mask"][n].sum())
        assert len(m["boxes"]) == valid and len(m["attention"]) == len(m["words"])
        weights = np.asarray(m["attention"])  # (T, R_valid)
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-3)
        assert m["attended"] == weights.argmax(1).tolist()
        # The weights are those of the decoding steps themselves.
        state = generator.initial_state(images["region_features"][n:n + 1], images["region_mask"][n:n + 1])
        word = tf.constant([START_ID])
        for t, w in enumerate(m["words"]):
            _, state, alpha = generator.step_with_attention(word, state)
            np.testing.assert_allclose(alpha.numpy()[0, :valid], weights[t], atol=1e-3)
            word = tf.constant([vocab.words.index(w)])


def test_report_shows_the_attention_of_an_updown_run_and_caches_it(updown_demo):
    page = open(build_report(updown_demo.run), encoding="utf-8").read()
    assert '<section id="attention">' in page and page.count('<table class="attention">') == 4
    assert "whole image" in page and "image file /toy/" in page  # toy records have no image files
    cache = os.path.join(updown_demo.caption, "eval-attention-test.json")
    stamp = os.path.getmtime(cache)
    build_report(updown_demo.run)
    assert os.path.getmtime(cache) == stamp  # reused, not decoded again


def test_an_mrnn_run_gets_a_note(tmp_path):
    p = L.Paths(str(tmp_path / "run"))
    make_toy_records(p.records, num_train=8, num_val=2, num_test=2, shards=1)
    untrained_runs(p.run, p.records, 16, 8)
    page = open(build_report(p.run), encoding="utf-8").read()
    assert "attention maps need" in page and '<table class="attention">' not in page


def test_attention_maps_refuse_an_mrnn(updown_demo, tmp_path):
    from karpalign.models.generators import build_generator
    from karpalign.training.run_dir import RunDir

    _, vocab = RunDir(updown_demo.caption, "caption").load_generator()
    mrnn = build_generator("mrnn", len(vocab), 16, hidden_dim=8, word_dim=4)
    with pytest.raises(ValueError, match="does not attend over regions"):
        attention_maps(mrnn, vocab, updown_demo.records)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        attention_maps(RunDir(updown_demo.caption, "caption").load_generator()[0], vocab, updown_demo.records, n=0)


def test_attention_grounding_counts_words_on_their_object():
    from karpalign.evaluation.grounding import SceneObjects
    from karpalign.report.attention import attention_grounding

    objects = [{"colour": "red", "shape": "circle", "size": None}, {"colour": "blue", "shape": "star", "size": None}]
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    scene = SceneObjects("dataset.json", {"1": objects}, {"1": "test"}, {"1": boxes})
    words = "a red disc and a blue star and a green square".split()
    # regions: 0 whole image, 1 ~ object 0 (IoU > 0.5), 2 = object 1
    sample = {"image_id": "1", "words": words, "boxes": [[0, 0, 1, 1], [0.0, 0.0, 0.5, 0.45], boxes[1]],
              "attended": [0, 1, 1, 0, 0, 2, 1, 0, 0, 2, 2]}
    g = attention_grounding([sample], scene)
    # scored words: red, disc (region 1: the red circle), blue (region 2: the star), star (region 1: wrong);
    # "green square" is not in the image, so it is not scored.
    assert g == {"words": 4, "on_object": 0.75, "on_whole_image": 0.0, "images": 1}
    sample["attended"][1] = 0
    assert attention_grounding([sample], scene)["on_whole_image"] == 0.25
