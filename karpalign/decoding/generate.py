"""Captions for a batch of image (or region) vectors: a generator, its vocabulary and beam search.

Two layers, so that graph code and Python code share one decoding path:

- :func:`decode_image_vectors` is pure TensorFlow (``generator.initial_state`` + :func:`beam_search` over
  ``generator.step``); it runs eagerly, inside any ``tf.function`` and inside an exported SavedModel.
  :func:`decode_regions` is the same from region features (B, R, D) and their mask (B, R), for every generator:
  one that attends over regions (``reads_regions``, the updown generator) gets them all, the mRNN region 0.
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

# XLA for the compiled searches (CaptionGenerator) and the exported caption signatures by default: at one image
# per call most of a step's time is otherwise the graph executor's fixed cost per op, which XLA removes by fusing
# the whole tf.while_loop into one program (benchmarks/decode.py measures both). An XLA SavedModel needs an XLA
# JIT in the serving binary: TF Serving's tensorflow_model_server only with --xla_cpu_compilation_enabled=true.
JIT_COMPILE = True


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


def decode_regions(generator, region_features, region_mask, *, beam_size: int, max_length: int, alpha: float = 0.0,
                   top_k: int = 1, min_length: int = 1) -> BeamResult:
    """Beam search from region features (B, R, D) and mask (B, R), region 0 the full image -> :class:`BeamResult`.

    A generator with ``reads_regions`` (:class:`karpalign.models.updown_decoder.UpDownDecoder`) starts from
    ``initial_state(region_features, region_mask)``; any other (the mRNN) is :func:`decode_image_vectors` of
    region 0. TensorFlow ops only; batch and region counts may be dynamic.
    """
    from karpalign.models.generators import reads_regions

    region_features = tf.convert_to_tensor(region_features, tf.float32)  # (B, R, D)
    settings = dict(beam_size=beam_size, max_length=max_length, alpha=alpha, top_k=top_k, min_length=min_length)
    if not reads_regions(generator):
        return decode_image_vectors(generator, region_features[:, 0, :], **settings)
    state = generator.initial_state(region_features, tf.convert_to_tensor(region_mask, tf.float32))
    return beam_search(generator.step, state, tf.shape(region_features)[0], start_id=START_ID, end_id=END_ID,
                       vocab_size=int(generator.vocab_size), **settings)


class CaptionGenerator:
    """A generator + vocabulary with one compiled beam search: ``(N, D)`` vectors, or ``(N, R, D)`` region
    features with their ``(N, R)`` mask, -> captions.

    Args:
        generator: a model with the decoder-step contract and ``vocab_size`` / ``feature_dim`` attributes
            (:class:`karpalign.models.mrnn_decoder.MRNNDecoder`).
        vocab: the :class:`Vocabulary` the generator was trained with (same size as its output layer).
        beam_size, max_length, alpha, top_k, min_length: beam search settings (see :func:`beam_search`), fixed in
            the graph (``min_length=1``: never an empty caption).
        batch_size: vectors decoded per call of the compiled search.
        jit_compile: compile the search with XLA (default): one fused program per batch shape instead of a
            graph whose ops each pay the executor's per-op cost at every step (see :data:`JIT_COMPILE`). XLA rounds
            some sums differently, so a caption can differ from the graph's where two hypotheses score within
            float32 rounding of each other; ``False`` gives the plain graph, op for op what eager execution does.

    The mRNN takes either form (from regions it reads region 0). A generator that attends over regions
    (``reads_regions``) reads every region of the region form; given vectors, it captions each as an image of
    one region (how a box's crop is captioned on its own, e.g. by region-caption evaluation). Each form has its
    own compiled search (``decode_fn`` for vectors, None for a region generator; ``decode_regions_fn`` for
    regions), traced once on first use.
    """

    def __init__(self, generator, vocab: Vocabulary, *, beam_size: int, max_length: int, alpha: float = 0.0,
                 top_k: int = 1, batch_size: int = 64, min_length: int = 1, jit_compile: bool = JIT_COMPILE):
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
        from karpalign.models.generators import reads_regions

        self.reads_regions = reads_regions(generator)
        self.jit_compile = bool(jit_compile)
        self.decode_fn = None if self.reads_regions else tf.function(
            lambda vecs: decode_image_vectors(generator, vecs, **settings),
            input_signature=[tf.TensorSpec([None, self.feature_dim], tf.float32, name="image_vecs")],
            jit_compile=self.jit_compile)
        self.decode_regions_fn = tf.function(
            lambda feats, mask: decode_regions(generator, feats, mask, **settings),
            input_signature=[tf.TensorSpec([None, None, self.feature_dim], tf.float32, name="region_features"),
                             tf.TensorSpec([None, None], tf.float32, name="region_mask")],
            jit_compile=self.jit_compile)

    def decode_ids(self, image_vecs, region_mask=None) -> BeamResult:
        """(N, D) vectors, or (N, R, D) region features with ``region_mask`` (N, R), -> numpy
        :class:`BeamResult`, decoded in batches of ``batch_size``."""
        if region_mask is None and self.reads_regions:  # each vector is an image of one region
            vecs = _check_vectors(image_vecs, self.feature_dim)
            return self.decode_ids(vecs[:, None, :], np.ones((len(vecs), 1), np.float32))
        if region_mask is None:
            vecs = _check_vectors(image_vecs, self.feature_dim)
            parts = [self.decode_fn(tf.constant(vecs[i:i + self.batch_size]))
                     for i in range(0, len(vecs), self.batch_size)]
        else:
            feats, mask = _check_regions(image_vecs, region_mask, self.feature_dim)
            parts = [self.decode_regions_fn(tf.constant(feats[i:i + self.batch_size]),
                                            tf.constant(mask[i:i + self.batch_size]))
                     for i in range(0, len(feats), self.batch_size)]
        if not parts:
            k, t = self.settings["top_k"], self.settings["max_length"]
            return BeamResult(np.zeros((0, k, t), np.int32), np.zeros((0, k), np.float32), np.zeros((0, k), np.int32))
        return BeamResult(*(np.concatenate([getattr(p, f).numpy() for p in parts]) for f in BeamResult._fields))

    def __call__(self, image_vecs, region_mask=None) -> list[list[tuple[str, float]]]:
        """(N, D), or (N, R, D) with ``region_mask`` (N, R), -> for each image its ``top_k`` (caption text,
        score) pairs, best first.

        Slots the search could not fill (score ``-inf``; only with tiny vocabularies / lengths) are left out.
        """
        result = self.decode_ids(image_vecs, region_mask)
        out = []
        for ids, scores in zip(result.ids, result.scores):  # (k, L), (k,)
            out.append([(" ".join(self.vocab.decode(row)), float(score))
                        for row, score in zip(ids, scores) if np.isfinite(score)])
        return out

    @property
    def tracing_count(self) -> int:
        """How many times the compiled searches were traced (1 per form used, after any number of calls)."""
        vectors = self.decode_fn.experimental_get_tracing_count() if self.decode_fn is not None else 0
        return vectors + self.decode_regions_fn.experimental_get_tracing_count()


def generate_captions(generator, vocab: Vocabulary, image_vecs, *, beam_size: int, max_length: int,
                      alpha: float = 0.0, top_k: int = 1, batch_size: int = 64,
                      min_length: int = 1, region_mask=None) -> list[list[tuple[str, float]]]:
    """Captions for image vectors (N, D), or region features (N, R, D) with ``region_mask`` (N, R): for each,
    its ``top_k`` (text, length-normalised log p), best first.

    See :class:`CaptionGenerator`; build one yourself to reuse the compiled search across calls.
    """
    return CaptionGenerator(generator, vocab, beam_size=beam_size, max_length=max_length, alpha=alpha,
                            top_k=top_k, batch_size=batch_size, min_length=min_length)(image_vecs, region_mask)


def load_generator(run_dir: str):
    """A caption run folder -> (generator, vocab); errors name the bad file (see :class:`RunDir`)."""
    from karpalign.training.run_dir import RunDir

    return RunDir(run_dir, "caption").load_generator()


def _check_settings(*, beam_size, max_length, alpha, top_k, min_length=1) -> None:
    """The beam search's own argument checks, run once without tracing anything."""
    from karpalign.decoding.beam_search import _check_arguments

    _check_arguments(beam_size, max_length, START_ID, END_ID, alpha, top_k, None, min_length)


def _check_regions(region_features, region_mask, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(region_features, np.float32)
    mask = np.asarray(region_mask, np.float32)
    if feats.ndim != 3 or feats.shape[2] != feature_dim:
        raise ValueError(f"region_features must be (N, R, {feature_dim}) for this generator, got shape {feats.shape}")
    if mask.shape != feats.shape[:2]:
        raise ValueError(f"region_mask must be (N, R) = {feats.shape[:2]}, got shape {mask.shape}")
    if len(mask) and not np.all(mask[:, 0] > 0):
        raise ValueError(f"region_mask: region 0 (the full image) is masked out in row "
                         f"{int(np.argwhere(mask[:, 0] <= 0)[0, 0])}")
    if not np.all(np.isfinite(feats)):
        bad = np.argwhere(~np.isfinite(feats))[0]
        raise ValueError(f"region_features contain NaN or Inf (row {int(bad[0])}, region {int(bad[1])})")
    return feats, mask


def _check_vectors(image_vecs, feature_dim: int) -> np.ndarray:
    vecs = np.asarray(image_vecs, np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != feature_dim:
        raise ValueError(f"image vectors must be (N, {feature_dim}) for this generator, got shape {vecs.shape}")
    if not np.all(np.isfinite(vecs)):
        raise ValueError(f"image vectors contain NaN or Inf (row {int(np.argwhere(~np.isfinite(vecs))[0, 0])})")
    return vecs
