"""Caption metrics (pycocoevalcap, needs Java), novelty and the nearest-neighbour baseline."""

import numpy as np
import pytest

from karpalign.evaluation import captions as cap
from karpalign.evaluation.captions import (consensus_caption_index, nearest_neighbour_captions,
                                           nearest_neighbours, novelty, ptb_tokenize, score_captions)

REFERENCES = {
    1: ["A man is riding a brown horse on the beach.", "A person rides a horse along the shore."],
    2: ["Two dogs are playing with a red ball in the grass.", "Two dogs chase a ball on a lawn."],
    3: ["A plate of pasta with tomato sauce and basil.", "A bowl of spaghetti topped with red sauce."],
    "img-4": ["A red double decker bus drives down a city street.", "A bus on a busy street in London."],
}
PERFECT = {k: refs[0] for k, refs in REFERENCES.items()}
WRONG = {1: "A bowl of soup on a wooden table.", 2: "A man riding a surfboard on a wave.",
         3: "Two cats sleeping on a sofa.", "img-4": "A plate of pasta with tomato sauce."}


@pytest.fixture(scope="module")
def scored():
    """One full run (METEOR loads its tables once): every image twice, with a perfect and a wrong caption."""
    references = dict(REFERENCES) | {("wrong", k): refs for k, refs in REFERENCES.items()}
    candidates = dict(PERFECT) | {("wrong", k): c for k, c in WRONG.items()}
    started = []
    meteor_cls = cap._pycocoevalcap()[2]

    class RecordingMeteor(meteor_cls):
        def __init__(self):
            super().__init__()
            started.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pycocoevalcap.meteor.meteor.Meteor", RecordingMeteor)
        result = score_captions(references, candidates, return_per_image=True)
    return result, started


def _group_mean(per_image, wrong, metric):
    return np.mean([s[metric] for k, s in per_image.items() if isinstance(k, tuple) == wrong])


def test_perfect_candidates_per_image(scored):
    result, _ = scored
    assert result["n_images"] == 8 and len(result["per_image"]) == 8
    for k in REFERENCES:
        assert result["per_image"][k]["BLEU-4"] == pytest.approx(1.0, abs=1e-6), k
        assert result["per_image"][k]["ROUGE-L"] == pytest.approx(1.0, abs=1e-6), k
        assert result["per_image"][k]["METEOR"] > 0.5, k
        assert result["per_image"][k]["CIDEr"] > 2.0, k


def test_wrong_candidates_score_lower(scored):
    per_image = scored[0]["per_image"]
    for metric in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert _group_mean(per_image, True, metric) < _group_mean(per_image, False, metric), metric
    assert _group_mean(per_image, True, "CIDEr") < 0.5 * _group_mean(per_image, False, "CIDEr")


def test_spice_is_reported_missing_with_a_note(scored):
    result, _ = scored
    assert "SPICE" in result and result["SPICE"] is None
    assert any("SPICE" in note for note in result["notes"])


def test_meteor_subprocess_is_closed(scored):
    _, started = scored
    assert len(started) == 1 and started[0].meteor_p.poll() is not None  # java has exited


