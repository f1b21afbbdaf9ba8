"""generate_captions: one compiled beam search (traced once) that matches eager beam search word for word."""

import numpy as np
import pytest
import tensorflow as tf

from karpalign.data.text import END_ID, START_ID, Vocabulary
from karpalign.decoding.beam_search import beam_search
from karpalign.decoding.generate import CaptionGenerator, generate_captions, load_generator
from karpalign.models.mrnn_decoder import MRNNDecoder

WORDS = ["a", "red", "green", "blue", "circle", "square", "star", "and", "on", "the"]
FEATURE_DIM = 8


def _vocab():
    return Vocabulary.build([WORDS], min_count=1)


def _generator(cell="rnn", seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    vocab = _vocab()
    g = MRNNDecoder(len(vocab), FEATURE_DIM, hidden_dim=24, word_dim=12, cell=cell)
    g({"image": tf.zeros([1, FEATURE_DIM]), "tokens": tf.zeros([1, 2], tf.int32)})
    # Larger output weights give peaked, well-separated word distributions (no near-ties between paths).
    g.output_proj.kernel.assign(g.output_proj.kernel.numpy() * 4.0)
    return g, vocab


def _image_vecs(n, seed=1):
    return np.random.default_rng(seed).normal(size=(n, FEATURE_DIM)).astype("f4")


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_generate_captions_equals_eager_beam_search(cell):
    generator, vocab = _generator(cell)
    vecs = _image_vecs(5)
    got = generate_captions(generator, vocab, vecs, beam_size=3, max_length=7, alpha=0.5, top_k=2, batch_size=2)

    eager = beam_search(generator.step, generator.initial_state(tf.constant(vecs)), 5, beam_size=3, max_length=7,
                        start_id=START_ID, end_id=END_ID, alpha=0.5, top_k=2)
    assert len(got) == 5
    for n in range(5):
        want = [(" ".join(vocab.decode(ids)), float(s)) for ids, s in zip(eager.ids[n].numpy(),
                                                                            eager.scores[n].numpy())]
        assert [t for t, _ in got[n]] == [t for t, _ in want], n
        np.testing.assert_allclose([s for _, s in got[n]], [s for _, s in want], rtol=1e-5, atol=1e-5)
        assert got[n][0][1] >= got[n][1][1]
        for text, _ in got[n]:
            assert all(w in vocab for w in text.split())  # an untrained model may say <unk>


def test_beam_size_one_is_the_greedy_arg_max_path():
    generator, vocab = _generator()
    vecs = _image_vecs(3, seed=2)
    got = generate_captions(generator, vocab, vecs, beam_size=1, max_length=6)
    state = generator.initial_state(tf.constant(vecs))
    token = tf.fill([3], START_ID)
    ids = []
    for _ in range(6):
        logits, state = generator.step(token, state)
        token = tf.cast(tf.argmax(logits, -1), tf.int32)
        ids.append(token.numpy())
    ids = np.stack(ids, axis=1)  # (3, 6)
    assert [caps[0][0] for caps in got] == [" ".join(vocab.decode(row)) for row in ids]


def test_compiled_search_is_traced_once_for_all_batch_sizes():
    generator, vocab = _generator()
    captioner = CaptionGenerator(generator, vocab, beam_size=2, max_length=5, batch_size=4)
    first = captioner(_image_vecs(9))  # batches of 4, 4, 1
    again = captioner(_image_vecs(3))
    assert captioner.tracing_count == 1
    assert len(first) == 9 and len(again) == 3
    # Batching does not change the result: an image decodes the same alone and in a batch.
    alone = captioner(_image_vecs(9)[8:9])
    assert [t for t, _ in alone[0]] == [t for t, _ in first[8]]
    assert [s for _, s in alone[0]] == pytest.approx([s for _, s in first[8]], abs=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_xla_search_is_compiled_and_gives_the_graph_searchs_captions(cell):
    generator, vocab = _generator(cell)
    vecs = _image_vecs(7, seed=3)
    settings = dict(beam_size=3, max_length=7, alpha=0.5, top_k=3, batch_size=4)
    xla = CaptionGenerator(generator, vocab, jit_compile=True, **settings)
    graph = CaptionGenerator(generator, vocab, jit_compile=False, **settings)
    assert xla.jit_compile and CaptionGenerator(generator, vocab, beam_size=2, max_length=4).jit_compile  # default

    def must_compile(captioner):
        attrs = captioner.decode_fn.get_concrete_function().function_def.attr
        return "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b

    assert must_compile(xla) and not must_compile(graph)
    got, want = xla.decode_ids(vecs), graph.decode_ids(vecs)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)
    assert len(set(map(tuple, want.ids[:, 0]))) > 1  # different captions: the comparison is not vacuous
    assert [[text for text, _ in c] for c in xla(vecs)] == [[text for text, _ in c] for c in graph(vecs)]


def test_bad_inputs_are_refused_with_clear_errors():
    generator, vocab = _generator()
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        generate_captions(generator, vocab, np.zeros((2, 5)), beam_size=2, max_length=4)
    with pytest.raises(ValueError, match="NaN"):
        generate_captions(generator, vocab, np.full((1, FEATURE_DIM), np.nan), beam_size=2, max_length=4)
    with pytest.raises(ValueError, match="vocabulary has 5 words"):
        generate_captions(generator, Vocabulary.build([["x"]], min_count=1), _image_vecs(1), beam_size=2,
                          max_length=4)
    with pytest.raises(ValueError, match="top_k"):
        CaptionGenerator(generator, vocab, beam_size=2, max_length=4, top_k=3)


def test_load_generator_names_missing_files(tmp_path):
    generator, vocab = _generator()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(str(tmp_path / "nope"))
    generator.save(str(tmp_path / "generator.keras"))
    with pytest.raises(FileNotFoundError, match="vocab.txt not found"):
        load_generator(str(tmp_path))
    _vocab().save(str(tmp_path / "vocab.txt"))
    loaded, loaded_vocab = load_generator(str(tmp_path))
    vecs = _image_vecs(2)
    assert (generate_captions(loaded, loaded_vocab, vecs, beam_size=2, max_length=5)
            == generate_captions(generator, vocab, vecs, beam_size=2, max_length=5))
