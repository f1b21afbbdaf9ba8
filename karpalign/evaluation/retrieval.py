"""Image–sentence retrieval evaluation: chunked all-pairs scores, R@K and ranks, COCO 5K / 1K protocols.

The paper (sec. 4.1) ranks, for every test image, all test sentences by the alignment score S_kl and reports
where the correct ones land (image→text, "i2t"), and the same for every sentence over all images
(text→image, "t2i"): R@1, R@5, R@10 and the median rank.

Scoring 5,000 images × 25,000 sentences at once would need a (5000, 25000, 20, 16) tensor of region–word
dot products (40 G floats), so :func:`score_matrix` walks the pair grid in fixed-size chunks. Every chunk
has the same padded shape, so the ``tf.function`` is traced once per call; padded rows carry a zero mask
and their scores are cut off again. Inputs stay numpy (float32, or float16 to halve their memory); only
one chunk at a time is converted to float32.

Ties are counted against the model: a correct item's rank is the number of competitors scoring *at least*
as high, plus one. A model that gives every pair the same score therefore gets the worst possible ranks,
never perfect ones.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from karpalign.models.scores import get_score

ScoreFn = Callable[..., tf.Tensor]

PROTOCOLS = ("5k", "1k", "full")
FOLD_SIZE = 1000
MAX_FOLDS = 5
RECALL_AT = (1, 5, 10)


# ----------------------------------------------------------------------------------------------------------
# Chunked score matrix
# ----------------------------------------------------------------------------------------------------------

def _resolve_score(score: str | ScoreFn) -> ScoreFn:
    """A score name from :mod:`karpalign.models.scores` or a callable with the same signature."""
    if callable(score):
        return score
    return get_score(score)


_COMPILED: dict[ScoreFn, Callable] = {}


def _compiled(fn: ScoreFn) -> Callable:
    """One tf.function per score function; it retraces only when the padded chunk shape changes."""
    if fn not in _COMPILED:
        _COMPILED[fn] = tf.function(fn)
    return _COMPILED[fn]


def _check_inputs(v, v_mask, s, s_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validates shapes/dtypes and returns numpy views (no copies of the big float arrays)."""
    v, v_mask, s, s_mask = (np.asarray(x) for x in (v, v_mask, s, s_mask))
    for name, x, ndim in (("v", v, 3), ("v_mask", v_mask, 2), ("s", s, 3), ("s_mask", s_mask, 2)):
        if x.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    for name, x in (("v", v), ("s", s)):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name} must be a float array (float32 or float16), got dtype {x.dtype}")
    if v.shape[2] != s.shape[2]:
        raise ValueError(f"v and s must share the embedding size H: v {v.shape}, s {s.shape}")
    if v_mask.shape != v.shape[:2]:
        raise ValueError(f"v_mask shape {v_mask.shape} does not match v (N_img, R) = {v.shape[:2]}")
    if s_mask.shape != s.shape[:2]:
        raise ValueError(f"s_mask shape {s_mask.shape} does not match s (N_sent, T) = {s.shape[:2]}")
    if v.shape[0] == 0 or s.shape[0] == 0:
        raise ValueError(f"need at least one image and one sentence, got {v.shape[0]} and {s.shape[0]}")
    empty_img = np.flatnonzero(~np.any(v_mask != 0, axis=1))
    if empty_img.size:
        raise ValueError(f"images {empty_img[:5].tolist()} have no valid region (their v_mask row is all 0)")
    empty_sent = np.flatnonzero(~np.any(s_mask != 0, axis=1))
    if empty_sent.size:
        raise ValueError(f"sentences {empty_sent[:5].tolist()} have no valid word "
                         "(their s_mask row is all 0)")
    return v, v_mask, s, s_mask


