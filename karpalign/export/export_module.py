"""The serving module: one ``tf.Module`` whose endpoints become the SavedModel's named signatures.

Modelled on the Model Garden's ``export_base.ExportModule``: the module owns the Keras models (their weights are
saved with it), the vocabulary tables and the exported constants, and binds named ``tf.TensorSpec`` inputs to
each endpoint. Every endpoint takes ONE dict of named tensors and returns a dict of named outputs, so

- :func:`karpalign.export.saved_model.save_for_serving` (``tf.saved_model.save`` plus tracking of every variable
  the signatures read, so TF Serving's session loader restores them) gives TF Serving signatures whose input
  and output aliases are our names (never ``output_0``), and
- the same functions are attributes of the loaded object, so ``keras.layers.TFSMLayer(dir,
  call_endpoint="caption_features")`` can call them with a dict.

Endpoints (B images or sentences, R regions, D feature dim, H embed dim, T = ``max_words``, K = ``top_k``,
L = ``max_length``):

- ``serving_default``: ``images`` string (B,) encoded JPEG/PNG/GIF/BMP -> ``captions`` string (B, K),
  ``scores`` float32 (B, K), ``token_ids`` int32 (B, K, L), ``boxes`` (R, 4), ``region_features`` (B, R, D),
  ``proposer`` string () the in-graph proposer's name and ``records_proposer`` string () the name of the one the
  training records were made with (they differ only when the export was asked to). With a proposer that runs in
  the graph and gives every image its own boxes (``learned:``, ``detector:``; :mod:`karpalign.vision.proposers`):
  ``boxes`` (B, R, 4) zero-padded, ``region_mask`` (B, R), ``box_scores`` (B, R) and ``box_classes`` int32 (B, R)
  (a detector's class ids; 0 for the full image, padding and the class-agnostic learned proposer), R = 1 + K
- ``caption_features``: ``region_features`` (B, R, D), ``region_mask`` (B, R) -> ``captions``, ``scores``,
  ``token_ids``
- ``caption_examples``: ``examples`` string (B,) serialized tf.Example (our schema) -> the same three
- ``embed_images``: ``region_features``, ``region_mask`` -> ``region_vectors`` (B, R, H)
- ``embed_sentences``: ``sentences`` string (B,) raw text -> ``word_vectors`` (B, T, H), ``word_mask`` (B, T),
  ``tokens`` string (B, T)
- ``score``: ``region_features``, ``region_mask``, ``sentences`` -> ``scores`` (B_img, B_sent)
- ``align``: ``region_features``, ``region_mask``, ``sentences``, ``beta`` scalar (image i with sentence i) ->
  ``region_word_scores`` (B, T, R), ``assignment`` int32 (B, T) (-1 at padding), ``tokens`` (B, T)

The image path is :func:`karpalign.vision.region_features.region_features_tf`, the functions the extraction job
runs too: decode (EXIF orientation, alpha on white, first frame, RGB, pixel-identical to Pillow), bilinear
``tf.image.crop_and_resize`` of every box at ``crop_size``, the backbone's linear pixel mapping in float32, the
CNN in chunks of at most 32 crops, global average pooling of a 4-D output. The caption endpoints decode with
:func:`karpalign.decoding.generate.decode_regions`: the mRNN starts from region 0, the full image; a
region-attention generator (``model.generator: updown``) attends over every region of the request (the
``region_mask`` of ``caption_features``, the examples' own regions in ``caption_examples``, every box of the
in-graph proposer in ``serving_default``). An image the decoder cannot read the way extraction does (CMYK JPEG,
TIFF, ...; see :mod:`karpalign.vision.region_features`) fails the request with INVALID_ARGUMENT naming the format.

Everything in the graph is a core TensorFlow op (tokenizer: ``tf.strings``; beam search: ``tf.while_loop``;
MRF: ``tf.scan``), so the SavedModel loads with a plain ``import tensorflow`` and in the stock TF Serving binary.
The beam search of the caption endpoints is XLA-compiled by default (``jit_compile``; the word ids become text
outside it): the stock ``tensorflow_model_server`` then needs ``--xla_cpu_compilation_enabled=true``, without
which it refuses such a model's first request ("XLA compilation disabled"). ``jit_compile=False``
(``karpalign-export --no-xla``) writes the plain graph, which any TensorFlow binary runs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from karpalign.alignment.mrf import tf_viterbi_align
from karpalign.config import DecodeConfig
from karpalign.data.features import parse_examples
from karpalign.data.pipeline import token_ids
from karpalign.data.text import END_ID, PAD_ID, START_ID, UNK, Vocabulary, tf_tokenize
from karpalign.decoding.generate import JIT_COMPILE, decode_regions
from karpalign.vision.region_features import image_region_features_tf, region_features_tf

__all__ = ["ExportModule"]


class ExportModule(tf.Module):
    """Alignment model + generator (+ optional CNN backbone) behind named serving endpoints.

    Args:
        alignment: a loaded :class:`karpalign.models.alignment_model.AlignmentModel`.
        generator: a loaded caption generator (:class:`karpalign.models.mrnn_decoder.MRNNDecoder` or
            :class:`karpalign.models.updown_decoder.UpDownDecoder`).
        vocab_path: the vocabulary text file (id order); becomes a SavedModel asset both lookup tables read.
        decode: beam search settings, fixed in the graph.
        max_words: sentences are cut to this many tokens (the alignment run's ``data.max_words``).
        feature_dim: D of the region features (static in every signature).
        backbone: a :class:`karpalign.vision.backbones.Backbone` for the ``serving_default`` image path, or None
            to export without it (then there is no ``serving_default``; caption with ``caption_features``).
        boxes: (R, 4) normalised boxes, full image first, cropped from every image (needed with a backbone and
            no ``proposer``).
        proposer: an in-graph proposer (:class:`karpalign.vision.proposers.LearnedRegionProposer` or
            :class:`~karpalign.vision.proposers.DetectorProposer`) that gives every image its own boxes, or None.
        proposer_name: the name ``serving_default`` reports (default: the proposer's name, or ``grid|k=K``).
        records_proposer: the name of the proposer the training records were made with (reported too).
        crop_size: side of the square crops fed to the backbone (needed with a backbone).
        config_path: optional resolved-config file shipped as an asset (``config.yaml`` in the assets folder).
        jit_compile: XLA-compile the caption endpoints' beam search (see the module docstring); default
            :data:`karpalign.decoding.generate.JIT_COMPILE`.
    """

    def __init__(self, alignment, generator, vocab_path: str, *, decode: DecodeConfig, max_words: int,
                 feature_dim: int, backbone=None, boxes=None, crop_size: int | None = None,
                 config_path: str | None = None, name: str = "karpalign_export", jit_compile: bool = JIT_COMPILE,
                 proposer=None, proposer_name: str | None = None, records_proposer: str = ""):
        super().__init__(name=name)
        # Keras 3 models are held out of the object graph: their variables are wrappers whose saved form is a
        # copy that TF Serving's session loader never binds to the graph. The SavedModel writer
        # (karpalign.export.saved_model.save_for_serving) tracks the tf.Variables the signatures read instead.
        self._keras = _Untracked(alignment=alignment, generator=generator, cnn=None)
        self.decode = decode
        self.jit_compile = bool(jit_compile)
        self._decode_fn = _Untracked(fn=self._make_decode_fn())  # not a saved attribute: only the signatures are
        self.max_words = int(max_words)
        self.feature_dim = int(feature_dim)
        self.vocab = Vocabulary.load(vocab_path)
        if generator.vocab_size != len(self.vocab):
            raise ValueError(f"{vocab_path}: {len(self.vocab)} words, but the generator predicts "
                             f"{generator.vocab_size}")
        if generator.feature_dim != self.feature_dim:
            raise ValueError(f"the generator takes {generator.feature_dim}-d image features, the records have "
                             f"{self.feature_dim}-d ones")
        # Assets: the vocabulary (both tables initialise from it) and the resolved config, for provenance.
        self.vocab_asset = tf.saved_model.Asset(vocab_path)
        self.config_asset = tf.saved_model.Asset(config_path) if config_path else None
        self.word_to_id = self.vocab.lookup_table(vocab_path)
        self.id_to_word = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(vocab_path, key_dtype=tf.int64,
                                          key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                                          value_dtype=tf.string, value_index=0, delimiter="\t"),
            default_value=UNK)
        self.records_proposer = str(records_proposer)
        self._init_backbone(backbone, boxes, crop_size, proposer, proposer_name)
        self._endpoints = self._make_endpoints()
        for endpoint_name, fn in self._endpoints.items():
            setattr(self, endpoint_name, fn)

    @property
    def alignment(self):
        return self._keras.alignment

    @property
    def generator(self):
        return self._keras.generator

    @property
    def cnn(self):
        """The backbone network (Keras model or Hub module), or None for an export without images."""
        return self._keras.cnn if self._keras.cnn is not None else getattr(self, "hub_cnn", None)

    # ---- construction ---------------------------------------------------------------------------------------
    def _init_backbone(self, backbone, boxes, crop_size, proposer=None, proposer_name=None) -> None:
        """Keeps what the image path needs: the CNN, its pixel mapping, the boxes (or the in-graph proposer) and
        the crop size."""
        self.backbone_name = None if backbone is None else backbone.name
        self._proposer = _Untracked(proposer=proposer)  # a learned proposer's Keras model: like the other models
        if backbone is None:
            return
        if proposer is not None:
            self._init_proposer(proposer, crop_size, proposer_name)
            self._init_cnn(backbone)
            return
        if boxes is None or crop_size is None:
            raise ValueError("ExportModule: a backbone needs boxes (R, 4) or a proposer, and a crop_size")
        boxes = np.asarray(boxes, np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
            raise ValueError(f"ExportModule: boxes must be (R, 4) with R >= 1, got {boxes.shape}")
        if not np.array_equal(boxes[0], [0.0, 0.0, 1.0, 1.0]):
            raise ValueError(f"ExportModule: box 0 must be the full image [0, 0, 1, 1], got {boxes[0].tolist()}")
        self._init_cnn(backbone)
        self.boxes = boxes
        self.num_regions = len(boxes)
        self.proposer_name = proposer_name or f"grid|k={len(boxes) - 1}"
        self.crop_size = int(crop_size)

    def _init_proposer(self, proposer, crop_size, proposer_name) -> None:
        if crop_size is None:
            raise ValueError("ExportModule: a backbone needs a crop_size")
        for attr in ("name", "num_regions", "propose_encoded_tf"):
            if not hasattr(proposer, attr):
                raise ValueError(f"ExportModule: proposer {proposer!r} cannot run in the graph (no {attr!r})")
        detector = getattr(proposer, "detector", None)
        if detector is not None:  # a loaded SavedModel: tracked, so its variables and resources are saved with us
            self.proposer_module = detector
        self.boxes = None
        self.num_regions = int(proposer.num_regions)
        self.proposer_name = proposer_name or proposer.name
        self.crop_size = int(crop_size)

    def _init_cnn(self, backbone) -> None:
        # The backbone's own network object: a Keras model, or a TF Hub module for 'hub:' specs. A Hub module
        # (plain tf.Variables, maybe tables and assets) stays tracked so its resources are saved with it.
        cnn = getattr(backbone, "model", None)
        if cnn is None:
            cnn = getattr(backbone, "module", None)
        if cnn is None:
            raise ValueError(f"backbone {backbone.name}: no Keras model or Hub module to put in the SavedModel")
        self.cnn_is_keras = isinstance(cnn, keras.Model)
        if self.cnn_is_keras:
            self._keras.cnn = cnn
        else:
            self.hub_cnn = cnn
        # Backbone.normalize's own float32 constants, so the mapping is bit-identical to extraction.
        scale, offset = backbone.pixel_mapping
        self.pixel_scale, self.pixel_offset = float(scale), float(offset)

    def _make_endpoints(self) -> dict:
        """Endpoint name -> tf.function taking one dict of named TensorSpecs."""
        D = self.feature_dim
        feats = tf.TensorSpec([None, None, D], tf.float32, name="region_features")
        mask = tf.TensorSpec([None, None], tf.float32, name="region_mask")
        sentences = tf.TensorSpec([None], tf.string, name="sentences")
        specs = {
            "caption_features": ({"region_features": feats, "region_mask": mask}, self.caption_features_fn),
            "caption_examples": ({"examples": tf.TensorSpec([None], tf.string, name="examples")},
                                 self.caption_examples_fn),
            "embed_images": ({"region_features": feats, "region_mask": mask}, self.embed_images_fn),
            "embed_sentences": ({"sentences": sentences}, self.embed_sentences_fn),
            "score": ({"region_features": feats, "region_mask": mask, "sentences": sentences}, self.score_fn),
            "align": ({"region_features": feats, "region_mask": mask, "sentences": sentences,
                       "beta": tf.TensorSpec([], tf.float32, name="beta")}, self.align_fn),
        }
        if self.cnn is not None:
            specs = {"serving_default": ({"images": tf.TensorSpec([None], tf.string, name="images")},
                                         self.caption_images_fn), **specs}
        return {name: _dict_endpoint(fn, spec, name) for name, (spec, fn) in specs.items()}

    def signatures(self) -> dict:
        """{signature name: concrete function} for :func:`karpalign.export.saved_model.save_for_serving`."""
        return {name: fn.get_concrete_function() for name, fn in self._endpoints.items()}

    # ---- image path -----------------------------------------------------------------------------------------
    def image_region_features(self, images):
        """Encoded images (B,) -> region features (B, R, D) through the one region-feature path
        (:func:`karpalign.vision.region_features.region_features_tf`): decode, crop every box, map pixels, CNN."""
        if self.cnn is None:
            raise ValueError("this export has no backbone; it cannot read images")
        return region_features_tf(images, self.boxes, self.crop_size, self._network, self.pixel_scale,
                                  self.pixel_offset, self.feature_dim, self.backbone_name)

    def _network(self, x):
        """The backbone network on one batch (before pooling)."""
        return self.cnn(x, training=False) if self.cnn_is_keras else self.cnn(x)

    def caption_images_fn(self, images):
        if self._proposer.proposer is not None:
            return self._caption_proposed_regions(images)
        feats = self.image_region_features(images)  # (B, R, D)
        out = self.caption_regions(feats, tf.ones(tf.shape(feats)[:2], tf.float32))  # every box is a region
        out["boxes"] = tf.constant(self.boxes)  # (R, 4) the same for every image
        out["region_features"] = feats  # (B, R, D), so a client can go on to score or align
        out.update(self._proposer_names())
        return out

    def _proposer_names(self) -> dict:
        """The serving proposer's name and the records' one: what a client can check its regions against."""
        return {"proposer": tf.constant(self.proposer_name), "records_proposer": tf.constant(self.records_proposer)}

    def propose_regions(self, images):
        """Encoded images (B,) -> the in-graph proposer's ``boxes`` (B, R, 4), ``region_mask`` (B, R),
        ``box_scores`` (B, R) and ``box_classes`` (B, R) (:mod:`karpalign.vision.proposers`)."""
        return self._proposer.proposer.propose_encoded_tf(images)

    def _caption_proposed_regions(self, images):
        """serving_default with an in-graph proposer: every image's own regions, cropped and featurized through
        :func:`karpalign.vision.region_features.image_region_features_tf`."""
        proposals = self.propose_regions(images)
        feats = image_region_features_tf(images, proposals["boxes"], proposals["region_mask"], self.crop_size,
                                         self._network, self.pixel_scale, self.pixel_offset, self.feature_dim,
                                         self.backbone_name)  # (B, R, D)
        out = self.caption_regions(feats, proposals["region_mask"])
        out.update(proposals)
        out["region_features"] = feats
        out.update(self._proposer_names())
        return out

    # ---- captioning -----------------------------------------------------------------------------------------
    def caption_regions(self, region_features, region_mask):
        """Region features (B, R, D), region 0 the full image, and mask (B, R) -> captions (B, K), scores (B, K),
        ids (B, K, L)."""
        result = self._decode_fn.fn(region_features, region_mask)
        return {"captions": self.ids_to_text(result.ids), "scores": result.scores, "token_ids": result.ids}

    def _make_decode_fn(self):
        """(region features, mask) -> BeamResult with the export's decode settings: an XLA-compiled function
        (traced inside each caption signature) or, without ``jit_compile``, the plain graph ops."""
        d = self.decode
        settings = dict(beam_size=int(d.beam_size), max_length=int(d.max_length), alpha=float(d.alpha),
                        top_k=int(d.top_k), min_length=int(d.min_length))

        def decode(region_features, region_mask):
            return decode_regions(self.generator, region_features, region_mask, **settings)

        return tf.function(decode, jit_compile=True) if self.jit_compile else decode

    def ids_to_text(self, ids):
        """Word ids (B, K, L) -> space-joined words (B, K), stopping at END and skipping PAD/START (as
        :meth:`Vocabulary.decode` does)."""
        shape = tf.shape(ids)
        flat = tf.reshape(ids, [-1, shape[-1]])  # (B*K, L)
        ended = tf.cumsum(tf.cast(tf.equal(flat, END_ID), tf.int32), axis=-1) > 0  # END and everything after
        keep = tf.logical_not(ended) & tf.not_equal(flat, PAD_ID) & tf.not_equal(flat, START_ID)  # (B*K, L)
        words = tf.ragged.boolean_mask(self.id_to_word.lookup(tf.cast(flat, tf.int64)), keep)  # (B*K, None)
        text = tf.strings.reduce_join(words, axis=-1, separator=" ")  # (B*K,)
        return tf.reshape(text, shape[:-1])  # (B, K)

    def caption_features_fn(self, region_features, region_mask):
        full_image_present = tf.debugging.assert_greater(
            region_mask[:, 0], 0.0, message="caption_features: region 0 (the full image) is masked out")
        with tf.control_dependencies([full_image_present]):
            return self.caption_regions(tf.identity(region_features), region_mask)

    def caption_examples_fn(self, examples):
        parsed = parse_examples(examples, self.feature_dim)
        return self.caption_features_fn(parsed["region_features"], parsed["region_mask"])

    # ---- alignment model ------------------------------------------------------------------------------------
    def tokenize(self, sentences):
        """Raw sentences (B,) -> token ids (B, T), mask (B, T) float, token strings (B, T) ('' = padding)."""
        tokens = tf_tokenize(sentences)[:, :self.max_words]  # ragged (B, None)
        ids, mask = token_ids(tokens, self.word_to_id, self.max_words)  # (B, T), (B, T)
        strings = tokens.to_tensor(default_value="", shape=[None, self.max_words])  # (B, T)
        return ids, mask, strings

    def embed_images_fn(self, region_features, region_mask):
        return {"region_vectors": self.alignment.embed_images(region_features, region_mask, training=False)}

    def embed_sentences_fn(self, sentences):
        ids, mask, strings = self.tokenize(sentences)
        s = self.alignment.embed_sentences(ids, mask, training=False)  # (B, T, H)
        return {"word_vectors": s, "word_mask": mask, "tokens": strings}

    def score_fn(self, region_features, region_mask, sentences):
        v = self.alignment.embed_images(region_features, region_mask, training=False)  # (B_img, R, H)
        ids, mask, _ = self.tokenize(sentences)
        s = self.alignment.embed_sentences(ids, mask, training=False)  # (B_sent, T, H)
        return {"scores": self.alignment.score_matrix(v, region_mask, s, mask)}  # (B_img, B_sent)

    def align_fn(self, region_features, region_mask, sentences, beta):
        same_batch = tf.debugging.assert_equal(
            tf.shape(region_features)[0], tf.shape(sentences)[0],
            message="align: pairs image i with sentence i, so region_features and sentences need the same batch")
        with tf.control_dependencies([same_batch]):
            v = self.alignment.embed_images(region_features, region_mask, training=False)  # (B, R, H)
        ids, mask, strings = self.tokenize(sentences)
        s = self.alignment.embed_sentences(ids, mask, training=False)  # (B, T, H)
        dots = tf.einsum("brh,bth->btr", v, s)  # (B, T, R)
        assignment = tf_viterbi_align(dots, mask, region_mask, beta)  # (B, T)
        return {"region_word_scores": dots, "assignment": assignment, "tokens": strings}


class _Untracked:
    """Attributes that ``tf.Module`` does not track (it tracks only Trackables, lists, dicts and tuples)."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def _dict_endpoint(fn, spec: dict, name: str):
    """``fn(**inputs)`` as a tf.function of one dict argument with the named TensorSpecs ``spec``, named ``name``
    (its graph and function names in the SavedModel, e.g. ``__inference_caption_features_123``, not
    ``<lambda>``)."""

    def endpoint(inputs):
        return fn(**inputs)

    endpoint.__name__ = endpoint.__qualname__ = name
    return tf.function(endpoint, input_signature=[spec])