def test_corpus_scores_of_perfect_candidates():
    result = score_captions(REFERENCES, PERFECT, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert result["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert result["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert result["ROUGE-L"] == pytest.approx(1.0, abs=1e-6)
    assert result["CIDEr"] > 2.0
    wrong = score_captions(REFERENCES, WRONG, metrics=("BLEU", "CIDEr"))
    assert wrong["BLEU-4"] < 0.5 and wrong["CIDEr"] < 0.5 * result["CIDEr"]


def test_metric_subset_and_unused_references_note():
    refs = dict(REFERENCES, extra=["an image nobody captioned"])
    result = score_captions(refs, {1: PERFECT[1], 2: WRONG[2]}, metrics=("BLEU", "ROUGE-L"),
                            return_per_image=True)
    assert "METEOR" not in result and "CIDEr" not in result
    assert result["n_images"] == 2
    assert any("3 reference images have no candidate" in note for note in result["notes"])
    assert result["per_image"][1]["ROUGE-L"] > result["per_image"][2]["ROUGE-L"]


def test_ptb_tokenize_keeps_captions_aligned_across_line_breaks():
    tokens = ptb_tokenize({"a": ["A man,\rriding a HORSE.", "line\x0cfeed\u2028sep"], "b": ["", "Dog!"],
                           "c": ["Café au lait"]})
    assert tokens == {"a": ["a man riding a horse", "line feed sep"], "b": ["", "dog"],
                      "c": ["café au lait"]}


def test_bad_caption_input_is_named():
    with pytest.raises(ValueError, match="candidate ids have no references, e.g. \\[9\\]"):
        score_captions(REFERENCES, {9: "a caption"})
    with pytest.raises(ValueError, match="references\\[1\\] must be a non-empty list"):
        score_captions({1: []}, {1: "a caption"})
    with pytest.raises(TypeError, match="candidates\\[1\\] must be one caption string"):
        score_captions(REFERENCES, {1: ["a caption"]})
    with pytest.raises(ValueError, match="unknown caption metrics \\['SPICE'\\]"):
        score_captions(REFERENCES, PERFECT, metrics=("SPICE",))


def test_missing_java_gives_install_hint(monkeypatch):
    monkeypatch.setattr(cap.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install default-jre-headless"):
        score_captions(REFERENCES, PERFECT)


def test_meteor_failure_is_explained(monkeypatch):
    meteor_cls = cap._pycocoevalcap()[2]

    class Broken(meteor_cls):
        def __init__(self):
            super().__init__()
            self.meteor_p.kill()  # java dies before answering
            self.meteor_p.wait()

    monkeypatch.setattr("pycocoevalcap.meteor.meteor.Meteor", Broken)
    with pytest.raises(RuntimeError, match="METEOR .* failed"):
        cap._meteor({1: ["a man"]}, {1: ["a man"]}, timeout=300)


def test_meteor_timeout_kills_java():
    with pytest.raises(RuntimeError, match="no answer within 0 s"):
        cap._meteor({1: ["a man"]}, {1: ["a man"]}, timeout=0.01)


# ---- novelty -------------------------------------------------------------------------------------------

def test_novelty_counts_verbatim_training_sentences():
    training = ["A dog runs on the grass.", "a cat sits on a mat", "Two men play football"]
    generated = ["a dog runs on the grass",      # in training (case/punctuation ignored)
                 "A CAT sits on a mat!",         # in training
                 "a dog runs on the green grass",  # novel
                 "two men play"]                 # novel (a prefix is not verbatim)
    assert novelty(generated, iter(training)) == pytest.approx(0.5)
    assert novelty(["completely new"], training) == 0.0
    with pytest.raises(ValueError, match="generated is empty"):
        novelty([], training)


# ---- nearest-neighbour baseline -------------------------------------------------------------------------

def test_nearest_neighbour_picks_the_right_image():
    train = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [10.0, 10.0, 0.0]], np.float32)
    captions = [["an image of x"], ["an image of y"], ["an image of z"], ["far along x and y"]]
    query = np.array([[0.1, 2.0, 0.1], [0.0, 0.1, 0.2], [3.0, 3.2, 0.0]], np.float32)
    assert nearest_neighbours(train, query, "cosine").tolist() == [1, 2, 3]
    assert nearest_neighbour_captions(train, captions, query) == ["an image of y", "an image of z",
                                                                 "far along x and y"]
    # Euclidean differs for the last query (3, 3.2, 0): its direction matches (10, 10, 0), but in distance
    # |q - e_y|² = 13.84 < |q - e_x|² = 14.24 < |q - (10, 10, 0)|² = 95.24.
    assert nearest_neighbours(train, query, "euclidean").tolist() == [1, 2, 1]


def test_nearest_neighbour_caption_choice():
    captions = [["a red bus.", "a red bus on a street", "a bus on a city street",
                 "a red bus on a city street"]]
    train = np.ones((1, 4), np.float32)
    assert consensus_caption_index(captions[0]) == 3  # shares the most n-grams with the others
    assert nearest_neighbour_captions(train, captions, train) == ["a red bus on a city street"]
    assert nearest_neighbour_captions(train, captions, train, consensus=False) == ["a red bus."]
    with pytest.raises(ValueError, match="train_captions has 1 entries but train_feats has 2 rows"):
        nearest_neighbour_captions(np.ones((2, 4)), captions, train)
    with pytest.raises(ValueError, match="unknown metric 'manhattan'"):
        nearest_neighbours(train, train, "manhattan")
