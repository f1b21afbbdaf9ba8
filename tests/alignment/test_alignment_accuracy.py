"""Word and snippet alignment accuracy on hand-made scenes."""

import numpy as np
import pytest

from karpalign.alignment.accuracy import (
    AlignmentAccuracy,
    majority_region,
    sentence_counts,
    snippet_accuracy,
    word_accuracy,
)
from karpalign.vision.boxes import box_iou, region_matches

FULL = [0.0, 0.0, 1.0, 1.0]
GT = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]])  # box 0: "red circle", box 1: "blue square"
REGIONS = np.array([FULL, *GT])  # the ground-truth proposer: region 0 = full image, region r = box r-1
TOKENS = "a red circle left of a blue square".split()
PHRASES = [{"start": 0, "end": 3, "boxes": [0]}, {"start": 5, "end": 8, "boxes": [1]}]


def test_box_iou_known_values():
    iou = box_iou([[0, 0, 1, 0.5], [0, 0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.6]], [[0, 0, 1, 1], [0.5, 0.5, 1, 1]])
    np.testing.assert_allclose(iou, [[0.5, 0.0], [0.25, 0.0], [0.0, 0.0]])  # zero-area box -> 0, not NaN
    np.testing.assert_allclose(np.diag(box_iou(GT, GT)), [1.0, 1.0])
    assert box_iou(np.zeros((0, 4)), GT).shape == (0, 2)


def test_region_matches_ground_truth_proposer_is_index_shift():
    np.testing.assert_array_equal(region_matches(REGIONS, GT), [[False, False], [True, False], [False, True]])


def test_perfect_alignment():
    assignment = [1, 1, 1, 0, 0, 2, 2, 2]
    assert word_accuracy(assignment, PHRASES, REGIONS, GT) == 1.0
    assert snippet_accuracy(assignment, PHRASES, REGIONS, GT) == 1.0


def test_partly_wrong_alignment():
    # phrase 0: words -> full image (wrong), box 0, box 0  => 2/3 words, majority region 1 is right
    # phrase 1: words -> box 1, box 0, box 0               => 1/3 words, majority region 1 is wrong
    assignment = [0, 1, 1, 0, 0, 2, 1, 1]
    counts = sentence_counts(assignment, PHRASES, REGIONS, GT)
    assert counts == {"words_correct": 3, "words_total": 6, "phrases_correct": 1, "phrases_total": 2}
    assert word_accuracy(assignment, PHRASES, REGIONS, GT) == 0.5
    assert snippet_accuracy(assignment, PHRASES, REGIONS, GT) == 0.5


def test_words_outside_phrases_do_not_count():
    good, bad_relation = [1, 1, 1, 0, 0, 2, 2, 2], [1, 1, 1, 2, 1, 2, 2, 2]
    assert sentence_counts(good, PHRASES, REGIONS, GT) == sentence_counts(bad_relation, PHRASES, REGIONS, GT)


def test_plural_phrase_matches_any_of_its_boxes():
    phrases = [{"start": 0, "end": 3, "boxes": [0, 1]}]  # "two blue circles"
    assert word_accuracy([1, 2, 0], phrases, REGIONS, GT) == pytest.approx(2 / 3)
    assert snippet_accuracy([2, 2, 0], phrases, REGIONS, GT) == 1.0
    assert snippet_accuracy([0, 0, 2], phrases, REGIONS, GT) == 0.0


def test_other_proposer_matches_by_iou():
    regions = np.array(
        [
            FULL,
            [0.52, 0.5, 0.92, 0.9],  # box 1 shifted a little: IoU ~0.9
            [0.1, 0.1, 0.4, 0.31],  # left 70% of box 0: IoU 0.7 -> matches at 0.5, not at 0.75
            [0.1, 0.1, 0.25, 0.25],  # a quarter of box 0: IoU 0.25 -> no match
        ]
    )
    assignment = [2, 3, 3, 0, 0, 1, 1, 1]
    assert word_accuracy(assignment, PHRASES, regions, GT) == pytest.approx(4 / 6)
    assert snippet_accuracy(assignment, PHRASES, regions, GT) == 0.5  # phrase 0's majority region 3 misses
    strict = AlignmentAccuracy(iou_threshold=0.75)
    strict.update(assignment, PHRASES, regions, GT)
    assert strict.result()["word_accuracy"] == pytest.approx(3 / 6)


