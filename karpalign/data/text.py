"""The one tokenizer and the vocabulary.

Tokenization (paper, sec. 4): lowercase, then every run of characters that are not letters or digits
separates tokens (so punctuation, hyphens, emoji and underscores all split words and vanish).

Portability choice: the graph tokenizer uses only core ``tf.strings`` ops (``lower`` with utf-8 encoding,
``regex_replace`` with RE2 Unicode classes, ``split``). Those kernels are part of every TensorFlow build, so a
SavedModel that tokenizes in-graph loads in a plain ``import tensorflow`` process and in the stock TF Serving
binary alike; no ``import tensorflow_text`` is needed anywhere. Unicode is not NFC-normalised (core TF has no
normalisation op): a decomposed "é" (e + U+0301) becomes "e", a precomposed "é" stays "é" -- the pure-Python
path does exactly the same, and that parity is tested on tricky strings.

Lowercasing uses full Unicode case mapping on the whole string in both paths (ICU in ``tf.strings.lower``,
``str.lower`` in Python), so context rules such as the Greek final sigma agree.
"""

from __future__ import annotations

import collections
import os
import re
import unicodedata
from typing import Iterable, Sequence

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3

# RE2 and Python agree on these classes: letters (L*) and numbers (N*) are kept, everything else splits.
_TF_NON_ALNUM = r"[^\p{L}\p{N}]+"


_ASCII_WORD = re.compile(r"[a-z0-9]+")


def _is_kept(ch: str) -> bool:
    return unicodedata.category(ch)[0] in ("L", "N")


def python_tokenize(text: str) -> list[str]:
    """Pure-Python twin of :func:`tf_tokenize`; returns the same tokens for the same string."""
    lowered = text.lower()
    if lowered.isascii():  # fast path, same result: the ASCII letters and digits are exactly the L*/N* ones
        return _ASCII_WORD.findall(lowered)
    return _split_unicode(lowered)


def _split_unicode(lowered: str) -> list[str]:
    """Runs of letter/number characters (Unicode categories L* and N*) of an already lowercased string."""
    out, cur = [], []
    for ch in lowered:
        if _is_kept(ch):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def tf_tokenize(texts):
    """Tokenizes a string tensor of any shape with core TF ops -> RaggedTensor of tokens (one more rank)."""
    import tensorflow as tf

    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    # NUL separates words like any other non-alphanumeric character, but the utf-8 (ICU) lowercasing kernel
    # stops at the first NUL and drops the rest of the string; turn NULs into spaces before lowering.
    texts = tf.strings.regex_replace(texts, r"\x00", " ")
    lowered = tf.strings.lower(texts, encoding="utf-8")
    spaced = tf.strings.regex_replace(lowered, _TF_NON_ALNUM, " ")
    return tf.strings.split(tf.strings.strip(spaced))


class Vocabulary:
    """Word <-> id mapping. Ids 0..3 are the special tokens pad, unk, start, end; then words by frequency."""

    def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}, got {words[:4]}")
        if len(set(words)) != len(words):
            dup = [w for w, c in collections.Counter(words).items() if c > 1][:5]
            raise ValueError(f"vocabulary has duplicate words: {dup}")
        self.words = words
        self.counts = list(counts) if counts is not None else None
        self._index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 5) -> "Vocabulary":
        """Builds from tokenized *training* sentences; words seen fewer than ``min_count`` times are unknown."""
        counter = collections.Counter()
        n_sent = 0
        for tokens in token_lists:
            counter.update(tokens)
            n_sent += 1
        kept = sorted((w for w, c in counter.items() if c >= min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counter[w], w))
        unk = sum(c for w, c in counter.items() if c < min_count)
        counts = [0, unk, 0, n_sent] + [counter[w] for w in kept]
        return cls(list(SPECIAL_TOKENS) + kept, counts)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def id(self, word: str) -> int:
        return self._index.get(word, UNK_ID)

    def encode(self, tokens: Sequence[str], add_start: bool = False, add_end: bool = False) -> list[int]:
        ids = [self.id(t) for t in tokens]
        return ([START_ID] if add_start else []) + ids + ([END_ID] if add_end else [])

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Ids -> words, stopping at the end token and skipping pad/start."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return out

    def save(self, path: str) -> None:
        """Plain text asset: one word per line, in id order (counts, if known, after a tab)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i, w in enumerate(self.words):
                f.write(f"{w}\t{self.counts[i]}\n" if self.counts is not None else f"{w}\n")

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        words, counts = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line:
                    raise ValueError(f"{path}:{lineno}: empty line in vocabulary file")
                parts = line.split("\t")
                words.append(parts[0])
                if len(parts) > 1:
                    try:
                        counts.append(int(parts[1]))
                    except ValueError:
                        raise ValueError(f"{path}:{lineno}: count {parts[1]!r} is not an integer") from None
        return cls(words, counts if len(counts) == len(words) else None)

    def lookup_table(self, asset_path: str | None = None):
        """In-graph word -> id table (unknown words map to ``UNK_ID``).

        With ``asset_path`` the table is initialised from that text file (the saved asset), so a SavedModel
        carries the vocabulary as an asset; otherwise from the in-memory word list.
        """
        import tensorflow as tf

        if asset_path is not None:
            init = tf.lookup.TextFileInitializer(
                asset_path, key_dtype=tf.string, key_index=0, value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER, delimiter="\t")
        else:
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.words), tf.range(len(self.words), dtype=tf.int64))
        return tf.lookup.StaticHashTable(init, default_value=UNK_ID)


_WS = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Whitespace-collapsed raw caption (for display and for the JSON outputs)."""
    return _WS.sub(" ", text).strip()
