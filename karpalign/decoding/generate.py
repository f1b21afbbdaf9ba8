"""Captions for a batch of image (or region) vectors: a generator, its vocabulary and beam search.

Two layers, so that graph code and Python code share one decoding path:

- :func:`decode_image_vectors` is pure TensorFlow (``generator.initial_state`` + :func:`beam_search` over
  ``generator.step``); it runs eagerly, inside any ``tf.function`` and inside an exported SavedModel.
- :class:`CaptionGenerator` compiles it ONCE per decoding setting with a fixed input signature
  ``(None, D) float32`` (so every batch size, including a short last batch, reuses one trace) and turns word ids
  into text with :meth:`Vocabulary.decode`. :func:`generate_captions` is the one-call form used by the
  evaluation CLIs.

:func:`load_generator` opens a ``karpalign-train --task caption`` run folder
(:meth:`karpalign.training.run_dir.RunDir.load_generator`) with errors that name the missing file.
"""

from __future__ import annotations


import numpy as np
import tensorflow as tf

from karpalign.data.text import END_ID, START_ID, Vocabulary
from karpalign.decoding.beam_search import BeamResult, beam_search


def decode_image_vectors(generator, image_vecs, *, beam_size: int, max_length: int, alpha: float = 0.0,
                         top_k: int = 1, min_length: int = 1) -> BeamResult:
    """Beam search from image vectors (B, D) -> :class:`BeamResult` (ids (B, k, L), scores (B, k), lengths).

    TensorFlow ops only; the batch size may be dynamic.
    """
    image_vecs = tf.convert_to_tensor(image_vecs, tf.float32)  # (B, D)
    state = generator.initial_state(image_vecs)
    return beam_search(generator.step, state, tf.shape(image_vecs)[0], beam_size=beam_size,
                       max_length=max_length, start_id=START_ID, end_id=END_ID, alpha=alpha, top_k=top_k,
                       vocab_size=int(generator.vocab_size), min_length=min_length)


class CaptionGenerator:
    """A generator + vocabulary with one compiled beam search: ``(N, D)`` vectors -> captions.

    Args:
        generator: a model with the decoder-step contract and ``vocab_size`` / ``feature_dim`` attributes
            (:class:`karpalign.models.mrnn_decoder.MRNNDecoder`).
        vocab: the :class:`Vocabulary` the generator was trained with (same size as its output layer).
        beam_size, max_length, alpha, top_k, min_length: beam search settings (see :func:`beam_search`), fixed in
            the graph (``min_length=1``: never an empty caption).
        batch_size: vectors decoded per call of the compiled search.
    """

    def __init__(self, generator, vocab: Vocabulary, *, beam_size: int, max_length: int, alpha: float = 0.0,
                 top_k: int = 1, batch_size: int = 64, min_length: int = 1):
        if len(vocab) != int(generator.vocab_size):
            raise ValueError(f"the vocabulary has {len(vocab)} words but the generator predicts "
                             f"{generator.vocab_size}; use the vocab.txt of the generator's training run")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.generator, self.vocab, self.batch_size = generator, vocab, batch_size
        self.feature_dim = int(generator.feature_dim)
        settings = dict(beam_size=beam_size, max_length=max_length, alpha=alpha, top_k=top_k, min_length=min_length)
        _check_settings(**settings)  # argument errors surface here, not at the first trace
        self.settings = settings
        self.decode_fn = tf.function(
            lambda vecs: decode_image_vectors(generator, vecs, **settings),
            input_signature=[tf.TensorSpec([None, self.feature_dim], tf.float32, name="image_vecs")])

    def decode_ids(self, image_vecs) -> BeamResult:
        """(N, D) -> numpy :class:`BeamResult`, decoded in batches of ``batch_size``."""
        vecs = _check_vectors(image_vecs, self.feature_dim)
        parts = [self.decode_fn(tf.constant(vecs[i:i + self.batch_size]))
                 for i in range(0, len(vecs), self.batch_size)]
        if not parts:
            k, t = self.settings["top_k"], self.settings["max_length"]
            return BeamResult(np.zeros((0, k, t), np.int32), np.zeros((0, k), np.float32), np.zeros((0, k), np.int32))
        return BeamResult(*(np.concatenate([getattr(p, f).numpy() for p in parts]) for f in BeamResult._fields))

    def __call__(self, image_vecs) -> list[list[tuple[str, float]]]:
        """(N, D) -> for each vector its ``top_k`` (caption text, score) pairs, best first.

        Slots the search could not fill (score ``-inf``; only with tiny vocabularies / lengths) are left out.
        """
        result = self.decode_ids(image_vecs)
        out = []
        for ids, scores in zip(result.ids, result.scores):  # (k, L), (k,)
            out.append([(" ".join(self.vocab.decode(row)), float(score))
                        for row, score in zip(ids, scores) if np.isfinite(score)])
        return out

    @property
    def tracing_count(self) -> int:
        """How many times the compiled search was traced (1 after any number of calls)."""
        return self.decode_fn.experimental_get_tracing_count()


def generate_captions(generator, vocab: Vocabulary, image_vecs, *, beam_size: int, max_length: int,
                      alpha: float = 0.0, top_k: int = 1, batch_size: int = 64,
                      min_length: int = 1) -> list[list[tuple[str, float]]]:
    """Captions for image vectors (N, D): for each, its ``top_k`` (text, length-normalised log p), best first.

    See :class:`CaptionGenerator`; build one yourself to reuse the compiled search across calls.
    """
    return CaptionGenerator(generator, vocab, beam_size=beam_size, max_length=max_length, alpha=alpha,
                            top_k=top_k, batch_size=batch_size, min_length=min_length)(image_vecs)


def load_generator(run_dir: str):
    """A caption run folder -> (generator, vocab); errors name the bad file (see :class:`RunDir`)."""
    from karpalign.training.run_dir import RunDir

    return RunDir(run_dir, "caption").load_generator()


def _check_settings(*, beam_size, max_length, alpha, top_k, min_length=1) -> None:
    """The beam search's own argument checks, run once without tracing anything."""
    from karpalign.decoding.beam_search import _check_arguments

    _check_arguments(beam_size, max_length, START_ID, END_ID, alpha, top_k, None, min_length)


def _check_vectors(image_vecs, feature_dim: int) -> np.ndarray:
    vecs = np.asarray(image_vecs, np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != feature_dim:
        raise ValueError(f"image vectors must be (N, {feature_dim}) for this generator, got shape {vecs.shape}")
    if not np.all(np.isfinite(vecs)):
        raise ValueError(f"image vectors contain NaN or Inf (row {int(np.argwhere(~np.isfinite(vecs))[0, 0])})")
    return vecs
