"""Region embedding: v = W_m · CNN(I_b) + b_m (paper eq. 1)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="karpalign")
class RegionEmbedding(keras.layers.Layer):
    """Projects region CNN features (B, R, D) into the multimodal space (B, R, H).

    Args:
        embed_dim: multimodal size h (paper: 1000-1600).
        dropout: dropout rate on the CNN features (dropout on all non-recurrent layers, as the paper does).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype``, ``trainable``).

    ``get_config`` returns every argument; ``from_config(get_config())`` rebuilds an equivalent layer.
    """

    def __init__(self, embed_dim: int = 1000, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout)
        self.proj = keras.layers.Dense(embed_dim, name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.built = True

    def call(self, features, training=None):
        return self.proj(self.drop(features, training=training))  # (B, R, H)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "dropout": self.dropout}
