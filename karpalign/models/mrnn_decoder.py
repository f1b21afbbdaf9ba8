"""Multimodal RNN generator (paper sec. 3.2).

    b_v = W_hi · CNN(I)
    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h + 1(t = 1) ⊙ b_v)     f = ReLU ('rnn', the paper) or an LSTM cell
    y_t = softmax(W_oh h_t + b_o)

The image enters only at the first step, as a bias. The decoder contract of DESIGN.md is
``initial_state(image_vec) -> state`` and ``step(token_ids (B,), state) -> (logits (B, V), state)``; the state
carries the not-yet-used image bias, so 1(t = 1) needs no step counter.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="karpalign")
class MRNNDecoder(keras.Model):
    """Image-conditioned next-word model.

    Args:
        vocab_size: number of word ids (with the special tokens).
        feature_dim: size D of the image (or region) CNN vector.
        hidden_dim: recurrent size (paper: 512).
        word_dim: word embedding size.
        cell: 'rnn' (ReLU recurrence, the paper) or 'lstm'.
        dropout: dropout on the non-recurrent layers (image vector, word vectors, hidden state before W_oh).
        output_bias: optional (vocab_size,) initial b_o, e.g. log word frequencies (paper's supplement).
        **kwargs: passed to ``keras.Model`` (``name``, ``dtype``, ``trainable``).

    Serialization: ``get_config`` returns every argument, but ``output_bias`` as ``None``. The vector only sets
    the initial value of the ``w_oh`` bias, which is saved with the other weights (and trained, so the initial
    value would soon describe nothing the model has); a ``.keras`` file restores it exactly. This is what
    keras-hub does for a tokenizer's ``vocabulary`` and what Keras's ``Embedding(weights=...)`` does.
    ``from_config(get_config())`` rebuilds the same architecture; ``set_weights`` then gives the same outputs.
    """

    def __init__(self, vocab_size: int, feature_dim: int, hidden_dim: int = 512, word_dim: int = 512,
                 cell: str = "rnn", dropout: float = 0.0, output_bias=None, **kwargs):
        super().__init__(**kwargs)
        if cell not in ("rnn", "lstm"):
            raise ValueError(f"cell must be 'rnn' or 'lstm', got {cell!r}")
        self.vocab_size, self.feature_dim, self.hidden_dim = vocab_size, feature_dim, hidden_dim
        self.word_dim, self.cell, self.dropout = word_dim, cell, dropout
        bias_init = "zeros"
        if output_bias is not None:
            output_bias = np.asarray(output_bias, "float32")
            if output_bias.shape != (vocab_size,):
                raise ValueError(f"output_bias has shape {output_bias.shape}, expected ({vocab_size},)")
            bias_init = keras.initializers.Constant(output_bias)
        self.image_proj = keras.layers.Dense(hidden_dim, name="w_hi")
        self.embedding = keras.layers.Embedding(vocab_size, word_dim, name="word_embedding")
        self.input_proj = keras.layers.Dense(hidden_dim, name="w_hx")  # its bias is b_h
        self.drop_img = keras.layers.Dropout(dropout)
        self.drop_word = keras.layers.Dropout(dropout)
        self.drop_out = keras.layers.Dropout(dropout)
        self.output_proj = keras.layers.Dense(vocab_size, bias_initializer=bias_init, name="w_oh")
        if cell == "lstm":
            self.lstm_cell = keras.layers.LSTMCell(hidden_dim, name="lstm_cell")

    def build(self, input_shape=None):
        self.image_proj.build((None, self.feature_dim))
        self.embedding.build((None, None))
        self.input_proj.build((None, None, self.word_dim))
        self.output_proj.build((None, None, self.hidden_dim))
        if self.cell == "lstm":
            self.lstm_cell.build((None, self.hidden_dim))
        else:
            self.w_hh = self.add_weight(name="w_hh", shape=(self.hidden_dim, self.hidden_dim),
                                        initializer=keras.initializers.Orthogonal(gain=0.5))
        self.built = True

    # -- the recurrence, shared by teacher-forced training and step-wise decoding ------------------------------
    def _cell(self, x, state):
        """One step: x (B, H) already holds W_hx x_t + b_h (+ b_v at t = 1) -> (h (B, H), new state)."""
        if self.cell == "lstm":
            h, (h_new, c_new) = self.lstm_cell(x, [state["h"], state["c"]])
            return h, {"h": h_new, "c": c_new}
        h = tf.nn.relu(x + tf.matmul(state["h"], self.w_hh))
        return h, {"h": h}

    def _zero_state(self, batch, dtype):
        zeros = tf.zeros([batch, self.hidden_dim], dtype)
        return {"h": zeros, "c": zeros} if self.cell == "lstm" else {"h": zeros}

    def image_bias(self, image_vec, training=None):
        return self.image_proj(self.drop_img(image_vec, training=training))  # (B, H)

    def initial_state(self, image_vec):
        """Decoding state for image vectors (B, D): zero recurrent state plus the pending image bias."""
        bias = self.image_bias(image_vec, training=False)
        state = self._zero_state(tf.shape(bias)[0], bias.dtype)
        state["bias"] = bias
        return state

    def step(self, token_ids, state):
        """token_ids (B,) -> (logits (B, V), state). The pending image bias is used once, then zeroed."""
        x = self.input_proj(self.embedding(token_ids)) + state["bias"]  # (B, H)
        h, new_state = self._cell(x, {k: v for k, v in state.items() if k != "bias"})
        new_state["bias"] = tf.zeros_like(state["bias"])
        return self.output_proj(h), new_state

    def call(self, inputs, training=None):
        """Teacher forcing: {"image": (B, D), "tokens": (B, T) starting with <start>} -> logits (B, T, V)."""
        image, tokens = inputs["image"], inputs["tokens"]
        x = self.input_proj(self.drop_word(self.embedding(tokens), training=training))  # (B, T, H)
        bias = self.image_bias(image, training=training)  # (B, H)
        first = tf.one_hot(0, tf.shape(x)[1], dtype=x.dtype)[None, :, None]  # (1, T, 1): 1(t = 1)
        x = x + first * bias[:, None, :]
        state = self._zero_state(tf.shape(x)[0], x.dtype)

        def body(carry, x_t):
            h, new_state = self._cell(x_t, carry[1])
            return h, new_state

        hs, _ = tf.scan(body, tf.transpose(x, [1, 0, 2]), initializer=(tf.zeros_like(x[:, 0]), state))
        hs = tf.transpose(hs, [1, 0, 2])  # (B, T, H)
        return self.output_proj(self.drop_out(hs, training=training))  # (B, T, V)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "hidden_dim": self.hidden_dim, "word_dim": self.word_dim, "cell": self.cell,
                "dropout": self.dropout,
                "output_bias": None}  # saved as the w_oh bias weight (see the class docstring)


def log_frequency_bias(counts, vocab_size: int) -> np.ndarray:
    """Output bias from training word counts (paper supplement): log of smoothed relative frequencies."""
    counts = np.asarray(counts if counts is not None else np.ones(vocab_size), "float64")[:vocab_size]
    freq = (counts + 1.0) / (counts + 1.0).sum()
    bias = np.log(freq)
    return (bias - bias.max()).astype("float32")
