"""Bidirectional ReLU RNN sentence encoder (paper eqs. 2-6).

    x_t = W_w I_t                         word embedding
    e_t = f(W_e x_t + b_e)
    h^f_t = f(e_t + W_f h^f_{t-1} + b_f)    forward recurrence
    h^b_t = f(e_t + W_b h^b_{t+1} + b_b)    backward recurrence (starts at each sentence's last real word)
    s_t = f(W_d (h^f_t + h^b_t) + b_d)     word vector in the multimodal space, f = ReLU
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def relu_recurrence(inputs, w, b):
    """h_t = relu(x_t + h_{t-1} W + b) over time for inputs (B, T, H), h_0 = 0 -> (B, T, H)."""
    xs = tf.transpose(inputs, [1, 0, 2])  # (T, B, H)
    h0 = tf.zeros_like(xs[0])  # (B, H)
    hs = tf.scan(lambda h, x: tf.nn.relu(x + tf.matmul(h, w) + b), xs, initializer=h0)  # (T, B, H)
    return tf.transpose(hs, [1, 0, 2])


@keras.saving.register_keras_serializable(package="karpalign")
class BRNNEncoder(keras.layers.Layer):
    """Encodes token ids (B, T) with a mask (B, T) into word vectors s (B, T, embed_dim).

    Args:
        vocab_size: number of ids (including the special tokens).
        word_dim: word embedding size (paper: 300).
        hidden_dim: recurrent size (paper: 300-600).
        embed_dim: multimodal size h, must match the region embedding.
        dropout: dropout on the non-recurrent layers (word vectors and the output projection).
        word_vectors: optional (vocab_size, word_dim) initial embedding matrix (e.g. GloVe).
        freeze_word_vectors: keep the word embedding fixed (the paper keeps word2vec fixed).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype``, ``trainable``).

    Serialization: ``get_config`` returns every argument, but ``word_vectors`` as ``None``. The matrix only sets
    the initial value of the ``word_embedding`` weight, and that weight is saved with the others, so a
    ``.keras`` file restores the vectors exactly (and ``freeze_word_vectors`` keeps them frozen); writing them
    into the config as well would store the (V, d) matrix twice, as JSON, and for a trained unfrozen embedding
    describe a value the layer no longer has. This is what keras-hub does for a tokenizer's ``vocabulary``
    (``None`` in the config, the content saved with the model) and what Keras's own ``Embedding(weights=...)``
    does. ``from_config(get_config())`` therefore rebuilds the same architecture (same weight shapes and
    trainable flags); ``set_weights`` then makes it compute the same outputs.
    """

    def __init__(self, vocab_size: int, word_dim: int = 300, hidden_dim: int = 300, embed_dim: int = 1000,
                 dropout: float = 0.0, word_vectors=None, freeze_word_vectors: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.word_dim, self.hidden_dim = vocab_size, word_dim, hidden_dim
        self.embed_dim, self.dropout, self.freeze_word_vectors = embed_dim, dropout, freeze_word_vectors
        init = "uniform"
        if word_vectors is not None:
            word_vectors = np.asarray(word_vectors, "float32")
            if word_vectors.shape != (vocab_size, word_dim):
                raise ValueError(f"word_vectors has shape {word_vectors.shape}, expected ({vocab_size}, {word_dim})")
            init = keras.initializers.Constant(word_vectors)
        self.embedding = keras.layers.Embedding(vocab_size, word_dim, embeddings_initializer=init,
                                                trainable=not freeze_word_vectors, name="word_embedding")
        self.drop_in = keras.layers.Dropout(dropout)
        self.drop_out = keras.layers.Dropout(dropout)
        self.word_proj = keras.layers.Dense(hidden_dim, activation="relu", name="w_e")
        self.out_proj = keras.layers.Dense(embed_dim, activation="relu", name="w_d")

    def build(self, input_shape):
        self.embedding.build(input_shape)
        self.word_proj.build((None, None, self.word_dim))
        self.out_proj.build((None, None, self.hidden_dim))
        ortho = keras.initializers.Orthogonal(gain=0.5)
        self.w_f = self.add_weight(name="w_f", shape=(self.hidden_dim, self.hidden_dim), initializer=ortho)
        self.b_f = self.add_weight(name="b_f", shape=(self.hidden_dim,), initializer="zeros")
        self.w_b = self.add_weight(name="w_b", shape=(self.hidden_dim, self.hidden_dim), initializer=ortho)
        self.b_b = self.add_weight(name="b_b", shape=(self.hidden_dim,), initializer="zeros")
        self.built = True

    def call(self, token_ids, mask, training=None):
        mask = tf.cast(mask, self.compute_dtype)  # (B, T)
        lengths = tf.cast(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), tf.int32)  # (B,)
        x = self.drop_in(self.embedding(token_ids), training=training)  # (B, T, word_dim)
        e = self.word_proj(x) * mask[..., None]  # (B, T, hidden)
        h_f = relu_recurrence(e, self.w_f, self.b_f)  # (B, T, hidden)
        e_rev = tf.reverse_sequence(e, lengths, seq_axis=1, batch_axis=0)
        h_b = tf.reverse_sequence(relu_recurrence(e_rev, self.w_b, self.b_b), lengths, seq_axis=1, batch_axis=0)
        s = self.out_proj(self.drop_out(h_f + h_b, training=training))  # (B, T, H)
        return s * mask[..., None]

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "word_dim": self.word_dim,
                "hidden_dim": self.hidden_dim, "embed_dim": self.embed_dim, "dropout": self.dropout,
                "word_vectors": None,  # saved as the word_embedding weight (see the class docstring)
                "freeze_word_vectors": self.freeze_word_vectors}
