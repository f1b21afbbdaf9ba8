import keras
import numpy as np
import pytest
import tensorflow as tf

from karpalign.layers import BRNNEncoder, RegionEmbedding
from karpalign.losses import bidirectional_loss, fragment_loss
from karpalign.models.alignment_model import AlignmentModel
from karpalign.models.mrnn_decoder import MRNNDecoder, log_frequency_bias
from karpalign.models.scores import brnn_score, defrag_score, global_score, get_score, region_word_dots


def _inputs():
    return {"region_features": tf.random.stateless_normal([2, 3, 5], [1, 2]),
            "region_mask": tf.constant([[1.0, 1, 0], [1, 1, 1]]),
            "token_ids": tf.constant([[4, 5, 6, 0], [7, 0, 0, 0]]),
            "token_mask": tf.constant([[1.0, 1, 1, 0], [1, 0, 0, 0]])}


def test_scores_match_loops_and_respect_masks():
    rng = np.random.default_rng(0)
    v, s = rng.normal(size=(3, 4, 6)).astype("f4"), rng.normal(size=(2, 5, 6)).astype("f4")
    vm = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], "f4")
    sm = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "f4")
    brnn, defrag, glob = (f(v, vm, s, sm).numpy() for f in (brnn_score, defrag_score, global_score))
    for k in range(3):
        for l in range(2):
            R, T = int(vm[k].sum()), int(sm[l].sum())
            dots = v[k, :R] @ s[l, :T].T  # (R, T)
            assert brnn[k, l] == pytest.approx(dots.max(0).sum(), rel=1e-5)
            assert defrag[k, l] == pytest.approx(np.maximum(dots, 0).sum(), rel=1e-5, abs=1e-6)
            assert glob[k, l] == pytest.approx(v[k, :R].mean(0) @ s[l, :T].mean(0), rel=1e-5, abs=1e-6)
    # The dot-product forms (used when training needs the dots anyway) give the same scores.
    from karpalign.models.scores import SCORES_FROM_DOTS

    dots = region_word_dots(v, s)
    # brnn_score is one matmul, the dots form an einsum: the summation order differs, hence 1e-5.
    np.testing.assert_allclose(SCORES_FROM_DOTS["brnn"](dots, vm, sm).numpy(), brnn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(SCORES_FROM_DOTS["defrag"](dots, vm, sm).numpy(), defrag, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown score"):
        get_score("cosine")


def test_ranking_loss_matches_equation_9():
    S = np.array([[3.0, 2.5, 0.0], [1.0, 2.0, 2.2], [0.0, 0.0, 0.5]], "f4")
    ids = np.arange(3)
    expected = 0.0
    for k in range(3):
        for l in range(3):
            if l != k:
                expected += max(0, S[k, l] - S[k, k] + 1) + max(0, S[l, k] - S[k, k] + 1)
    got = bidirectional_loss(S, S.T, tf.range(3), ids, ids, margin=1.0).numpy()
    assert got == pytest.approx(expected)
    hardest = sum(max(max(0, S[k, l] - S[k, k] + 1) for l in range(3) if l != k) +
                  max(max(0, S[l, k] - S[k, k] + 1) for l in range(3) if l != k) for k in range(3))
    assert bidirectional_loss(S, S.T, tf.range(3), ids, ids, kind="vsepp").numpy() == pytest.approx(hardest)


def _fragment_loss_loops(dots, vm, sm, qids, cids, mil):
    total = 0.0
    for i in range(dots.shape[0]):
        pos, neg, n_pos, n_neg = 0.0, 0.0, 0, 0
        for j in range(dots.shape[1]):
            R, T = vm[i].astype(bool), sm[j].astype(bool)
            d = dots[i, j][R][:, T]  # (R_i, T_j) valid fragments
            if qids[i] == cids[j]:
                y = np.ones_like(d)
                if mil:
                    y = np.where(d > 0, 1.0, -1.0)
                    y[d.argmax(0), np.arange(d.shape[1])] = 1.0  # each word's best region
                pos += np.maximum(0, 1 - y * d).sum()
                n_pos += 1
            else:
                neg += np.maximum(0, 1 + d).sum()
                n_neg += 1
        total += pos / max(n_pos, 1) + neg / max(n_neg, 1)
    return total


@pytest.mark.parametrize("mil", [True, False])
def test_fragment_loss_matches_loops(mil):
    rng = np.random.default_rng(3)
    v, s = rng.normal(size=(3, 4, 6)).astype("f4"), rng.normal(size=(4, 5, 6)).astype("f4")
    vm = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], "f4")
    sm = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], "f4")
    qids, cids = np.array([10, 11, 12]), np.array([10, 11, 11, 12])  # image 11 has two sentences
    dots = region_word_dots(v, s).numpy()  # (3, 4, 4, 5)
    got = fragment_loss(dots, vm, sm, qids, cids, mil=mil).numpy()
    assert got == pytest.approx(_fragment_loss_loops(dots, vm, sm, qids, cids, mil), rel=1e-5)


