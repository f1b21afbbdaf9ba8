"""The alignment model: regions and words in one multimodal space, scored with eq. 8 (or a baseline)."""

from __future__ import annotations

import keras
import tensorflow as tf

from karpalign.layers.brnn_encoder import BRNNEncoder
from karpalign.layers.region_embedding import RegionEmbedding
from karpalign.models.scores import SCORES_FROM_DOTS, get_score


@keras.saving.register_keras_serializable(package="karpalign")
class AlignmentModel(keras.Model):
    """Composite of a :class:`RegionEmbedding` and a :class:`BRNNEncoder` with an image–sentence score.

    ``call({"region_features" (B, R, D), "region_mask" (B, R), "token_ids" (B, T), "token_mask" (B, T)})``
    returns ``(v (B, R, H), s (B, T, H))``; :meth:`score_matrix` turns them into (B_img, B_sent) scores.

    Args:
        region_embedding: a RegionEmbedding.
        sentence_encoder: a BRNNEncoder with the same ``embed_dim``.
        score: 'brnn' (eq. 8), 'defrag' (eq. 7) or 'global' (mean region · mean word).
        **kwargs: passed to ``keras.Model`` (``name``, ``dtype``, ``trainable``).

    ``get_config`` returns every argument, the two sub-layers as their serialized configs (keras-hub's
    composite models do the same with their backbone); ``from_config`` deserializes them. What the
    sub-layers leave to their weights (the encoder's ``word_vectors``) comes back from a ``.keras`` file.
    """

    def __init__(self, region_embedding: RegionEmbedding, sentence_encoder: BRNNEncoder, score: str = "brnn",
                 **kwargs):
        super().__init__(**kwargs)
        if region_embedding.embed_dim != sentence_encoder.embed_dim:
            raise ValueError(f"region embed_dim {region_embedding.embed_dim} != sentence embed_dim "
                             f"{sentence_encoder.embed_dim}")
        self.region_embedding = region_embedding
        self.sentence_encoder = sentence_encoder
        self.score = score
        self.score_fn = get_score(score)

    def embed_images(self, region_features, region_mask, training=None):
        v = self.region_embedding(region_features, training=training)  # (B, R, H)
        return v * tf.cast(region_mask, v.dtype)[..., None]

    def embed_sentences(self, token_ids, token_mask, training=None):
        return self.sentence_encoder(token_ids, token_mask, training=training)  # (B, T, H)

    def call(self, inputs, training=None):
        v = self.embed_images(inputs["region_features"], inputs["region_mask"], training=training)
        s = self.embed_sentences(inputs["token_ids"], inputs["token_mask"], training=training)
        return v, s

    @property
    def feature_dim(self) -> int:
        """D of the region features the (built) model takes: the input size of the W_m projection."""
        return int(self.region_embedding.proj.kernel.shape[0])

    def score_matrix(self, v, v_mask, s, s_mask, dots=None):
        """All-pairs scores (B_img, B_sent). ``dots``: the caller's :func:`region_word_dots` of ``v`` and ``s``
        (B_img, B_sent, R, T), reused by the scores that are functions of them (training with the fragment
        objective needs the dots anyway)."""
        if dots is not None and self.score in SCORES_FROM_DOTS:
            return SCORES_FROM_DOTS[self.score](dots, v_mask, s_mask)
        return self.score_fn(v, v_mask, s, s_mask)  # (B_img, B_sent)

    def get_config(self):
        return {**super().get_config(),
                "region_embedding": keras.saving.serialize_keras_object(self.region_embedding),
                "sentence_encoder": keras.saving.serialize_keras_object(self.sentence_encoder),
                "score": self.score}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("region_embedding", "sentence_encoder"):
            if isinstance(config[key], dict):  # a serialized layer (an already built one passes through)
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
