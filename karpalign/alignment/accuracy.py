"""How often does the word→region alignment point at the right object?

The synthetic scenes link phrases of each sentence to ground-truth boxes:
``phrases: [{"start": s, "end": e, "boxes": [box indices]}]`` with half-open token spans [s, e). The model
aligns words to *its* regions, which depend on the region proposer, so a region is judged by geometry: region
r matches ground-truth box k when IoU(region_boxes[r], gt_boxes[k]) >= ``iou_threshold`` (0.5 by default).
With the ground-truth ``boxes`` proposer (region 0 = full image, region r = box r-1) this reduces to exact
index correspondence; with any other proposer it is the usual detection criterion (the geometry is
:mod:`karpalign.vision.boxes`).

Definitions (per sentence; the dataset figures pool the counts over all sentences, i.e. micro averages):

* **word accuracy** -- over every (phrase, word) pair with the word inside the phrase's span, the share
  whose assigned region matches at least one of that phrase's boxes. A word covered by two phrases counts
  once for each.
* **snippet accuracy** -- over phrases, the share whose *majority region* matches at least one of the
  phrase's boxes. The majority region is the region assigned to the most words of the span; on a tie, the
  tied region that occurs first in the span wins.

Phrases with an empty ``boxes`` list (nothing visible to point at) are left out of both figures.
When nothing can be scored the accuracy is ``None`` rather than a made-up number.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

from karpalign.vision.boxes import region_matches


def _check_boxes(boxes, name: str, where: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: {name} must be (n, 4) [ymin, xmin, ymax, xmax], got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{where}: {name} has non-finite coordinates")
    return boxes


def _check_phrase(phrase, index: int, n_words: int, n_gt: int, where: str) -> tuple[int, int, list[int]]:
    label = f"{where}: phrases[{index}]"
    if not isinstance(phrase, Mapping):
        raise ValueError(f"{label} must be a dict with start, end, boxes; got {type(phrase).__name__}")
    for field in ("start", "end", "boxes"):
        if field not in phrase:
            raise ValueError(f"{label} has no field {field!r}")
    start, end, boxes = phrase["start"], phrase["end"], phrase["boxes"]
    for field, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{label}.{field} must be an integer, got {value!r}")
    if not 0 <= start < end <= n_words:
        raise ValueError(f"{label} span [{start}, {end}) is not a non-empty span inside the {n_words} words")
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        raise ValueError(f"{label}.boxes must be a list of box indices, got {boxes!r}")
    for k in boxes:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_gt:
            raise ValueError(f"{label}.boxes has {k!r}, not a box index in [0, {n_gt})")
    return int(start), int(end), [int(k) for k in boxes]


def majority_region(regions: Sequence[int]) -> int:
    """Most frequent region of a span; on a tie the tied region occurring first in the span."""
    if len(regions) == 0:
        raise ValueError("majority_region: empty span")
    counts = collections.Counter(int(r) for r in regions)
    best = max(counts.values())
    return next(int(r) for r in regions if counts[int(r)] == best)


def sentence_counts(
    assignment,
    phrases: Sequence[Mapping],
    region_boxes,
    gt_boxes,
    iou_threshold: float = 0.5,
    where: str = "sentence",
) -> dict[str, int]:
    """Counts for one sentence: words_correct, words_total, phrases_correct, phrases_total.

    Args:
      assignment: (N,) region index per word (from the MRF); every entry must be in [0, M).
      phrases: ground-truth links ``[{"start", "end", "boxes"}]`` over the same N words.
      region_boxes: (M, 4) the model's regions, normalised [ymin, xmin, ymax, xmax].
      gt_boxes: (K, 4) the record's ground-truth boxes, same convention.
      iou_threshold: region–box match criterion.
      where: names the record / sentence in error messages.
    """
    assignment = np.asarray(assignment)
    if assignment.ndim != 1 or (assignment.size and not np.issubdtype(assignment.dtype, np.integer)):
        raise ValueError(
            f"{where}: assignment must be a 1-D integer array, got {assignment.dtype} {assignment.shape}"
        )
    region_boxes = _check_boxes(region_boxes, "region_boxes", where)
    gt_boxes = _check_boxes(gt_boxes, "gt_boxes", where)
    n_regions = len(region_boxes)
    bad = [int(a) for a in assignment if not 0 <= a < n_regions]
    if bad:
        raise ValueError(f"{where}: assignment has region {bad[0]}, not in [0, {n_regions}) (region boxes)")
    matches = region_matches(region_boxes, gt_boxes, iou_threshold)  # (M, K)

    counts = {"words_correct": 0, "words_total": 0, "phrases_correct": 0, "phrases_total": 0}
    for i, phrase in enumerate(phrases):
        start, end, boxes = _check_phrase(phrase, i, len(assignment), len(gt_boxes), where)
        if not boxes:
            continue
        span = assignment[start:end]
        hit = matches[span][:, boxes].any(axis=1)  # (span,) word's region matches one of the boxes
        counts["words_correct"] += int(hit.sum())
        counts["words_total"] += len(span)
        counts["phrases_correct"] += int(matches[majority_region(span), boxes].any())
        counts["phrases_total"] += 1
    return counts


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def word_accuracy(assignment, phrases, region_boxes, gt_boxes, iou_threshold: float = 0.5) -> float | None:
    """Word accuracy of one sentence (see module docstring); None if no phrase has boxes."""
    c = sentence_counts(assignment, phrases, region_boxes, gt_boxes, iou_threshold)
    return _ratio(c["words_correct"], c["words_total"])


def snippet_accuracy(assignment, phrases, region_boxes, gt_boxes, iou_threshold: float = 0.5) -> float | None:
    """Snippet (phrase) accuracy of one sentence (see module docstring); None if no phrase has boxes."""
    c = sentence_counts(assignment, phrases, region_boxes, gt_boxes, iou_threshold)
    return _ratio(c["phrases_correct"], c["phrases_total"])


class AlignmentAccuracy:
    """Pools word and snippet counts over a dataset (micro averages).

    Example::

        acc = AlignmentAccuracy()
        for record, sentence, assignment, region_boxes in ...:
            acc.update(assignment, sentence["phrases"], region_boxes, record["boxes"],
                       where=record["filename"])
        acc.result()  # {"word_accuracy": 0.83, "snippet_accuracy": 0.9, "words": ..., ...}
    """

    def __init__(self, iou_threshold: float = 0.5):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"AlignmentAccuracy: iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self.words_correct = self.words_total = 0
        self.phrases_correct = self.phrases_total = 0
        self.sentences = 0

    def update(self, assignment, phrases, region_boxes, gt_boxes, where: str = "sentence") -> dict[str, int]:
        """Adds one sentence; returns its own counts. ``where`` names it in error messages."""
        c = sentence_counts(assignment, phrases, region_boxes, gt_boxes, self.iou_threshold, where)
        self.words_correct += c["words_correct"]
        self.words_total += c["words_total"]
        self.phrases_correct += c["phrases_correct"]
        self.phrases_total += c["phrases_total"]
        self.sentences += 1
        return c

    def result(self) -> dict:
        """word_accuracy and snippet_accuracy (None when nothing was scored) plus the counts behind them."""
        return {
            "word_accuracy": _ratio(self.words_correct, self.words_total),
            "snippet_accuracy": _ratio(self.phrases_correct, self.phrases_total),
            "words": self.words_total,
            "phrases": self.phrases_total,
            "sentences": self.sentences,
            "iou_threshold": self.iou_threshold,
        }
