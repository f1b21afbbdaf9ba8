"""MRF (Viterbi) snippet alignment of words to image regions, its accuracy, and pictures of it.

``mrf`` and ``accuracy`` need only numpy (``tf_viterbi_align`` and ``tune_beta`` import TensorFlow when called);
``pictures`` needs Pillow. The box geometry (IoU) is :mod:`karpalign.vision.boxes`.
"""

from karpalign.alignment.accuracy import (
    AlignmentAccuracy,
    majority_region,
    sentence_counts,
    snippet_accuracy,
    word_accuracy,
)
from karpalign.alignment.beta_search import tune_beta
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
    "draw_alignment",
    "majority_region",
    "region_colours",
    "sentence_counts",
    "snippet_accuracy",
    "snippets",
    "tf_viterbi_align",
    "tune_beta",
    "viterbi_align",
    "word_accuracy",
    "write_alignment_html",
]
