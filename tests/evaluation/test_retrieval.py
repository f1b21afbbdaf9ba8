"""Retrieval evaluation: ranks on hand-made score matrices, chunking, the fold protocols."""

import numpy as np
import pytest

from karpalign.evaluation.retrieval import evaluate_retrieval, retrieval_metrics, score_matrix
from karpalign.models.scores import brnn_score, defrag_score, global_score


def _random_batch(n_img, n_sent, r=5, t=4, h=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n_img, r, h)).astype(dtype)
    s = rng.standard_normal((n_sent, t, h)).astype(dtype)
    v_mask = (rng.random((n_img, r)) < 0.7).astype(np.float32)
    v_mask[:, 0] = 1.0  # every image keeps at least one region
    s_mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, size=n_sent)[:, None]).astype(np.float32)
    return v, v_mask, s, s_mask


# ---- hand-made score matrices with known ranks ---------------------------------------------------------

def test_known_ranks_and_metrics():
    # 3 images, 6 sentences; sentences 2k, 2k+1 describe image k.
    image_of_sentence = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([
        # s0   s1   s2   s3   s4   s5
        [9.0, 1.0, 5.0, 2.0, 0.0, 0.0],  # image 0: best correct s0 is top -> i2t rank 1
        [8.0, 7.0, 3.0, 6.0, 9.0, 0.0],  # image 1: best correct s3 (6.0); s0, s1, s4 above -> rank 4
        [1.0, 2.0, 3.0, 4.0, 0.5, 5.0],  # image 2: best correct s5 is top -> rank 1
    ], np.float32)
    result = retrieval_metrics(scores, image_of_sentence, return_ranks=True)
    np.testing.assert_array_equal(result["i2t_ranks"], [1, 4, 1])
    # t2i: column j, rank of its image among the three rows.
    # s0 -> img0 (9 top) 1; s1 -> img0 (1 < 7, 2) 3; s2 -> img1 (3 < 5, tied with img2's 3) 3;
    # s3 -> img1 (6 top) 1; s4 -> img2 (0.5 < 9, > 0) 2; s5 -> img2 (5 top) 1.
    np.testing.assert_array_equal(result["t2i_ranks"], [1, 3, 3, 1, 2, 1])
    assert result["i2t"]["R@1"] == pytest.approx(200 / 3)
    assert result["i2t"]["R@5"] == 100.0
    assert result["i2t"]["median_rank"] == 1.0
    assert result["i2t"]["mean_rank"] == pytest.approx(2.0)
    assert result["t2i"]["R@1"] == pytest.approx(50.0)
    assert result["t2i"]["median_rank"] == 1.5
    assert result["t2i"]["mean_rank"] == pytest.approx(11 / 6)
    assert result["rsum"] == pytest.approx(200 / 3 + 100 + 100 + 50 + 100 + 100)
    assert (result["n_images"], result["n_sentences"]) == (3, 6)


def test_perfect_and_reversed_scores():
    n = 12
    ios = np.arange(n)
    perfect = retrieval_metrics(np.eye(n, dtype=np.float32), ios)
    assert perfect["i2t"]["R@1"] == 100.0 and perfect["t2i"]["median_rank"] == 1.0
    worst = retrieval_metrics(-np.eye(n, dtype=np.float32), ios, return_ranks=True)
    np.testing.assert_array_equal(worst["i2t_ranks"], np.full(n, n))
    np.testing.assert_array_equal(worst["t2i_ranks"], np.full(n, n))
    assert worst["i2t"]["R@10"] == 0.0 and worst["t2i"]["R@10"] == 0.0


def test_ties_count_against_the_model():
    # A constant score matrix must not look like perfect retrieval.
    result = retrieval_metrics(np.zeros((4, 8), np.float32), np.repeat(np.arange(4), 2), return_ranks=True)
    np.testing.assert_array_equal(result["i2t_ranks"], np.full(4, 7))  # 6 wrong sentences tie with it
    np.testing.assert_array_equal(result["t2i_ranks"], np.full(8, 4))
    assert result["i2t"]["R@1"] == 0.0 and result["t2i"]["R@1"] == 0.0


