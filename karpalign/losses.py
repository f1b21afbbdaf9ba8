"""Bidirectional ranking losses (paper eq. 9, and VSE++'s hardest negative).

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
