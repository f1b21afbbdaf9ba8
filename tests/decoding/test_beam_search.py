"""Beam search against a fake decoder whose logits come from fixed tables.

The fake's logits for image b after prefix (..., prev, cur) at position t are
``table[t, cur] + pair[prev] + bias[b]``: ``cur`` arrives as the step's token ids, while ``t``, ``prev`` and
``bias`` live only in the state. So a beam search that reorders the state wrongly feeds the wrong ``prev`` /
``bias`` and disagrees with the brute-force enumeration below, which scores every possible sentence exactly.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from karpalign.decoding import BeamResult, beam_search, greedy_search, length_penalty

START, END = 0, 4  # the fake vocabulary: 5 words, 0 doubles as START (fed only), 4 is END


class TableDecoder(tf.Module):
    """Fake generator with the decoder-step contract; ``nest`` picks how the state is packed."""

    def __init__(self, table, pair, projection, nest="dict"):
        super().__init__()
        self.table = tf.constant(table, tf.float32)  # (T, V, V)
        self.pair = tf.constant(pair, tf.float32)  # (V, V): row = word before the fed one
        self.projection = tf.constant(projection, tf.float32)  # (D, V)
        self.nest = nest
        self.vocab_size = table.shape[-1]

    def initial_state(self, image_vec):
        batch = tf.shape(image_vec)[0]
        position = tf.zeros([batch], tf.int32)  # (B,)
        prev = tf.fill([batch], START)  # (B,)
        bias = tf.matmul(image_vec, self.projection)  # (B, V)
        return self._pack(position, prev, bias)

    def step(self, token_ids, state):
        position, prev, bias = self._unpack(state)
        at = tf.stack([tf.minimum(position, self.table.shape[0] - 1), token_ids], axis=1)  # (N, 2)
        logits = tf.gather_nd(self.table, at) + tf.gather(self.pair, prev) + bias  # (N, V)
        return logits, self._pack(position + 1, token_ids, bias)

    def _pack(self, position, prev, bias):
        if self.nest == "dict":  # dict holding an LSTM-like (h, c) tuple and an int tensor
            return {"position": position, "lstm": (tf.one_hot(prev, self.vocab_size), bias)}
        if self.nest == "tuple":  # plain (h, c)
            c = tf.concat([tf.cast(position, tf.float32)[:, None], bias], axis=1)  # (N, 1+V)
            return (tf.one_hot(prev, self.vocab_size), c)
        return tf.concat([tf.cast(tf.stack([position, prev], 1), tf.float32), bias], 1)  # one (N, 2+V) tensor

    def _unpack(self, state):
        if self.nest == "dict":
            h, bias = state["lstm"]
            return state["position"], tf.cast(tf.argmax(h, 1), tf.int32), bias
        if self.nest == "tuple":
            h, c = state
            return tf.cast(c[:, 0], tf.int32), tf.cast(tf.argmax(h, 1), tf.int32), c[:, 1:]
        return tf.cast(state[:, 0], tf.int32), tf.cast(state[:, 1], tf.int32), state[:, 2:]


def random_decoder(seed, max_length=3, vocab=5, dim=3, nest="dict"):
    rng = np.random.default_rng(seed)
    return TableDecoder(rng.normal(size=(max_length, vocab, vocab)) * 2.0, rng.normal(size=(vocab, vocab)),
                        rng.normal(size=(dim, vocab)), nest=nest)


def log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def brute_force(decoder, image, max_length, alpha, min_length=1):
    """Every sentence (ends with END, or has max_length words) with its normalised score, best first; END
    only after at least ``min_length`` words (the search's default is 1)."""
    table, pair = decoder.table.numpy().astype(np.float64), decoder.pair.numpy().astype(np.float64)
    bias = image.astype(np.float64) @ decoder.projection.numpy().astype(np.float64)
    words = [w for w in range(decoder.vocab_size) if w != END]
    found = []
    for length in range(1, max_length + 1):
        bodies = itertools.product(words, repeat=length - 1)
        endings = [END] if length < max_length else list(range(decoder.vocab_size))
        if length - 1 < min_length:  # END would come before min_length words
            endings = [w for w in endings if w != END]
        for body in bodies:
            for last in endings:
                seq = list(body) + [last]
                fed = [START, START] + seq
                log_p = sum(log_softmax(table[t, fed[t + 1]] + pair[fed[t]] + bias)[seq[t]]
                            for t in range(length))
                found.append((log_p / length ** alpha, seq))
    found.sort(key=lambda item: -item[0])
    return found


def greedy_by_hand(decoder, image, max_length, min_length=1):
    """Arg-max word each step until END or max_length, straight from the tables; END is not a choice before
    ``min_length`` words (its probability still counts in the others' log-softmax)."""
    table, pair = decoder.table.numpy().astype(np.float64), decoder.pair.numpy().astype(np.float64)
    bias = image.astype(np.float64) @ decoder.projection.numpy().astype(np.float64)
    prev, cur, seq, log_p = START, START, [], 0.0
    for t in range(max_length):
        dist = log_softmax(table[t, cur] + pair[prev] + bias)
        allowed = dist.copy()
        if t < min_length:
            allowed[END] = -np.inf
        word = int(np.argmax(allowed))
        seq.append(word)
        log_p += dist[word]
        if word == END:
            break
        prev, cur = cur, word
    return seq, log_p


def decode(decoder, images, **kwargs):
    images = tf.constant(images, tf.float32)
    kwargs.setdefault("start_id", START)
    kwargs.setdefault("end_id", END)
    result = beam_search(decoder.step, decoder.initial_state(images), tf.shape(images)[0], **kwargs)
    return BeamResult(*(t.numpy() for t in result))


def as_list(ids, length):
    return [int(w) for w in ids[:length]]


def assert_well_formed(result, max_length):
    """END appears once, as the last word, and nothing grows after it: ids past the length are 0."""
    batch, n_best, width = result.ids.shape
    assert width == max_length and result.ids.dtype == np.int32 and result.lengths.dtype == np.int32
    for b in range(batch):
        assert np.all(np.diff(result.scores[b]) <= 0), "hypotheses must be sorted best first"
        for j in range(n_best):
            length = result.lengths[b, j]
            assert 1 <= length <= max_length
            assert np.all(result.ids[b, j, length:] == 0)
            body = result.ids[b, j, : length - 1]
            assert END not in body
            assert result.ids[b, j, length - 1] == END or length == max_length


# --- search quality -----------------------------------------------------------------------------------------


def test_beam_finds_the_better_sentence_that_greedy_misses():
    # Words: 0 "a", 1 "b", 2 END, 3 START (never generated). p(a)=.6, p(b)=.4 first; after "a" END has .4,
    # after "b" END has .99. Greedy says "a END" (p=.24); the best sentence is "b END" (p=.396).
    tiny = 1e-6
    table = np.full((2, 4, 4), np.log(tiny))
    table[0, 3] = np.log([0.6, 0.4, tiny, tiny])
    table[1, 0] = np.log([0.35, 0.25, 0.4, tiny])
    table[1, 1] = np.log([0.005, 0.005, 0.99, tiny])
    decoder = TableDecoder(table, np.zeros((4, 4)), np.zeros((1, 4)))
    images = np.zeros((1, 1))
    common = dict(max_length=2, start_id=3, end_id=2)
    greedy = decode(decoder, images, beam_size=1, **common)
    beam = decode(decoder, images, beam_size=2, **common)
    assert as_list(greedy.ids[0, 0], greedy.lengths[0, 0]) == [0, 2]
    assert as_list(beam.ids[0, 0], beam.lengths[0, 0]) == [1, 2]
    np.testing.assert_allclose(beam.scores[0, 0], np.log(0.4 * 0.99), rtol=1e-5)
    assert beam.scores[0, 0] > greedy.scores[0, 0]


def test_an_early_end_does_not_cost_the_beam_a_word():
    # The im2txt bug: END is the best first word, so keeping only the top-K extensions leaves one live word
    # ("a") and drops "b", whose "b END" (p=.2475) is the true second-best sentence; "a ..." ones are poor.
    tiny = 1e-6
    table = np.full((3, 4, 4), np.log(tiny))
    table[0, 3] = np.log([0.35, 0.25, 0.4, tiny])
    table[1, 0] = np.log([0.5, 0.49, 0.01, tiny])
    table[1, 1] = np.log([0.005, 0.005, 0.99, tiny])
    table[2, :2] = np.log([0.3, 0.3, 0.4, tiny])
    decoder = TableDecoder(table, np.zeros((4, 4)), np.zeros((1, 4)))
    result = decode(decoder, np.zeros((1, 1)), beam_size=2, top_k=2, max_length=3, start_id=3, end_id=2,
                    min_length=0)  # END must be a candidate at the first step for this test
    got = [as_list(result.ids[0, j], result.lengths[0, j]) for j in range(2)]
    assert got == [[2], [1, 2]]
    np.testing.assert_allclose(result.scores[0], np.log([0.4, 0.25 * 0.99]), rtol=1e-5)


@pytest.mark.parametrize("alpha, min_length", [(0.0, 1), (0.7, 1), (1.5, 1), (0.0, 0), (0.7, 2), (0.0, 3)])
def test_wide_beam_matches_brute_force_top_k(alpha, min_length):
    # 16 alive prefixes x 5 words = 80 candidates at the widest step; beam 80 therefore sees every sentence.
    max_length, n_best = 3, 6
    decoder = random_decoder(seed=1, max_length=max_length)
    images = np.random.default_rng(2).normal(size=(2, 3))
    result = decode(decoder, images, beam_size=80, max_length=max_length, alpha=alpha, top_k=n_best,
                    min_length=min_length)
    assert_well_formed(result, max_length)
    for b in range(len(images)):
        expected = brute_force(decoder, images[b], max_length, alpha, min_length)
        assert expected[n_best - 1][0] - expected[n_best][0] > 1e-4, "test tables must not tie at rank top_k"
        got = [as_list(result.ids[b, j], result.lengths[b, j]) for j in range(n_best)]
        assert got == [seq for _, seq in expected[:n_best]]
        np.testing.assert_allclose(result.scores[b], [s for s, _ in expected[:n_best]], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(result.lengths[b], [len(seq) for _, seq in expected[:n_best]])


def test_narrow_beam_never_beats_the_optimum_and_scores_are_honest():
    max_length = 4
    decoder = random_decoder(seed=3, max_length=max_length)
    images = np.random.default_rng(4).normal(size=(3, 3))
    result = decode(decoder, images, beam_size=3, max_length=max_length, alpha=0.5, top_k=3)
    assert_well_formed(result, max_length)
    for b in range(len(images)):
        exact = {tuple(seq): score for score, seq in brute_force(decoder, images[b], max_length, 0.5)}
        best = max(exact.values())
        for j in range(3):
            seq = tuple(as_list(result.ids[b, j], result.lengths[b, j]))
            np.testing.assert_allclose(result.scores[b, j], exact[seq], rtol=1e-4, atol=1e-5)
            assert result.scores[b, j] <= best + 1e-5


@pytest.mark.parametrize("min_length", [1, 0, 3])
def test_beam_one_is_exactly_greedy(min_length):
    max_length = 6
    images = np.random.default_rng(5).normal(size=(8, 3))
    for seed in range(3):
        decoder = random_decoder(seed=10 + seed, max_length=max_length)
        beam = decode(decoder, images, beam_size=1, max_length=max_length, min_length=min_length)
        state = decoder.initial_state(tf.constant(images, tf.float32))
        greedy = greedy_search(decoder.step, state, len(images), max_length=max_length, start_id=START,
                               end_id=END, min_length=min_length)
        np.testing.assert_array_equal(greedy.ids.numpy(), beam.ids)
        for b in range(len(images)):
            seq, log_p = greedy_by_hand(decoder, images[b], max_length, min_length)
            if min_length:
                assert len(seq) > min_length or (len(seq) == min_length == max_length), seq
            assert as_list(beam.ids[b, 0], beam.lengths[b, 0]) == seq
            np.testing.assert_allclose(beam.scores[b, 0], log_p, rtol=1e-4, atol=1e-5)


def test_length_normalisation_prefers_longer_sentences_as_alpha_grows():
    # "END" alone has p=.4 (log -0.92); "a END" has p=.31*.98 (log -1.19): raw log-prob prefers the empty
    # sentence, mean log-prob per word (alpha=1) prefers "a END" (-0.60).
    tiny = 1e-6
    table = np.full((3, 4, 4), np.log(tiny))
    table[0, 3] = np.log([0.31, 0.29, 0.4, tiny])
    table[1, :2] = np.log([0.01, 0.01, 0.98, tiny])
    table[2, :2] = np.log([0.01, 0.01, 0.98, tiny])
    decoder = TableDecoder(table, np.zeros((4, 4)), np.zeros((1, 4)))
    common = dict(beam_size=4, max_length=3, start_id=3, end_id=2, top_k=1, min_length=0)  # a bare END may win
    raw = decode(decoder, np.zeros((1, 1)), alpha=0.0, **common)
    mean = decode(decoder, np.zeros((1, 1)), alpha=1.0, **common)
    assert as_list(raw.ids[0, 0], raw.lengths[0, 0]) == [2]
    assert as_list(mean.ids[0, 0], mean.lengths[0, 0]) == [0, 2]
    np.testing.assert_allclose(raw.scores[0, 0], np.log(0.4), rtol=1e-5)
    np.testing.assert_allclose(mean.scores[0, 0], np.log(0.31 * 0.98) / 2, rtol=1e-5)
    assert float(length_penalty(4, 0.5)) == pytest.approx(2.0)


# --- batching, nesting, finished beams ----------------------------------------------------------------------


@pytest.mark.parametrize("nest", ["dict", "tuple", "tensor"])
def test_batch_equals_one_at_a_time_for_every_state_nesting(nest):
    max_length = 5
    decoder = random_decoder(seed=6, max_length=max_length, nest=nest)
    images = np.random.default_rng(7).normal(size=(4, 3))
    kwargs = dict(beam_size=3, max_length=max_length, alpha=0.7, top_k=2)
    together = decode(decoder, images, **kwargs)
    assert_well_formed(together, max_length)
    for b in range(len(images)):
        alone = decode(decoder, images[b : b + 1], **kwargs)
        np.testing.assert_array_equal(alone.ids[0], together.ids[b])
        np.testing.assert_array_equal(alone.lengths[0], together.lengths[b])
        np.testing.assert_allclose(alone.scores[0], together.scores[b], rtol=1e-6)
    reference = decode(random_decoder(seed=6, max_length=max_length, nest="dict"), images, **kwargs)
    np.testing.assert_array_equal(reference.ids, together.ids)


def test_exact_ties_keep_the_earlier_hypothesis_so_batching_cannot_change_results():
    # Words: 0 "a", 1 "b", 2 END, 3 START, 4 "c". Image 0: p(a) = p(END) = 1/2 and "a" is always followed by
    # END, so "END" and "a END" tie exactly; alone, image 0 stops after "END". Image 1 favours "c" forever and
    # keeps the batch loop running, so image 0 meets the tie -- and must keep the hypothesis it already had.
    table = np.full((4, 5, 5), -np.inf)
    table[0, 3] = [0.0, -np.inf, 0.0, -np.inf, -30.0]
    table[1:, 0] = [-np.inf, -np.inf, 0.0, -np.inf, -np.inf]
    table[1:, 4] = [0.0, 0.0, 0.0, -np.inf, 0.0]
    projection = np.array([[0.0, 0.0, 0.0, 0.0, 40.0]])
    decoder = TableDecoder(table, np.zeros((5, 5)), projection)
    common = dict(beam_size=2, top_k=1, max_length=4, start_id=3, end_id=2, min_length=0)  # END may come first
    alone = decode(decoder, np.zeros((1, 1)), **common)
    together = decode(decoder, np.array([[0.0], [1.0]]), **common)
    assert as_list(alone.ids[0, 0], alone.lengths[0, 0]) == [2]
    assert together.lengths[1, 0] == 4
    np.testing.assert_array_equal(together.ids[0], alone.ids[0])
    np.testing.assert_array_equal(together.scores[0], alone.scores[0])


def test_finished_beams_never_grow_and_unended_beams_stop_at_max_length():
    # END is likely at every step but never the best first word, so early finishes coexist with long beams.
    max_length = 6
    rng = np.random.default_rng(8)
    table = rng.normal(size=(max_length, 5, 5))
    table[:, :, END] += 1.5
    table[0, START, END] = -5.0
    decoder = TableDecoder(table, np.zeros((5, 5)), rng.normal(size=(3, 5)))
    result = decode(decoder, rng.normal(size=(5, 3)), beam_size=4, max_length=max_length, top_k=4, alpha=0.3)
    assert_well_formed(result, max_length)
    assert np.any(result.lengths < max_length)
    # Never-ending sentences: END impossible -> every hypothesis is cut at max_length, with no END inside.
    table[:, :, END] = -1e9
    never = decode(TableDecoder(table, np.zeros((5, 5)), np.zeros((3, 5))), np.zeros((2, 3)), beam_size=3,
                   max_length=max_length, top_k=3)
    assert np.all(never.lengths == max_length) and not np.any(never.ids == END)


def test_too_few_sentences_leave_empty_slots():
    # Two words, max_length 1: only "w" and "END" exist, so the third slot stays empty.
    decoder = TableDecoder(np.zeros((1, 2, 2)), np.zeros((2, 2)), np.zeros((1, 2)))
    result = decode(decoder, np.zeros((1, 1)), beam_size=3, top_k=3, max_length=1, start_id=0, end_id=1,
                    min_length=0)
    assert sorted(as_list(result.ids[0, j], result.lengths[0, j])[0] for j in range(2)) == [0, 1]
    assert result.lengths[0, 2] == 0 and result.scores[0, 2] == -np.inf and np.all(result.ids[0, 2] == 0)


def test_end_as_the_most_likely_first_word_still_gives_a_non_empty_caption():
    """The served bug: <end> won the first step, so the best caption was ''. With the default min_length=1 the
    best caption has a word; with min_length=0 the old behaviour (a bare END) is still available."""
    tiny = 1e-6
    table = np.full((3, 4, 4), np.log(tiny))
    table[0, 3] = np.log([0.2, 0.1, 0.7, tiny])  # END (2) is the most likely first word
    table[1, :2] = np.log([0.1, 0.1, 0.8, tiny])
    table[2, :2] = np.log([0.1, 0.1, 0.8, tiny])
    decoder = TableDecoder(table, np.zeros((4, 4)), np.zeros((1, 4)))
    common = dict(max_length=3, start_id=3, end_id=2)
    for beam_size in (1, 3):
        result = decode(decoder, np.zeros((1, 1)), beam_size=beam_size, **common)
        best = as_list(result.ids[0, 0], result.lengths[0, 0])
        assert best == [0, 2]  # "a <end>": one word, then END
        np.testing.assert_allclose(result.scores[0, 0], np.log(0.2 * 0.8), rtol=1e-5)
        old = decode(decoder, np.zeros((1, 1)), beam_size=beam_size, min_length=0, **common)
        assert as_list(old.ids[0, 0], old.lengths[0, 0]) == [2]


# --- graph mode and export ----------------------------------------------------------------------------------


class CaptionModule(tf.Module):
    """What an exporter would write: a dynamic-batch signature that decodes in-graph."""

    def __init__(self, decoder, **search):
        super().__init__()
        self.decoder = decoder
        self.search = search
        self.caption = tf.function(self._caption, input_signature=[tf.TensorSpec([None, 3], tf.float32)])

    def _caption(self, image_vec):
        result = beam_search(self.decoder.step, self.decoder.initial_state(image_vec), tf.shape(image_vec)[0],
                             start_id=START, end_id=END, **self.search)
        return {"ids": result.ids, "scores": result.scores, "lengths": result.lengths}


def test_runs_in_tf_function_and_survives_saved_model_round_trip(tmp_path):
    max_length = 5
    search = dict(beam_size=3, max_length=max_length, alpha=0.6, top_k=2)
    decoder = random_decoder(seed=9, max_length=max_length, nest="dict")
    module = CaptionModule(decoder, **search)
    graph_def = module.caption.get_concrete_function().graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    for inner in graph_def.library.function:  # the while loop's cond and body
        op_types |= {node.op for node in inner.node_def}
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    assert "While" in op_types or "StatelessWhile" in op_types

    tf.saved_model.save(module, str(tmp_path / "caption"), signatures={"caption": module.caption})
    loaded = tf.saved_model.load(str(tmp_path / "caption"))
    for batch in (1, 4):
        images = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        eager = decode(decoder, images, **search)
        traced = module.caption(tf.constant(images))
        restored = loaded.caption(tf.constant(images))
        served = loaded.signatures["caption"](image_vec=tf.constant(images))
        for out in (traced, restored, served):
            np.testing.assert_array_equal(out["ids"].numpy(), eager.ids)
            np.testing.assert_array_equal(out["lengths"].numpy(), eager.lengths)
            np.testing.assert_allclose(out["scores"].numpy(), eager.scores, rtol=1e-6)
        assert served["ids"].shape == (batch, 2, max_length)


def test_unknown_vocab_width_and_python_int_batch():
    decoder = random_decoder(seed=11, max_length=4)
    images = np.random.default_rng(12).normal(size=(2, 3)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def unknown_width(image_vec):
        def step(ids, state):
            logits, state = decoder.step(ids, state)
            return tf.reshape(logits, tf.stack([tf.shape(logits)[0], -1])), state  # (N, None)
        return beam_search(step, decoder.initial_state(image_vec), tf.shape(image_vec)[0], beam_size=2,
                           max_length=4, start_id=START, end_id=END, vocab_size=5).ids

    expected = beam_search(decoder.step, decoder.initial_state(images), 2, beam_size=2, max_length=4,
                           start_id=START, end_id=END)
    np.testing.assert_array_equal(unknown_width(images).numpy(), expected.ids.numpy())


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beam_size=0), "beam_size must be"),
        (dict(max_length=0), "max_length must be"),
        (dict(top_k=3, beam_size=2), r"top_k \(3\) cannot exceed beam_size \(2\)"),
        (dict(alpha=-0.5), "alpha must be"),
        (dict(alpha=float("nan")), "alpha must be"),
        (dict(end_id=7), r"end_id \(7\) is outside the vocabulary of size 5"),
        (dict(vocab_size=6), "returned 5 logits per row, but vocab_size is 6"),
        (dict(min_length=-1), "min_length must be"),
        (dict(min_length=4), r"min_length \(4\) cannot exceed max_length \(3\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    decoder = random_decoder(seed=0)
    search = dict(beam_size=2, max_length=3, start_id=START, end_id=END) | kwargs
    with pytest.raises(ValueError, match=message):
        decode(decoder, np.zeros((1, 3)), **search)


def test_bad_step_function_outputs_are_named():
    decoder = random_decoder(seed=0)
    state = decoder.initial_state(tf.zeros([1, 3]))
    common = dict(beam_size=2, max_length=3, start_id=START, end_id=END)

    def drops_state(ids, state):
        logits, state = decoder.step(ids, state)
        return logits, state["lstm"]

    def changes_dtype(ids, state):
        logits, state = decoder.step(ids, state)
        return logits, dict(state, position=tf.cast(state["position"], tf.int64))

    def flat_logits(ids, state):
        logits, state = decoder.step(ids, state)
        return tf.reshape(logits, [-1]), state

    with pytest.raises(ValueError, match="nesting differs"):
        beam_search(drops_state, state, 1, **common)
    with pytest.raises(ValueError, match="leaf #2 as int64"):
        beam_search(changes_dtype, state, 1, **common)
    with pytest.raises(ValueError, match=r"logits of shape \(N, V\)"):
        beam_search(flat_logits, state, 1, **common)
    with pytest.raises(ValueError, match="leading dimension 1, but batch_size is 2"):
        beam_search(decoder.step, state, 2, **common)
    with pytest.raises(ValueError, match="is a scalar"):
        beam_search(decoder.step, {"position": tf.constant(0)}, 1, **common)