def _padded_chunk(x: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """x[rows] as float32, zero-padded to ``size`` rows so every chunk has one shape."""
    out = np.zeros((size,) + x.shape[1:], np.float32)
    out[: len(rows)] = x[rows]
    return out


def _chunked_scores(v, v_mask, s, s_mask, img_rows: np.ndarray, sent_rows: np.ndarray, fn: ScoreFn,
                    image_chunk: int, sentence_chunk: int) -> np.ndarray:
    """Scores of images ``img_rows`` against sentences ``sent_rows`` -> (len(img_rows), len(sent_rows))."""
    if image_chunk < 1 or sentence_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got image_chunk={image_chunk}, "
                         f"sentence_chunk={sentence_chunk}")
    n_img, n_sent = len(img_rows), len(sent_rows)
    ic, sc = min(image_chunk, n_img), min(sentence_chunk, n_sent)  # no padding beyond the data itself
    step = _compiled(fn)
    out = np.empty((n_img, n_sent), np.float32)
    # Sentences outside: their chunk (the larger one, S·T·H floats) is converted once per column block.
    for s0 in range(0, n_sent, sc):
        rows = sent_rows[s0:s0 + sc]
        s_chunk = tf.constant(_padded_chunk(s, rows, sc))  # (sc, T, H)
        sm_chunk = tf.constant(_padded_chunk(s_mask, rows, sc))  # (sc, T)
        for i0 in range(0, n_img, ic):
            irows = img_rows[i0:i0 + ic]
            block = step(tf.constant(_padded_chunk(v, irows, ic)),  # (ic, R, H)
                         tf.constant(_padded_chunk(v_mask, irows, ic)),  # (ic, R)
                         s_chunk, sm_chunk).numpy()  # (ic, sc)
            block = block[: len(irows), : len(rows)]
            if not np.all(np.isfinite(block)):
                raise ValueError(f"non-finite scores for images {int(irows[0])}..{int(irows[-1])} x "
                                 f"sentences {int(rows[0])}..{int(rows[-1])}: check v and s for NaN/inf")
            out[i0:i0 + len(irows), s0:s0 + len(rows)] = block
    return out


def score_matrix(v, v_mask, s, s_mask, score: str | ScoreFn = "brnn", image_chunk: int = 100,
                 sentence_chunk: int = 500) -> np.ndarray:
    """All image–sentence scores, computed chunk by chunk.

    Args:
        v: (N_img, R, H) region embeddings, float32 or float16 numpy (or anything ``np.asarray`` accepts).
        v_mask: (N_img, R) 1 for real regions, 0 for padding.
        s: (N_sent, T, H) word embeddings, float32 or float16.
        s_mask: (N_sent, T) 1 for real words, 0 for padding.
        score: ``"brnn"`` (eq. 8), ``"defrag"``, ``"global"`` (karpalign.models.scores) or a callable with
            the same signature ``(v, v_mask, s, s_mask) -> (B_img, B_sent)``.
        image_chunk, sentence_chunk: pair-grid block size. The default 100 × 500 with R=20, T=16 makes a
            (2000, 8000) float32 block of dot products (64 MB) per step.

    Returns:
        np.float32 (N_img, N_sent).
    """
    v, v_mask, s, s_mask = _check_inputs(v, v_mask, s, s_mask)
    return _chunked_scores(v, v_mask, s, s_mask, np.arange(v.shape[0]), np.arange(s.shape[0]),
                           _resolve_score(score), image_chunk, sentence_chunk)


# ----------------------------------------------------------------------------------------------------------
# Ranks and metrics
# ----------------------------------------------------------------------------------------------------------

