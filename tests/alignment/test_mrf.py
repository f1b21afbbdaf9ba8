"""MRF snippet alignment: numpy Viterbi against brute force, TF Viterbi against numpy, snippets."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from karpalign.alignment.mrf import (
    PAD_ASSIGNMENT,
    Snippet,
    alignment_energy,
    snippets,
    tf_viterbi_align,
    viterbi_align,
)


def brute_force(unary, beta):
    """Best energy and every assignment reaching it, by enumerating all M^N assignments."""
    n_words, n_regions = unary.shape
    every = itertools.product(range(n_regions), repeat=n_words)
    energies = {a: alignment_energy(unary, a, beta) for a in every}
    best = max(energies.values())
    return best, [a for a, e in energies.items() if np.isclose(e, best, rtol=0, atol=1e-9)]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 2.5, 100.0, -0.7])
def test_viterbi_equals_brute_force(beta):
    rng = np.random.default_rng(int(abs(beta) * 10) + 1)
    for _ in range(25):
        n_words, n_regions = rng.integers(1, 6), rng.integers(1, 5)
        unary = rng.normal(size=(n_words, n_regions))
        got = viterbi_align(unary, beta)
        best, winners = brute_force(unary, beta)
        assert got.shape == (n_words,) and got.dtype.kind == "i"
        assert alignment_energy(unary, got, beta) == pytest.approx(best, abs=1e-9)
        assert tuple(got) in winners


def test_beta_zero_is_per_word_argmax():
    unary = np.random.default_rng(3).normal(size=(9, 6))
    np.testing.assert_array_equal(viterbi_align(unary, 0.0), unary.argmax(axis=1))


def test_huge_beta_gives_one_region_for_the_sentence():
    unary = np.random.default_rng(4).normal(size=(8, 5))
    got = viterbi_align(unary, 1e4)
    # One region for all words: the one with the largest total score.
    np.testing.assert_array_equal(got, np.full(8, unary.sum(axis=0).argmax()))


def test_beta_merges_a_weak_word_into_its_neighbours_snippet():
    # "red" and "circle" clearly prefer region 1; "big" slightly prefers region 2.
    unary = np.array([[0.0, 3.0, 0.0], [0.0, 1.0, 1.2], [0.0, 3.0, 0.0]])
    np.testing.assert_array_equal(viterbi_align(unary, 0.0), [1, 2, 1])
    np.testing.assert_array_equal(viterbi_align(unary, 0.5), [1, 1, 1])


def test_ties_pick_the_lowest_region():
    np.testing.assert_array_equal(viterbi_align(np.zeros((4, 3)), 1.0), [0, 0, 0, 0])
    np.testing.assert_array_equal(viterbi_align(np.zeros((3, 3)), 0.0), [0, 0, 0])


def test_empty_sentence_and_single_region():
    assert viterbi_align(np.zeros((0, 4)), 1.0).shape == (0,)
    np.testing.assert_array_equal(viterbi_align(np.ones((3, 1)), -5.0), [0, 0, 0])


@pytest.mark.parametrize(
    "unary, beta, message",
    [
        (np.zeros(4), 1.0, "must be \\(N words, M regions\\)"),
        (np.zeros((3, 0)), 1.0, "at least one region"),
        (np.array([[0.0, np.nan]]), 1.0, "non-finite value at word 0, region 1"),
        (np.zeros((2, 2)), np.inf, "beta must be finite"),
    ],
)
def test_viterbi_rejects_bad_input(unary, beta, message):
    with pytest.raises(ValueError, match=message):
        viterbi_align(unary, beta)


def random_batch(rng, batch, n_words, n_regions, integer=False):
    """Unary scores with ragged word masks (including holes) and region masks (at least one region each)."""
    if integer:  # small integers: exact in float32 and float64, so ties occur and must break identically
        unary = rng.integers(-2, 3, size=(batch, n_words, n_regions)).astype(np.float32)
    else:
        unary = rng.normal(size=(batch, n_words, n_regions)).astype(np.float32)
    word_mask = rng.random((batch, n_words)) < 0.75
    word_mask[0] = True  # one full row
    word_mask[1, 3:] = False  # one plain trailing pad
    region_mask = rng.random((batch, n_regions)) < 0.7
    region_mask[np.arange(batch), rng.integers(0, n_regions, batch)] = True
    return unary, word_mask, region_mask


def numpy_reference(unary, word_mask, region_mask, beta):
    """numpy Viterbi on the real words and real regions of each row, scattered back; -1 at padded words."""
    out = np.full(word_mask.shape, PAD_ASSIGNMENT)
    for b in range(len(unary)):
        words, regions = np.flatnonzero(word_mask[b]), np.flatnonzero(region_mask[b])
        out[b, words] = regions[viterbi_align(unary[b][np.ix_(words, regions)], beta)]
    return out


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.5, 50.0])
@pytest.mark.parametrize("integer", [False, True])
def test_tf_viterbi_equals_numpy_on_padded_batches(beta, integer):
    rng = np.random.default_rng(7 + int(beta * 10) + integer)
    unary, word_mask, region_mask = random_batch(rng, batch=6, n_words=9, n_regions=5, integer=integer)
    got = tf_viterbi_align(unary, word_mask, region_mask, beta).numpy()
    assert got.dtype == np.int32 and got.shape == (6, 9)
    np.testing.assert_array_equal(got, numpy_reference(unary, word_mask, region_mask, beta))
    # Padded regions are never chosen; padded words are marked.
    chosen = got[word_mask]
    rows = np.nonzero(word_mask)[0]
    assert region_mask[rows, chosen].all()
    assert (got[~word_mask] == PAD_ASSIGNMENT).all()


def test_tf_viterbi_ignores_values_at_padded_words_and_regions():
    rng = np.random.default_rng(11)
    unary, word_mask, region_mask = random_batch(rng, batch=5, n_words=8, n_regions=4)
    first = tf_viterbi_align(unary, word_mask, region_mask, 0.8).numpy()
    noisy = unary.copy()
    noisy[~word_mask] = rng.normal(scale=100.0, size=noisy[~word_mask].shape)
    noisy += np.where(region_mask[:, None, :], 0.0, 1e3).astype(np.float32)  # padded regions look best
    np.testing.assert_array_equal(tf_viterbi_align(noisy, word_mask, region_mask, 0.8).numpy(), first)


def test_tf_viterbi_accepts_float_masks_and_empty_shapes():
    unary = np.array([[[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]], np.float32)
    got = tf_viterbi_align(unary, [[1.0, 1.0, 0.0]], [[1.0, 1.0]], 0.0).numpy()
    np.testing.assert_array_equal(got, [[1, 0, -1]])
    no_words = tf_viterbi_align(np.zeros((2, 0, 3), np.float32), np.zeros((2, 0)), np.ones((2, 3)), 1.0)
    no_sentences = tf_viterbi_align(np.zeros((0, 4, 3), np.float32), np.zeros((0, 4)), np.ones((0, 3)), 1.0)
    assert no_words.shape == (2, 0) and no_sentences.shape == (0, 4)


SIGNATURE = [
    tf.TensorSpec([None, None, None], tf.float32, name="unary"),
    tf.TensorSpec([None, None], tf.bool, name="word_mask"),
    tf.TensorSpec([None, None], tf.bool, name="region_mask"),
    tf.TensorSpec([], tf.float32, name="beta"),
]


def test_tf_viterbi_in_tf_function_with_dynamic_shapes():
    aligned = tf.function(tf_viterbi_align, input_signature=SIGNATURE)
    rng = np.random.default_rng(5)
    for batch, n_words, n_regions in [(3, 7, 4), (1, 2, 9), (4, 11, 2)]:
        unary, word_mask, region_mask = random_batch(rng, max(batch, 2), n_words, n_regions)
        unary, word_mask, region_mask = unary[:batch], word_mask[:batch], region_mask[:batch]
        got = aligned(unary, word_mask, region_mask, tf.constant(0.6)).numpy()
        np.testing.assert_array_equal(got, numpy_reference(unary, word_mask, region_mask, 0.6))
    assert aligned.experimental_get_tracing_count() == 1


def test_tf_viterbi_survives_saved_model_round_trip(tmp_path):
    module = tf.Module()
    module.align = tf.function(tf_viterbi_align, input_signature=SIGNATURE)
    tf.saved_model.save(module, str(tmp_path / "align"))
    loaded = tf.saved_model.load(str(tmp_path / "align"))
    unary, word_mask, region_mask = random_batch(np.random.default_rng(9), 3, 6, 5)
    got = loaded.align(unary, word_mask, region_mask, tf.constant(1.0)).numpy()
    np.testing.assert_array_equal(got, numpy_reference(unary, word_mask, region_mask, 1.0))


def test_snippets_merge_runs_of_one_region():
    tokens = "a small red triangle left of two blue circles".split()
    assignment = [3, 3, 3, 3, 0, 0, 1, 1, 1]
    assert snippets(assignment, tokens) == [
        Snippet(3, 0, 4, "a small red triangle"),
        Snippet(0, 4, 6, "left of"),
        Snippet(1, 6, 9, "two blue circles"),
    ]
    long_ones = snippets(assignment, tokens, min_length=3)
    assert [s.text for s in long_ones] == ["a small red triangle", "two blue circles"]


def test_snippets_split_at_region_changes_and_skip_padding():
    tokens = ["a", "b", "c", "d", "e", "<pad>"]
    assert snippets(np.array([2, 2, 5, 2, 2, -1]), tokens) == [
        Snippet(2, 0, 2, "a b"),
        Snippet(5, 2, 3, "c"),
        Snippet(2, 3, 5, "d e"),
    ]
    assert snippets([], []) == []


def test_snippets_reject_bad_input():
    with pytest.raises(ValueError, match="3 entries but there are 2 tokens"):
        snippets([0, 0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="min_length must be >= 1"):
        snippets([0], ["a"], min_length=0)