def test_fragment_loss_lifts_true_pairs_out_of_the_dead_zone():
    # Every region-word dot below zero: the DeFrag score is 0 everywhere and the ranking loss has no gradient.
    v = tf.Variable(-np.abs(np.random.default_rng(0).normal(size=(2, 3, 4))).astype("f4"))
    s = tf.constant(np.abs(np.random.default_rng(1).normal(size=(2, 5, 4))).astype("f4"))
    vm, sm, ids = tf.ones([2, 3]), tf.ones([2, 5]), tf.range(2)
    with tf.GradientTape(persistent=True) as tape:
        scores = defrag_score(v, vm, s, sm)
        ranking = bidirectional_loss(scores, tf.transpose(scores), ids, ids, ids)
        fragment = fragment_loss(region_word_dots(v, s), vm, sm, ids, ids)
    assert float(tf.reduce_max(scores)) == 0.0
    assert float(tf.reduce_max(tf.abs(tape.gradient(ranking, v)))) == 0.0
    assert float(tf.reduce_max(tf.abs(tape.gradient(fragment, v)))) > 0
    # Gradient descent on the fragment objective alone brings the true pairs' scores back to life, above
    # the false pairs'; from there the ranking loss has gradients again.
    for _ in range(50):
        with tf.GradientTape() as tape:
            fragment = fragment_loss(region_word_dots(v, s), vm, sm, ids, ids)
        v.assign_sub(0.05 * tape.gradient(fragment, v))
    scores = defrag_score(v, vm, s, sm).numpy()
    assert scores[0, 0] > max(scores[0, 1], scores[1, 0]) and scores[1, 1] > max(scores[0, 1], scores[1, 0])


def test_captions_of_the_same_image_are_not_negatives():
    S = np.array([[2.0, 5.0], [5.0, 2.0]], "f4")  # pair 0 and 1 are two captions of one image
    same = np.array([7, 7])
    assert bidirectional_loss(S, S.T, tf.range(2), same, same).numpy() == 0.0
    assert bidirectional_loss(S, S.T, tf.range(2), np.arange(2), np.arange(2)).numpy() > 0


def _alignment_model():
    return AlignmentModel(RegionEmbedding(8, dropout=0.1), BRNNEncoder(10, 4, 6, 8, dropout=0.1), score="brnn")


def test_alignment_model_config_and_save_load(tmp_path):
    model = _alignment_model()
    v, s = model(_inputs())
    assert v.shape == (2, 3, 8) and s.shape == (2, 4, 8)
    np.testing.assert_allclose(v[0, 2], 0)  # masked region
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    v2, s2 = again(_inputs())
    np.testing.assert_allclose(v, v2, atol=1e-6)
    np.testing.assert_allclose(s, s2, atol=1e-6)
    assert again.get_config()["score"] == "brnn"
    with pytest.raises(ValueError, match="embed_dim"):
        AlignmentModel(RegionEmbedding(8), BRNNEncoder(10, 4, 6, 9))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_mrnn_step_matches_teacher_forcing_and_save_load(tmp_path, cell):
    bias = log_frequency_bias([0, 5, 0, 10, 100, 3, 1, 1, 1, 1], 10)
    model = MRNNDecoder(10, 6, hidden_dim=8, word_dim=5, cell=cell, dropout=0.2, output_bias=bias)
    image = tf.random.stateless_normal([3, 6], [0, 1])
    tokens = tf.constant([[2, 4, 5, 6], [2, 7, 0, 0], [2, 8, 9, 4]])
    logits = model({"image": image, "tokens": tokens})
    np.testing.assert_allclose(model.output_proj.bias.numpy(), bias)
    state = model.initial_state(image)
    for t in range(4):
        step_logits, state = model.step(tokens[:, t], state)
        np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    path = str(tmp_path / "g.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again({"image": image, "tokens": tokens}), logits, atol=1e-5)
    assert again.get_config()["cell"] == cell


def test_image_enters_only_at_the_first_step():
    model = MRNNDecoder(10, 6, hidden_dim=8, word_dim=5)
    tokens = tf.constant([[2, 4, 5]])
    a = model({"image": tf.zeros([1, 6]), "tokens": tokens})
    b = model({"image": tf.ones([1, 6]), "tokens": tokens})
    assert not np.allclose(a[:, 0], b[:, 0])
    # The image changes later steps only through the recurrent state: with W_hh = 0 they are equal.
    model.w_hh.assign(tf.zeros_like(model.w_hh))
    a = model({"image": tf.zeros([1, 6]), "tokens": tokens})
    b = model({"image": tf.ones([1, 6]), "tokens": tokens})
    np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-6)