def _check_ground_truth(scores: np.ndarray, image_of_sentence) -> np.ndarray:
    """Validates the score matrix and the sentence→image map; returns the map as int64."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N_img, N_sent), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"scores contain NaN/inf, e.g. at image {bad[0]}, sentence {bad[1]}")
    ios = np.asarray(image_of_sentence)
    if ios.shape != (scores.shape[1],):
        raise ValueError(f"image_of_sentence must have shape (N_sent,) = ({scores.shape[1]},), "
                         f"got {ios.shape}")
    if not np.issubdtype(ios.dtype, np.integer):
        raise ValueError(f"image_of_sentence must hold integer image indices, got dtype {ios.dtype}")
    out_of_range = np.flatnonzero((ios < 0) | (ios >= scores.shape[0]))
    if out_of_range.size:
        j = int(out_of_range[0])
        raise ValueError(f"sentence {j} points to image {int(ios[j])}, outside 0..{scores.shape[0] - 1}")
    lonely = np.flatnonzero(np.bincount(ios, minlength=scores.shape[0]) == 0)
    if lonely.size:
        raise ValueError(f"images {lonely[:5].tolist()} have no sentence, so image→text rank is undefined")
    return ios.astype(np.int64)


def image_to_text_ranks(scores: np.ndarray, image_of_sentence: np.ndarray,
                        row_chunk: int = 256) -> np.ndarray:
    """1-based rank of each image's best-ranked correct sentence among all sentences -> (N_img,) int64.

    rank = 1 + number of *wrong* sentences scoring at least as high as the best correct one.
    """
    n_img = scores.shape[0]
    ranks = np.empty(n_img, np.int64)
    for i0 in range(0, n_img, row_chunk):
        rows = scores[i0:i0 + row_chunk]  # (c, N_sent)
        correct = image_of_sentence[None, :] == np.arange(i0, i0 + len(rows))[:, None]  # (c, N_sent)
        best_correct = np.where(correct, rows, -np.inf).max(axis=1)  # (c,)
        wrong_above = np.sum((rows >= best_correct[:, None]) & ~correct, axis=1)  # (c,)
        ranks[i0:i0 + len(rows)] = wrong_above + 1
    return ranks


def text_to_image_ranks(scores: np.ndarray, image_of_sentence: np.ndarray,
                        col_chunk: int = 4096) -> np.ndarray:
    """1-based rank of each sentence's image among all images -> (N_sent,) int64.

    rank = number of images (the correct one included) scoring at least as high as the correct image.
    """
    n_sent = scores.shape[1]
    ranks = np.empty(n_sent, np.int64)
    for j0 in range(0, n_sent, col_chunk):
        cols = scores[:, j0:j0 + col_chunk]  # (N_img, c)
        correct_score = cols[image_of_sentence[j0:j0 + col_chunk], np.arange(cols.shape[1])]  # (c,)
        ranks[j0:j0 + cols.shape[1]] = np.sum(cols >= correct_score[None, :], axis=0)
    return ranks


def rank_summary(ranks: np.ndarray) -> dict:
    """R@1/5/10 in percent, median and mean of 1-based ranks."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_AT}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def retrieval_metrics(scores, image_of_sentence, return_ranks: bool = False) -> dict:
    """Image→text and text→image retrieval metrics from a score matrix.

    Args:
        scores: (N_img, N_sent) scores, higher = better match.
        image_of_sentence: (N_sent,) int, index of the image each sentence describes (every image needs one).
        return_ranks: also return the raw rank arrays under ``"i2t_ranks"`` / ``"t2i_ranks"``.

    Returns:
        ``{"i2t": {...}, "t2i": {...}, "rsum": float, "n_images": int, "n_sentences": int}`` where each
        direction holds ``R@1``, ``R@5``, ``R@10`` (percent), ``median_rank`` and ``mean_rank`` (1-based),
        and ``rsum`` is the sum of the six recalls.
    """
    scores = np.asarray(scores)
    ios = _check_ground_truth(scores, image_of_sentence)
    i2t = image_to_text_ranks(scores, ios)
    t2i = text_to_image_ranks(scores, ios)
    result = {"i2t": rank_summary(i2t), "t2i": rank_summary(t2i)}
    result["rsum"] = sum(result[d][f"R@{k}"] for d in ("i2t", "t2i") for k in RECALL_AT)
    result["n_images"], result["n_sentences"] = int(scores.shape[0]), int(scores.shape[1])
    if return_ranks:
        result["i2t_ranks"], result["t2i_ranks"] = i2t, t2i
    return result


