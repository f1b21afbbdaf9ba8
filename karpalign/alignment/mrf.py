"""MRF snippet alignment (paper, sec. 3.1.4): which region does each word of a sentence talk about?

For a sentence of N words and an image of M regions every word j gets a latent region a_j. The energy

    E(a) = Σ_j ψU_j(a_j) + Σ_{j<N} ψB_j(a_j, a_{j+1}),  ψU_j(a_j = t) = v_t·s_j,  ψB = β·1[a_j = a_{j+1}]

is a chain, so its exact maximiser is found by dynamic programming (Viterbi). With β = 0 every word simply
takes its best region; a large β makes neighbouring words share a region, so the sentence breaks into a few
longer snippets, each aligned to one region. Those (region, snippet) pairs train the region-level generator.

Three pieces live here:

* :func:`viterbi_align` -- exact numpy Viterbi for one sentence (the reference implementation).
* :func:`tf_viterbi_align` -- the same recursion for a padded batch, in TensorFlow ops only (``tf.scan``),
  so it runs inside ``tf.function`` / a SavedModel and backs the exported ``align`` signature.
* :func:`snippets` -- merges consecutive words that share a region into (region, start, end, text) snippets.

Both Viterbi functions break ties the same way, so they return identical assignments whenever the scores
are exactly representable: when several previous regions give the same best score, the lowest region index
wins, and at the last word the lowest index among the best final regions wins.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

# Output label of padded words in the batched TF version (they belong to no region).
PAD_ASSIGNMENT = -1


def viterbi_align(unary, beta: float) -> np.ndarray:
    """Exact best region per word for one sentence.

    Args:
      unary: (N, M) word-region scores, ``unary[j, t] = v_t · s_j``. N may be 0; M must be at least 1.
      beta: reward for two neighbouring words sharing a region (any finite float; the paper uses β >= 0).

    Returns:
      (N,) int64 array of region indices in [0, M) maximising E(a).
    """
    unary = np.asarray(unary, dtype=np.float64)
    if unary.ndim != 2:
        raise ValueError(f"viterbi_align: unary must be (N words, M regions), got shape {unary.shape}")
    n_words, n_regions = unary.shape
    if n_regions < 1:
        raise ValueError(f"viterbi_align: need at least one region, got unary of shape {unary.shape}")
    if not np.all(np.isfinite(unary)):
        bad = np.argwhere(~np.isfinite(unary))[0]
        raise ValueError(f"viterbi_align: unary has a non-finite value at word {bad[0]}, region {bad[1]}")
    if not np.isfinite(beta):
        raise ValueError(f"viterbi_align: beta must be finite, got {beta}")
    if n_words == 0:
        return np.zeros((0,), dtype=np.int64)

    bonus = float(beta) * np.eye(n_regions)  # (M_prev, M_cur)
    score = unary[0].copy()  # (M,) best energy of words 0..j ending in each region
    backptr = np.zeros((n_words, n_regions), dtype=np.int64)  # (N, M) best previous region
    for j in range(1, n_words):
        cand = score[:, None] + bonus  # (M_prev, M_cur)
        backptr[j] = np.argmax(cand, axis=0)  # first (lowest) index on ties
        score = cand[backptr[j], np.arange(n_regions)] + unary[j]  # (M,)

    out = np.zeros((n_words,), dtype=np.int64)
    out[-1] = int(np.argmax(score))
    for j in range(n_words - 1, 0, -1):
        out[j - 1] = backptr[j, out[j]]
    return out


def alignment_energy(unary, assignment, beta: float) -> float:
    """E(a) of a given assignment (used to compare solutions, e.g. against brute force)."""
    unary = np.asarray(unary, dtype=np.float64)
    assignment = np.asarray(assignment, dtype=np.int64)
    if unary.ndim != 2 or assignment.shape != (unary.shape[0],):
        raise ValueError(
            f"alignment_energy: need unary (N, M) and assignment (N,), "
            f"got {unary.shape} and {assignment.shape}"
        )
    unary_sum = unary[np.arange(len(assignment)), assignment].sum()
    same = np.count_nonzero(assignment[1:] == assignment[:-1])
    return float(unary_sum + beta * same)


def tf_viterbi_align(unary, word_mask, region_mask, beta):
    """Batched Viterbi in TensorFlow ops; exact, and usable inside ``tf.function`` and SavedModels.

    Masked (padded) words may sit anywhere, not just at the end: they are skipped, so the pairwise term links
    the valid words on either side of them, and the result on the valid words equals :func:`viterbi_align` on
    those words alone. Padded regions can never be chosen (their scores are -inf). B, T and M may all be
    dynamic.

    Args:
      unary: (B, T, M) float word-region scores.
      word_mask: (B, T) bool or 0/1, true for real words.
      region_mask: (B, M) bool or 0/1, true for real regions. A sentence needs at least one real region.
      beta: python float or scalar tensor, reward for neighbouring words sharing a region.

    Returns:
      (B, T) int32 region index per word; ``PAD_ASSIGNMENT`` (-1) at padded words.
    """
    import tensorflow as tf  # imported here so the numpy half of this module does not load TF

    unary = tf.convert_to_tensor(unary)
    if not unary.dtype.is_floating:
        unary = tf.cast(unary, tf.float32)
    word_mask = tf.cast(word_mask, tf.bool)  # (B, T)
    region_mask = tf.cast(region_mask, tf.bool)  # (B, M)
    beta = tf.cast(beta, unary.dtype)

    neg_inf = tf.constant(-np.inf, dtype=unary.dtype)
    unary = tf.where(region_mask[:, None, :], unary, neg_inf)  # (B, T, M) padded regions unreachable
    batch, n_regions = tf.shape(unary)[0], tf.shape(unary)[2]
    bonus = beta * tf.eye(n_regions, dtype=unary.dtype)  # (M_prev, M_cur)
    stay = tf.broadcast_to(tf.range(n_regions)[None, :], [batch, n_regions])  # (B, M) identity pointers

    unary_tm = tf.transpose(unary, [1, 0, 2])  # (T, B, M)
    mask_tm = tf.transpose(word_mask, [1, 0])  # (T, B)

    def forward(carry, step):
        score, started, _ = carry  # (B, M), (B,), (B, M)
        unary_j, valid_j = step  # (B, M), (B,)
        cand = score[:, :, None] + bonus  # (B, M_prev, M_cur)
        best_prev = tf.argmax(cand, axis=1, output_type=tf.int32)  # (B, M) lowest index on ties
        chained = tf.reduce_max(cand, axis=1) + unary_j  # (B, M)
        # First real word: no predecessor. Padded word: carry the score through, pointers stay in place.
        new_score = tf.where(started[:, None], chained, unary_j)
        new_score = tf.where(valid_j[:, None], new_score, score)
        backptr = tf.where((valid_j & started)[:, None], best_prev, stay)
        return new_score, started | valid_j, backptr

    init = (tf.zeros([batch, n_regions], unary.dtype), tf.zeros([batch], tf.bool), stay)
    scores, _, backptrs = tf.scan(forward, (unary_tm, mask_tm), initializer=init)  # (T, B, M) ...

    # Best final region (of the last real word; padded words carried its score through).
    final_score = tf.concat([init[0][None], scores], axis=0)[-1]  # (B, M); the zeros only when T == 0
    last = tf.argmax(final_score, axis=1, output_type=tf.int32)  # (B,)

    def backward(carry, step):
        current, _ = carry  # (B,) region of word j
        backptr_j, valid_j = step  # (B, M), (B,)
        label = tf.where(valid_j, current, PAD_ASSIGNMENT)  # (B,)
        previous = tf.gather(backptr_j, current, axis=1, batch_dims=1)  # (B,) region of word j-1
        return previous, label

    _, labels_tm = tf.scan(
        backward, (backptrs, mask_tm), initializer=(last, tf.zeros_like(last)), reverse=True
    )  # (T, B)
    return tf.transpose(labels_tm, [1, 0])  # (B, T)


class Snippet(NamedTuple):
    """Consecutive words aligned to one region: tokens[start:end] (half-open) joined by spaces."""

    region: int
    start: int
    end: int
    text: str


def snippets(assignment, tokens: Sequence[str], min_length: int = 1) -> list[Snippet]:
    """Merges runs of consecutive words with the same region into snippets.

    Args:
      assignment: (N,) region per word, as from :func:`viterbi_align`. Negative entries (padded words from
        :func:`tf_viterbi_align`) belong to no snippet and split runs.
      tokens: the N words.
      min_length: snippets with fewer words are dropped (e.g. 2 keeps only multi-word snippets).

    Returns:
      Snippets in sentence order.
    """
    assignment = [int(a) for a in np.asarray(assignment).reshape(-1)]
    if len(assignment) != len(tokens):
        raise ValueError(
            f"snippets: assignment has {len(assignment)} entries but there are {len(tokens)} tokens"
        )
    if min_length < 1:
        raise ValueError(f"snippets: min_length must be >= 1, got {min_length}")
    out = []
    start = 0
    for j in range(1, len(assignment) + 1):
        if j < len(assignment) and assignment[j] == assignment[start]:
            continue
        region = assignment[start]
        if region >= 0 and j - start >= min_length:
            out.append(Snippet(region, start, j, " ".join(tokens[start:j])))
        start = j
    return out