def test_metric_input_errors_are_clear():
    with pytest.raises(ValueError, match="images \\[1\\] have no sentence"):
        retrieval_metrics(np.zeros((2, 2)), np.array([0, 0]))
    with pytest.raises(ValueError, match="sentence 1 points to image 5"):
        retrieval_metrics(np.zeros((2, 2)), np.array([0, 5]))
    with pytest.raises(ValueError, match="NaN/inf, e.g. at image 1, sentence 0"):
        retrieval_metrics(np.array([[0.0, 1.0], [np.nan, 0.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape \\(N_sent,\\)"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 1]))


# ---- chunked score matrix ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, reference", [("brnn", brnn_score), ("defrag", defrag_score),
                                             ("global", global_score)])
def test_chunked_equals_unchunked(name, reference):
    v, v_mask, s, s_mask = _random_batch(n_img=23, n_sent=37, seed=1)
    expected = reference(v, v_mask, s, s_mask).numpy()  # (23, 37) in one shot
    chunked = score_matrix(v, v_mask, s, s_mask, score=name, image_chunk=5, sentence_chunk=8)
    assert chunked.dtype == np.float32 and chunked.shape == (23, 37)
    np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=1e-4)
    one_chunk = score_matrix(v, v_mask, s, s_mask, score=name, image_chunk=1000, sentence_chunk=1000)
    np.testing.assert_allclose(one_chunk, expected, rtol=1e-5, atol=1e-4)


def test_brnn_matmul_layout_matches_the_dots_form():
    """brnn_score's one-matmul layout (the one retrieval runs) equals eq. 8 computed from the (I, S, R, T) dots."""
    from karpalign.models.scores import brnn_score_from_dots, region_word_dots

    v, v_mask, s, s_mask = _random_batch(n_img=7, n_sent=9, r=6, t=5, h=16, seed=2)
    np.testing.assert_allclose(brnn_score(v, v_mask, s, s_mask).numpy(),
                               brnn_score_from_dots(region_word_dots(v, s), v_mask, s_mask).numpy(),
                               rtol=1e-5, atol=1e-4)


def test_float16_inputs_and_callable_score():
    v, v_mask, s, s_mask = _random_batch(n_img=11, n_sent=13, seed=3)
    expected = score_matrix(v.astype(np.float16).astype(np.float32), v_mask,
                            s.astype(np.float16).astype(np.float32), s_mask)
    got = score_matrix(v.astype(np.float16), v_mask, s.astype(np.float16), s_mask, image_chunk=4,
                       sentence_chunk=6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    via_callable = score_matrix(v, v_mask, s, s_mask, score=brnn_score, image_chunk=3, sentence_chunk=5)
    np.testing.assert_allclose(via_callable, brnn_score(v, v_mask, s, s_mask).numpy(), rtol=1e-5, atol=1e-4)


def test_score_matrix_input_errors_are_clear():
    v, v_mask, s, s_mask = _random_batch(n_img=3, n_sent=4, seed=4)
    with pytest.raises(ValueError, match="share the embedding size"):
        score_matrix(v, v_mask, s[..., :-1], s_mask)
    with pytest.raises(ValueError, match="v_mask shape"):
        score_matrix(v, v_mask[:, :-1], s, s_mask)
    bad_mask = v_mask.copy()
    bad_mask[2] = 0
    with pytest.raises(ValueError, match="images \\[2\\] have no valid region"):
        score_matrix(v, bad_mask, s, s_mask)
    with pytest.raises(ValueError, match="unknown score 'cosine'"):
        score_matrix(v, v_mask, s, s_mask, score="cosine")
    bad_v = v.copy()
    bad_v[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite scores for images"):
        score_matrix(bad_v, v_mask, s, s_mask)


# ---- protocols ---------------------------------------------------------------------------------------------

def _separable_data(n_img, per_image=2, h=8, seed=0):
    """Images and sentences built so that image k matches its own sentences best ('perfect' model)."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((n_img, h)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    v = np.repeat(protos[:, None, :], 2, axis=1)  # (N, R=2, H)
    ios = np.repeat(np.arange(n_img), per_image)
    s = protos[ios][:, None, :].repeat(3, axis=1)  # (N*per_image, T=3, H)
    return v, np.ones(v.shape[:2], np.float32), s, np.ones(s.shape[:2], np.float32), ios


def test_full_protocol_on_separable_data():
    v, v_mask, s, s_mask, ios = _separable_data(50)
    result = evaluate_retrieval(v, v_mask, s, s_mask, ios, protocol="full", image_chunk=16, sentence_chunk=30)
    assert result["folds"] == 1 and result["protocol"] == "full" and result["score"] == "brnn"
    assert result["i2t"]["R@1"] == 100.0 and result["t2i"]["R@1"] == 100.0


def test_1k_protocol_uses_full_folds_only_and_averages():
    # 2,300 images -> 2 full folds of 1,000; the last 300 images are left out, as in COCO 1K.
    n_img = 2300
    v, v_mask, s, s_mask, ios = _separable_data(n_img, per_image=1, h=4, seed=5)
    # Shuffle the sentence order: folds must follow image_of_sentence, not sentence positions.
    order = np.random.default_rng(6).permutation(len(ios))
    s, s_mask, ios = s[order], s_mask[order], ios[order]
    # Spoil fold 2 (images 1000..1999): one shared embedding, so every sentence ties over all its images.
    v[1000:2000] = 1.0
    result = evaluate_retrieval(v, v_mask, s, s_mask, ios, score="global", protocol="1k",
                                image_chunk=400, sentence_chunk=700)
    assert result["folds"] == 2 and len(result["per_fold"]) == 2
    assert [f["n_images"] for f in result["per_fold"]] == [1000, 1000]
    assert [f["n_sentences"] for f in result["per_fold"]] == [1000, 1000]
    assert result["per_fold"][0]["t2i"]["R@1"] == 100.0
    assert result["per_fold"][1]["t2i"]["R@1"] == 0.0  # ties count against the model: every rank is 1000
    assert result["per_fold"][1]["t2i"]["median_rank"] == 1000.0
    assert result["t2i"]["R@1"] == pytest.approx(50.0)
    assert result["t2i"]["median_rank"] == pytest.approx((1.0 + 1000.0) / 2)
    assert result["i2t"]["R@1"] == pytest.approx((100.0 + result["per_fold"][1]["i2t"]["R@1"]) / 2)


def test_protocol_size_errors():
    v, v_mask, s, s_mask, ios = _separable_data(20)
    with pytest.raises(ValueError, match="'1k' needs at least 1000 images, got 20"):
        evaluate_retrieval(v, v_mask, s, s_mask, ios, protocol="1k")
    with pytest.raises(ValueError, match="'5k' needs at least 5000 images"):
        evaluate_retrieval(v, v_mask, s, s_mask, ios, protocol="5k")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_retrieval(v, v_mask, s, s_mask, ios, protocol="10k")


def test_5k_protocol_takes_the_first_5000_images():
    # 5,004 images: the 4 extra images and their sentences are not part of the 5K test.
    v, v_mask, s, s_mask, ios = _separable_data(5004, per_image=1, h=4, seed=7)
    result = evaluate_retrieval(v, v_mask, s, s_mask, ios, score="global", protocol="5k", image_chunk=1000,
                                sentence_chunk=2500)
    assert (result["n_images"], result["n_sentences"], result["folds"]) == (5000, 5000, 1)
    assert result["i2t"]["R@1"] == 100.0 and result["t2i"]["R@1"] == 100.0
