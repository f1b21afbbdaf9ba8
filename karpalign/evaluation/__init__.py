"""Evaluation: image–sentence retrieval (R@K, ranks, COCO 5K/1K) and caption metrics (coco-caption)."""

from karpalign.evaluation.captions import (nearest_neighbour_captions, nearest_neighbours, novelty,
                                           score_captions)
from karpalign.evaluation.retrieval import evaluate_retrieval, retrieval_metrics, score_matrix

__all__ = [
    "evaluate_retrieval",
    "nearest_neighbour_captions",
    "nearest_neighbours",
    "novelty",
    "retrieval_metrics",
    "score_captions",
    "score_matrix",
]
