"""Image–sentence scores for all pairs of a batch.

Inputs follow DESIGN.md's shapes: regions ``v`` (B_img, R, H) with ``v_mask`` (B_img, R); words ``s``
(B_sent, T, H) with ``s_mask`` (B_sent, T). Every score returns the all-pairs matrix (B_img, B_sent).
Masks are 0/1 (bool or float); padded regions never win a max and padded words never add to a sum.

This module is the one implementation of the scores: the alignment model, its training loss and the chunked
retrieval evaluation (:mod:`karpalign.evaluation.retrieval`) all call it.
"""

from __future__ import annotations

import tensorflow as tf

MASK_NEG = -1e9  # added to a padded region's dot products, so it never wins the max over regions


def region_word_dots(v, s):
    """All region–word dot products: (B_img, R, H) x (B_sent, T, H) -> (B_img, B_sent, R, T)."""
    return tf.einsum("irh,sth->isrt", v, s)


def brnn_score_from_dots(dots, v_mask, s_mask):
    """Eq. 8 from precomputed :func:`region_word_dots` (I, S, R, T) -> (I, S)."""
    v_mask = tf.cast(v_mask, dots.dtype)[:, None, :, None]  # (I, 1, R, 1)
    s_mask = tf.cast(s_mask, dots.dtype)[None, :, :]  # (1, S, T)
    best = tf.reduce_max(dots + (1.0 - v_mask) * MASK_NEG, axis=2)  # (I, S, T)
    return tf.reduce_sum(best * s_mask, axis=-1)  # (I, S)


def defrag_score_from_dots(dots, v_mask, s_mask):
    """Eq. 7 from precomputed :func:`region_word_dots` (I, S, R, T) -> (I, S)."""
    v_mask = tf.cast(v_mask, dots.dtype)[:, None, :, None]
    s_mask = tf.cast(s_mask, dots.dtype)[None, :, None, :]
    return tf.reduce_sum(tf.nn.relu(dots) * v_mask * s_mask, axis=[2, 3])  # (I, S)


def brnn_score(v, v_mask, s, s_mask):
    """Paper eq. 8: S_kl = Σ_t max_i v_i·s_t (each word takes its single best region).

    Laid out as one large matmul: the region–word dot products come from a single (I·R, H) × (H, S·T) product
    and the max over regions reduces a contiguous axis, instead of an einsum whose (I, S, R, T) output must be
    transposed. Same values as ``brnn_score_from_dots(region_word_dots(v, s), ...)`` (tested); on CPU it runs
    at the speed of a plain matmul of that size (benchmarks/retrieval.py), which is what retrieval over 5K
    images needs.
    """
    n_img, n_reg, hidden = tf.unstack(tf.shape(v))
    n_sent, n_words = tf.shape(s)[0], tf.shape(s)[1]
    dots = tf.matmul(tf.reshape(v, [-1, hidden]), tf.reshape(s, [-1, hidden]), transpose_b=True)  # (I·R, S·T)
    region_bias = (1.0 - tf.reshape(tf.cast(v_mask, dots.dtype), [-1, 1])) * MASK_NEG  # (I·R, 1)
    dots = tf.reshape(dots + region_bias, [n_img, n_reg, n_sent * n_words])  # (I, R, S·T)
    best = tf.reshape(tf.reduce_max(dots, axis=1), [n_img, n_sent, n_words])  # (I, S, T)
    return tf.reduce_sum(best * tf.cast(s_mask, best.dtype)[None], axis=-1)  # (I, S)


def defrag_score(v, v_mask, s, s_mask):
    """DeFrag-style (eq. 7): S_kl = Σ_t Σ_i max(0, v_i·s_t)."""
    return defrag_score_from_dots(region_word_dots(v, s), v_mask, s_mask)


def global_score(v, v_mask, s, s_mask):
    """Global baseline: (mean of regions) · (mean of words)."""
    v_mask = tf.cast(v_mask, v.dtype)
    s_mask = tf.cast(s_mask, s.dtype)
    v_mean = tf.reduce_sum(v * v_mask[..., None], 1) / tf.maximum(tf.reduce_sum(v_mask, 1, keepdims=True), 1.0)
    s_mean = tf.reduce_sum(s * s_mask[..., None], 1) / tf.maximum(tf.reduce_sum(s_mask, 1, keepdims=True), 1.0)
    return tf.matmul(v_mean, s_mean, transpose_b=True)  # (I, S)


SCORES = {"brnn": brnn_score, "defrag": defrag_score, "global": global_score}
# Scores that are functions of the region-word dot products, for callers that need the dots anyway.
SCORES_FROM_DOTS = {"brnn": brnn_score_from_dots, "defrag": defrag_score_from_dots}


def get_score(name: str):
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(f"unknown score {name!r}; choose one of {sorted(SCORES)}") from None