# ----------------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------------

def _fold_metrics(v, v_mask, s, s_mask, ios: np.ndarray, lo: int, hi: int, fn: ScoreFn, image_chunk: int,
                  sentence_chunk: int) -> dict:
    """Metrics for images lo..hi-1 against exactly their own sentences."""
    sent_rows = np.flatnonzero((ios >= lo) & (ios < hi))
    scores = _chunked_scores(v, v_mask, s, s_mask, np.arange(lo, hi), sent_rows, fn, image_chunk,
                             sentence_chunk)
    return retrieval_metrics(scores, ios[sent_rows] - lo)


def _mean_of(results: list[dict]) -> dict:
    """Averages every metric over folds (recalls, median and mean ranks alike, as in COCO 1K reporting)."""
    out = {d: {m: float(np.mean([r[d][m] for r in results])) for m in results[0][d]} for d in ("i2t", "t2i")}
    out["rsum"] = float(np.mean([r["rsum"] for r in results]))
    return out


def evaluate_retrieval(v, v_mask, s, s_mask, image_of_sentence, score: str | ScoreFn = "brnn",
                       protocol: str = "5k", image_chunk: int = 100, sentence_chunk: int = 500) -> dict:
    """Retrieval evaluation under a named protocol.

    Images are taken in the given order; sentences belong to images through ``image_of_sentence``.

    * ``"5k"``: the first 5,000 images and all their sentences (COCO 5K test). Needs >= 5,000 images.
    * ``"1k"``: images 0–999, 1000–1999, … each scored against only their own sentences; metrics are the
      mean over folds (COCO 1K). Uses 5 folds, or as many full folds of 1,000 as exist if there are fewer
      than 5,000 images (needs >= 1,000); ``"folds"`` in the result says how many.
    * ``"full"``: all images and all sentences (Flickr8K/30K tests, small data).

    Returns:
        The :func:`retrieval_metrics` layout plus ``"protocol"``, ``"folds"``, ``"score"`` and, for ``"1k"``,
        ``"per_fold"`` (each fold's full result).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    v, v_mask, s, s_mask = _check_inputs(v, v_mask, s, s_mask)
    ios = np.asarray(image_of_sentence)
    if ios.shape != (s.shape[0],) or not np.issubdtype(ios.dtype, np.integer):
        raise ValueError(f"image_of_sentence must be an int array of shape ({s.shape[0]},), "
                         f"got {ios.dtype} {ios.shape}")
    fn = _resolve_score(score)
    n_img = v.shape[0]
    score_name = score if isinstance(score, str) else getattr(score, "__name__", repr(score))

    if protocol == "1k":
        folds = min(MAX_FOLDS, n_img // FOLD_SIZE)
        if folds == 0:
            raise ValueError(f"protocol '1k' needs at least {FOLD_SIZE} images, got {n_img}; use 'full'")
        per_fold = [_fold_metrics(v, v_mask, s, s_mask, ios, k * FOLD_SIZE, (k + 1) * FOLD_SIZE, fn,
                                  image_chunk, sentence_chunk) for k in range(folds)]
        result = _mean_of(per_fold)
        result.update(n_images=FOLD_SIZE, n_sentences=float(np.mean([r["n_sentences"] for r in per_fold])),
                      per_fold=per_fold)
    else:
        n_used = n_img if protocol == "full" else 5 * FOLD_SIZE
        if n_img < n_used:
            raise ValueError(f"protocol '5k' needs at least {n_used} images, got {n_img}; use 'full' or '1k'")
        folds = 1
        result = _fold_metrics(v, v_mask, s, s_mask, ios, 0, n_used, fn, image_chunk, sentence_chunk)
    result.update(protocol=protocol, folds=folds, score=score_name)
    return result
