"""MRF (Viterbi) snippet alignment of words to image regions, its accuracy, and pictures of it.

``mrf`` and ``accuracy`` need only numpy (``tf_viterbi_align`` imports TensorFlow when called);
``pictures`` needs Pillow.
"""

from karpalign.alignment.accuracy import (
    AlignmentAccuracy,
    box_iou,
    majority_region,
    region_matches,
    sentence_counts,
    snippet_accuracy,
    word_accuracy,
)
from karpalign.alignment.mrf import (
    PAD_ASSIGNMENT,
    Snippet,
    alignment_energy,
    snippets,
    tf_viterbi_align,
    viterbi_align,
)
from karpalign.alignment.pictures import draw_alignment, region_colours, write_alignment_html

__all__ = [
    "AlignmentAccuracy",
    "PAD_ASSIGNMENT",
    "Snippet",
    "alignment_energy",
    "box_iou",
    "draw_alignment",
    "majority_region",
    "region_colours",
    "region_matches",
    "sentence_counts",
    "snippet_accuracy",
    "snippets",
    "tf_viterbi_align",
    "viterbi_align",
    "word_accuracy",
    "write_alignment_html",
]