def test_majority_region_breaks_ties_by_first_occurrence():
    assert majority_region([2, 1, 1, 2]) == 2
    assert majority_region([3, 1, 1]) == 1
    # phrase 0 split evenly between box 0 (region 1, first) and full image: counted right; reversed: wrong
    phrases = [{"start": 0, "end": 2, "boxes": [0]}]
    assert snippet_accuracy([1, 0], phrases, REGIONS, GT) == 1.0
    assert snippet_accuracy([0, 1], phrases, REGIONS, GT) == 0.0


def test_overlapping_phrases_count_each_word_per_phrase():
    phrases = [{"start": 0, "end": 3, "boxes": [0]}, {"start": 1, "end": 3, "boxes": [1]}]
    counts = sentence_counts([1, 1, 1], phrases, REGIONS, GT)
    assert counts == {"words_correct": 3, "words_total": 5, "phrases_correct": 1, "phrases_total": 2}


def test_phrases_without_boxes_and_sentences_without_phrases():
    assert word_accuracy([0, 0], [{"start": 0, "end": 2, "boxes": []}], REGIONS, GT) is None
    assert snippet_accuracy([0, 0], [], REGIONS, GT) is None
    assert AlignmentAccuracy().result()["word_accuracy"] is None


def test_aggregator_pools_counts_over_sentences():
    acc = AlignmentAccuracy()
    acc.update([1, 1, 1, 0, 0, 2, 2, 2], PHRASES, REGIONS, GT)  # 6/6 words, 2/2 phrases
    acc.update([0, 1, 1, 0, 0, 2, 1, 1], PHRASES, REGIONS, GT)  # 3/6 words, 1/2 phrases
    acc.update([2, 2], [{"start": 0, "end": 2, "boxes": [0]}], REGIONS, GT)  # 0/2 words, 0/1 phrases
    result = acc.result()
    assert result["word_accuracy"] == pytest.approx(9 / 14)
    assert result["snippet_accuracy"] == pytest.approx(3 / 5)
    assert (result["words"], result["phrases"], result["sentences"]) == (14, 5, 3)
    acc.reset()
    assert acc.result()["sentences"] == 0 and acc.result()["snippet_accuracy"] is None


@pytest.mark.parametrize(
    "assignment, phrases, regions, message",
    [
        ([0, 1], [{"start": 0, "end": 3, "boxes": [0]}], REGIONS, r"phrases\[0\] span \[0, 3\)"),
        ([0, 1], [{"start": 1, "end": 1, "boxes": [0]}], REGIONS, r"phrases\[0\] span \[1, 1\)"),
        ([0, 1], [{"start": 0, "boxes": [0]}], REGIONS, r"phrases\[0\] has no field 'end'"),
        ([0, 1], [{"start": 0, "end": 1, "boxes": [0]}, {"start": 0, "end": 1, "boxes": [5]}], REGIONS,
         r"phrases\[1\]\.boxes has 5"),
        ([0, 1], [{"start": "0", "end": 1, "boxes": [0]}], REGIONS,
         r"phrases\[0\]\.start must be an integer"),
        ([0, 7], [], REGIONS, r"assignment has region 7, not in \[0, 3\)"),
        ([0.5, 1.0], [], REGIONS, r"assignment must be a 1-D integer array"),
        ([0, 1], [], np.zeros((3, 3)), r"region_boxes must be \(n, 4\)"),
    ],
)
def test_bad_input_names_the_record_and_field(assignment, phrases, regions, message):
    acc = AlignmentAccuracy()
    with pytest.raises(ValueError, match=message) as err:
        acc.update(assignment, phrases, regions, GT, where="scenes/000123.jpg sentence 4")
    assert str(err.value).startswith("scenes/000123.jpg sentence 4")
    assert acc.sentences == 0


def test_iou_threshold_must_be_a_fraction():
    with pytest.raises(ValueError, match="iou_threshold"):
        AlignmentAccuracy(iou_threshold=0.0)
