import pytest
import tensorflow as tf

from karpalign.data.text import (END_ID, PAD_ID, START_ID, UNK_ID, Vocabulary, python_tokenize, tf_tokenize)

TRICKY = [
    "A small red triangle, left of two blue circles.",
    "Café crème brûlée — naïve façade",
    "Cafe\u0301 decomposed accent",
    "ÉCOLE ÜBER İstanbul ΟΔΟΣ straße",
    "emoji 🐱🐶 between words🎉ok",
    "digits 3 dogs and 12.5% of 2024's cats",
    "well-known x-ray self-driving",
    "HTML &amp; entities &lt;b&gt; &#39;quoted&#39;",
    "tabs\tand\nnewlines  and   spaces",
    "under_score snake_case",
    "",
    "   ",
    "!!!",
    "日本語のテキスト 中文 한국어",
    "Ⅻ roman numeral ½ half ² squared",
    "مرحبا بالعالم",
    "NUL\x00inside Ünïcode\x00TEXT",
]


@pytest.mark.parametrize("text", TRICKY)
def test_python_and_graph_tokenizers_agree(text):
    graph = [t.decode("utf-8") for t in tf_tokenize(tf.constant([text]))[0].numpy().tolist()]
    assert graph == python_tokenize(text)


def test_ascii_fast_path_matches_the_unicode_rule_and_the_graph():
    from karpalign.data.text import _split_unicode

    every_ascii = "".join(chr(c) for c in range(128))
    texts = [every_ascii, "x".join(every_ascii), "Two_Dogs-2x 3.5 ok\t\x00end", "ABC\x7fdef"]
    for text in texts:
        assert text.isascii()
        assert python_tokenize(text) == _split_unicode(text.lower()), repr(text)
    graph = tf_tokenize(tf.constant(texts)).to_list()
    assert [[t.decode() for t in row] for row in graph] == [python_tokenize(t) for t in texts]


def test_tokenizer_rules():
    assert python_tokenize("A small RED triangle, left-of two.") == ["a", "small", "red", "triangle", "left", "of",
                                                                      "two"]
    assert python_tokenize("emoji🐱cat") == ["emoji", "cat"]
    assert python_tokenize("") == []


def test_graph_tokenizer_in_tf_function_batch():
    fn = tf.function(tf_tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    out = fn(tf.constant(["Two Dogs!", "x"]))
    assert out.to_list() == [[b"two", b"dogs"], [b"x"]]


def test_vocabulary_build_min_count_and_specials(tmp_path):
    sents = [["a", "red", "circle"], ["a", "blue", "circle"], ["a", "red", "star"]]
    vocab = Vocabulary.build(sents, min_count=2)
    assert vocab.words[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert vocab.words[4:] == ["a", "circle", "red"]  # by count, then alphabetically
    assert vocab.id("blue") == UNK_ID
    assert vocab.encode(["a", "star"], add_start=True, add_end=True) == [START_ID, vocab.id("a"), UNK_ID, END_ID]
    assert vocab.decode([START_ID, vocab.id("red"), vocab.id("circle"), END_ID, vocab.id("a")]) == ["red", "circle"]
    path = tmp_path / "vocab.txt"
    vocab.save(str(path))
    again = Vocabulary.load(str(path))
    assert again.words == vocab.words and again.counts == vocab.counts


def test_vocabulary_lookup_table_from_asset(tmp_path):
    vocab = Vocabulary.build([["red", "circle"]] * 5, min_count=1)
    path = str(tmp_path / "vocab.txt")
    vocab.save(path)
    for table in (vocab.lookup_table(path), vocab.lookup_table()):
        ids = table.lookup(tf.constant(["red", "circle", "zebra", "<pad>"])).numpy().tolist()
        assert ids == [vocab.id("red"), vocab.id("circle"), UNK_ID, PAD_ID]


def test_vocabulary_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("<pad>\n<unk>\n\n")
    with pytest.raises(ValueError, match="bad.txt:3: empty line"):
        Vocabulary.load(str(path))
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.load(str(path))
