"""Bidirectional ranking losses (paper eq. 9, and VSE++'s hardest negative) and DeFrag's fragment objective.

A batch holds pairs (image k, sentence k). Rows of a score matrix are queries, columns candidates; row n's
correct candidate is column ``own[n]``. Candidates that belong to the same image as the query (another
caption of that image in the batch) are correct too and never count as negatives.

Under ``tf.distribute`` each replica scores its *local* queries against the *global* candidates (gathered
from all replicas), so the summed per-replica losses equal the single-device loss of the global batch.
Losses return sums; the training loop divides by the global batch size.
"""

from __future__ import annotations

import tensorflow as tf


def ranking_costs(scores, own, query_ids, candidate_ids, margin=1.0):
    """max(0, S_nl − S_n,own(n) + margin) for every negative l: scores (N, M) -> (N, M)."""
    positive = tf.gather(scores, own[:, None], batch_dims=1)  # (N, 1)
    same = tf.cast(tf.equal(query_ids[:, None], candidate_ids[None, :]), scores.dtype)  # (N, M)
    return tf.nn.relu(scores - positive + margin) * (1.0 - same)


def bidirectional_loss(i2s_scores, s2i_scores, own, local_ids, global_ids, margin=1.0, kind="ranking"):
    """Both ranking directions.

    i2s_scores: (N_local, M_global) local images × all sentences; s2i_scores: (N_local, M_global) local
    sentences × all images (the transposed column block). ``own`` (N_local,) is each local pair's index in the
    global batch; ``local_ids`` (N_local,) and ``global_ids`` (M_global,) are image ids.
    kind 'ranking' sums all violations (eq. 9); 'vsepp' keeps only the hardest negative per query.
    """
    costs = [ranking_costs(s, own, local_ids, global_ids, margin) for s in (i2s_scores, s2i_scores)]
    if kind == "ranking":
        return tf.add_n([tf.reduce_sum(c) for c in costs])
    if kind == "vsepp":
        return tf.add_n([tf.reduce_sum(tf.reduce_max(c, axis=1)) for c in costs])
    raise ValueError(f"unknown loss {kind!r}; choose 'ranking' or 'vsepp'")


def fragment_loss(dots, v_mask, s_mask, query_ids, candidate_ids, mil=True):
    """DeFrag's fragment objective (Karpathy, Joulin & Fei-Fei 2014, eq. 3-4) over region–word dot products.

    ``dots`` (N, M, R, T): local images × global sentences; masks ``v_mask`` (N, R), ``s_mask`` (M, T);
    image ids of the N images and of the M sentences. Every (region, word) fragment pair gets a label y: −1
    when the sentence belongs to another image; when it belongs to this image, +1 -- or, with ``mil``
    (multiple-instance learning, as DeFrag), the sign of the current dot product, with each word's best
    region forced to +1 so that every word has at least one region it belongs to. Cost max(0, 1 − y·dot),
    summed over each sentence's fragments, averaged separately over each image's positive bags (its own
    sentences) and negative bags (the others) -- balancing the few true pairs against the many false ones --
    and summed over the N images -> scalar.

    The thresholded DeFrag score Σ_t Σ_i max(0, v_i·s_t) alone passes no gradient through dot products
    that are negative; a ranking loss can then drive every dot product below zero within a step, after
    which every score is 0 and nothing learns. This objective keeps the fragments of true pairs positive.
    """
    v_mask = tf.cast(v_mask, dots.dtype)[:, None, :, None]  # (N, 1, R, 1)
    s_mask = tf.cast(s_mask, dots.dtype)[None, :, None, :]  # (1, M, 1, T)
    valid = v_mask * s_mask  # (N, M, R, T)
    same = tf.cast(tf.equal(query_ids[:, None], candidate_ids[None, :]), dots.dtype)[:, :, None, None]
    if mil:
        masked = dots + (1.0 - v_mask) * -1e9
        best = tf.one_hot(tf.argmax(masked, axis=2), tf.shape(dots)[2], axis=2, dtype=dots.dtype)  # (N, M, R, T)
        positive_label = tf.where((dots > 0) | (best > 0), 1.0, -1.0)
    else:
        positive_label = tf.ones_like(dots)
    y = tf.stop_gradient(same * positive_label - (1.0 - same))
    costs = tf.reduce_sum(tf.nn.relu(1.0 - y * dots) * valid, axis=[2, 3])  # (N, M) per sentence (bag)
    same = same[:, :, 0, 0]  # (N, M)
    n_pos = tf.maximum(tf.reduce_sum(same, 1), 1.0)  # (N,) positive bags of each image
    n_neg = tf.maximum(tf.reduce_sum(1.0 - same, 1), 1.0)
    return tf.reduce_sum(tf.reduce_sum(costs * same, 1) / n_pos + tf.reduce_sum(costs * (1.0 - same), 1) / n_neg)
